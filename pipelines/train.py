"""Stage ``train@MIX``: supervised fine-tuning of the student on one mix, tracked in MLflow.

    python -m pipelines.train --mix mix_long

Reads ``train:`` (with its preset), the verified mix ``data/mixes/MIX/`` and the converted student
``paths.student``; writes ``models/checkpoints/MIX/`` (final weights or LoRA adapter as
safetensors, tokenizer, ``train_metrics.json``, ``mlflow_run_id.txt`` for the eval stage) and the
DVC metrics file ``models/checkpoints/MIX.train_metrics.json``.

Resume: Trainer checkpoints go to ``models/checkpoints/.work/MIX/`` every ``train.save_steps``;
rerunning the stage after a kill resumes from the newest complete one (and logs into the same
MLflow run), provided params, mix and student are unchanged. The work dir is deleted on success.

Multi-GPU: ``accelerate launch --num_processes N -m pipelines.train --mix MIX`` (or a saved
``--config_file``). Run plainly (as the DVC stage does) on a machine with several GPUs, the stage
relaunches itself that way on all of them (``--single-process`` keeps one). With
``train.deepspeed: configs/deepspeed_zero3.json`` the model is sharded with ZeRO-3. Every
process trains; only the main one talks to MLflow and writes outputs.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from common import layout as names
from common.digests import file_digest
from common.errors import MixdistillError
from common.io import replace_dir, read_parquet
from curation.mixing import MixIntegrityError, verify_mix_dir
from pipelines import stage, tracking
from pipelines.recipe import describe
from pipelines.params import Params, load_params
from training.config import TrainParams, recipe_for
from training.data import prepare_sft_data
from training.student import load_student, read_provenance
from training.trainer import prepare_work_dir, train_sft

log = logging.getLogger("pipelines.train")


class TrainStageError(MixdistillError, RuntimeError):
    """The stage cannot run as configured; the message says why and what to do."""


def verify_mix(mix_dir: Path, curated_root: Path | None = None) -> dict:
    """The mix's manifest, after ``curation.mixing.verify_mix_dir`` checked the sources' contracts,
    the rows digest and (given ``curated_root``) that no curated source changed since mixing."""
    if not (mix_dir / names.MIX_ROWS).is_file():
        raise TrainStageError(f"{mix_dir}/rows.parquet not found: run the mix stage first (dvc repro mix)")
    try:
        return verify_mix_dir(mix_dir, curated_root)
    except MixIntegrityError as exc:
        raise TrainStageError(f"refusing to train on mix '{mix_dir.name}': it failed verification: {exc}") from exc


def check_student(student_dir: Path, params: Params) -> dict:
    """Provenance of the converted student, which must be the student the params ask for."""
    provenance = read_provenance(student_dir)
    wanted = params.student
    if provenance is None:
        raise TrainStageError(f"{student_dir} holds no converted student: run python -m pipelines.student")
    have = (provenance.get("source"), provenance.get("revision"), provenance.get("dtype"))
    want = (wanted.model, wanted.revision, wanted.dtype)
    if have != want:
        raise TrainStageError(f"{student_dir} was converted from '{have[0]}' (revision {have[1]}, {have[2]}) but "
                              f"the params ask for '{want[0]}' (revision {want[1]}, {want[2]}): rerun the student "
                              "stage (python -m pipelines.student)")
    return provenance


def fingerprint(cfg: TrainParams, manifest: dict, student: dict) -> str:
    """Identity of a training run: checkpoints are only resumed into the same run."""
    flat = {k: v for k, v in cfg.to_flat_dict().items() if k != "mixes"}
    record = {"train": flat, "rows_digest": manifest.get("rows_digest"), "student": student}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _flatten(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(f"{prefix}.{key}", sub, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return out


def _tag_key(text: str) -> str:
    return re.sub(r"[^\w./\- :]", "_", text)


def log_run_inputs(run, cfg: TrainParams, mix: str, manifest: dict, manifest_path: Path, rows,
                   student: dict, data_stats: dict) -> None:
    """Params (student, mix shares, hyperparameters), the mix as a dataset input, lineage tags."""
    logged = {"student.source": student.get("source"), "student.revision": student.get("revision"),
              "student.gguf_sha256": student.get("gguf_sha256"), "mix.name": mix,
              "mix.n_rows": manifest.get("n_rows"), "mix.rows_digest": manifest.get("rows_digest")}
    _flatten("mix.shares", manifest.get("shares") or {}, logged)
    for component, achieved in (manifest.get("achieved") or {}).items():
        logged[f"mix.achieved.{component}.count"] = achieved.get("count")
    for key, value in cfg.to_flat_dict().items():
        logged[f"train.{key}"] = json.dumps(value) if isinstance(value, list) else value
    for key in ("n_examples", "n_dropped_over_cutoff", "n_truncated_over_cutoff", "tokens", "assistant_tokens",
                "max_tokens"):
        logged[f"data.{key}"] = data_stats[key]
    run.log_params({k: ("null" if v is None else v) for k, v in logged.items()})
    run.log_dataset(rows, source=str(manifest_path.resolve()), name=mix, digest=str(manifest.get("rows_digest")),
                    context="training")

    tags = {"mixdistill.stage": "train", "mixdistill.mix": mix, "mixdistill.student": str(student.get("source"))}
    for stage_path, md5 in tracking.dvc_stage_hashes(f"mix@{mix}").items():
        stage, _, path = stage_path.partition(":")
        if stage == f"mix@{mix}":        # the prefix would also match mix@<mix>_other
            tags[_tag_key(f"mixdistill.dvc_md5.{path}")] = md5
    run.set_tags(tags)


def lineage_record(mix: str, mix_dir: Path, manifest: dict, paths, student: dict, final_dir: Path,
                   run_id: str) -> dict:
    """What `mixdistill lineage` re-verifies later: the mix and sources this checkpoint saw, and
    hashes of the weights it produced."""
    return {
        "mix": mix, "mix_dir": str(mix_dir), "rows_digest": manifest.get("rows_digest"),
        "manifest_sha256": file_digest(mix_dir / names.MANIFEST), "n_rows": manifest.get("n_rows"),
        "shares": manifest.get("shares"), "curated_root": str(paths.curated), "traces_root": str(paths.traces),
        "sources": {name: info.get("kept_digest") for name, info in (manifest.get("sources") or {}).items()},
        "student": student, "git_commit": tracking.git_commit(), "mlflow_run_id": run_id,
        "dvc_exp": os.environ.get("DVC_EXP_NAME"),
        "dvc_md5": tracking.dvc_stage_hashes(f"mix@{mix}"),
        "weights_sha256": {w.name: file_digest(w) for w in sorted(final_dir.glob("*.safetensors"))},
    }


def train_metrics(result, data_stats: dict) -> dict:
    return {
        "final_loss": result.final_loss,
        "mean_loss": result.mean_loss,
        "steps": result.global_step,
        "tokens_per_second": round(result.tokens_per_second, 2),
        "padding_efficiency": round(result.padding_efficiency, 4),
        "tokens_seen": result.tokens_seen,
        "runtime_s": round(result.runtime_s, 1),
        "resumed_from_step": result.resumed_from_step,
        "n_examples": data_stats["n_examples"],
        "n_dropped_over_cutoff": data_stats["n_dropped_over_cutoff"],
        "n_truncated_over_cutoff": data_stats["n_truncated_over_cutoff"],
        "n_train_items": result.n_train_items,
        "trainable_parameters": result.trainable_parameters,
    }


def run_stage(params: Params, mix: str, log_mlflow: bool = True) -> dict:
    """Train one mix; returns the metrics written to ``train_metrics.json``."""
    layout = params.layout
    if mix not in params.mix.mixes:
        raise TrainStageError(f"--mix: unknown mix '{mix}' (mixes under mix.mixes: {sorted(params.mix.mixes)})")
    tracking.probe(params, enabled=log_mlflow)     # before any work: a dead server stops nothing half-way
    cfg = recipe_for(params.train, mix)          # train: with train.arms.<mix> merged over it
    mix_dir = layout.mix(mix)
    manifest = verify_mix(mix_dir, layout.curated_root if layout.curated_root.is_dir() else None)
    student = check_student(layout.student, params)

    rows = read_parquet(mix_dir / names.MIX_ROWS)
    # Weights are trained in float32 (master copy); bf16, where enabled, is autocast by the Trainer.
    model, tokenizer = load_student(layout.student, "float32")
    data = prepare_sft_data(rows.to_dicts(), tokenizer, cfg.cutoff_len, cfg.over_cutoff)

    work_dir, out_dir = layout.train_work(mix), layout.checkpoint(mix)
    run_fingerprint = fingerprint(cfg, manifest, student)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if not is_main:        # other processes of a multi-GPU launch only train
        train_sft(model, tokenizer, data.examples, cfg, work_dir, fingerprint=run_fingerprint)
        return {}

    # Checkpoints of another run (other params, mix or student) are discarded here; what is left
    # belongs to this run, and a resumed run keeps logging into the MLflow run the killed one began.
    prepare_work_dir(work_dir, run_fingerprint)
    run_id_path = work_dir / names.RUN_ID
    resume_run = run_id_path.read_text().strip() if run_id_path.is_file() and log_mlflow else None
    if resume_run and not tracking.run_exists(params, resume_run):
        log.warning("MLflow run %s of the interrupted training is gone; starting a new run", resume_run)
        resume_run = None

    with tracking.open_run(params, name=mix, run_id=resume_run, enabled=log_mlflow) as run:
        if run.run_id:
            run_id_path.write_text(run.run_id + "\n")
        log_run_inputs(run, cfg, mix, manifest, mix_dir / names.MANIFEST, rows, student, data.stats)
        run.update_note("Mix", f"{mix}: shares {json.dumps(manifest.get('shares'))}, {manifest.get('n_rows')} rows, "
                               f"{data.stats['tokens']} tokens; {cfg.method} fine-tuning of {student.get('source')}")
        recipes = describe(params, with_data=False)      # this arm beside the others: same recipe or not
        run.log_dict({"arm": mix, **recipes}, "recipe_parity.json")
        run.set_tags({"mixdistill.arm_parity": "only the data differs" if not recipes["parity"]
                      else f"{len(recipes['parity'])} recipe difference(s) between arms"})
        callback = run.metrics_callback()
        result = train_sft(model, tokenizer, data.examples, cfg, work_dir, fingerprint=run_fingerprint,
                           run_name=mix, callbacks=[callback] if callback else [])
        metrics = train_metrics(result, data.stats)
        loss = "n/a" if metrics["final_loss"] is None else f"{metrics['final_loss']:.4f}"
        run.update_note("Training", f"final loss {loss} after {metrics['steps']} steps, "
                                    f"{metrics['tokens_per_second']} tokens/s")
        (result.final_dir / names.TRAIN_METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
        if run.run_id:
            (result.final_dir / names.RUN_ID).write_text(run.run_id + "\n")
        lineage = lineage_record(mix, mix_dir, manifest, params.paths, student, result.final_dir, run.run_id)
        (result.final_dir / names.LINEAGE).write_text(json.dumps(lineage, indent=2) + "\n")
        run.log_dict(lineage, names.LINEAGE)
        run.set_tags({"mixdistill.checkpoint_dir": str(out_dir)})
        run.log_metrics({f"summary.{k}": float(v) for k, v in metrics.items() if v is not None})
        log_checkpoint(run, params, cfg, mix, result.final_dir, out_dir, lineage, metrics)
        replace_dir(result.final_dir, out_dir)
    layout.train_metrics(mix).write_text(json.dumps(metrics, indent=2) + "\n")
    shutil.rmtree(work_dir, ignore_errors=True)
    log.info("mix %s: %d steps, final loss %.4f, %.1f tokens/s -> %s", mix, result.global_step,
             result.final_loss or float("nan"), result.tokens_per_second, out_dir)
    run.raise_if_failed(out_dir)
    return metrics


def registered_name(params: Params, mix: str) -> str:
    """One registered model per project (its MLflow experiment) and mix; a version per run."""
    return f"{params.tracking.experiment}-{mix}"


def log_checkpoint(run, params: Params, cfg: TrainParams, mix: str, files_dir: Path, out_dir: Path,
                   lineage: dict, metrics: dict) -> None:
    """The checkpoint as a logged model of the run (weights by reference or copied, as
    ``tracking.log_weights`` says; a LoRA adapter and, with ``lora.merge``, the merged model),
    its training metrics on the mix dataset, and a version of the mix's registered model whose tags
    carry the lineage digests."""
    mode = params.tracking.log_weights
    model_params = {"mix": mix, "method": cfg.method, "student": lineage["student"].get("source"),
                    "rows_digest": lineage["rows_digest"], "n_rows": lineage["n_rows"],
                    **{f"share.{k}": v for k, v in (lineage.get("shares") or {}).items()}}
    model_id = run.log_model(files_dir, reference_path=out_dir, name="checkpoint", mode=mode,
                             weights_sha256=lineage["weights_sha256"], params=model_params,
                             tags={"mixdistill.mix": mix, "mixdistill.mlflow_run_id": run.run_id})
    if model_id is None:        # --no-mlflow, or logging failed (reported once outputs are complete)
        return
    run.set_tags({tracking.MODEL_ID_TAG: model_id})
    run.log_metrics({f"train/{k}": float(metrics[k]) for k in ("final_loss", "mean_loss", "tokens_seen", "steps")
                     if metrics.get(k) is not None}, model_id=model_id, dataset=mix)
    merged = files_dir / "merged"
    if cfg.method == "lora" and merged.is_dir():
        merged_id = run.log_model(merged, reference_path=out_dir / "merged", name="merged", mode=mode,
                                  weights_sha256={w.name: file_digest(w) for w in sorted(merged.glob("*.safetensors"))},
                                  params=model_params,
                                  tags={"mixdistill.mix": mix, "mixdistill.adapter_model": model_id})
        if merged_id:
            run.set_tags({"mixdistill.merged_model_id": merged_id})
    version_tags = {"mixdistill.mlflow_run_id": run.run_id, "mixdistill.rows_digest": lineage["rows_digest"],
                    "mixdistill.manifest_sha256": lineage["manifest_sha256"],
                    "mixdistill.git_commit": lineage["git_commit"] or "unknown",
                    "mixdistill.weights": "adapter copied" if cfg.method == "lora" else mode,
                    **{_tag_key(f"mixdistill.source_digest.{k}"): v for k, v in lineage["sources"].items()},
                    **{_tag_key(f"mixdistill.weights_sha256.{k}"): v for k, v in lineage["weights_sha256"].items()}}
    note = (f"Mix {mix}: {lineage['n_rows']} rows, shares {json.dumps(lineage.get('shares'))}; "
            f"final loss {metrics['final_loss']:.4f} after {metrics['steps']} steps"
            if metrics.get("final_loss") is not None else f"Mix {mix}: {lineage['n_rows']} rows")
    version = run.register_model(model_id, registered_name(params, mix), version_tags, description=note)
    weights = "weights copied" if mode == "copy" else f"weights by reference to {out_dir}"
    run.update_note("Model", f"models:/{registered_name(params, mix)}/{version} ({weights}; "
                             f"`mixdistill lineage models:/{registered_name(params, mix)}/{version}`)")


def launch_command(argv: list[str]) -> list[str] | None:
    """The ``accelerate launch`` command that reruns this stage on every GPU, or None when there
    is at most one GPU or a launcher already started this process."""
    import torch

    launched = any(k in os.environ for k in ("LOCAL_RANK", "RANK", "WORLD_SIZE"))
    gpus = torch.cuda.device_count()
    if launched or gpus <= 1:
        return None
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(gpus),
            "-m", "pipelines.train", *argv, "--single-process"]


def main(argv: list[str] | None = None) -> int:
    ap = stage.parser(__doc__)
    ap.add_argument("--mix", required=True, help="a mix name under mix.mixes")
    ap.add_argument("--single-process", action="store_true",
                    help="do not relaunch on all GPUs (set by the relaunch itself)")
    args = ap.parse_args(argv)
    if not args.single_process:
        command = launch_command(["--mix", args.mix, "--params", args.params]
                                 + (["--no-mlflow"] if args.no_mlflow else []))
        if command is not None:
            log.info("several GPUs: relaunching as %s", " ".join(command))
            return subprocess.call(command)

    def body():
        run_stage(load_params(args.params), args.mix, log_mlflow=not args.no_mlflow)

    return stage.run(f"train@{args.mix}", body)


if __name__ == "__main__":
    raise SystemExit(main())
