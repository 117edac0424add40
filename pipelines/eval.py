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

from common import layout as names
from common.params import ParamsError
from evaluation.run import calibrate, evaluate
from pipelines import stage, tracking
from pipelines.params import load_params

AUDIT_COLUMNS = ["kind", "benchmark", "problem_id", "sample_idx", "problem", "extracted_answer", "reference",
                 "judge_output", "judge"]


def mlflow_metrics(scores: dict) -> dict[str, float]:
    # MLflow metric names may not contain '@'. Strings (``protocol``) are tags, not metrics.
    return {f"eval/{bench}/{k.replace('@', '_at_')}": float(v) for bench, m in scores.items()
            for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_run(result: dict, params, layout) -> str:
    """Log scores, audit table and outputs into the model's run; returns the run id."""
    name, out = result["model"], result["out"]
    run_file = layout.run_id_file(name)
    run_id = run_file.read_text().strip() if run_file.exists() else None
    if run_id is None and name != names.BASE_MODEL:
        print(f"eval: warning: {run_file} missing; logging to a new run named '{name}'", file=sys.stderr)
    if run_id and not tracking.run_exists(params, run_id):
        print(f"eval: warning: MLflow run {run_id} (from {run_file}) is not in the store "
              f"{tracking.tracking_uri(params)}; logging to a new run named '{name}'", file=sys.stderr)
        run_id = None
    tags = {"mixdistill.model": name, "mixdistill.eval.judge": result["judge_id"],
            "mixdistill.eval.protocol": result.get("protocol", "mixdistill")}
    if result.get("protocol_deviations"):
        tags["mixdistill.eval.protocol_deviations"] = "; ".join(result["protocol_deviations"])
    with tracking.open_run(params, name=name, tags=tags, run_id=run_id) as run:
        run.log_metrics(mlflow_metrics(result["scores"]))
        run.log_table({c: [str(a.get(c, "")) for a in result["audit"]] for c in AUDIT_COLUMNS},
                      "eval/judge_audit.json")
        run.log_artifact(out / names.GRADED, artifact_path="eval")
        run.log_artifact(out / names.SCORES, artifact_path="eval")
        run_id = run.run_id
    if name == names.BASE_MODEL:
        run_file.write_text(run_id + "\n")
    return run_id


def log_calibration(result: dict, params) -> str:
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
        layout, cfg = params.layout, params.eval
        if args.calibrate:
            try:
                spec = json.loads(args.judge) if args.judge else cfg.judge
            except json.JSONDecodeError as exc:
                raise ParamsError(f"--judge: not a JSON engine spec: {exc}") from exc
            out_path = layout.eval_root / f"calibration_{'rule' if spec is None else 'judge'}.json"
            res = calibrate(cfg, spec, out_path, args.limit)
            if not args.no_mlflow:
                print(f"calibration logged to MLflow run {log_calibration(res, params)}")
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
