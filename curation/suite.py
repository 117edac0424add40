"""The curation suite as params configure it: components, one run over a source, its plot.

:func:`build_components` and :func:`build_judge` build the suite once; the ``curate@SOURCE`` stage
runs it shard by shard (:mod:`curation.sharded`) and draws :func:`plot_lengths`. :func:`curate_frame`
runs it over one in-memory frame, the baseline the benchmarks and tests compare the sharded run with.
"""
from __future__ import annotations

import time
from pathlib import Path

import polars as pl

from common.io import read_parquet
from common.progress import StepProgress
from common.prompt import build_prompt
from curation.checks import LengthCheck, default_checks
from curation.decontam import Decontaminator
from curation.dedup import duplicate_reasons
from curation.errors import SourceError
from curation.runner import CurationResult, add_token_counts, run_curation
from grading.grader import Grader
from grading.judge import JudgeGrader, VerdictCache, judge_from_spec


def build_decontaminator(cur, benchmarks_dir: Path) -> Decontaminator | None:
    """The n-gram index of every benchmark ``curate.decontam.benchmarks`` names (None for none)."""
    bench_texts = {}
    for name in cur.decontam.benchmarks:
        path = benchmarks_dir / f"{name}.parquet"
        if not path.exists():
            raise SourceError(f"{path}: benchmark '{name}' for decontamination not found; run the problems stage")
        bench_texts[name] = read_parquet(path)["problem"].to_list()
    return Decontaminator(bench_texts, ngram=cur.decontam.ngram) if bench_texts else None


def build_components(cur, benchmarks_dir: Path | None, *, decontaminator: Decontaminator | None = None):
    """The check suite configured by the ``curate`` params section. With ``benchmarks_dir`` None,
    ``decontaminator`` is the one built elsewhere (once on a Ray driver, then broadcast)."""
    row_checks = default_checks(cur)
    length = next(c for c in row_checks if isinstance(c, LengthCheck))
    flaggers = [lambda f: {"over_cutoff": length.flags(f)}]
    grader = Grader(timeout_s=cur.correctness.timeout_s, workers=cur.correctness.workers,
                    rules=cur.correctness.rules) \
        if cur.correctness.enabled else None
    if benchmarks_dir is not None:
        decontaminator = build_decontaminator(cur, benchmarks_dir)

    def dedup(frame, prefer):
        return duplicate_reasons(frame, prefer, near_threshold=cur.dedup.near_threshold,
                                 num_perm=cur.dedup.num_perm, shingle=cur.dedup.shingle)

    return row_checks, grader, decontaminator, dedup, flaggers


def build_judge(cur, grader: Grader | None, judge_cache: Path | None):
    """``(judge, verdict cache)`` for ``curate.correctness.judge``; ``(None, None)`` when no judge is
    configured or grading is off. The caller closes the cache."""
    if grader is None or cur.correctness.judge is None:
        return None, None
    engine, judge_id, max_tokens = judge_from_spec(cur.correctness.judge)
    cache = VerdictCache(judge_cache)
    judge = JudgeGrader(grader, engine, judge_id, cache, max_answer_chars=cur.correctness.max_answer_chars,
                        judge_max_tokens=max_tokens)
    return judge, cache


def curate_frame(traces: pl.DataFrame, cur, tokenizer, benchmarks_dir: Path,
                 judge_cache: Path | None = None, label: str = "curate") -> CurationResult:
    """Token counts, then every configured check; the Grader's workers are closed afterwards.
    With ``curate.correctness.judge`` set, rule misses go to that judge, its verdicts cached in
    ``judge_cache`` (SQLite; None keeps them in memory). Progress (per step, rows/s) goes to
    stderr under ``label`` (see :mod:`common.progress`)."""
    progress = StepProgress(label, rows=traces.height, steps=1)
    started = time.perf_counter()
    frame = add_token_counts(traces, tokenizer, build_prompt, cutoff_len=cur.cutoff_len)
    progress.record("token_counts", time.perf_counter() - started)
    row_checks, grader, decontaminator, dedup, flaggers = build_components(cur, benchmarks_dir)
    judge, cache = None, None
    try:
        judge, cache = build_judge(cur, grader, judge_cache)
        return run_curation(frame, row_checks=row_checks, grader=grader, decontaminator=decontaminator,
                            dedup=dedup, flaggers=flaggers, judge=judge, progress=progress)
    finally:
        progress.close()
        if grader is not None:
            grader.close()
        if cache is not None:
            cache.close()


def plot_lengths(kept: list[int], rej: list[int], cur, path: Path, title: str) -> None:
    """Stacked histogram of the chat-templated example lengths, kept vs rejected, with the cutoff."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    hi = max(kept + rej + [cur.cutoff_len]) if (kept or rej) else cur.cutoff_len
    bins = [hi * i / 40 for i in range(41)]
    ax.hist([kept, rej], bins=bins, stacked=True, label=["kept", "rejected"], color=["#3b7", "#c54"])
    ax.axvline(cur.cutoff_len, color="k", ls="--", label=f"cutoff {cur.cutoff_len}")
    ax.set_xlabel("student tokens (chat-templated example)")
    ax.set_ylabel("traces")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
