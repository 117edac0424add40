"""Memory-bounded curation: peak memory and traces/s of the sharded curation of a large source.

    python benchmarks/bench_curation_sharded.py --traces 1000000 [--shard-rows 50000]
    python benchmarks/bench_curation_sharded.py --traces 20000 --compare   # + in-memory baseline, + Ray

The traces are the curation benchmark's (real CHAMP responses replicated with perturbations), written
to a Parquet file a chunk at a time so that building them never holds the source in memory either.
``curation.sharded.curate_source`` then curates the file with the full default suite (token counts,
quality checks, math-verify grading, decontamination, exact + near dedup). Memory is the peak
resident set (``ru_maxrss``) of this process and, separately, of its largest child (the grading
workers). ``--compare`` also runs, on the same file, the in-memory path (``run_curation`` on the
whole frame, the baseline) and the Ray executor with 2 workers, and checks that the three give the
same kept and rejected rows. A progress line per shard goes to ``<out>.progress.jsonl``. Writes
benchmarks/results/curation_sharded_<N>.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_curation import trace_rows  # noqa: E402
from curation.schema import conform  # noqa: E402
from curation.sources import champ_problems, split_problems  # noqa: E402
from pipelines.params import load_params  # noqa: E402


def write_traces(path: Path, n: int, chunk: int = 50_000, seed: int = 0) -> None:
    """``n`` perturbed CHAMP traces into one Parquet file, ``chunk`` rows at a time."""
    import pyarrow.parquet as pq

    rows = trace_rows(n, seed)
    writer = None
    try:
        for start in range(0, n, chunk):
            batch = list(itertools.islice(rows, chunk))
            table = conform(pl.DataFrame(batch)).to_arrow()
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()


def peak_mb() -> dict:
    return {"self_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "largest_child_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--traces", type=int, default=20_000)
    ap.add_argument("--shard-rows", type=int, default=50_000)
    ap.add_argument("--student", default="models/student")
    ap.add_argument("--compare", action="store_true", help="also the in-memory baseline and Ray (2 workers)")
    ap.add_argument("--no-ray", action="store_true", help="with --compare: the in-memory baseline only")
    ap.add_argument("--no-grading", action="store_true",
                    help="curate.correctness off: grading memory is per shard, and at 1M traces grading "
                         "alone takes hours on 2 cores")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out_path = Path(args.out or f"benchmarks/results/curation_sharded_{args.traces}.json")
    progress_path = out_path.with_suffix(".progress.jsonl")
    progress_path.unlink(missing_ok=True)

    import dataclasses

    from transformers import AutoTokenizer

    from curation import sharded

    cur = dataclasses.replace(load_params("params.yaml").curate, shard_rows=args.shard_rows)
    if args.no_grading:
        cur = dataclasses.replace(cur, correctness=dataclasses.replace(cur.correctness, enabled=False))
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    work = Path(tempfile.mkdtemp(prefix="bench-sharded-"))
    bench_dir = work / "benchmarks"
    bench_dir.mkdir()
    _, heldout = split_problems(champ_problems(), 0.2, 13)
    heldout.select("problem_id", "problem", "reference_answer").write_parquet(bench_dir / "champ_test.parquet")

    t = time.perf_counter()
    source = work / "traces.parquet"
    write_traces(source, args.traces)
    t_build = time.perf_counter() - t
    build_peak = peak_mb()

    # One progress line per shard (rows so far, seconds, current and peak RSS), as the run goes.
    started = time.perf_counter()
    original = sharded.local_shards

    def watched(*a, **kw):
        done = 0
        for item in original(*a, **kw):
            done += item[0].height
            with progress_path.open("a") as fh:
                fh.write(json.dumps({"rows": done, "seconds": round(time.perf_counter() - started, 1),
                                     "rss_mb": _current_rss_mb(), **peak_mb()}) + "\n")
            yield item

    sharded.local_shards = watched
    out_dir = work / "curated"
    out_dir.mkdir()
    result = sharded.curate_source(source, cur, tokenizer, bench_dir, out_dir, work_dir=work)
    t_sharded = time.perf_counter() - started
    sharded.local_shards = original
    n = args.traces
    record = {
        "traces": n, "shard_rows": args.shard_rows, "grading": not args.no_grading, "shards": result.report["shards"],
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "source_parquet_mb": round(source.stat().st_size / 2**20, 1), "build_s": round(t_build, 1),
        "build_peak_rss_mb": build_peak["self_peak_rss_mb"],
        "sharded_s": round(t_sharded, 1), "sharded_traces_per_s": round(n / t_sharded, 1),
        **peak_mb(), "per_step_s": {k: round(v, 1) for k, v in result.timings.items()},
        "kept": result.report["kept"], "rejected_by_reason": result.report["rejected_by_reason"],
    }
    if args.compare:
        record["compare"] = compare(source, cur, tokenizer, bench_dir, work, result, n, ray=not args.no_ray)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0


def _current_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return -1.0


def differ(other: dict, sharded: dict) -> dict:
    """Reasons whose counts differ: {reason: [other run, sharded local run]} (grading_timeout can,
    on a loaded machine: its deadline is wall-clock time)."""
    a, b = other["rejected_by_reason"], sharded["rejected_by_reason"]
    return {r: [a.get(r, 0), b.get(r, 0)] for r in sorted(set(a) | set(b)) if a.get(r, 0) != b.get(r, 0)}


def compare(source: Path, cur, tokenizer, bench_dir: Path, work: Path, result, n: int, ray: bool = True) -> dict:
    """The in-memory baseline and the Ray executor on the same file; same rows kept and rejected?"""
    from curation.runner import add_token_counts, run_curation
    from curation.sharded import curate_source
    from curation.suite import build_components
    from common.prompt import build_prompt

    def ids(paths):
        return sorted(pl.concat([pl.read_parquet(p, columns=["trace_id"]) for p in paths])["trace_id"].to_list())

    out = {}
    t = time.perf_counter()
    frame = add_token_counts(pl.read_parquet(source), tokenizer, build_prompt, cutoff_len=cur.cutoff_len)
    row_checks, grader, decontaminator, dedup, flaggers = build_components(cur, bench_dir)
    try:
        memory = run_curation(frame, row_checks=row_checks, grader=grader, decontaminator=decontaminator,
                              dedup=dedup, flaggers=flaggers)
    finally:
        if grader is not None:
            grader.close()
    t_memory = time.perf_counter() - t
    out["in_memory_s"] = round(t_memory, 1)
    out["in_memory_traces_per_s"] = round(n / t_memory, 1)
    out["in_memory_same_kept"] = sorted(memory.kept["trace_id"].to_list()) == ids(result.kept)
    out["in_memory_reason_counts_that_differ"] = differ(memory.report, result.report)
    del frame, memory
    if not ray:
        return out

    os.environ.setdefault("MIXDISTILL_RAY_NUM_CPUS", "2")
    ray_dir = work / "curated_ray"
    ray_dir.mkdir()
    t = time.perf_counter()
    ray_result = curate_source(source, cur, tokenizer, bench_dir, ray_dir, executor="ray", work_dir=work)
    t_ray = time.perf_counter() - t
    out["ray_2_workers_s"] = round(t_ray, 1)
    out["ray_traces_per_s"] = round(n / t_ray, 1)
    out["ray_same_kept"] = ids(ray_result.kept) == ids(result.kept)
    out["ray_same_rejected"] = ids(ray_result.rejected) == ids(result.rejected)
    out["ray_reason_counts_that_differ"] = differ(ray_result.report, result.report)
    return out


if __name__ == "__main__":
    sys.exit(main())
