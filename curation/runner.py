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
# Problems listed in the report for traces without a reference (the count is always whole).
NO_REFERENCE_SHOWN = 50


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


def check_rows(frame: pl.DataFrame, *, row_checks: list, grader=None, decontaminator=None,
               flaggers: list | None = None, judge=None,
               timings: dict | None = None) -> tuple[pl.DataFrame, dict, list[str]]:
    """Every check but dedup on every row: ``(frame + the checks' columns + reasons, extra report,
    flag column names)``.

    ``reasons`` is a list column (empty: passed everything so far). The extra report holds what
    only grading knows (judge calls, traces without a reference, retried pairs); ``timings``
    receives each step's seconds."""
    timings = {} if timings is None else timings
    n = frame.height
    reasons: list[list[str]] = [[] for _ in range(n)]

    def collect(series: pl.Series):
        for i, r in enumerate(series.to_list()):
            if r is not None:
                reasons[i].append(r)

    for check in row_checks:
        t = time.perf_counter()
        collect(check(frame))
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
                "problems": sorted({problems[i][:200] for i in unmatched})[:NO_REFERENCE_SHOWN]}
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

    flag_cols = {}
    for flagger in flaggers or []:
        flag_cols.update(flagger(frame))
    out = frame.with_columns(**extra, **{c: s.alias(c) for c, s in flag_cols.items()},
                             reasons=pl.Series(reasons, dtype=pl.List(pl.Utf8)))
    return out, extra_report, list(flag_cols)


def add_reason(frame: pl.DataFrame, reason: pl.Series) -> pl.DataFrame:
    """Append one more (nullable) reason per row to the ``reasons`` list column."""
    return frame.with_columns(
        pl.when(reason.is_not_null()).then(pl.col("reasons").list.concat(pl.concat_list(pl.lit(reason))))
        .otherwise(pl.col("reasons")).alias("reasons"))


def split_kept(frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    is_kept = pl.col("reasons").list.len() == 0
    return frame.filter(is_kept).drop("reasons"), frame.filter(~is_kept)


def merge_extra_reports(extras: list[dict]) -> dict:
    """Several batches' extra reports as one: counters add up, audit lists join, and the listed
    problems without a reference stay the first NO_REFERENCE_SHOWN of all (sorted), which the
    batches' own first-N lists always contain."""
    out: dict = {}
    for extra in extras:
        for key, value in extra.items():
            have = out.get(key)
            if have is None:
                out[key] = {k: (list(v) if isinstance(v, list) else v) for k, v in value.items()}
            elif key == "no_reference":
                have["traces"] += value["traces"]
                have["problems"] = sorted(set(have["problems"]) | set(value["problems"]))[:NO_REFERENCE_SHOWN]
            else:            # judge and grading_retries: counters add up, the audit lists join
                for k, v in value.items():
                    if isinstance(v, list):
                        have[k].extend(v)
                    elif isinstance(v, (int, float)) and not isinstance(v, bool):
                        have[k] += v
    return out


class ReportBuilder:
    """The curate report from one or many batches of final rows (``reasons`` settled)."""

    def __init__(self, flag_columns: list[str]):
        self.flag_columns = list(flag_columns)
        self.n = self.kept = 0
        self.by_reason: dict[str, int] = {}
        self.several = 0
        self.flags = {c: 0 for c in self.flag_columns}
        self.tokens = {k: {"input": [], "kept": []} for k in ("response_tokens", "sequence_tokens")}
        self.extra: dict = {}

    def add(self, frame: pl.DataFrame, extra_report: dict | None = None) -> None:
        reasons = frame["reasons"].to_list()
        self.n += frame.height
        kept_mask = [not rs for rs in reasons]
        self.kept += sum(kept_mask)
        for rs in reasons:
            for r in set(rs):
                self.by_reason[r] = self.by_reason.get(r, 0) + 1
        self.several += sum(1 for rs in reasons if len(rs) > 1)
        for c in self.flag_columns:
            self.flags[c] += int(frame[c].sum())
        for k, lists in self.tokens.items():
            values = frame[k].to_list()
            lists["input"].extend(values)
            lists["kept"].extend(v for v, keep in zip(values, kept_mask) if keep)
        self._merge(extra_report or {})

    def _merge(self, extra: dict) -> None:
        self.extra = merge_extra_reports([self.extra, extra])

    def report(self) -> dict:
        n, kept = self.n, self.kept
        return {
            "input": n, "kept": kept, "rejected": n - kept,
            "kept_fraction": round(kept / n, 4) if n else 0.0,
            "rejected_by_reason": dict(sorted(self.by_reason.items(), key=lambda kv: -kv[1])),
            "rejected_with_several_reasons": self.several,
            "flags": dict(self.flags),
            "response_tokens": {k: length_stats(v) for k, v in self.tokens["response_tokens"].items()},
            "sequence_tokens": {k: length_stats(v) for k, v in self.tokens["sequence_tokens"].items()},
            **self.extra,
        }


def run_curation(frame: pl.DataFrame, *, row_checks: list, grader=None, decontaminator=None,
                 dedup: Callable | None = None, flaggers: list | None = None, judge=None,
                 progress: StepProgress | None = None) -> CurationResult:
    """Run every check on every row of one in-memory frame and split kept / rejected.

    ``judge`` (a ``grading.judge.JudgeGrader`` around ``grader``) grades instead of the bare rule
    grader: rule misses with an extracted answer go to the LLM judge; its audit goes into
    ``report["judge"]``. Order matters only for dedup: it runs last and prefers, within a
    duplicate cluster, a row that passed everything else, so a good trace is never dropped in
    favour of a bad copy. ``progress`` (a :class:`common.progress.StepProgress`) counts every
    check, grading, decontamination and dedup as one step with its rows/s.
    ``curation.sharded`` runs the same steps over a source in shards."""
    # Each step already ends by recording its time: progress hooks onto those records, so the
    # steps themselves (grading above all) carry no progress code.
    timings: dict[str, float] = progress.timings() if progress is not None else {}
    if progress is not None:
        progress.add_steps(len(row_checks) + sum(x is not None for x in (grader, decontaminator, dedup)))
    out, extra_report, flag_columns = check_rows(frame, row_checks=row_checks, grader=grader, decontaminator=decontaminator,
                                   flaggers=flaggers, judge=judge, timings=timings)
    if dedup is not None:
        t = time.perf_counter()
        prefer = out.select(pl.col("reasons").list.len() == 0).to_series()
        out = add_reason(out, dedup(frame, prefer))
        timings["dedup"] = time.perf_counter() - t
    builder = ReportBuilder(flag_columns)
    builder.add(out, extra_report)
    kept, rejected = split_kept(out)
    assert kept.height + rejected.height == frame.height, "conservation violated"  # guards edits
    return CurationResult(kept=kept, rejected=rejected, report=builder.report(), timings=dict(timings))
