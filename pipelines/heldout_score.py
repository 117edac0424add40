"""Stage `heldout_score@MIX` / `heldout_score_base`: one model's loss on the held-out trace set.

    python -m pipelines.heldout_score --model mix_long    # models/checkpoints/mix_long
    python -m pipelines.heldout_score --model base        # the untrained student, models/student

Every held-out trace is scored teacher-forced with the trainer's own sequence and loss mask
(``training.scoring.score_examples``); ``<paths.heldout>/scores/<model>.json`` holds the mean NLL
per style and per trace (shape in ``evaluation/heldout.py``). ``heldout/<style>/nll`` goes into
the model's MLflow run: the checkpoint's training run, resumed as the eval stage does, or for
``base`` the run the eval stage logs the untrained student into. A killed run resumes from
``<paths.heldout>/.work/<model>.jsonl``.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from common import layout as names
from common.digests import model_digest
from common.io import write_json
from evaluation.heldout import nll_metrics, no_heldout_scores, read_heldout, summarise_scores
from pipelines import stage, tracking
from pipelines.params import load_params


def load_model(mdir: Path, dtype: str):
    """``(model, tokenizer)`` of a full checkpoint, or of a LoRA adapter merged into its base."""
    from training.student import load_student

    adapter_cfg = mdir / "adapter_config.json"
    if not adapter_cfg.exists():
        return load_student(str(mdir), dtype)
    if (mdir / "merged" / "config.json").exists():
        return load_student(str(mdir / "merged"), dtype)
    from peft import PeftModel

    base = json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
    model, tokenizer = load_student(base, dtype)
    return PeftModel.from_pretrained(model, str(mdir)).merge_and_unload(), tokenizer


def log_run(params, layout, name: str, summary: dict, out: Path) -> None:
    run_file = layout.run_id_file(name)
    run_id = run_file.read_text().strip() if run_file.exists() else None
    try:
        known = run_id is None or tracking.run_exists(params, run_id)
    except tracking.TrackingError as exc:      # the store stopped answering after the scores were written
        raise tracking.LoggingIncomplete(f"outputs are complete at {out}; logging to MLflow failed: {exc}") from exc
    if not known:
        print(f"heldout_score: warning: MLflow run {run_id} (from {run_file}) is not in the store "
              f"{tracking.tracking_uri(params)}; logging to a new run named '{name}'", file=sys.stderr)
        run_id = None
    elif run_id is None and name != names.BASE_MODEL:
        print(f"heldout_score: warning: {run_file} missing; logging to a new run named '{name}'", file=sys.stderr)
    with tracking.open_run(params, name=name, tags={"mixdistill.model": name}, run_id=run_id) as run:
        run.log_metrics(nll_metrics(summary))
        run.log_artifact(out, artifact_path="heldout")
        new_id = run.run_id
    if name == names.BASE_MODEL and run_id is None and new_id:
        # as the eval stage does: the base model's run id lives beside its eval outputs, so eval
        # and this stage log the untrained student into one run whichever runs first
        run_file.parent.mkdir(parents=True, exist_ok=True)
        run_file.write_text(new_id + "\n")
    run.raise_if_failed(out)


def main(argv=None) -> int:
    ap = stage.parser(__doc__)
    ap.add_argument("--model", required=True, help="a mix name, or 'base' for the untrained student")
    args = ap.parse_args(argv)

    def body():
        params = load_params(args.params)
        tracking.probe(params, enabled=not args.no_mlflow)    # before any work: outputs stay as they are
        layout, name = params.layout, args.model
        if name != names.BASE_MODEL:
            stage.pick(name, dict.fromkeys(params.train.mixes), "model")
        traces = read_heldout(layout.heldout_traces)
        out = layout.heldout_scores(name)
        if traces.height == 0:
            write_json(out, no_heldout_scores(name))
            print(f"heldout_score@{name}: {names.NO_HELDOUT}; wrote {out}")
            return
        mdir = layout.model(name)
        if not mdir.is_dir():
            raise FileNotFoundError(f"{mdir}: no checkpoint for model '{name}' (run the train stage first)")
        import torch

        from training.scoring import score_examples

        model, tokenizer = load_model(mdir, params.student.dtype)
        if torch.cuda.is_available():
            model.to("cuda")
        work = layout.heldout_work(name)
        fingerprint = f"{model_digest(mdir, cache_file=work.parent / 'digests.json')}:{params.student.dtype}"
        scores = score_examples(model, tokenizer, traces["problem"].to_list(), traces["response"].to_list(),
                                batch_size=params.heldout.batch_size, checkpoint=work, fingerprint=fingerprint)
        summary = summarise_scores(name, traces, scores)
        write_json(out, summary)
        work.unlink(missing_ok=True)
        if not args.no_mlflow:
            log_run(params, layout, name, summary, out)
        for style, s in summary["styles"].items():
            print(f"heldout_score@{name}: {style}: mean NLL {s['mean_nll']:.4f} nats/token over "
                  f"{s['n_traces']} traces ({s['n_tokens']} tokens)")
        print(f"heldout_score@{name}: wrote {out}")

    return stage.run(f"heldout_score@{args.model}", body)


if __name__ == "__main__":
    sys.exit(main())
