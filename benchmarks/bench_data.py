"""Synthetic set-up of the training-step benchmark: a speech-translation corpus of random features
and random words, and a randomly initialised fairseq ``translation`` expert saved as a checkpoint.

Written once per size into a work directory (``prepared.json`` records the sizes it was made for,
so that ``--workdir DIR`` can reuse it across runs).
"""
import json
from pathlib import Path

#: (flag, full default, --quick default)
SIZES = {
    "batch_size": (16, 8),
    "frames": (400, 240),
    "max_tgt_len": (30, 20),
    "warmup": (2, 1),
    "steps": (5, 3),
}

PREPARED = ["seed", "vocab", "batch_size", "frames", "max_tgt_len", "warmup", "steps", "expert_arch", "expert_layers"]


def _prepared_for(o) -> dict:
    return {key: getattr(o, key) for key in PREPARED}


def is_prepared(workdir: Path, o) -> bool:
    stamp = Path(workdir) / "prepared.json"
    return stamp.is_file() and json.loads(stamp.read_text()) == _prepared_for(o)


def prepare(workdir: Path, o) -> None:
    """Writes ``workdir/data`` (features, manifest, dictionaries, config.yaml), ``workdir/expert.pt``
    and ``workdir/prepared.json`` (the sizes they were made for)."""
    import numpy as np
    from fairseq.data import Dictionary

    data = workdir / "data"
    (data / "feats").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(o.seed)
    d = Dictionary()
    for i in range(o.vocab - len(d)):
        d.add_symbol(f"w{i}")
    assert len(d) == o.vocab
    for name in ("dict.txt", "dict.en.txt", "dict.de.txt"):  # student target = expert source = expert target
        d.save(str(data / name))
    n_words = o.vocab - d.nspecial
    rows = ["id\taudio\tn_frames\ttgt_text\tspeaker\tsrc_text"]
    lo = max(1, o.max_tgt_len // 2)
    for i in range(o.batch_size * (o.warmup + o.steps)):
        path = data / "feats" / f"utt{i}.npy"
        np.save(path, rng.standard_normal((o.frames, 80)).astype(np.float32))
        # target: lo … max_tgt_len−1 words + </s> ≤ max_tgt_len tokens; source text of similar length
        tgt = " ".join(f"w{j}" for j in rng.integers(0, n_words, int(rng.integers(lo, o.max_tgt_len))))
        src = " ".join(f"w{j}" for j in rng.integers(0, n_words, int(rng.integers(lo, o.max_tgt_len))))
        rows.append(f"utt{i}\t{path}\t{o.frames}\t{tgt}\tspk0\t{src}")
    (data / "train.tsv").write_text("\n".join(rows) + "\n")
    (data / "config.yaml").write_text("input_channels: 1\ninput_feat_per_channel: 80\nvocab_filename: dict.txt\n")
    build_expert_checkpoint(data, workdir / "expert.pt", o)
    (workdir / "prepared.json").write_text(json.dumps(_prepared_for(o)))


def build_expert_checkpoint(data: Path, path: Path, o) -> None:
    """A randomly initialised fairseq ``translation`` transformer saved as a regular checkpoint, then
    loaded back with ``load_model_ensemble_and_task`` (what the criterion does)."""
    import torch

    import imitkd  # noqa: F401  (fairseq checkpoints need its torch.load fix under torch >= 2.6)
    from fairseq import checkpoint_utils, options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from omegaconf import OmegaConf

    torch.manual_seed(o.seed)
    argv = [str(data), "--task", "translation", "--source-lang", "en", "--target-lang", "de",
            "--arch", o.expert_arch, "--encoder-layers", str(o.expert_layers), "--decoder-layers", str(o.expert_layers),
            "--criterion", "label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-4",
            "--max-tokens", "4000", "--seed", str(o.seed), "--cpu"]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    task = tasks.setup_task(args)
    model = task.build_model(args)
    state = {
        # a plain dict, as fairseq's trainer stores it (the checkpoint loader refuses pickled DictConfigs)
        "cfg": OmegaConf.to_container(convert_namespace_to_omegaconf(args), resolve=True, enum_to_str=True),
        "args": None,
        "model": model.state_dict(),
        "criterion": None,
        "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion", "optimizer_name": "FairseqAdam",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "task_state": {},
        "extra_state": {"train_iterator": {"epoch": 1}, "val_loss": None},
        "last_optimizer_state": None,
    }
    checkpoint_utils.torch_persistent_save(state, str(path))
    models, _, loaded_task = checkpoint_utils.load_model_ensemble_and_task([str(path)],
                                                                          arg_overrides={"data": str(data)})
    n = sum(p.numel() for p in models[0].parameters())
    assert n == sum(p.numel() for p in model.parameters()) and len(loaded_task.target_dictionary) == o.vocab
    for a, b in zip(models[0].state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)

