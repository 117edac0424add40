"""Stage `curate@SOURCE`: run every check on one source's traces, write kept + rejected (with all
reasons) + a report, gate the kept set with its Great Expectations contract, log to MLflow.

A violated contract exits 3 (so `dvc repro` stops before mixing/training) after writing the full
output folder, contract results included, so the failure can be inspected."""
from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

from common import layout as names
from common.errors import GateFailed
from common.io import atomic_dir, read_parquet, write_json
from curation.contracts import format_failures, validate_curated
from curation.errors import SourceError
from curation.sharded import curate_source
from curation.suite import plot_lengths
from pipelines import stage, tracking
from pipelines.params import load_params


def log_run(params, source: str, result, out: Path, contract, enabled: bool) -> None:
    cur = params.curate
    with tracking.open_run(params, f"curate@{source}", tags={"mixdistill.stage": "curate",
                                                              "mixdistill.source": source}, enabled=enabled) as run:
        flat = {f"curate.{k}": v for k, v in asdict(cur).items() if not isinstance(v, dict)}
        for sub in ("correctness", "quality", "dedup", "decontam", "contract"):
            flat.update({f"curate.{sub}.{k}": v for k, v in asdict(getattr(cur, sub)).items()})
        if cur.correctness.judge is not None:     # the judge by its id: never its endpoint settings
            flat["curate.correctness.judge"] = cur.correctness.judge.get("id") or cur.correctness.judge["kind"]
        run.log_params({k: str(v)[:500] for k, v in flat.items()})
        rep = result.report
        run.log_metrics({"input": rep["input"], "kept": rep["kept"], "rejected": rep["rejected"],
                         "kept_fraction": rep["kept_fraction"],
                         **{f"rejected.{r}": c for r, c in rep["rejected_by_reason"].items()},
                         "contract_success": float(contract.success),
                         **{f"judge.{k}": v for k, v in rep.get("judge", {}).items() if k != "judge"}})
        for name in (names.CURATE_REPORT, names.LENGTHS_PLOT, names.CONTRACT, names.JUDGE_AUDIT):
            if (out / name).exists():
                run.log_artifact(out / name)
        if contract.docs_path and Path(contract.docs_path).exists():
            docs = Path(contract.docs_path)
            run.log_artifacts(docs.parent if docs.is_file() else docs, "contract_docs")
        run.update_note("Curation", f"{source}: kept {rep['kept']} of {rep['input']} traces; rejected "
                                    f"{rep['rejected_by_reason']}; contract {'passed' if contract.success else 'FAILED'}")
    run.raise_if_failed(out)


def score_kept(result, params, tokenizer, source: str) -> dict:
    """The student's NLL on the kept rows ``curate.score`` picks, written into the kept part(s);
    returns the report's summary. Scored here because curation may not import training."""
    import polars as pl
    import torch

    from common.digests import model_digest
    from training.scoring import score_frame, subset_for_scoring
    from training.student import load_student

    layout, score = params.layout, params.curate.score
    ids = result.read_kept(["trace_id"])["trace_id"].to_list()
    chosen = {ids[i] for i in subset_for_scoring(ids, score.max_rows, score.seed, salt=source)}
    picked = pl.concat([read_parquet(p).filter(pl.col("trace_id").is_in(chosen)) for p in result.kept])
    work = layout.curate_score_work(source)
    model, _ = load_student(str(layout.student), params.student.dtype)
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    fingerprint = f"{model_digest(layout.student, cache_file=work.parent / 'digests.json')}:{params.student.dtype}"
    scored, summary = score_frame(picked, model, tokenizer, max_rows=None, seed=score.seed, salt=source,
                                  batch_size=score.batch_size, max_len=params.curate.cutoff_len,
                                  checkpoint=work, fingerprint=fingerprint)
    summary.update(n_rows=len(ids), max_rows=score.max_rows)
    nll = dict(zip(scored["trace_id"].to_list(), scored["student_nll"].to_list()))
    tokens = dict(zip(scored["trace_id"].to_list(), scored["student_nll_tokens"].to_list()))
    for path in result.kept:           # each part in place: the output folder is still the temp one
        part = read_parquet(path)
        part.with_columns(
            pl.col("trace_id").replace_strict(nll, default=None, return_dtype=pl.Float64).alias("student_nll"),
            pl.col("trace_id").replace_strict(tokens, default=None, return_dtype=pl.Int64).alias("student_nll_tokens"),
        ).write_parquet(path)
    return summary


def main(argv=None) -> int:
    args = stage.parser(__doc__, fan="source").parse_args(argv)

    def body():
        params = load_params(args.params)
        tracking.probe(params, enabled=not args.no_mlflow)     # before any work: outputs stay as they are
        layout, cur = params.layout, params.curate
        stage.pick(args.source, params.sources, "source")
        traces_path = layout.traces(args.source)
        if not traces_path.exists():
            raise SourceError(f"{traces_path}: not found; run the traces stage first")
        if not (layout.student / "config.json").exists():
            raise SourceError(f"{layout.student}: no student model here (its tokenizer counts the tokens); "
                              "run the student stage first")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(layout.student)
        final = layout.curated(args.source)
        with atomic_dir(final) as out:
            result = curate_source(traces_path, cur, tokenizer, layout.problems / names.BENCHMARKS, out,
                                   judge_cache=layout.curate_judge_cache, label=f"curate@{args.source}")
            if cur.score.enabled:
                started = time.perf_counter()
                result.report["student_nll"] = score_kept(result, params, tokenizer, args.source)
                result.timings["student_nll"] = time.perf_counter() - started
            audit = result.report.get("judge", {}).pop("audit", None)
            result.report.update(source=args.source, timings_s={k: round(v, 3) for k, v in result.timings.items()})
            plot_lengths(result.kept_lengths, result.rejected_lengths, cur, out / names.LENGTHS_PLOT,
                         f"curate@{args.source}")
            contract = validate_curated(result.kept, result.report, cur, args.source, out)
            result.report["contract"] = {"success": contract.success, "failures": contract.failures,
                                         "statistics": contract.statistics}
            if audit is not None:
                write_json(out / names.JUDGE_AUDIT, audit)
            write_json(out / names.CURATE_REPORT, result.report)
        log_run(params, args.source, result, final, contract, enabled=not args.no_mlflow)
        rep = result.report
        print(f"curate@{args.source}: input {rep['input']}, kept {rep['kept']}, rejected {rep['rejected']} "
              f"{rep['rejected_by_reason']}")
        if not contract.success:
            raise GateFailed(f"contract for curated source '{args.source}' failed:\n{format_failures(contract)}\n"
                             f"(results: {final / names.CONTRACT})")

    return stage.run(f"curate@{args.source}", body)


if __name__ == "__main__":
    sys.exit(main())
