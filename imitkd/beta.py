"""β schedules: the probability that a sentence keeps its gold prefix (ImitKD's teacher-forcing rate).

β is a pure function of fairseq's update counter, so it is exact after a resume (the counter is
checkpointed) and identical on every data-parallel worker. ``update_num`` is the number of completed
optimizer updates before the current one (0 for the first update), as fairseq passes it to
``task.train_step``: with the default schedule, update k (1-based) uses β = base^(−(k−1)/T).

An optional *hold* keeps β = β₀ for the first H updates (a student that cannot decode yet learns
from gold prefixes only) and runs the schedule over the remaining T − H updates.
"""
import math
from dataclasses import dataclass

SCHEDULES = ("exponential", "linear", "inverse_sigmoid", "constant")


def beta_at(
    update_num: int,
    total_updates: int,
    schedule: str = "exponential",
    beta0: float = 1.0,
    base: float = 200.0,
    sigmoid_slope: float = 20.0,
    hold_updates: int = 0,
) -> float:
    """β for the update after ``update_num`` completed ones.

    exponential:      beta0 · base^(−t/T)                 (ImitKD, Lin et al. 2020: base 200)
    linear:           beta0 · max(0, 1 − t/T)
    inverse_sigmoid:  beta0 / (1 + exp(slope · (t/T − 0.5)))
    constant:         beta0
    with t = update_num − H and T = total_updates − H (> 0 for every schedule but constant); for
    update_num < H (``hold_updates``) β = beta0. Result in [0, 1].
    """
    return BetaSchedule(schedule, beta0, total_updates, base, sigmoid_slope, hold_updates)(update_num)


@dataclass(frozen=True)
class BetaSchedule:
    """The β schedule bound to its flags once; ``schedule(update_num) -> β``. Construction checks
    the flags (ValueError naming the flag), so a bad value stops training at start-up."""

    schedule: str = "exponential"
    beta0: float = 1.0
    decay_updates: int = 0  #: T, including the hold (default: --max-update)
    base: float = 200.0
    sigmoid_slope: float = 20.0
    hold_updates: int = 0  #: H: β = beta0 for the first H updates

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--beta-schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0.0 <= self.beta0 <= 1.0:
            raise ValueError(f"--beta must be in [0, 1], got {self.beta0}")
        if self.hold_updates < 0:
            raise ValueError(f"--beta-hold-updates must be >= 0, got {self.hold_updates}")
        if self.schedule == "constant":
            return
        if self.decay_updates is None or self.decay_updates <= 0:
            raise ValueError(
                f"--beta-schedule {self.schedule} decays over --max-update updates (or --beta-decay-updates), "
                f"which must be positive (got {self.decay_updates}); or use --beta-schedule constant")
        if self.hold_updates >= self.decay_updates:
            raise ValueError(f"--beta-hold-updates {self.hold_updates} leaves nothing of the {self.decay_updates} "
                             "decay updates (--beta-decay-updates or --max-update) to decay over")
        # (comparisons written so that NaN fails them)
        if self.schedule == "exponential" and not 1.0 < self.base < math.inf:
            raise ValueError(f"--beta-base must be > 1 and finite, got {self.base}")
        if self.schedule == "inverse_sigmoid" and not 0 < self.sigmoid_slope < math.inf:
            raise ValueError(f"--beta-sigmoid-slope must be > 0 and finite (β falls with it), "
                             f"got {self.sigmoid_slope}")

    def __call__(self, update_num: int) -> float:
        if self.schedule == "constant" or update_num < self.hold_updates:
            return float(self.beta0)
        progress = (update_num - self.hold_updates) / (self.decay_updates - self.hold_updates)
        if self.schedule == "exponential":
            value = self.base ** (-progress)
        elif self.schedule == "linear":
            value = max(0.0, 1.0 - progress)
        else:
            value = 1.0 / (1.0 + math.exp(self.sigmoid_slope * (progress - 0.5)))
        return float(min(1.0, max(0.0, self.beta0 * value)))
