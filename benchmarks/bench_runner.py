"""One benchmark mode in its own process: built as ``fairseq-train`` would build it, then timed.

``parse_mode`` reads a mode name, ``build`` makes the task, student, criterion, optimizer and batches,
``run_mode`` times the updates (wall, process CPU, peak RSS or CUDA memory), ``run_child`` runs a mode
in a forked child or in ``train_step.py --mode M --json``.
"""
import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from imitkd import precision
from imitkd_data.manifest import read_manifest
from imitkd.rollout import DECODINGS

from bench_data import SIZES
from bench_reference import ReferenceStep

TRAIN_STEP = Path(__file__).with_name("train_step.py")


class Autocast:
    """Criterion wrapper: the forward (student, expert, loss) under bf16 autocast; backward outside."""

    def __init__(self, criterion, device_type: str, enabled: bool):
        self.criterion, self.device_type, self.enabled = criterion, device_type, enabled

    def __call__(self, model, sample):
        import torch

        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.enabled):
            return self.criterion(model, sample)


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


#: mode suffixes (``imit_kd_CE@0/int8+train-enc``): each sets one criterion option for that mode
SUFFIXES = {**{d: ("rollout_decoding", d) for d in DECODINGS},
            **{p: ("dtype", p) for p in precision.CHOICES},  # --expert-dtype and --rollout-dtype
            "train-enc": ("rollout_encoder", "training")}


def parse_mode(mode: str):
    """``name[@β][/opt+opt…]`` → (name, β or None, {option: value}); the options (``SUFFIXES``: a
    ``--rollout-decoding``, a precision for the expert and the rollouts, ``train-enc``) override the
    command line's for this mode."""
    base, _, suffix = mode.partition("/")
    name, _, beta = base.partition("@")
    if name not in ("nll", "word_kd", "imit_kd", "imit_kd_CE", "reference"):
        raise SystemExit(f"unknown mode {mode!r}")
    if name in ("imit_kd", "imit_kd_CE", "reference") and not beta:
        raise SystemExit(f"mode {mode!r} needs a β: {name}@0.5")
    opts = {}
    for part in filter(None, suffix.split("+")):
        if part not in SUFFIXES or name not in ("word_kd", "imit_kd", "imit_kd_CE"):
            raise SystemExit(f"mode {mode!r}: /{part} needs word_kd, imit_kd or imit_kd_CE and one of "
                             f"{', '.join(SUFFIXES)}")
        key, value = SUFFIXES[part]
        opts[key] = value
    return name, (float(beta) if beta else None), opts


def mode_label(mode: str) -> str:
    name, beta, opts = parse_mode(mode)
    return (name if beta is None else f"{name} β={beta:g}") + (f" ({mode.partition('/')[2]})" if opts else "")


def build(mode: str, o):
    """Everything one mode needs, built as ``fairseq-train`` would: returns (model, batches, update, cuda)."""
    import torch

    import imitkd  # noqa: F401  (registers the task and criteria; applies compat fixes)
    from fairseq import optim, options, tasks, utils

    name, beta, opts = parse_mode(mode)
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
                 "--expert-dtype", "fp32" if name == "reference" else opts.get("dtype", o.expert_dtype)]  # seed: fp32
        if name != "word_kd":
            argv += ["--beta", str(beta), "--beta-schedule", "constant",
                     "--rollout-dtype", opts.get("dtype", o.rollout_dtype),
                     "--rollout-decoding", opts.get("rollout_decoding", o.rollout_decoding),
                     "--rollout-encoder", opts.get("rollout_encoder", o.rollout_encoder),
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
        transcripts = [row["src_text"] for row in read_manifest(data / "train.tsv")]
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


def size_flags(o):
    flags = []
    for key in list(SIZES) + ["vocab", "seed", "threads", "device", "student_arch", "expert_arch", "expert_layers",
                              "expert_dtype", "rollout_dtype", "rollout_decoding", "rollout_encoder", "rollout_max_len_a", "rollout_max_len_b"]:
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
    cmd = [sys.executable, str(TRAIN_STEP), "--mode", mode, "--json", "--workdir", str(o.workdir),
           *size_flags(o)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"mode {mode} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


