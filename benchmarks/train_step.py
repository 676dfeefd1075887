#!/usr/bin/env python
"""Cost of one training update: label-smoothed NLL vs word-level KD vs ImitKD vs the original recipe.

Same student (``s2t_transformer_s``), same frozen expert (a randomly initialised 6+6-layer text
``transformer``), same batches for every mode; everything is built through the real code paths
(fairseq's argument parser, ``speech_to_text_kd`` task, ``task.build_criterion``, the expert loaded
from a fairseq checkpoint by the criterion) and one *update* is
``optimizer.zero_grad(); task.train_step(...); multiply_grads(1/sample_size); clip_grad_norm; step``.

Modes (``--modes``):

* ``nll``                 label_smoothed_cross_entropy (ε = 0.1), the baseline of every ratio;
* ``word_kd``             word-level KD on the gold prefix (no rollouts);
* ``imit_kd@B``, ``imit_kd_CE@B``   ImitKD-optimal / ImitKD-full with a constant β = B;
* ``reference@B``         the original (seed) ``imit_kd_CE`` step re-enacted (``ReferenceStep``).

Each mode runs in its own process (a forked child of the parent, or ``train_step.py --mode M --json``
with ``--isolation subprocess``) so that peak memory is per mode; the parent prepares the data and the
expert checkpoint once and prints a markdown table. Rollouts are capped at the gold length
(``--rollout-max-len-a 1 --rollout-max-len-b -1``): an untrained student never emits ``</s>``.
See benchmarks/README.md for what is measured, the results and the targets.
"""
import argparse
import copy
import csv
import datetime
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_MODES = ["nll", "word_kd", "imit_kd@1", "imit_kd@0.5", "imit_kd@0",
                 "imit_kd_CE@1", "imit_kd_CE@0.5", "imit_kd_CE@0", "reference@1", "reference@0.5", "reference@0"]
#: (flag, full default, --quick default)
SIZES = {
    "batch_size": (16, 8),
    "frames": (400, 240),
    "max_tgt_len": (30, 20),
    "warmup": (2, 1),
    "steps": (5, 3),
}


# ----------------------------------------------------------------------------------------------
# set-up: synthetic corpus and a random expert checkpoint (once, in a child of the parent)
# ----------------------------------------------------------------------------------------------
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

    torch.manual_seed(o.seed)
    argv = [str(data), "--task", "translation", "--source-lang", "en", "--target-lang", "de",
            "--arch", o.expert_arch, "--encoder-layers", str(o.expert_layers), "--decoder-layers", str(o.expert_layers),
            "--criterion", "label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-4",
            "--max-tokens", "4000", "--seed", str(o.seed), "--cpu"]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    task = tasks.setup_task(args)
    model = task.build_model(args)
    state = {
        "cfg": convert_namespace_to_omegaconf(args),
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


# ----------------------------------------------------------------------------------------------
# the original procedure, re-enacted
# ----------------------------------------------------------------------------------------------
class ReferenceStep:
    """The seed's ``imit_kd_CE`` training forward (docs seed_spec §3.3–3.5, §4.2, §12.8–10), used as
    the ``criterion`` of ``task.train_step``:

    1. a teacher-forced student forward on the gold prefix, only for the accuracy (its autograd graph
       stays alive until the step returns);
    2. the expert source re-encoded from the transcript strings in a Python loop (``encode_line``);
    3. ``copy.deepcopy`` of the batch (audio included), and again inside ``generate_imit_batch``;
    4. a ``SequenceGenerator`` (beam 1, ``max_len`` = the batch's decoder-input width, i.e. every
       rollout capped by the longest gold) built every step and run on the **whole** batch;
    5. per sentence, gold (p = β) or rollout prefix, built in a Python loop and re-collated;
    6. ``P_E = softmax(expert(...)).float()`` (B×T×V, fp32), zeroed at padded prefix positions; the
       expert runs in train mode (the trainer's ``criterion.train()`` reached it), under ``no_grad``;
    7. ``loss = −Σ P_E · log_softmax(student)``, ``sample_size = ntokens``.
    """

    def __init__(self, task, expert_model, expert_src_dict, beta: float):
        self.tgt_dict, self.src_dict = task.target_dictionary, expert_src_dict
        self.pad, self.eos = self.tgt_dict.pad(), self.tgt_dict.eos()
        self.expert, self.beta = expert_model, beta
        self.expert.requires_grad = False  # the seed's no-op: parameters keep requires_grad=True
        for p in self.expert.parameters():
            p.requires_grad_(True)

    def __call__(self, model, sample):
        import torch
        import torch.nn.functional as F
        from fairseq.data import data_utils

        net_input, target = sample["net_input"], sample["target"]
        device = target.device
        # 1. extra forward for the accuracy, with graph
        net_output = model(net_input["src_tokens"], net_input["src_lengths"], net_input["prev_output_tokens"])
        lprobs = model.get_normalized_probs(net_output, log_probs=True)
        gold_mask = target.ne(self.pad)
        n_correct = lprobs.argmax(-1).masked_select(gold_mask).eq(target.masked_select(gold_mask)).sum()
        # 2. expert source from the transcripts, every step
        ids = [self.src_dict.encode_line(line, add_if_not_exist=False, append_eos=True).long()
               for line in net_input["src_text"]]
        src_lengths = torch.tensor([len(t) for t in ids])
        src = data_utils.collate_tokens(ids, self.src_dict.pad(), self.src_dict.eos(), left_pad=False).to(device)
        # 3.–5. deepcopy, whole-batch greedy generation, prefixes in a Python loop
        s = copy.deepcopy(sample)
        del s["net_input"]["src_text"]
        s = self.generate_imit_batch(model, s)
        prev = s["net_input"]["prev_output_tokens"]
        # 6. expert distribution, fp32 B×T×V
        self.expert.train()
        with torch.no_grad():
            probs_e = F.softmax(self.expert(src, src_lengths.to(device), prev)[0], dim=-1).float().detach()
        probs_e[prev.eq(self.pad)] = 0
        # 7. cross-entropy with the student's full log-softmax
        logp_s = model.get_normalized_probs(model(net_input["src_tokens"], net_input["src_lengths"], prev),
                                            log_probs=True)
        loss = -(probs_e * logp_s).sum()
        del net_output  # (held until here, as in the seed)
        return loss, sample["ntokens"], {"loss": loss.data, "ntokens": sample["ntokens"],
                                         "nsentences": target.size(0), "sample_size": sample["ntokens"],
                                         "n_correct": n_correct.data, "total": gold_mask.sum().data,
                                         "n_positions": prev.ne(self.pad).sum().data,
                                         "rollout_rows": self._rollout_rows}

    def generate_imit_batch(self, model, s):
        import torch
        from fairseq.data import data_utils
        from fairseq.sequence_generator import SequenceGenerator

        with torch.no_grad():
            model.eval()
            gold_prev = s["net_input"]["prev_output_tokens"]
            gold = gold_prev.tolist()
            width = gold_prev.size(1)
            generator = SequenceGenerator([model], self.tgt_dict, beam_size=1, max_len=width)
            hyps = generator._generate(copy.deepcopy(s))
            use_student = torch.distributions.Categorical(torch.tensor([self.beta, 1.0 - self.beta])).sample(
                (len(gold),)).eq(1)
            self._rollout_rows = int(use_student.sum())
            prevs = []
            for b in range(len(gold)):
                if use_student[b]:
                    h = hyps[b][0]["tokens"]
                    if h[-1] == self.eos:
                        prevs.append(torch.cat([h.new([self.eos]), h[:-1]]))
                    else:
                        prevs.append(torch.cat([h.new([self.eos]), h]))
                else:
                    prevs.append(torch.tensor(gold[b]))
            s["net_input"]["prev_output_tokens"] = data_utils.collate_tokens(
                prevs, self.pad, self.eos, left_pad=False).to(gold_prev.device)
            model.train()
        return s


class Autocast:
    """Criterion wrapper: the forward (student, expert, loss) under bf16 autocast; backward outside."""

    def __init__(self, criterion, device_type: str, enabled: bool):
        self.criterion, self.device_type, self.enabled = criterion, device_type, enabled

    def __call__(self, model, sample):
        import torch

        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.enabled):
            return self.criterion(model, sample)


# ----------------------------------------------------------------------------------------------
# one mode (child process)
# ----------------------------------------------------------------------------------------------
def _proc_status():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(line.split()[1]) / 1024.0  # MB (MiB)
    return out


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


DECODINGS = ("cached", "cuda-graph", "fairseq")  # = imitkd.rollout.DECODINGS (not imported: the parser stays torch-free)


def parse_mode(mode: str):
    """``name[@β][/decoding]`` → (name, β or None, --rollout-decoding or None = the --rollout-decoding flag)."""
    base, _, decoding = mode.partition("/")
    name, _, beta = base.partition("@")
    if name not in ("nll", "word_kd", "imit_kd", "imit_kd_CE", "reference"):
        raise SystemExit(f"unknown mode {mode!r}")
    if name in ("imit_kd", "imit_kd_CE", "reference") and not beta:
        raise SystemExit(f"mode {mode!r} needs a β: {name}@0.5")
    if decoding and (decoding not in DECODINGS or name not in ("imit_kd", "imit_kd_CE")):
        raise SystemExit(f"mode {mode!r}: /{decoding} needs imit_kd or imit_kd_CE and one of {', '.join(DECODINGS)}")
    return name, (float(beta) if beta else None), (decoding or None)


def build(mode: str, o):
    """Everything one mode needs, built as ``fairseq-train`` would: returns (model, batches, update, cuda)."""
    import torch

    import imitkd  # noqa: F401  (registers the task and criteria; applies compat fixes)
    from fairseq import optim, options, tasks, utils

    name, beta, decoding = parse_mode(mode)
    if o.threads:
        torch.set_num_threads(o.threads)
    cuda = o.device == "cuda"
    workdir = Path(o.workdir)
    data = workdir / "data"
    argv = [str(data), "--task", "speech_to_text_kd", "--config-yaml", "config.yaml", "--train-subset", "train",
            "--arch", o.student_arch, "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--lr", "2e-4",
            "--max-tokens", "1000000", "--max-update", "100000", "--seed", str(o.seed), "--num-workers", "0"]
    argv += [] if cuda else ["--cpu"]
    if name == "nll":
        argv += ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]
    else:
        criterion = "imit_kd_CE" if name == "reference" else name
        argv += ["--criterion", criterion, "--expert", str(workdir / "expert.pt"), "--path", str(data),
                 "--expert-dtype", "fp32" if name == "reference" else o.expert_dtype]  # the seed: fp32 expert
        if name != "word_kd":
            argv += ["--beta", str(beta), "--beta-schedule", "constant", "--rollout-dtype", o.rollout_dtype,
                     "--rollout-decoding", decoding or o.rollout_decoding,
                     "--rollout-max-len-a", str(o.rollout_max_len_a), f"--rollout-max-len-b={o.rollout_max_len_b}"]
    torch.manual_seed(o.seed)
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    task = tasks.setup_task(args)
    task.load_dataset("train")
    model = task.build_model(args)
    criterion = task.build_criterion(args)
    if name == "reference":
        expert = criterion.expert
        criterion = ReferenceStep(task, expert.models[0], expert.source_dictionary, beta)
    device = torch.device("cuda" if cuda else "cpu")
    model.to(device)
    if name != "nll":  # now, not on first use, so that the "loaded" memory includes the expert
        criterion.expert.to(device)
    optimizer = optim.build_optimizer(args, [p for p in model.parameters() if p.requires_grad])
    step_criterion = Autocast(criterion, device.type, enabled=cuda and o.bf16)

    ds = task.dataset("train")
    if name == "reference":  # the seed's batches carried the transcript strings (net_input["src_text"])
        with open(data / "train.tsv", newline="") as f:
            transcripts = [row["src_text"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    n_batches = o.warmup + o.steps
    batches = []
    for k in range(n_batches):
        sample = ds.collater([ds[i] for i in range(k * o.batch_size, (k + 1) * o.batch_size)])
        if name == "reference":
            sample["net_input"]["src_text"] = [transcripts[i] for i in sample["id"].tolist()]
        batches.append(utils.move_to_cuda(sample) if cuda else sample)

    def update(i, sample):
        torch.manual_seed(o.seed + i)  # same β draws for every mode (fairseq reseeds per update too)
        optimizer.zero_grad()
        loss, sample_size, log = task.train_step(sample, model, step_criterion, optimizer, update_num=i)
        optimizer.multiply_grads(1.0 / float(sample_size or 1))
        optimizer.clip_grad_norm(0.0)
        optimizer.step()
        return log

    return model, batches, update, cuda


def run_mode(mode: str, o) -> dict:
    import torch

    model, batches, update, cuda = build(mode, o)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        mem_loaded = torch.cuda.memory_allocated() / 2**20
    else:
        mem_loaded = _proc_status()["VmRSS"]
        if not _reset_peak_rss():
            print("warning: cannot reset VmHWM; peak RSS includes the set-up", file=sys.stderr)
    times, cpu_times, logs = [], [], []
    for i, sample in enumerate(batches):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        log = update(i, sample)
        sync()
        if i >= o.warmup:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
            logs.append({k: float(v) for k, v in log.items() if k in ("ntokens", "n_positions", "rollout_rows",
                                                                      "rollout_tokens")})
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _proc_status()["VmHWM"]
    ntokens = [l["ntokens"] for l in logs]
    return {
        "mode": mode,
        "times_s": times,
        "cpu_s": cpu_times,
        "ntokens": ntokens,
        "tokens_per_s": statistics.median(n / t for n, t in zip(ntokens, times)),
        "mem_loaded_mb": mem_loaded,
        "peak_mb": peak,
        "positions": statistics.mean(l.get("n_positions", l["ntokens"]) for l in logs),
        "rollout_rows": statistics.mean(l.get("rollout_rows", 0.0) for l in logs),
        "rollout_tokens": statistics.mean(l.get("rollout_tokens", 0.0) for l in logs),
        "student_params": sum(p.numel() for p in model.parameters()),
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name() if cuda else None,
    }


# ----------------------------------------------------------------------------------------------
# parent: all modes, one table
# ----------------------------------------------------------------------------------------------
def machine_info(o) -> dict:
    import torch
    import fairseq

    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "torch": torch.__version__, "fairseq": fairseq.__version__,
            "python": platform.python_version(), "torch_threads": o.threads or torch.get_num_threads(),
            "device": o.device}
    return info  # (no torch.cuda call here: the parent must not initialise CUDA before forking)


def size_flags(o):
    flags = []
    for key in list(SIZES) + ["vocab", "seed", "threads", "device", "student_arch", "expert_arch", "expert_layers",
                              "expert_dtype", "rollout_dtype", "rollout_decoding", "rollout_max_len_a", "rollout_max_len_b"]:
        flags.append(f"--{key.replace('_', '-')}={getattr(o, key)}")
    return flags + (["--bf16"] if o.bf16 else [])


def _in_child(target, *args):
    """Run ``target(*args)`` in a forked child (fresh peak-memory counters, nothing shared back but
    the result). The parent has only imported modules, never run a torch kernel, so the child's
    OpenMP pool starts clean."""
    import multiprocessing as mp
    import traceback

    ctx = mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def entry():
        try:
            send.send(("ok", target(*args)))
        except BaseException:  # noqa: B902  (report anything, incl. SystemExit, to the parent)
            send.send(("error", traceback.format_exc()))

    proc = ctx.Process(target=entry)
    proc.start()
    send.close()
    try:
        status, value = recv.recv()
    except EOFError:
        status, value = "error", "the child died without a result"
    proc.join()
    if status != "ok":
        raise SystemExit(f"{getattr(target, '__name__', target)}{args[:1]} failed:\n{value[-4000:]}")
    return value


def run_child(mode, o):
    """One mode in its own process: forked (default) or ``python train_step.py --mode M --json``."""
    if o.isolation == "fork":
        return _in_child(run_mode, mode, o)
    cmd = [sys.executable, os.path.abspath(__file__), "--mode", mode, "--json", "--workdir", str(o.workdir),
           *size_flags(o)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"mode {mode} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def summarise(results, modes):
    """Pool the repeats of each mode: median update time (wall and CPU), tokens/s, median peak memory."""
    rows = {}
    for mode in modes:
        runs = [r for r in results if r["mode"] == mode]
        times = [t for r in runs for t in r["times_s"]]
        cpu = [t for r in runs for t in r["cpu_s"]]
        ntok = [n for r in runs for n in r["ntokens"]]
        rows[mode] = {
            "ms": 1000 * statistics.median(times),
            "cpu_ms": 1000 * statistics.median(cpu),
            "tok_s": statistics.median(n / t for n, t in zip(ntok, times)),
            "peak": statistics.median(r["peak_mb"] for r in runs),
            "delta": statistics.median(r["peak_mb"] - r["mem_loaded_mb"] for r in runs),
            "positions": statistics.mean(r["positions"] for r in runs),
            "rollout_rows": statistics.mean(r["rollout_rows"] for r in runs),
            "n": len(times),
        }
    return rows


def _reference_for(rows, beta):
    return rows.get(f"reference@{beta:g}") or rows.get("reference@0")


def table(rows, o) -> str:
    base = rows.get("nll")
    mem = "CUDA max alloc" if o.device == "cuda" else "peak RSS"
    lines = [f"| mode | ms/update (median) | CPU ms/update | target tok/s | {mem} MB | Δ MB in steps | time ×NLL "
             "| CPU time ×NLL | mem ×NLL | Δ mem ×NLL | speed-up vs reference | loss positions | rollout rows |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for mode, r in rows.items():
        name, beta, decoding = parse_mode(mode)
        label = (name if beta is None else f"{name} β={beta:g}") + (f" ({decoding})" if decoding else "")
        ratio = lambda key: f"{r[key] / base[key]:.2f}" if base else "–"  # noqa: E731
        ref = _reference_for(rows, beta) if name in ("imit_kd", "imit_kd_CE") else None
        speedup = f"{ref['ms'] / r['ms']:.2f}× (CPU {ref['cpu_ms'] / r['cpu_ms']:.2f}×)" if ref else "–"
        lines.append(f"| {label} | {r['ms']:.0f} | {r['cpu_ms']:.0f} | {r['tok_s']:.0f} | {r['peak']:.0f} | "
                     f"{r['delta']:.0f} | {ratio('ms')} | {ratio('cpu_ms')} | {ratio('peak')} | {ratio('delta')} | "
                     f"{speedup} | {r['positions']:.0f} | {r['rollout_rows']:.1f} |")
    return "\n".join(lines)


def check_targets(rows, key="ms") -> list:
    """The issue's targets: (description, holds?) for those whose modes were run; ``key`` is "ms"
    (wall time) or "cpu_ms" (process CPU time)."""
    out = []
    get = lambda m, k=key: rows[m][k] if m in rows else None  # noqa: E731
    what = "time" if key == "ms" else "CPU time"
    if get("nll") and get("imit_kd_CE@0"):
        r = get("imit_kd_CE@0") / get("nll")
        out.append((f"imit_kd_CE β=0 {what} ≤ 1.4× NLL (is {r:.2f}×)", r <= 1.4))
        r = get("imit_kd_CE@0", "peak") / get("nll", "peak")
        out.append((f"imit_kd_CE β=0 peak memory ≤ 1.3× NLL (is {r:.2f}×)", r <= 1.3))
    if get("nll") and get("word_kd"):
        r = get("word_kd") / get("nll")
        out.append((f"word_kd {what} ≤ 1.25× NLL (is {r:.2f}×)", r <= 1.25))
    for crit in ("imit_kd", "imit_kd_CE"):
        if get("word_kd") and get(f"{crit}@1"):
            r = get(f"{crit}@1") / get("word_kd")
            out.append((f"{crit} β=1 {what} within 5 % of word_kd (is {r:.3f}×)", abs(r - 1) <= 0.05))
    for mode in rows:
        name, beta, decoding = parse_mode(mode)
        ref = _reference_for(rows, beta) if name in ("imit_kd", "imit_kd_CE") else None
        if ref:
            s = ref[key] / rows[mode][key]
            label = f"{name} β={beta:g}" + (f" ({decoding})" if decoding else "")
            out.append((f"{label} ≥ 1.3× faster than reference ({what}; is {s:.2f}×)", s >= 1.3))
    return out


def _quiet():
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.basicConfig(level=logging.ERROR, force=True)
    for name in ("fairseq", "imitkd", "hydra"):
        logging.getLogger(name).setLevel(logging.ERROR)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes (batch 8 × 240 frames, targets ≤ 20, "
                   "1 warm-up + 3 updates): under 2 minutes on 2 cores")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES), help="comma-separated modes (default: all)")
    p.add_argument("--repeats", type=int, default=1, help="run every mode this many times (round robin) and pool")
    for key, (full, _) in SIZES.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                       help=f"default {full} (--quick: {SIZES[key][1]})")
    p.add_argument("--vocab", type=int, default=8000,
                   help="target (= expert) vocabulary size, specials included (e.g. 32000)")
    p.add_argument("--student-arch", default="s2t_transformer_s")
    p.add_argument("--expert-arch", default="transformer_iwslt_de_en", help="fairseq arch of the text expert")
    p.add_argument("--expert-layers", type=int, default=6, help="encoder and decoder layers of the expert")
    p.add_argument("--rollout-max-len-a", type=float, default=1.0)
    p.add_argument("--rollout-max-len-b", type=int, default=-1,
                   help="rollout cap a·|gold incl. </s>| + b tokens before </s>; a=1, b=−1: as long as the gold")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--bf16", action="store_true", help="(cuda) bf16 autocast for the training forward (student, expert, loss)")
    p.add_argument("--expert-dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="--expert-dtype of our criteria (default auto: bf16 where native; the reference: fp32)")
    p.add_argument("--rollout-dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="--rollout-dtype of our criteria (default auto: bf16 encoder pass where native)")
    p.add_argument("--rollout-decoding", choices=DECODINGS, default="cached",
                   help="--rollout-decoding of our criteria (default cached); a mode can override it: imit_kd_CE@0/fairseq")
    p.add_argument("--isolation", choices=["fork", "subprocess"], default=None,
                   help="each mode in a forked child of this process (no re-import; default on CPU) or in "
                        "`python train_step.py --mode M --json` (default with --device cuda)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default=None, help="where data and expert go (default: a temporary dir, removed)")
    p.add_argument("--json-out", default=None, help="also write all raw results here")
    p.add_argument("--mode", default=None, help="(child) run one mode in this process")
    p.add_argument("--json", action="store_true", help="(child) print the result as one JSON line")
    o = p.parse_args(argv)
    for key, (full, quick) in SIZES.items():
        if getattr(o, key) is None:
            setattr(o, key, quick if o.quick else full)
    o.isolation = o.isolation or ("subprocess" if o.device == "cuda" else "fork")

    _quiet()
    if o.mode:
        if not o.workdir or not is_prepared(o.workdir, o):
            raise SystemExit("--mode needs --workdir DIR prepared for the same sizes (a parent run with "
                             "--workdir DIR prepares it)")
        result = run_mode(o.mode, o)
        print(json.dumps(result) if o.json else result)
        return

    t_start = time.time()
    modes = [m for m in o.modes.split(",") if m]
    for m in modes:
        parse_mode(m)
    import torch  # noqa: F401  (imported once here; forked children inherit the modules)

    import imitkd  # noqa: F401
    _quiet()  # (importing fairseq re-configures logging)
    tmp = o.workdir is None
    o.workdir = Path(o.workdir or tempfile.mkdtemp(prefix="imitkd-bench-"))
    try:
        if not is_prepared(o.workdir, o):
            _in_child(prepare, o.workdir, o)
        info = machine_info(o)
        info["load_before"] = os.getloadavg()
        results = []
        for rep in range(o.repeats):
            for m in modes:
                r = run_child(m, o)
                results.append(r)
                print(f"  {m:<16} {1000 * statistics.median(r['times_s']):8.0f} ms/update "
                      f"(CPU {1000 * statistics.median(r['cpu_s']):6.0f} ms)  peak {r['peak_mb']:6.0f} MB  "
                      f"(run {rep + 1}/{o.repeats}, {time.time() - t_start:.0f} s)", file=sys.stderr, flush=True)
        info["load_after"] = os.getloadavg()
        if results and results[0].get("device_name"):
            info["gpu"] = results[0]["device_name"]
        info["wall_s"] = round(time.time() - t_start, 1)
    finally:
        if tmp:
            shutil.rmtree(o.workdir, ignore_errors=True)
    rows = summarise(results, modes)
    size = (f"batch {o.batch_size} × {o.frames} frames, targets ≤ {o.max_tgt_len} tokens, vocab {o.vocab}, "
            f"student {o.student_arch}, expert {o.expert_arch} {o.expert_layers}+{o.expert_layers} layers "
            f"(--expert-dtype {o.expert_dtype}), --rollout-dtype {o.rollout_dtype}, "
            f"--rollout-decoding {o.rollout_decoding}, "
            f"rollout cap {o.rollout_max_len_a:g}·|gold|{o.rollout_max_len_b:+d}, "
            f"{o.warmup} warm-up + {o.steps} measured updates × {o.repeats} run(s)"
            + (", bf16 autocast" if o.bf16 else ""))
    print(f"# {info['date']}  {info['cpu']} ({info['cores']} cores"
          + (f", {info['gpu']}" if "gpu" in info else "") + f"), torch {info['torch']} ({info['torch_threads']} "
          f"threads), fairseq {info['fairseq']}, python {info['python']}")
    print(f"# {size}")
    print(f"# load average before/after: {' '.join(f'{x:.2f}' for x in info['load_before'])} / "
          f"{' '.join(f'{x:.2f}' for x in info['load_after'])}; wall time {info['wall_s']} s")
    print()
    print(table(rows, o))
    targets = check_targets(rows, "ms") + check_targets(rows, "cpu_ms")
    if targets:
        print()
        for text, ok in targets:
            print(f"- [{'x' if ok else ' '}] {text}")
    if o.json_out:
        Path(o.json_out).write_text(json.dumps({"info": info, "size": size, "results": results,
                                                "summary": rows, "targets": targets}, indent=1))


if __name__ == "__main__":
    main()
