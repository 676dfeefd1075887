import math

import pytest

from imitkd.beta import beta_at


def test_exponential_matches_imitkd_schedule():
    T = 30000
    assert beta_at(0, T) == 1.0
    assert beta_at(T, T) == pytest.approx(1 / 200)
    half = round(T * math.log(2) / math.log(200))  # β = 0.5 at ≈13.1 % of training
    assert beta_at(half, T) == pytest.approx(0.5, abs=1e-4)
    assert beta_at(T // 2, T) == pytest.approx(200 ** -0.5)
    # update k (1-based) uses 200^(−(k−1)/T): the value passed is fairseq's completed-update count
    assert beta_at(1, T) == pytest.approx(200 ** (-1 / T))


def test_other_schedules():
    assert beta_at(25, 100, "linear") == pytest.approx(0.75)
    assert beta_at(200, 100, "linear") == 0.0
    assert beta_at(50, 100, "inverse_sigmoid") == pytest.approx(0.5)
    assert beta_at(0, 100, "inverse_sigmoid") == pytest.approx(1 / (1 + math.exp(-10)))
    assert beta_at(10 ** 6, 0, "constant", beta0=0.3) == 0.3
    assert beta_at(0, 100, "exponential", beta0=0.0) == 0.0  # --beta 0: pure on-policy
    assert beta_at(10, 100, "exponential", beta0=0.5) == pytest.approx(0.5 * 200 ** -0.1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(update_num=1, total_updates=0), "--max-update"),
    (dict(update_num=1, total_updates=10, schedule="cosine"), "--beta-schedule"),
    (dict(update_num=1, total_updates=10, beta0=1.5), "--beta must be in"),
    (dict(update_num=1, total_updates=10, base=1.0), "--beta-base"),
])
def test_bad_flags_name_the_flag(kwargs, message):
    with pytest.raises(ValueError, match=message):
        beta_at(**kwargs)


def test_hold_keeps_beta_then_decays_over_the_rest():
    T, H = 1000, 200
    assert all(beta_at(k, T, hold_updates=H) == 1.0 for k in (0, 1, H - 1))
    assert beta_at(H, T, hold_updates=H) == 1.0  # the decay starts from β0
    assert beta_at(H + 400, T, hold_updates=H) == pytest.approx(200 ** -0.5)
    assert beta_at(T, T, hold_updates=H) == pytest.approx(1 / 200)
    assert beta_at(H + 200, T, "linear", beta0=0.8, hold_updates=H) == pytest.approx(0.8 * 0.75)


@pytest.mark.parametrize("kwargs, message", [
    (dict(update_num=1, total_updates=100, hold_updates=100), "--beta-hold-updates 100 leaves nothing"),
    (dict(update_num=1, total_updates=100, hold_updates=-1), "--beta-hold-updates must be >= 0"),
    (dict(update_num=1, total_updates=100, schedule="inverse_sigmoid", sigmoid_slope=-20), "--beta-sigmoid-slope"),
    (dict(update_num=1, total_updates=-5), "must be positive"),
])
def test_more_bad_flags_name_the_flag(kwargs, message):
    with pytest.raises(ValueError, match=message):
        beta_at(**kwargs)
