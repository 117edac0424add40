"""Paired bootstrap intervals and the exact McNemar test (evaluation/stats.py), checked against
cases small enough to work out by hand."""
from __future__ import annotations

import math

import pytest

from evaluation.stats import Interval, bootstrap_mean, mcnemar_exact, pair_by_id, paired_difference


def test_identical_models_give_a_zero_interval_and_p_one():
    a = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    iv = paired_difference(a, list(a))
    # Paired: every replicate differences a problem with itself. Unpaired resampling would spread.
    assert (iv.estimate, iv.low, iv.high, iv.p, iv.n) == (0.0, 0.0, 0.0, 1.0, 10)
    assert iv.contains_zero


def test_a_model_right_wherever_the_other_is_wrong_is_distinguishable():
    right, wrong = [1] * 20, [0] * 20
    iv = paired_difference(right, wrong)
    assert iv.p == pytest.approx(2 * 0.5 ** 20) and iv.p < 0.01
    assert (iv.low, iv.high) == (1.0, 1.0) and not iv.contains_zero
    # right on all 20, the other on 10 of them: 10 discordant problems, all one way
    half = [1] * 10 + [0] * 10
    iv = paired_difference(right, half)
    assert iv.estimate == 0.5 and iv.p == pytest.approx(2 / 1024) and iv.p < 0.01
    assert 0 < iv.low < 0.5 < iv.high <= 0.75 and not iv.contains_zero


@pytest.mark.parametrize("only_a,only_b,p", [
    (1, 9, 2 * (1 + 10) / 1024),          # two-sided: 2 * P(X <= 1), X ~ Bin(10, 1/2)
    (9, 1, 2 * (1 + 10) / 1024),
    (0, 5, 2 / 32),
    (3, 3, 1.0),
    (0, 0, 1.0),                          # no discordant problem: nothing against "no difference"
    (2, 4, 2 * (1 + 6 + 15) / 64),
])
def test_mcnemar_exact_matches_the_binomial_by_hand(only_a, only_b, p):
    both, neither = 4, 3                  # concordant problems change nothing
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    assert mcnemar_exact(a, b) == pytest.approx(min(1.0, p))


def test_bootstrap_of_two_items_by_hand():
    # Differences [1, 0]: a replicate's mean is 0, 1/2 or 1 with probability 1/4, 1/2, 1/4, so the
    # 2.5th and 97.5th percentiles are 0 and 1.
    iv = paired_difference([1, 0], [0, 0])
    assert (iv.estimate, iv.low, iv.high, iv.p) == (0.5, 0.0, 1.0, 1.0)
    # one discordant problem of 20 (ΔLong of 1/20): the replicate counts are Bin(20, 1/20), whose
    # P(0) = 0.358 > 2.5% and P(<=2) = 0.925 < 97.5% <= P(<=3) = 0.984: interval [0, 3/20]
    iv = paired_difference([1] + [0] * 19, [0] * 20)
    assert (iv.low, iv.high) == (0.0, pytest.approx(0.15)) and iv.contains_zero and iv.p == 1.0


def test_single_accuracy_interval():
    iv = bootstrap_mean([1, 1, 1, 1])
    assert (iv.estimate, iv.low, iv.high, iv.p) == (1.0, 1.0, 1.0, None)
    iv = bootstrap_mean([1] * 6 + [0] * 18)
    assert iv.estimate == 0.25 and 0 < iv.low < 0.25 < iv.high < 0.5
    assert bootstrap_mean([1]) is None and bootstrap_mean([]) is None


def test_same_seed_same_numbers_other_seed_other_draws():
    a = [1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0, 1, 0, 1, 1, 0, 0, 1, 1, 0, 1]
    b = [0, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0, 1, 1, 0, 0, 1, 0, 0]
    first = paired_difference(a, b, resamples=2000, seed=5)
    assert paired_difference(a, b, resamples=2000, seed=5) == first
    assert bootstrap_mean(a, resamples=2000, seed=5) == bootstrap_mean(a, resamples=2000, seed=5)
    # several seeds give several intervals: the seed is really what drives the draws
    assert len({paired_difference(a, b, resamples=200, seed=s) for s in range(8)}) > 1


def test_losses_get_an_interval_but_no_mcnemar():
    base, model = [2.0, 2.1, 1.9, 2.2], [1.5, 1.6, 1.4, 1.7]
    iv = paired_difference(model, base, mcnemar=False)
    assert iv.estimate == pytest.approx(-0.5) and iv.p is None
    assert iv.low == pytest.approx(-0.5) and iv.high == pytest.approx(-0.5) and not iv.contains_zero
    # fractions of samples correct (several samples per problem) are not McNemar's 0/1 pairs
    assert paired_difference([0.5, 1.0, 0.0], [0.0, 0.5, 0.0]).p is None


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="must align"):
        paired_difference([1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="0 or 1"):
        mcnemar_exact([0.5, 1], [0, 1])
    with pytest.raises(ValueError, match="finite"):
        paired_difference([1.0, math.nan], [0.0, 0.0])
    assert paired_difference([1], [0]) is None


def test_pair_by_id_keeps_only_common_ids_in_a_fixed_order():
    ids, x, y = pair_by_id({"b": 1, "a": 0, "c": 1}, {"c": 0, "a": 1, "d": 1})
    assert (ids, x, y) == (["a", "c"], [0, 1], [1, 0])


def test_interval_json_and_the_noise_rule():
    assert Interval(0.1, -0.05, 0.2, 24, 0.3).as_json() == {"low": -0.05, "high": 0.2, "p": 0.3}
    assert Interval(0.1, -0.05, 0.2, 24).contains_zero and Interval(0.1, 0.0, 0.2, 24).contains_zero
    assert not Interval(0.1, 0.01, 0.2, 24).contains_zero and not Interval(-0.1, -0.2, -0.01, 24).contains_zero
    # the exact test has the last word where the percentile interval is too narrow (few discordant)
    four_to_none = paired_difference([1] * 4 + [0] * 16, [0] * 20)
    assert not four_to_none.contains_zero and four_to_none.p == pytest.approx(0.125)
    assert four_to_none.is_noise(0.95) and not four_to_none.is_noise(0.8)
    assert not Interval(0.3, 0.1, 0.5, 24, 0.01).is_noise(0.95) and Interval(0.3, -0.1, 0.5, 24, 0.01).is_noise(0.95)
    assert not Interval(-0.5, -0.6, -0.4, 5).is_noise(0.95)          # a loss change: no p, the interval decides
