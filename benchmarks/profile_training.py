#!/usr/bin/env python
"""Where a real training run's time goes: ``imitkd-train`` with CPU-time timers around the pieces of an update.

The same pieces as ``profile_step.py`` (student encoder's training forward, the rollout and its encoder pass,
the expert, the KD loss, backward, optimizer step), but on the user's own data and flags, through fairseq's
``Trainer.train_step``. Prints one line at exit: the mean CPU ms per update of each piece (the main thread's
CPU time, so with one thread other processes hardly change it), after ``--profile-skip`` warm-up updates::

    OMP_NUM_THREADS=1 python benchmarks/profile_training.py DATA --task speech_to_text_kd ... \\
        --criterion imit_kd_CE --expert ... --max-update 150 --disable-validation --no-save [--profile-skip 30]
"""
import atexit
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import imitkd.cli  # noqa: E402
from profile_step import Timers  # noqa: E402


def main():
    skip = 30
    if "--profile-skip" in sys.argv:
        i = sys.argv.index("--profile-skip")
        skip = int(sys.argv[i + 1])
        del sys.argv[i:i + 2]
    from fairseq.criterions import FairseqCriterion
    from fairseq.models.speech_to_text import s2t_transformer
    from fairseq.optim.fairseq_optimizer import FairseqOptimizer
    from fairseq.trainer import Trainer

    from imitkd import expert
    from imitkd.criterions import distillation

    t = Timers(time.thread_time)
    t.wrap(distillation, "student_rollout", "rollout")
    t.wrap(expert.Expert, "scores", "expert")
    t.wrap(distillation, "kd_cross_entropy", "KD loss forward")
    t.wrap(FairseqOptimizer, "backward", "backward")
    t.wrap(FairseqOptimizer, "step", "optimizer step")
    t.wrap(FairseqCriterion, "__call__", "criterion forward")
    encoder_forward = s2t_transformer.S2TTransformerEncoder.forward

    def timed_encoder(self, *args, **kwargs):
        with t("student encoder (train)" if torch.is_grad_enabled() else "rollout: encoder"):
            return encoder_forward(self, *args, **kwargs)

    s2t_transformer.S2TTransformerEncoder.forward = timed_encoder
    train_step, updates = Trainer.train_step, [0]

    def counted(self, *args, **kwargs):
        updates[0] += 1
        if updates[0] == skip + 1:
            t.total.clear()
        with t("update"):
            return train_step(self, *args, **kwargs)

    Trainer.train_step = counted

    def report():
        n = updates[0] - skip
        if n > 0:
            ms = {k: round(1000 * v / n, 1) for k, v in sorted(t.total.items())}
            print(f"PROFILE {n} updates, CPU ms per update: {ms}", file=sys.stderr, flush=True)

    atexit.register(report)
    sys.argv = ["imitkd-train"] + sys.argv[1:]
    imitkd.cli.train()


if __name__ == "__main__":
    main()
