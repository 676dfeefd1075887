"""β schedules: the probability that a sentence keeps its gold prefix (ImitKD's teacher-forcing rate).

β is a pure function of fairseq's update counter, so it is exact after a resume (the counter is
checkpointed) and identical on every data-parallel worker. ``update_num`` is the number of completed
optimizer updates before the current one (0 for the first update), as fairseq passes it to
``task.train_step``: with the default schedule, update k (1-based) uses β = base^(−(k−1)/T).
"""
import math

SCHEDULES = ("exponential", "linear", "inverse_sigmoid", "constant")


def beta_at(
    update_num: int,
    total_updates: int,
    schedule: str = "exponential",
    beta0: float = 1.0,
    base: float = 200.0,
    sigmoid_slope: float = 20.0,
) -> float:
    """β for the update after ``update_num`` completed ones.

    exponential:      beta0 · base^(−t/T)                 (ImitKD, Lin et al. 2020: base 200)
    linear:           beta0 · max(0, 1 − t/T)
    inverse_sigmoid:  beta0 / (1 + exp(slope · (t/T − 0.5)))
    constant:         beta0
    with t = update_num and T = total_updates (> 0 for every schedule but constant). Result in [0, 1].
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"--beta-schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if not 0.0 <= beta0 <= 1.0:
        raise ValueError(f"--beta must be in [0, 1], got {beta0}")
    if schedule == "constant":
        return float(beta0)
    if total_updates is None or total_updates <= 0:
        raise ValueError(
            f"--beta-schedule {schedule} decays over --max-update updates (or --beta-decay-updates); "
            "set one of them, or use --beta-schedule constant"
        )
    progress = update_num / total_updates
    if schedule == "exponential":
        if base <= 1.0:
            raise ValueError(f"--beta-base must be > 1, got {base}")
        value = base ** (-progress)
    elif schedule == "linear":
        value = max(0.0, 1.0 - progress)
    else:
        value = 1.0 / (1.0 + math.exp(sigmoid_slope * (progress - 0.5)))
    return float(min(1.0, max(0.0, beta0 * value)))
