"""One shard's checks, and the source read a shard at a time: what each executor of
``curation.sharded`` runs, in the stage's process or in a Ray actor."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from common.errors import first_line
from common.io import ParquetError
from common.progress import StepProgress
from common.prompt import build_prompt
from curation.dedup import sketch_rows
from curation.errors import SourceError
from curation.runner import add_token_counts, check_rows
from curation.schema import TRACE_COLUMNS, TRACE_SCHEMA
from curation.suite import build_components, build_judge


def _unreadable(path: Path, exc: Exception) -> ParquetError:
    return ParquetError(f"{path}: not a readable Parquet file ({first_line(exc)}); "
                        "rebuild it by re-running the stage that writes it")


def check_source(path: Path) -> int:
    """The source's row count, once its file is known readable and to hold every trace column."""
    import pyarrow.parquet as pq

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: not found")
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:      # pyarrow's ArrowInvalid is a ValueError
        raise _unreadable(path, exc) from exc
    missing = [c for c in TRACE_COLUMNS if c not in parquet.schema_arrow.names]
    if missing:
        raise SourceError(f"{path}: no column(s) {missing}; a trace set needs {TRACE_COLUMNS} "
                          "(the traces stage writes them)")
    # A column of the wrong type fails on every row alike, deep inside a check (the tokenizer, a
    # regex); it is named here instead. An all-null column (type Null) casts to any type.
    found = pl.from_arrow(parquet.schema_arrow.empty_table()).schema
    for column, dtype in TRACE_SCHEMA.items():
        if found[column] != dtype and found[column] != pl.Null:
            raise SourceError(f"{path}: field '{column}' holds {found[column]} values (every row); a trace "
                              f"stores it as {dtype} (the traces stage writes it so)")
    return parquet.metadata.num_rows


def iter_shards(path: Path, shard_rows: int) -> Iterator[pl.DataFrame]:
    """The source ``shard_rows`` rows at a time, in order (the last shard may be shorter)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        if parquet.metadata.num_rows == 0:     # one empty shard: the outputs still get their columns
            yield pl.from_arrow(parquet.schema_arrow.empty_table())
            return
        for batch in parquet.iter_batches(batch_size=shard_rows):
            yield pl.from_arrow(batch)
    except (OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc


def shard_spans(total: int, shard_rows: int) -> list[tuple[int, int]]:
    """``(first row, row count)`` of each shard ``iter_shards`` yields for a source of ``total``
    rows (one empty shard for an empty source)."""
    return [(start, min(shard_rows, total - start)) for start in range(0, total, shard_rows)] or [(0, 0)]


def read_shard(path: Path, start: int, rows: int) -> pl.DataFrame:
    """Rows ``start .. start + rows`` of the source, the same frame ``iter_shards`` yields for that
    shard, reading only the row groups that hold them (what a Ray worker reads on its own)."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        meta, groups, first, seen = parquet.metadata, [], None, 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if seen + n > start and seen < start + rows:
                first = seen if first is None else first
                groups.append(g)
            seen += n
        if not groups:
            return pl.from_arrow(parquet.schema_arrow.empty_table())
        return pl.from_arrow(parquet.read_row_groups(groups).slice(start - first, rows))
    except (OSError, ValueError) as exc:
        raise _unreadable(path, exc) from exc


class ShardChecker:
    """Everything but dedup for one shard, with what is costly to build (tokenizer, grading pool,
    benchmark n-gram index, judge) built once. Runs in the stage's process or in a Ray actor."""

    def __init__(self, cur, tokenizer, benchmarks_dir: Path | None, judge_cache: Path | None = None,
                 grading_workers: int | None = None, decontaminator=None):
        import dataclasses

        if grading_workers is not None:
            cur = dataclasses.replace(cur, correctness=dataclasses.replace(cur.correctness, workers=grading_workers))
        self.cur, self.tokenizer = cur, tokenizer
        # benchmarks_dir None: the decontaminator given, built once by the Ray driver
        self.row_checks, self.grader, self.decontaminator, _, self.flaggers = build_components(
            cur, benchmarks_dir, decontaminator=decontaminator)
        self.judge, self._cache = build_judge(cur, self.grader, judge_cache)

    def __call__(self, frame: pl.DataFrame, progress: StepProgress | None = None):
        """``(checked rows + reasons + sketch columns, extra report, flag columns, timings)``."""
        timings = progress.timings() if progress is not None else {}
        if progress is not None:
            progress.add_steps(1 + len(self.row_checks) + sum(x is not None for x in (self.grader, self.decontaminator)))
        t = time.perf_counter()
        counted = add_token_counts(frame, self.tokenizer, build_prompt, cutoff_len=self.cur.cutoff_len)
        timings["token_counts"] = time.perf_counter() - t
        checked, extra, flags = check_rows(counted, row_checks=self.row_checks, grader=self.grader,
                                           decontaminator=self.decontaminator, flaggers=self.flaggers,
                                           judge=self.judge, timings=timings)
        t = time.perf_counter()
        d = self.cur.dedup
        checked = pl.concat([checked, sketch_rows(frame["response"], num_perm=d.num_perm, shingle=d.shingle)],
                            how="horizontal")
        timings["dedup_sketch"] = time.perf_counter() - t
        return checked, extra, flags, dict(timings)

    def close(self) -> None:
        if self.grader is not None:
            self.grader.close()
        if self._cache is not None:
            self._cache.close()
