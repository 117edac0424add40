"""pass@k (unbiased estimator), maj@k and per-benchmark summaries, with exact values."""
from __future__ import annotations

from math import comb

import pytest

from evaluation.metrics import maj_at_k, pass_at_k, summarize


@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 1, 0.4),
    (5, 2, 2, 0.7),            # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 0, 3, 0.0),
    (4, 2, 3, 1.0),            # fewer than k wrong samples: some draw must be right
    (10, 10, 1, 1.0),
    (1, 1, 1, 1.0),
])
def test_pass_at_k_exact(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_the_combinatorial_formula_for_large_n():
    n, c, k = 200, 13, 10
    assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k), rel=1e-12)


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, 2, 0), (5, 2, 6), (3, -1, 1)])
def test_pass_at_k_rejects_bad_arguments(n, c, k):
    with pytest.raises(ValueError, match="pass_at_k"):
        pass_at_k(n, c, k)


def test_maj_at_k_votes_ties_and_missing():
    answers = ["4", "5", "5", None, " 5"]
    correct = [True, False, False, False, False]
    assert maj_at_k(answers, correct, 1) is True
    assert maj_at_k(answers, correct, 2) is True        # tie 4 vs 5: first seen wins
    assert maj_at_k(answers, correct, 3) is False
    assert maj_at_k([None, None], [False, False], 2) is False
    assert maj_at_k(["x", "X"], [True, True], 2, normalize=str.lower) is True
    with pytest.raises(ValueError, match="maj_at_k"):
        maj_at_k(["a"], [True], 2)


def sample(bench, pid, idx, correct, rule=None, extracted="1", response=r"\boxed{1}", tokens=10, finish="stop"):
    return {"benchmark": bench, "problem_id": pid, "sample_idx": idx, "correct": correct,
            "rule_correct": correct if rule is None else rule, "extracted": extracted,
            "response": response, "completion_tokens": tokens, "finish_reason": finish}


def test_summarize_greedy():
    samples = [sample("b", "p1", 0, True, tokens=10),
               sample("b", "p2", 0, True, rule=False, extracted="2", response="the answer is 2", tokens=20),
               sample("b", "p3", 0, False, extracted=None, response="...", tokens=30, finish="length"),
               sample("b", "p4", 0, False, tokens=40)]
    assert summarize(samples) == {"b": {
        "n_problems": 4, "samples_per_problem": 1, "accuracy": 0.5, "accuracy_rule": 0.25, "judge_flips": 1,
        "boxed_rate": 0.5, "extracted_rate": 0.75, "mean_response_tokens": 25.0, "truncation_rate": 0.25,
        "pass@1": 0.5, "maj@1": 0.5}}


def test_summarize_sampled_pass_and_maj():
    # p1: answers 3,3,4 (correct, correct, wrong); p2: 7,8,8 with only 7 correct.
    samples = [sample("b", "p1", 0, True, extracted="3"), sample("b", "p1", 1, True, extracted="3"),
               sample("b", "p1", 2, False, extracted="4"),
               sample("b", "p2", 2, False, extracted="8"), sample("b", "p2", 0, True, extracted="7"),
               sample("b", "p2", 1, False, extracted="8")]
    m = summarize(samples, ks=[1, 2, 3, 8])["b"]
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["pass@1"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert m["pass@2"] == pytest.approx((1.0 + (1 - 1 / 3)) / 2)      # p2: 1 - C(2,2)/C(3,2)
    assert m["pass@3"] == 1.0
    assert (m["maj@1"], m["maj@2"], m["maj@3"]) == (1.0, 1.0, 0.5)     # p2: k=2 ties 7 vs 8 -> 7; k=3 -> 8
    assert "pass@8" not in m


def test_summarize_rejects_uneven_sample_counts():
    with pytest.raises(ValueError, match=r"benchmark 'b': problems have different sample counts \[1, 2\]"):
        summarize([sample("b", "p1", 0, True), sample("b", "p1", 1, True), sample("b", "p2", 0, True)])
