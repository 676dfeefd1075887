#!/usr/bin/env python
"""Where a real training run's time goes: ``imitkd-train`` with CPU-time timers around the pieces of an update.

The same pieces as ``profile_step.py`` (``wrap_update_pieces``, and the student encoder's training forward
and the rollout's encoder pass), but on the user's own data and flags, through fairseq's
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

import imitkd.cli  # noqa: E402
from profile_step import Timers, wrap_update_pieces  # noqa: E402


def main():
    skip = 30
    if "--profile-skip" in sys.argv:
        i = sys.argv.index("--profile-skip")
        skip = int(sys.argv[i + 1])
        del sys.argv[i:i + 2]
    from fairseq.models.speech_to_text import s2t_transformer
    from fairseq.trainer import Trainer

    t = Timers(time.thread_time)
    wrap_update_pieces(t)
    t.wrap(s2t_transformer.S2TTransformerEncoder, "forward", "student encoder (train)", "rollout: encoder")
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
