"""Stage `eval`: generate on every configured benchmark, grade (rule, then judge), score, log.

    python -m pipelines.eval --model mix_long      # models/checkpoints/mix_long
    python -m pipelines.eval --model base          # the untrained student, models/student
    python -m pipelines.eval --calibrate           # rule (+ judge) vs CHAMP human labels

The work is :func:`evaluation.run.evaluate` (resumable generation, grading, scores); this stage
logs the result into the checkpoint's own MLflow run (the base model gets a run of its own).
Under ``eval.protocol: paper`` both scorings are logged: ``eval/<bench>/accuracy`` is the
paper's, ``eval/<bench>/mixdistill_accuracy`` ours on the same samples (tag
``mixdistill.eval.protocol``; ``mixdistill.eval.protocol_deviations`` lists eval.sampling keys
that depart from the paper's decoding).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common import layout as names
from common.params import ParamsError
from common.digests import file_digest
from evaluation.run import calibrate, evaluate, load_benchmarks
from pipelines import stage, tracking
from pipelines.params import load_params

AUDIT_COLUMNS = ["kind", "benchmark", "problem_id", "sample_idx", "problem", "extracted_answer", "reference",
                 "judge_output", "judge"]


def mlflow_metrics(scores: dict) -> dict[str, float]:
    # MLflow metric names may not contain '@'. Strings (``protocol``) are tags, not metrics.
    return {f"eval/{bench}/{k.replace('@', '_at_')}": float(v) for bench, m in scores.items()
            for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# Problem first and response second: the UI's evaluation view groups by the first column and
# compares runs on the second, so checkpoints' answers to one problem sit side by side.
RESULT_COLUMNS = ["problem", "response", "extracted_answer", "reference", "verdict", "rule_verdict", "judge_verdict",
                  "judge_reason", "method", "benchmark", "problem_id", "sample_idx"]
# The name mlflow.evaluate gives its per-row table: the UI's evaluation view looks for logged tables.
RESULTS_TABLE = "eval_results_table.json"


def _verdict(value) -> str:
    return "" if value is None else ("correct" if value else "wrong")


def results_table(graded: list[dict], problems: dict) -> dict[str, list]:
    """One row per graded sample: what was asked, answered and extracted, and each grader's say."""
    rows = []
    for g in graded:
        judged = g.get("method") in ("judge", "judge_unreadable")
        rows.append({"benchmark": g["benchmark"], "problem_id": str(g["problem_id"]), "sample_idx": g["sample_idx"],
                     "problem": problems.get((g["benchmark"], g["problem_id"]), ""), "response": g.get("response", ""),
                     "extracted_answer": g.get("extracted") or "", "reference": str(g.get("reference_answer", "")),
                     "rule_verdict": _verdict(g.get("rule_correct")),
                     "judge_verdict": ("unreadable" if g["method"] == "judge_unreadable" else _verdict(g["correct"]))
                     if judged else "not asked",
                     "judge_reason": g.get("judge_output") or "", "verdict": _verdict(g.get("correct")),
                     "method": g.get("method", "")})
    return {c: [r[c] for r in rows] for c in RESULT_COLUMNS}


def _model_id(run, result: dict) -> str | None:
    """The logged model of the checkpoint the train stage registered; for the base student (or a
    checkpoint whose run predates logged models) one is logged here, by reference."""
    model_id = run.get_tag(tracking.MODEL_ID_TAG)
    if model_id or run.run_id is None:
        return model_id
    mdir = Path(result["model_dir"])
    weights = {w.name: file_digest(w) for w in sorted(mdir.glob("*.safetensors"))}
    model_id = run.log_model(mdir, reference_path=mdir, name="model", mode="reference", weights_sha256=weights,
                             tags={"mixdistill.model": result["model"]})
    if model_id:
        run.set_tags({tracking.MODEL_ID_TAG: model_id})
    return model_id


def log_run(result: dict, params, layout) -> str:
    """Log scores (per benchmark, on the logged model and the benchmark dataset), per-sample results,
    the judge audit and outputs into the model's run; returns the run id."""
    name, out = result["model"], result["out"]
    run_file = layout.run_id_file(name)
    run_id = run_file.read_text().strip() if run_file.exists() else None
    if run_id is None and name != names.BASE_MODEL:
        print(f"eval: warning: {run_file} missing; logging to a new run named '{name}'", file=sys.stderr)
    if run_id and not _run_exists(params, run_id, out):
        print(f"eval: warning: MLflow run {run_id} (from {run_file}) is not in the store "
              f"{tracking.tracking_uri(params)}; logging to a new run named '{name}'", file=sys.stderr)
        run_id = None
    tags = {"mixdistill.model": name, "mixdistill.eval.judge": result["judge_id"],
            "mixdistill.eval.protocol": result.get("protocol", "mixdistill")}
    if result.get("protocol_deviations"):
        tags["mixdistill.eval.protocol_deviations"] = "; ".join(result["protocol_deviations"])
    frames = load_benchmarks(params.eval, layout)
    graded = [json.loads(line) for line in (out / names.GRADED).read_text(encoding="utf-8").splitlines() if line]
    problems = {(b, r["problem_id"]): r["problem"] for b, f in frames.items() for r in f.iter_rows(named=True)}
    with tracking.open_run(params, name=name, tags=tags, run_id=run_id) as run:
        model_id = _model_id(run, result)
        for bench, scores in result["scores"].items():
            if bench in frames:
                run.log_dataset(frames[bench], source=str(layout.benchmark(bench).resolve()), name=bench, digest=None,
                                context="evaluation")
            run.log_metrics(mlflow_metrics({bench: scores}), model_id=model_id,
                            dataset=bench if bench in frames else None)
        run.log_table(results_table(graded, problems), RESULTS_TABLE)
        run.log_table({c: [str(a.get(c, "")) for a in result["audit"]] for c in AUDIT_COLUMNS},
                      "eval/judge_audit.json")
        run.log_artifact(out / names.GRADED, artifact_path="eval")
        run.log_artifact(out / names.SCORES, artifact_path="eval")
        run.update_note("Evaluation", "; ".join(
            f"{bench} accuracy {m['accuracy']:.3f} (rule {m['accuracy_rule']:.3f}, {m.get('n_problems', '?')} problems)"
            for bench, m in result["scores"].items() if "accuracy" in m))
        run_id = run.run_id
    if name == names.BASE_MODEL and run_id:
        run_file.write_text(run_id + "\n")
    run.raise_if_failed(out)
    return run_id


def _run_exists(params, run_id: str, out) -> bool:
    try:
        return tracking.run_exists(params, run_id)
    except tracking.TrackingError as exc:  # the store stopped answering after the outputs were written
        raise tracking.LoggingIncomplete(f"outputs are complete at {out}; logging to MLflow failed: {exc}") from exc


def log_calibration(result: dict, params, out_path=None) -> str:
    """The calibration as an MLflow run of its own: agreement metrics of the rule and of rule +
    judge against CHAMP's human labels, both confusion matrices as a table, the full result."""
    with tracking.open_run(params, name="calibrate", tags={"mixdistill.stage": "calibrate",
                                                           "mixdistill.eval.judge": str(result["judge"])}) as run:
        metrics = {"n": result["n"], "extracted_rate": result["extracted_rate"]}
        table: dict[str, list] = {"grader": [], "human": [], "graded_correct": [], "graded_wrong": []}
        for grader in ("rule", "rule_plus_judge"):
            for key in ("accuracy", "cohen_kappa", "graded_correct_rate", "human_correct_rate"):
                if result[grader].get(key) is not None:
                    metrics[f"calibration/{grader}/{key}"] = result[grader][key]
            for human, row in result[grader]["confusion"].items():
                table["grader"].append(grader)
                table["human"].append(human)
                table["graded_correct"].append(row["graded_correct"])
                table["graded_wrong"].append(row["graded_wrong"])
        run.log_metrics(metrics)
        run.log_table(table, "calibration/confusion.json")
        run.log_dict({k: v for k, v in result.items() if k != "audit"}, "calibration/result.json")
    run.raise_if_failed(out_path or "the calibration result file")
    return run.run_id


def main(argv=None) -> int:
    ap = stage.parser(__doc__)
    ap.add_argument("--model", help="a mix name, or 'base' for the untrained student")
    ap.add_argument("--calibrate", action="store_true", help="grader vs CHAMP human labels")
    ap.add_argument("--judge", help="calibration judge: an engine spec as JSON (default: eval.judge)")
    ap.add_argument("--limit", type=int, help="calibration: first N labelled responses")
    args = ap.parse_args(argv)
    if not args.calibrate and not args.model:
        ap.error("--model NAME (or --calibrate) is required")

    def body():
        params = load_params(args.params)
        tracking.probe(params, enabled=not args.no_mlflow)    # before any work: outputs stay as they are
        layout, cfg = params.layout, params.eval
        if args.calibrate:
            try:
                spec = json.loads(args.judge) if args.judge else cfg.judge
            except json.JSONDecodeError as exc:
                raise ParamsError(f"--judge: not a JSON engine spec: {exc}") from exc
            out_path = layout.eval_root / f"calibration_{'rule' if spec is None else 'judge'}.json"
            res = calibrate(cfg, spec, out_path, args.limit)
            if not args.no_mlflow:
                print(f"calibration logged to MLflow run {log_calibration(res, params, out_path)}")
            brief = {k: res[k] for k in ("judge", "n", "extracted_rate", "methods")}
            brief.update({k: {m: res[k][m] for m in ("accuracy", "cohen_kappa", "confusion")}
                          for k in ("rule", "rule_plus_judge")})
            print(json.dumps(brief, indent=2))
            print(f"calibration written to {out_path}")
            return
        result = evaluate(args.model, layout, cfg)
        if not args.no_mlflow:
            log_run(result, params, layout)
        for bench, m in result["scores"].items():
            ours = (f"; mixdistill grader {m['mixdistill_accuracy']:.3f} (rule {m['mixdistill_accuracy_rule']:.3f})"
                    if "mixdistill_accuracy" in m else "")
            label = f"{m['protocol']} " if "protocol" in m else ""
            print(f"{args.model} / {bench}: {label}accuracy {m['accuracy']:.3f} "
                  f"(rule {m['accuracy_rule']:.3f}){ours}, boxed {m['boxed_rate']:.2f}, "
                  f"{m['mean_response_tokens']:.0f} tokens, truncated {m['truncation_rate']:.2f}")
        print(f"eval: {result['generated']} samples generated, {result['reused']} reused; outputs in {result['out']}")

    return stage.run(f"eval@{args.model or 'calibrate'}", body)


if __name__ == "__main__":
    sys.exit(main())
