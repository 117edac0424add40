"""Stage `problems`: the problem set split into train / held-out test, plus every configured eval
benchmark as a normalised frame (decontamination and evaluation both read these)."""
from __future__ import annotations

import argparse
import sys

import polars as pl

from curation.io import atomic_dir, write_json
from curation.sources import (SourceError, champ_problems, load_hf_rows, problem_key, read_table,
                              split_problems)
from evaluation.benchmarks import BenchmarkError
from pipelines.params import ParamsError, load_params, parse_benchmarks, parse_paths, parse_problems


def load_problem_set(spec: dict) -> pl.DataFrame:
    kind = spec["kind"]
    if kind == "champ":
        return champ_problems()
    cols = {"problem_id": "problem_id", "problem": "problem", "reference_answer": "answer",
            **(spec.get("columns") or {})}
    if kind == "hf":
        rows, _ = load_hf_rows(spec["id"], spec.get("split", "train"), spec.get("revision"))
        where = f"{spec['id']} ({spec.get('split', 'train')})"
    else:
        rows, where = read_table(spec["path"], spec.get("format"))
    out, seen = [], {}
    for i, r in enumerate(rows):
        row_no = r.get("__line__", i + 1)
        for need in ("problem", "reference_answer"):
            if r.get(cols[need]) is None:
                raise SourceError(f"{where}: row {row_no}: missing or null field '{cols[need]}'")
        pid = str(r.get(cols["problem_id"]) or problem_key(r[cols["problem"]]))
        if pid in seen:
            raise SourceError(f"{where}: row {row_no}: field '{cols['problem_id']}' duplicates row {seen[pid]} ('{pid}')")
        seen[pid] = row_no
        out.append({"problem_id": pid, "problem": str(r[cols["problem"]]),
                    "reference_answer": str(r[cols["reference_answer"]]), "category": None, "fws": "{}"})
    return pl.DataFrame(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
        paths, cfg, benches = parse_paths(params), parse_problems(params), parse_benchmarks(params)
        problems = load_problem_set(cfg.set)
        train, test = split_problems(problems, cfg.test_fraction, cfg.seed)
        from evaluation.benchmarks import load_benchmark

        with atomic_dir(paths.problems) as out:
            train.write_parquet(out / "train.parquet")
            test.write_parquet(out / "test.parquet")
            (out / "benchmarks").mkdir()
            sizes = {}
            for name, spec in benches.items():
                frame = load_benchmark(name, spec, test)
                frame.write_parquet(out / "benchmarks" / f"{name}.parquet")
                sizes[name] = frame.height
            write_json(out / "split.json", {"n_problems": problems.height, "train": train.height,
                                            "test": test.height, "seed": cfg.seed,
                                            "test_fraction": cfg.test_fraction, "benchmarks": sizes})
    except (ParamsError, SourceError, BenchmarkError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"problems: {train.height} train / {test.height} held-out; benchmarks {sizes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
