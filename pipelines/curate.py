"""Stage `curate@SOURCE`: run every check on one source's traces, write kept + rejected (with all
reasons) + a report, gate the kept set with its Great Expectations contract, log to MLflow.

A violated contract exits non-zero (so `dvc repro` stops before mixing/training) after writing
the full output folder, contract results included, so the failure can be inspected."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

from curation.io import atomic_dir, write_json
from curation.runner import add_token_counts, run_curation
from curation.sources import SourceError
from pipelines.params import ParamsError, load_params, parse_curate, parse_paths, parse_sources


def build_components(cur, benchmarks_dir: Path):
    """The check suite configured by the ``curate`` params section."""
    from curation.checks import LengthCheck, default_checks
    from curation.decontam import Decontaminator
    from curation.dedup import duplicate_reasons
    from evaluation.grading import Grader

    row_checks = default_checks(cur)
    length = next(c for c in row_checks if isinstance(c, LengthCheck))
    flaggers = [lambda f: {"over_cutoff": length.flags(f)}]
    grader = Grader(timeout_s=cur.correctness.timeout_s, workers=cur.correctness.workers) \
        if cur.correctness.enabled else None
    bench_texts = {}
    for name in cur.decontam.benchmarks:
        path = benchmarks_dir / f"{name}.parquet"
        if not path.exists():
            raise SourceError(f"{path}: benchmark '{name}' for decontamination not found; run the problems stage")
        bench_texts[name] = pl.read_parquet(path)["problem"].to_list()
    decontaminator = Decontaminator(bench_texts, ngram=cur.decontam.ngram) if bench_texts else None

    def dedup(frame, prefer):
        return duplicate_reasons(frame, prefer, near_threshold=cur.dedup.near_threshold,
                                 num_perm=cur.dedup.num_perm, shingle=cur.dedup.shingle)

    return row_checks, grader, decontaminator, dedup, flaggers


def curate_frame(traces: pl.DataFrame, cur, tokenizer, benchmarks_dir: Path):
    from training.data import build_prompt

    frame = add_token_counts(traces, tokenizer, build_prompt, cutoff_len=cur.cutoff_len)
    row_checks, grader, decontaminator, dedup, flaggers = build_components(cur, benchmarks_dir)
    try:
        return run_curation(frame, row_checks=row_checks, grader=grader, decontaminator=decontaminator,
                            dedup=dedup, flaggers=flaggers)
    finally:
        if grader is not None:
            grader.close()


def plot_lengths(result, cur, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    kept = result.kept["sequence_tokens"].to_list()
    rej = result.rejected["sequence_tokens"].to_list()
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


def log_to_mlflow(params: dict, source: str, cur, result, out: Path, contract) -> None:
    from dataclasses import asdict

    from pipelines import tracking

    with tracking.run(params, f"curate@{source}", tags={"mixdistill.stage": "curate",
                                                         "mixdistill.source": source}):
        import mlflow

        flat = {f"curate.{k}": v for k, v in asdict(cur).items() if not isinstance(v, dict)}
        for sub in ("correctness", "quality", "dedup", "decontam", "contract"):
            flat.update({f"curate.{sub}.{k}": v for k, v in asdict(getattr(cur, sub)).items()})
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        rep = result.report
        mlflow.log_metrics({"input": rep["input"], "kept": rep["kept"], "rejected": rep["rejected"],
                            "kept_fraction": rep["kept_fraction"],
                            **{f"rejected.{r}": c for r, c in rep["rejected_by_reason"].items()},
                            "contract_success": float(contract.success)})
        for name in ("report.json", "lengths.png", "contract.json"):
            if (out / name).exists():
                mlflow.log_artifact(str(out / name))
        if contract.docs_path and Path(contract.docs_path).exists():
            docs = Path(contract.docs_path)
            mlflow.log_artifacts(str(docs.parent if docs.is_file() else docs), "contract_docs")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", required=True)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--no-mlflow", action="store_true", help="skip MLflow logging")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
        paths, cur, sources = parse_paths(params), parse_curate(params), parse_sources(params)
        if args.source not in sources:
            raise ParamsError(f"--source: unknown source '{args.source}' (known: {sorted(sources)})")
        traces_path = Path(paths.traces) / f"{args.source}.parquet"
        if not traces_path.exists():
            raise SourceError(f"{traces_path}: not found; run the traces stage first")
        traces = pl.read_parquet(traces_path)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(paths.student)
        result = curate_frame(traces, cur, tokenizer, Path(paths.problems) / "benchmarks")
        result.report.update(source=args.source, timings_s={k: round(v, 3) for k, v in result.timings.items()})
        from curation.contracts import format_failures, validate_curated

        final = Path(paths.curated) / args.source
        with atomic_dir(final) as out:
            result.kept.write_parquet(out / "kept.parquet")
            result.rejected.write_parquet(out / "rejected.parquet")
            plot_lengths(result, cur, out / "lengths.png", f"curate@{args.source}")
            contract = validate_curated(result.kept, result.report, cur, args.source, out)
            result.report["contract"] = {"success": contract.success, "failures": contract.failures,
                                         "statistics": contract.statistics}
            write_json(out / "report.json", result.report)
        if not args.no_mlflow:
            log_to_mlflow(params, args.source, cur, result, final, contract)
    except (ParamsError, SourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rep = result.report
    print(f"curate@{args.source}: input {rep['input']}, kept {rep['kept']}, rejected {rep['rejected']} "
          f"{rep['rejected_by_reason']}")
    if not contract.success:
        print(f"error: contract for curated source '{args.source}' failed:\n{format_failures(contract)}\n"
              f"(results: {final / 'contract.json'})", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
