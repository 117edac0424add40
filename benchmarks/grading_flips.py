"""How a grader change moved the curated sets: per source, traces whose correctness verdict flipped.

    python benchmarks/grading_flips.py OLD_CURATED_DIR [NEW_CURATED_DIR] [--examples 5]

Reads ``kept.parquet`` + ``rejected.parquet`` of each source in both folders (the same traces,
curated before and after), and reports per source: verdicts flipped wrong -> right and right ->
wrong, how many traces moved from rejected (``answer_mismatch``) to kept and back, and examples
of each (extracted answer, reference, grade method before and after). Writes
benchmarks/results/grading_flips.json.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import polars as pl

OUT = Path(__file__).resolve().parent / "results" / "grading_flips.json"
COLUMNS = ["trace_id", "extracted_answer", "correct", "grade_method", "reference_answer"]


def load(folder: Path) -> pl.DataFrame:
    """One row per distinct trace (exact duplicates share a trace_id and a verdict): its verdict
    and how many of its copies were kept."""
    kept = pl.read_parquet(folder / "kept.parquet").select(COLUMNS).with_columns(kept=pl.lit(1))
    rej = pl.read_parquet(folder / "rejected.parquet").select(COLUMNS).with_columns(kept=pl.lit(0))
    return (pl.concat([kept, rej]).group_by("trace_id", maintain_order=True)
            .agg(pl.col("extracted_answer", "correct", "grade_method", "reference_answer").first(),
                 pl.col("kept").sum()))


def example(row: dict) -> dict:
    return {k: row[k] for k in ("extracted_answer", "extracted_answer_new", "reference_answer", "grade_method",
                                "grade_method_new")}


def compare(old_dir: Path, new_dir: Path, n_examples: int) -> dict:
    report = {}
    for src in sorted(p.name for p in new_dir.iterdir() if (p / "kept.parquet").exists()):
        joined = load(old_dir / src).join(load(new_dir / src), on="trace_id", suffix="_new")
        right = joined.filter(~pl.col("correct") & pl.col("correct_new"))
        wrong = joined.filter(pl.col("correct") & ~pl.col("correct_new"))
        moved = joined["kept_new"] - joined["kept"]
        report[src] = {
            "distinct_traces": joined.height,
            "verdict_wrong_to_right": right.height, "verdict_right_to_wrong": wrong.height,
            "rejected_to_kept": int(moved.clip(lower_bound=0).sum()),
            "kept_to_rejected": int((-moved).clip(lower_bound=0).sum()),
            "kept_before": int(joined["kept"].sum()), "kept_after": int(joined["kept_new"].sum()),
            "examples_wrong_to_right": [example(r) for r in right.head(n_examples).iter_rows(named=True)],
            "examples_right_to_wrong": [example(r) for r in wrong.head(n_examples).iter_rows(named=True)],
        }
    return report


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path, nargs="?", default=Path("data/curated"))
    ap.add_argument("--examples", type=int, default=5)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    report = compare(args.old, args.new, args.examples)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({s: {k: v for k, v in r.items() if not k.startswith("examples")} for s, r in report.items()},
                     indent=2))
    return report


if __name__ == "__main__":
    main()
