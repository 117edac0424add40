"""The shared check runner: every check sees every trace, every reason is recorded, and
kept + rejected = input, always."""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import polars as pl

from common.progress import StepProgress
from common.prompt import chat_length

# How close to the cutoff a sequence must be for its approximate length (prompt + response +
# template overhead, tokenised separately) to be recomputed exactly with the chat template:
# separate tokenisation can differ from the joint one by a token or two at the boundaries.
EXACT_LENGTH_MARGIN = 16


@dataclass
class CurationResult:
    kept: pl.DataFrame
    rejected: pl.DataFrame
    report: dict
    timings: dict = field(default_factory=dict)


def count_tokens(texts: list[str], tokenizer, batch_size: int = 4096) -> list[int]:
    out: list[int] = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], add_special_tokens=False)["input_ids"]
        out.extend(len(ids) for ids in enc)
    return out


def add_token_counts(frame: pl.DataFrame, tokenizer, build_prompt: Callable[[str], str],
                     cutoff_len: int | None = None) -> pl.DataFrame:
    """Add ``response_tokens`` and ``sequence_tokens`` (the chat-templated training example).

    Sequences are measured as template overhead + prompt + response tokens (prompts tokenised
    once per problem); those near the cutoff are re-measured exactly, so the over-cutoff decision
    is never off by a boundary merge."""
    responses = frame["response"].to_list()
    response_tokens = count_tokens(responses, tokenizer)
    problems = frame["problem"].to_list()
    unique = sorted(set(problems))
    prompt_len = dict(zip(unique, count_tokens([build_prompt(p) for p in unique], tokenizer)))
    probe_p, probe_r = "Solve x.", "x = 1."
    overhead = chat_length(tokenizer, probe_p, probe_r) - sum(count_tokens([probe_p, probe_r], tokenizer))
    seq = [overhead + prompt_len[p] + r for p, r in zip(problems, response_tokens)]
    if cutoff_len is not None:
        for i, s in enumerate(seq):
            if abs(s - cutoff_len) <= EXACT_LENGTH_MARGIN:
                seq[i] = chat_length(tokenizer, build_prompt(problems[i]), responses[i])
    return frame.with_columns(pl.Series("response_tokens", response_tokens, dtype=pl.Int64),
                              pl.Series("sequence_tokens", seq, dtype=pl.Int64))


def length_stats(values: list[int]) -> dict:
    if not values:
        return {"count": 0}
    s = sorted(values)
    q = lambda f: s[min(len(s) - 1, int(f * len(s)))]  # noqa: E731 - nearest-rank quantile
    return {"count": len(s), "mean": round(statistics.fmean(s), 1), "min": s[0], "p50": q(0.5),
            "p90": q(0.9), "p99": q(0.99), "max": s[-1]}


def run_curation(frame: pl.DataFrame, *, row_checks: list, grader=None, decontaminator=None,
                 dedup: Callable | None = None, flaggers: list | None = None, judge=None,
                 progress: StepProgress | None = None) -> CurationResult:
    """Run every check on every row and split kept / rejected.

    ``judge`` (a ``grading.judge.JudgeGrader`` around ``grader``) grades instead of the bare rule
    grader: rule misses with an extracted answer go to the LLM judge; its audit goes into
    ``report["judge"]``. Order matters only for dedup: it runs last and prefers, within a
    duplicate cluster, a row that passed everything else, so a good trace is never dropped in
    favour of a bad copy. ``progress`` (a :class:`common.progress.StepProgress`) counts every
    check, grading, decontamination and dedup as one step with its rows/s."""
    # Each step already ends by recording its time: progress hooks onto those records, so the
    # steps themselves (grading above all) carry no progress code.
    timings: dict[str, float] = progress.timings() if progress is not None else {}
    if progress is not None:
        progress.add_steps(len(row_checks) + sum(x is not None for x in (grader, decontaminator, dedup)))
    n = frame.height
    reasons: list[list[str]] = [[] for _ in range(n)]

    def collect(name: str, series: pl.Series):
        for i, r in enumerate(series.to_list()):
            if r is not None:
                reasons[i].append(r)

    for check in row_checks:
        t = time.perf_counter()
        collect(check.name, check(frame))
        timings[check.name] = time.perf_counter() - t

    extra, extra_report = {}, {}
    if grader is not None:
        t = time.perf_counter()
        stats = getattr(grader, "stats", {})     # a grader without counters (tests) reports zeros
        retried_before = (stats.get("retried", 0), stats.get("timeout_after_retry", 0))
        refs = frame["reference_answer"].to_list()
        has_ref = [r is not None and str(r).strip() != "" for r in refs]
        idx = [i for i in range(n) if has_ref[i]]
        responses = [frame["response"][i] for i in idx]
        if judge is None:
            verdicts = grader.grade_many(responses, [refs[i] for i in idx])
        else:
            problems, ids = frame["problem"].to_list(), frame["trace_id"].to_list()
            graded = judge.grade([problems[i] for i in idx], responses, [str(refs[i]) for i in idx],
                                 ids=[{"trace_id": ids[i]} for i in idx])
            verdicts = graded.verdicts
            extra_report["judge"] = {"judge": judge.judge_id, "calls": graded.judge_calls,
                                     "cache_hits": graded.cache_hits,
                                     "judged": sum(v.method.startswith("judge") for v in verdicts),
                                     "accepted": sum(v.method == "judge" and v.correct for v in verdicts),
                                     "audit": graded.audit}
        extracted: list[str | None] = [None] * n
        correct = [False] * n
        method = ["no_reference"] * n
        for i, v in zip(idx, verdicts):
            extracted[i], correct[i], method[i] = v.extracted, v.correct, v.method
        for i in range(n):
            if not has_ref[i]:
                reasons[i].append("no_reference")
            elif method[i] == "no_answer":
                reasons[i].append("no_answer")
            elif method[i] == "timeout":
                reasons[i].append("grading_timeout")
            elif not correct[i]:
                reasons[i].append("answer_mismatch")
        unmatched = [i for i in range(n) if not has_ref[i]]
        if unmatched:        # traces whose problem is not in the problem set: listed, not hidden
            problems = frame["problem"].to_list()
            extra_report["no_reference"] = {
                "traces": len(unmatched),
                "problems": sorted({problems[i][:200] for i in unmatched})[:50]}
        # distinct pairs that timed out once and were tried again with a longer deadline
        extra_report["grading_retries"] = {"retried": stats.get("retried", 0) - retried_before[0],
                                           "timed_out_again": stats.get("timeout_after_retry", 0) - retried_before[1]}
        extra.update(extracted_answer=pl.Series(extracted, dtype=pl.Utf8),
                     correct=pl.Series(correct, dtype=pl.Boolean),
                     grade_method=pl.Series(method, dtype=pl.Utf8))
        timings["correctness"] = time.perf_counter() - t

    if decontaminator is not None:
        t = time.perf_counter()
        matches = decontaminator.matches(frame)
        for i, m in enumerate(matches):
            if m is not None:
                reasons[i].append("contaminated")
        extra["contaminated_by"] = pl.Series(matches, dtype=pl.Utf8)
        timings["decontamination"] = time.perf_counter() - t

    if dedup is not None:
        t = time.perf_counter()
        prefer = pl.Series([not r for r in reasons], dtype=pl.Boolean)
        collect("dedup", dedup(frame, prefer))
        timings["dedup"] = time.perf_counter() - t

    flag_cols = {}
    for flagger in flaggers or []:
        flag_cols.update(flagger(frame))

    out = frame.with_columns(**extra, **flag_cols, reasons=pl.Series(reasons, dtype=pl.List(pl.Utf8)))
    is_kept = pl.col("reasons").list.len() == 0
    kept = out.filter(is_kept).drop("reasons")
    rejected = out.filter(~is_kept)
    assert kept.height + rejected.height == n, "conservation violated"  # cannot happen; guards edits

    by_reason: dict[str, int] = {}
    for rs in reasons:
        for r in set(rs):
            by_reason[r] = by_reason.get(r, 0) + 1
    report = {
        "input": n, "kept": kept.height, "rejected": rejected.height,
        "kept_fraction": round(kept.height / n, 4) if n else 0.0,
        "rejected_by_reason": dict(sorted(by_reason.items(), key=lambda kv: -kv[1])),
        "rejected_with_several_reasons": sum(1 for rs in reasons if len(rs) > 1),
        "flags": {c: int(s.sum()) for c, s in flag_cols.items()},
        "response_tokens": {"input": length_stats(frame["response_tokens"].to_list()),
                            "kept": length_stats(kept["response_tokens"].to_list())},
        "sequence_tokens": {"input": length_stats(frame["sequence_tokens"].to_list()),
                            "kept": length_stats(kept["sequence_tokens"].to_list())},
        **extra_report,
    }
    return CurationResult(kept=kept, rejected=rejected, report=report, timings=dict(timings))
