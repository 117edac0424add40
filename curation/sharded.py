"""Memory-bounded curation of one source: shards in, every check per shard, dedup over the whole
source from hashes and signatures, kept / rejected written as Parquet parts.

Two passes over the source, each a shard at a time:

1. read ``shard_rows`` rows (Parquet batches), count tokens, run every check but dedup, and sketch
   each distinct response (``curation.dedup.sketch_rows``). The checked rows are spilled to a
   work folder without their sketch; the sketch goes to the :class:`~curation.dedup.DuplicateResolver`
   (digest, rank, signature in memory; shingle sets to a file).
2. settle dedup, then reread each spilled shard, add its dedup reason, and write its kept and
   rejected rows.

Peak memory is then one shard plus about 0.5 KB per distinct response, whatever the source size.
The outputs are ``kept.parquet`` / ``rejected.parquet`` when the source is one shard, else folders
of the same names holding ``part-00000.parquet``, ...: ``polars.read_parquet`` (and so every later
stage) reads both the same way. Which executor checks the shards (here, or Ray workers:
``curation.ray_executor``, with dedup then decided as group-bys on the cluster:
``curation.ray_dedup``, memory following the duplicates) changes nothing in the outputs.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from common import layout as names
from common.io import ParquetError, read_parquet
from common.progress import StepProgress
from curation.dedup import SKETCH_COLUMNS, DiskShingles, DuplicateResolver, rank_rows
from curation.runner import ReportBuilder, add_reason, split_kept
from curation.shard_check import ShardChecker, check_source, iter_shards

PART = "part-{:05d}.parquet"
# Internal columns that travel with spilled rows and never reach an output.
ENTRY, RANK = "_dedup_entry", "_rank"


@dataclass
class ShardedResult:
    report: dict
    timings: dict
    kept: list[Path]              # the kept Parquet file(s), in source order
    rejected: list[Path]
    kept_lengths: list[int] = field(default_factory=list)      # sequence_tokens, for the length plot
    rejected_lengths: list[int] = field(default_factory=list)

    def read_kept(self, columns: list[str] | None = None) -> pl.DataFrame:
        return pl.concat([read_parquet(p, columns) for p in self.kept], how="vertical")


def local_shards(path: Path, shard_rows: int, checker_args: tuple, label: str, n_shards: int):
    """Check each shard in this process: yields ``(checked, extra, flags, timings)`` in source order."""
    checker = ShardChecker(*checker_args)
    try:
        for k, frame in enumerate(iter_shards(path, shard_rows)):
            desc = label if n_shards == 1 else f"{label} shard {k + 1}/{n_shards}"
            progress = StepProgress(desc, rows=frame.height, steps=0)
            try:
                yield checker(frame, progress)
            finally:
                progress.close()
    finally:
        checker.close()


def curate_source(traces_path: Path, cur, tokenizer, benchmarks_dir: Path, out_dir: Path, *,
                  judge_cache: Path | None = None, label: str = "curate", executor: str | None = None,
                  work_dir: Path | None = None) -> ShardedResult:
    """Curate the traces at ``traces_path`` into ``out_dir`` (kept / rejected Parquet, see the
    module docstring); returns the report and where the parts are. ``executor`` overrides
    ``cur.executor``. Spilled shards live in a temporary folder under ``work_dir`` (default: the
    system's), removed at the end."""
    traces_path, out_dir = Path(traces_path), Path(out_dir)
    total = check_source(traces_path)
    n_shards = max(1, math.ceil(total / cur.shard_rows))
    executor = executor or cur.executor
    args = (cur, tokenizer, benchmarks_dir, judge_cache)
    if executor == "ray":
        from curation.ray_executor import ray_shards

        shards = ray_shards(traces_path, total, cur, tokenizer, benchmarks_dir, judge_cache, label)
    else:
        shards = local_shards(traces_path, cur.shard_rows, args, label, n_shards)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="mixdistill-curate-", dir=work_dir) as tmp:
        spill = Path(tmp)
        if executor == "ray":       # dedup as group-bys on the cluster: the sketches go to its object store
            from curation.ray_dedup import RayDuplicateResolver

            shingles = None
            resolver = RayDuplicateResolver(near_threshold=cur.dedup.near_threshold, num_perm=cur.dedup.num_perm,
                                            label=label)
        else:
            shingles = DiskShingles(spill / "shingles.bin")
            resolver = DuplicateResolver(near_threshold=cur.dedup.near_threshold, num_perm=cur.dedup.num_perm,
                                         shingles=shingles)
        spilled, extras, flags, offset = [], [], [], 0
        try:
            for k, (checked, extra, flags, shard_timings) in enumerate(shards):
                for name, seconds in shard_timings.items():
                    timings[name] = timings.get(name, 0.0) + seconds
                t = time.perf_counter()
                prefer = checked.select(pl.col("reasons").list.len() == 0).to_series()
                ranks = rank_rows(prefer, offset)
                entry = resolver.add(checked.select(SKETCH_COLUMNS), ranks)
                path = spill / PART.format(k)
                checked.drop(SKETCH_COLUMNS).with_columns(
                    pl.Series(ENTRY, entry), pl.Series(RANK, ranks)).write_parquet(path)
                spilled.append(path)
                extras.append(extra)
                offset += checked.height
                timings["dedup"] = timings.get("dedup", 0.0) + time.perf_counter() - t
            if offset != total:
                raise ParquetError(f"{traces_path}: read {offset} rows, its metadata says {total}")
            t = time.perf_counter()
            resolution = resolver.resolve()
            timings["dedup"] = timings.get("dedup", 0.0) + time.perf_counter() - t
        finally:
            if shingles is not None:
                shingles.close()
        return _write_outputs(spilled, extras, flags, resolution, out_dir, timings)


def _write_outputs(spilled: list[Path], extras: list[dict], flags: list[str], resolution, out_dir: Path,
                   timings: dict) -> ShardedResult:
    """Pass 2: each spilled shard gets its dedup reasons and is split into kept / rejected parts."""
    t = time.perf_counter()
    builder = ReportBuilder(flags)
    one = len(spilled) == 1
    kept_paths, rejected_paths, kept_len, rej_len = [], [], [], []
    for k, (path, extra) in enumerate(zip(spilled, extras)):
        rows = pl.read_parquet(path)
        reasons = resolution.reasons(rows[ENTRY].to_numpy(), rows[RANK].to_numpy())
        final = add_reason(rows.drop(ENTRY, RANK), pl.Series("dedup", reasons, dtype=pl.Utf8))
        builder.add(final, extra)
        kept, rejected = split_kept(final)
        kept_len.extend(kept["sequence_tokens"].to_list())
        rej_len.extend(rejected["sequence_tokens"].to_list())
        for frame, name, paths in ((kept, names.KEPT, kept_paths), (rejected, names.REJECTED, rejected_paths)):
            target = out_dir / name if one else out_dir / name / PART.format(k)
            target.parent.mkdir(parents=True, exist_ok=True)
            frame.write_parquet(target)
            paths.append(target)
        path.unlink()
    report = builder.report()
    if report["kept"] + report["rejected"] != report["input"]:     # cannot happen; guards edits
        raise AssertionError("conservation violated")
    report["shards"] = len(spilled)
    timings["write"] = time.perf_counter() - t
    return ShardedResult(report=report, timings=timings, kept=kept_paths, rejected=rejected_paths,
                         kept_lengths=kept_len, rejected_lengths=rej_len)

