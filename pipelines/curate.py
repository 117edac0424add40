"""Stage `curate@SOURCE`: run every check on one source's traces, write kept + rejected (with all
reasons) + a report, gate the kept set with its Great Expectations contract, log to MLflow.

A violated contract exits 3 (so `dvc repro` stops before mixing/training) after writing the full
output folder, contract results included, so the failure can be inspected."""
from __future__ import annotations

import sys
from dataclasses import asdict
from pathlib import Path

from common import layout as names
from common.errors import GateFailed
from common.io import atomic_dir, read_parquet, write_json
from curation.contracts import format_failures, validate_curated
from curation.errors import SourceError
from curation.suite import curate_frame, plot_lengths
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
        result = curate_frame(read_parquet(traces_path), cur, tokenizer, layout.problems / names.BENCHMARKS,
                              judge_cache=layout.curate_judge_cache, label=f"curate@{args.source}")
        if cur.score.enabled:   # student NLL per kept trace; scored here because curation may not import training
            import time

            import torch

            from common.digests import model_digest
            from training.scoring import score_frame
            from training.student import load_student

            started, work = time.perf_counter(), layout.curate_score_work(args.source)
            model, _ = load_student(str(layout.student), params.student.dtype)
            model.to("cuda" if torch.cuda.is_available() else "cpu")
            digest = model_digest(layout.student, cache_file=work.parent / "digests.json")
            fingerprint = f"{digest}:{params.student.dtype}"
            result.kept, result.report["student_nll"] = score_frame(
                result.kept, model, tokenizer, max_rows=cur.score.max_rows, seed=cur.score.seed, salt=args.source,
                batch_size=cur.score.batch_size, max_len=cur.cutoff_len, checkpoint=work, fingerprint=fingerprint)
            result.timings["student_nll"] = time.perf_counter() - started
        audit = result.report.get("judge", {}).pop("audit", None)
        result.report.update(source=args.source, timings_s={k: round(v, 3) for k, v in result.timings.items()})
        final = layout.curated(args.source)
        with atomic_dir(final) as out:
            result.kept.write_parquet(out / names.KEPT)
            result.rejected.write_parquet(out / names.REJECTED)
            plot_lengths(result, cur, out / names.LENGTHS_PLOT, f"curate@{args.source}")
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
