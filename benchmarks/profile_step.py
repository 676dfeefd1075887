#!/usr/bin/env python
"""Where one training update's time goes: wall-clock timers around its pieces, per mode.

Builds each mode exactly as ``train_step.py`` does (same synthetic data, expert, flags and batches) in
its own forked child, runs ``--warmup`` + ``--steps`` updates and reports the median per update of

* the training forward's student encoder and decoder (module hooks, grad enabled),
* the rollout (``student_rollout``), split into its encoder pass (the encoder under ``no_grad``), the
  int8 packing of the student's weights (``precision.quantise_int8``) and the decoding (the rest),
* the expert's forward (``Expert.scores``), the fused KD loss forward and backward,
* the rest of the criterion's forward, of the backward (``optimizer.backward``) and the optimizer step.

    python benchmarks/profile_step.py --threads 1 --modes nll,imit_kd_CE@0,imit_kd@0 [--quick] \
        [--expert-dtype int8 --rollout-dtype int8]

Timers add a few microseconds per call; the pieces are sequential, so they add up to the update.
"""
import argparse
import collections
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from imitkd import precision  # noqa: E402
from imitkd.rollout import DECODINGS  # noqa: E402

from bench_data import SIZES, is_prepared, prepare  # noqa: E402
from bench_runner import _in_child, build  # noqa: E402

class Timers:
    """Seconds per named piece; ``clock`` is ``time.perf_counter`` (wall) or ``time.thread_time`` (this
    thread's CPU time: with one torch thread all the work is on it, and other processes do not count)."""

    def __init__(self, clock=time.perf_counter):
        self.total, self.clock = collections.defaultdict(float), clock

    @contextmanager
    def __call__(self, name):
        t0 = self.clock()
        try:
            yield
        finally:
            self.total[name] += self.clock() - t0

    def wrap(self, owner, attr, name, eval_name=None):
        """Time ``owner.attr`` as ``name``; with ``eval_name``, calls under ``no_grad`` count as that instead
        (as ``hook`` splits a module's calls)."""
        fn = getattr(owner, attr)
        timers = self

        def timed(*args, **kwargs):
            with timers(name if eval_name is None or torch.is_grad_enabled() else eval_name):
                return fn(*args, **kwargs)

        setattr(owner, attr, staticmethod(timed) if isinstance(owner, type) and _is_static(owner, attr) else timed)

    def hook(self, module, train_name, eval_name):
        starts = []
        module.register_forward_pre_hook(lambda m, a: starts.append(self.clock()))

        def done(m, a, out):
            self.total[train_name if torch.is_grad_enabled() else eval_name] += self.clock() - starts.pop()

        module.register_forward_hook(done)


def _is_static(owner, attr):
    import inspect

    return isinstance(inspect.getattr_static(owner, attr), staticmethod)


def wrap_update_pieces(t: Timers) -> None:
    """Timers around the functions an update calls (the rollout, its int8 packing, the expert, the KD loss
    forward and backward, the criterion's forward, the optimizer's backward and step); the student's
    encoder/decoder are timed per model (``Timers.hook``)."""
    from fairseq.criterions import FairseqCriterion
    from fairseq.optim.fairseq_optimizer import FairseqOptimizer

    from imitkd import expert as expert_mod
    from imitkd import losses
    from imitkd.criterions import distillation

    t.wrap(distillation, "student_rollout", "rollout")
    t.wrap(expert_mod.Expert, "scores", "expert")
    t.wrap(distillation, "kd_cross_entropy", "KD loss forward")
    t.wrap(losses._FusedKDCrossEntropy, "backward", "KD loss backward")
    t.wrap(precision, "quantise_int8", "rollout: int8 packing")
    t.wrap(FairseqOptimizer, "backward", "backward")
    t.wrap(FairseqOptimizer, "step", "optimizer step")
    t.wrap(FairseqCriterion, "__call__", "criterion forward")


def profile_mode(mode, o):
    model, batches, update, _ = build(mode, o)
    t = Timers(time.thread_time if o.clock == "cpu" else time.perf_counter)
    t.hook(model.encoder, "student encoder (train)", "rollout: encoder")
    t.hook(model.decoder, "student decoder (train)", "rollout: fairseq decoder calls")
    wrap_update_pieces(t)
    per_update = []
    for i, sample in enumerate(batches):
        t.total.clear()
        with t("update"):
            update(i, sample)
        if i >= o.warmup:
            per_update.append(dict(t.total))
    return {k: 1000 * statistics.median(u.get(k, 0.0) for u in per_update) for k in {k for u in per_update for k in u}}


def report(mode, ms):
    derived = dict(ms)
    roll = ms.get("rollout", 0.0)
    derived["rollout: decoding"] = roll - ms.get("rollout: encoder", 0.0) - ms.get("rollout: int8 packing", 0.0)
    derived["criterion forward: rest"] = (ms.get("criterion forward", 0.0) - roll - ms.get("expert", 0.0)
                                          - ms.get("KD loss forward", 0.0) - ms.get("student encoder (train)", 0.0)
                                          - ms.get("student decoder (train)", 0.0))
    derived["backward: rest"] = ms.get("backward", 0.0) - ms.get("KD loss backward", 0.0)
    order = ["update", "student encoder (train)", "student decoder (train)", "rollout", "rollout: encoder",
             "rollout: int8 packing", "rollout: decoding", "expert", "KD loss forward", "criterion forward: rest",
             "backward", "KD loss backward", "backward: rest", "optimizer step"]
    return {k: derived[k] for k in order if k in derived and (derived[k] > 0.05 or k == "update")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default="nll,imit_kd_CE@0,imit_kd@0")
    p.add_argument("--quick", action="store_true")
    for key, (full, quick) in SIZES.items():
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None)
    p.add_argument("--vocab", type=int, default=8000)
    p.add_argument("--student-arch", default="s2t_transformer_s")
    p.add_argument("--expert-arch", default="transformer_iwslt_de_en")
    p.add_argument("--expert-layers", type=int, default=6)
    p.add_argument("--rollout-max-len-a", type=float, default=1.0)
    p.add_argument("--rollout-max-len-b", type=int, default=0)
    p.add_argument("--expert-dtype", choices=precision.CHOICES, default="auto")
    p.add_argument("--rollout-dtype", choices=precision.CHOICES, default="auto")
    p.add_argument("--rollout-decoding", choices=DECODINGS, default="cached")
    p.add_argument("--rollout-encoder", choices=["own", "training"], default="own")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: the main thread's CPU time (with --threads 1, insensitive to other processes)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", default=None)
    o = p.parse_args(argv)
    for key, (full, quick) in SIZES.items():
        if getattr(o, key) is None:
            setattr(o, key, quick if o.quick else full)
    o.device, o.bf16 = "cpu", False
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    o.workdir = o.workdir or tempfile.mkdtemp(prefix="imitkd-profile-")
    if not is_prepared(o.workdir, o):
        _in_child(prepare, __import__("pathlib").Path(o.workdir), o)
    rows = {}
    for mode in o.modes.split(","):
        rows[mode] = report(mode, _in_child(profile_mode, mode, o))
        print(f"  {mode}: {rows[mode]['update']:.0f} ms/update", file=sys.stderr, flush=True)
    keys = list(dict.fromkeys(k for r in rows.values() for k in r))
    print(f"# {o.threads} thread(s), {o.clock} clock; --expert-dtype {o.expert_dtype} --rollout-dtype {o.rollout_dtype}; "
          f"batch {o.batch_size} × {o.frames} frames, targets ≤ {o.max_tgt_len}; median ms over {o.steps} updates")
    print("| ms per update | " + " | ".join(rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{r[k]:.0f}" if k in r else "–" for r in rows.values()) + " |")


if __name__ == "__main__":
    main()
