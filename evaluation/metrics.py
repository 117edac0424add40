"""Benchmark metrics from graded samples.

A graded sample is a dict with at least ``benchmark``, ``problem_id``, ``sample_idx``,
``response``, ``extracted``, ``rule_correct``, ``correct`` (after the judge), ``finish_reason`` and
``completion_tokens``. Greedy decoding gives one sample per problem and accuracy; sampling ``n``
per problem adds pass@k (the unbiased estimator of Chen et al., 2021, "Evaluating Large Language
Models Trained on Code") and maj@k (majority vote over the first k extracted answers).
"""
from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Callable

BOXED = re.compile(r"\\(boxed|fbox)\s*\{")


def pass_at_k(n: int, c: int, k: int) -> float:
    """P(at least one of k samples drawn without replacement from n is correct), c of n correct.

    1 - C(n-c, k) / C(n, k), computed as a product so large n does not overflow or lose precision.
    """
    if not (0 <= c <= n and 1 <= k <= n):
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def maj_at_k(answers: list[str | None], correct: list[bool], k: int,
             normalize: Callable[[str], str] = lambda s: s.strip()) -> bool:
    """Whether the most frequent answer among the first k samples is correct.

    Missing answers do not vote; ties go to the answer seen first (deterministic); no answer at
    all counts as wrong. The winning group's correctness is that of its first sample (samples with
    the same normalised answer were graded against the same reference).
    """
    if not 1 <= k <= len(answers) or len(answers) != len(correct):
        raise ValueError(f"maj_at_k: k={k} must be in [1, {len(answers)}], answers and labels equal length")
    votes: Counter = Counter()
    first: dict[str, int] = {}
    for i in range(k):
        if answers[i] is None:
            continue
        key = normalize(answers[i])
        votes[key] += 1
        first.setdefault(key, i)
    if not votes:
        return False
    best = max(votes, key=lambda a: (votes[a], -first[a]))
    return bool(correct[first[best]])


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def summarize(samples: list[dict], ks: list[int] | None = None,
              normalize: Callable[[str], str] = lambda s: s.strip()) -> dict:
    """Per-benchmark metrics. Every problem must have the same number of samples ``n``; pass@k
    and maj@k are reported for each k in ``ks`` with k <= n (k=1 always)."""
    by_bench: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        by_bench[s["benchmark"]][s["problem_id"]].append(s)
    out = {}
    for bench, problems in sorted(by_bench.items()):
        counts = {len(v) for v in problems.values()}
        if len(counts) != 1:
            raise ValueError(f"benchmark '{bench}': problems have different sample counts {sorted(counts)}")
        n = counts.pop()
        flat = [s for group in problems.values() for s in group]
        metrics = {
            "n_problems": len(problems),
            "samples_per_problem": n,
            # Mean over all samples = mean over problems of per-problem accuracy (equal n).
            "accuracy": _mean(bool(s["correct"]) for s in flat),
            "accuracy_rule": _mean(bool(s["rule_correct"]) for s in flat),
            "judge_flips": sum(bool(s["correct"]) and not s["rule_correct"] for s in flat),
            "boxed_rate": _mean(bool(BOXED.search(s["response"] or "")) for s in flat),
            "extracted_rate": _mean(s["extracted"] is not None for s in flat),
            "mean_response_tokens": _mean(s["completion_tokens"] for s in flat),
            "truncation_rate": _mean(s["finish_reason"] == "length" for s in flat),
        }
        for k in sorted({1, *(ks or [])}):
            if k > n:
                continue
            per_problem = []
            majority = []
            for group in problems.values():
                group = sorted(group, key=lambda s: s["sample_idx"])
                per_problem.append(pass_at_k(n, sum(bool(s["correct"]) for s in group), k))
                majority.append(maj_at_k([s["extracted"] for s in group], [bool(s["correct"]) for s in group],
                                         k, normalize))
            metrics[f"pass@{k}"] = _mean(per_problem)
            metrics[f"maj@{k}"] = _mean(majority)
        out[bench] = metrics
    return out
