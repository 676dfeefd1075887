"""A tiny, learnable speech-translation corpus built in seconds, plus the fairseq runs the tests share.

Source sentences are 3–8 words over a 12-word English vocabulary; the "translation" maps each word
to a German-like word, monotonically. The
"speech" of each word is a fixed random 80-dim fbank-like prototype held for 4–6 frames, with noise:
a real (if easy) acoustic mapping that a 1-layer s2t_transformer learns in a few hundred updates.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

SRC_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "red", "blue"]
TGT_WORDS = ["null", "eins", "zwei", "drei", "vier", "fuenf", "sechs", "sieben", "acht", "neun", "rot", "blau"]
SPLITS = {"train": 240, "dev": 24, "test": 20}
VENV_BIN = Path(sys.executable).parent

#: architecture flags of the tiny expert (text transformer) and student (s2t transformer)
EXPERT_ARCH = ("--arch transformer --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 32 "
               "--decoder-embed-dim 32 --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 "
               "--encoder-attention-heads 2 --decoder-attention-heads 2 --share-decoder-input-output-embed").split()
STUDENT_ARCH = ("--arch s2t_transformer_s --encoder-layers 1 --decoder-layers 1 --encoder-embed-dim 32 "
                "--decoder-embed-dim 32 --encoder-ffn-embed-dim 64 --decoder-ffn-embed-dim 64 "
                "--encoder-attention-heads 2 --decoder-attention-heads 2 --conv-channels 32 "
                "--dropout 0.1").split()
COMMON = "--cpu --num-workers 0 --seed 1 --no-progress-bar --log-format simple --log-interval 10".split()


def sentences(n, rng):
    out = []
    for _ in range(n):
        words = rng.integers(0, len(SRC_WORDS), size=int(rng.integers(3, 9)))
        out.append(([SRC_WORDS[w] for w in words], [TGT_WORDS[w] for w in words]))
    return out


def write_corpus(root: Path, seed: int = 0) -> Path:
    """Writes text (``text/<split>.{en,de}``) and speech (``s2t/``: npy features, manifests with
    ``src_text``, config.yaml without BPE); returns root."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(0.0, 3.0, size=(len(SRC_WORDS), 80)).astype(np.float32)
    (root / "text").mkdir(parents=True, exist_ok=True)
    feats_dir = root / "s2t" / "feats"
    feats_dir.mkdir(parents=True, exist_ok=True)
    for split, n in SPLITS.items():
        pairs = sentences(n, rng)
        (root / "text" / f"{split}.en").write_text("".join(" ".join(s) + "\n" for s, _ in pairs))
        (root / "text" / f"{split}.de").write_text("".join(" ".join(t) + "\n" for _, t in pairs))
        rows = ["id\taudio\tn_frames\ttgt_text\tspeaker\tsrc_text"]
        for i, (src, tgt) in enumerate(pairs):
            frames = [np.repeat(prototypes[SRC_WORDS.index(w)][None], int(rng.integers(4, 7)), 0) for w in src]
            feats = np.concatenate(frames) + rng.normal(0.0, 0.5, size=(sum(len(f) for f in frames), 80))
            path = feats_dir / f"{split}_{i}.npy"
            np.save(path, feats.astype(np.float32))
            rows.append(f"{split}_{i}\t{path}\t{len(feats)}\t{' '.join(tgt)}\tspk{i % 3}\t{' '.join(src)}")
        (root / "s2t" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return root


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: the pytest-xdist workers share the
    ``toy`` build (conftest.py), so a test that adds a file to it must never let another read half of it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def executable(name: str) -> str:
    """A console script of the Python running the tests (its venv), else the one on PATH (e.g. a
    ``pip install --target`` on a machine without the venv)."""
    path = VENV_BIN / name
    return str(path) if path.exists() else (shutil.which(name) or str(path))


def run(*cmd, cwd=None, check=True, env=None):
    """Run a fairseq/imitkd CLI from the venv; returns CompletedProcess (stdout+stderr in .stdout)."""
    exe = cmd[0] if os.path.isabs(cmd[0]) else executable(cmd[0])
    proc = subprocess.run([exe, *map(str, cmd[1:])], cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


def build_expert(root: Path, max_update: int = 300) -> Path:
    """fairseq-preprocess + fairseq-train a tiny text expert; returns the checkpoint path. The S2T
    config then uses the expert's target dictionary, so student and expert share it."""
    bin_dir = root / "mt-bin"
    run("fairseq-preprocess", "--source-lang", "en", "--target-lang", "de", "--trainpref", root / "text/train",
        "--validpref", root / "text/dev", "--testpref", root / "text/test", "--destdir", bin_dir, "--workers", "1")
    run("fairseq-train", bin_dir, *EXPERT_ARCH, *COMMON, "--optimizer", "adam", "--lr", "0.005",
        "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "20", "--criterion", "label_smoothed_cross_entropy",
        "--label-smoothing", "0.1", "--max-tokens", "1000", "--max-update", max_update, "--dropout", "0.1",
        "--save-dir", root / "expert", "--no-epoch-checkpoints", "--required-batch-size-multiple", "1")
    s2t = root / "s2t"
    (s2t / "dict.de.txt").write_text((bin_dir / "dict.de.txt").read_text())
    (s2t / "config.yaml").write_text("input_channels: 1\ninput_feat_per_channel: 80\nvocab_filename: dict.de.txt\n")
    return root / "expert" / "checkpoint_best.pt"


def student_train_args(root: Path, criterion: str, save_dir: Path, max_update: int, extra=()):
    args = [root / "s2t", "--task", "speech_to_text_kd", "--config-yaml", "config.yaml", "--train-subset", "train",
            "--valid-subset", "dev", *STUDENT_ARCH, *COMMON, "--optimizer", "adam", "--lr", "0.003",
            "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "20", "--max-tokens", "3000",
            "--max-update", max_update, "--save-dir", save_dir, "--no-epoch-checkpoints", "--criterion", criterion]
    if criterion != "label_smoothed_cross_entropy":
        args += ["--expert", root / "expert" / "checkpoint_best.pt", "--path", root / "mt-bin"]
    return args + list(extra)


def build_in_process(root: Path, criterion: str, extra=(), split="train"):
    """Parse the same flags as the CLI and build (args, task, model, criterion) in this process,
    with ``split`` loaded. The student is freshly initialised (seeded)."""
    import torch
    from fairseq import options, tasks

    import imitkd  # noqa: F401

    torch.manual_seed(1)
    argv = [str(a) for a in student_train_args(root, criterion, root / "unused", 10, extra)]
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, argv)
    task = tasks.setup_task(args)
    task.load_dataset(split)
    model = task.build_model(args)
    crit = task.build_criterion(args)
    return args, task, model, crit


def first_batch(task, split="train", max_sentences=None, seed=1):
    """One collated batch of ``split`` (fairseq's batching; the longest-first order)."""
    ds = task.dataset(split)
    itr = task.get_batch_iterator(ds, max_tokens=3000, max_sentences=max_sentences, seed=seed,
                                  required_batch_size_multiple=1).next_epoch_itr(shuffle=False)
    return next(iter(itr))


def batch_of(task, indices, split="train"):
    """The collated batch of these dataset rows."""
    ds = task.dataset(split)
    return ds.collater([ds[i] for i in indices])


#: a wrapper that runs the dataset script's main and pauses inside the write of the output (at fsync,
#: with the temporary file open beside the output) until a signal arrives
PAUSE_IN_WRITE = """
import os, signal, sys, time
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # as in a terminal, also when the tests run under nohup
signal.signal(signal.SIGINT, signal.default_int_handler)  # also in a background job (where SIGINT is ignored)
sys.path.insert(0, sys.argv[1])
import create_wmt19_generated_dataset as gd
def fsync(fd):
    open(sys.argv[2], "w").close()
    time.sleep(60)
os.fsync = fsync
sys.exit(gd.main(sys.argv[3:]))
"""


#: in-process flags for deterministic fp32: comparisons with hand computations and fairseq's SequenceGenerator
EXACT = ["--dropout", "0", "--expert-dtype", "fp32", "--rollout-dtype", "fp32"]


def load_student(model, ckpt):
    """Load the weights of the checkpoint ``ckpt`` (e.g. the ``toy_student`` fixture) into ``model``."""
    from fairseq import checkpoint_utils

    state = checkpoint_utils.load_checkpoint_to_cpu(str(ckpt))
    model.load_state_dict(state["model"])
    return model
