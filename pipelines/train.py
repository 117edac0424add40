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

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

from pipelines import tracking
from pipelines.params import ParamsError, load_params, parse_paths
from pipelines.student import student_params
from training.config import TrainParams, TrainParamsError, parse_train
from training.data import TrainDataError, prepare_sft_data
from training.student import StudentError, load_student, read_provenance, replace_dir
from training.trainer import prepare_work_dir, train_sft

log = logging.getLogger("pipelines.train")
RUN_ID_FILE = "mlflow_run_id.txt"
METRICS_FILE = "train_metrics.json"
LINEAGE_FILE = "lineage.json"


class TrainStageError(RuntimeError):
    """The stage cannot run as configured; the message says why and what to do."""


def verify_mix(mix_dir: Path, curated_root: Path | None = None) -> dict:
    """The mix's manifest, after ``curation.mixing.verify_mix_dir`` checked the sources' contracts,
    the rows digest and (given ``curated_root``) that no curated source changed since mixing."""
    try:
        from curation import mixing
    except ImportError as exc:
        raise TrainStageError(f"cannot verify {mix_dir}: curation.mixing is not available ({exc})") from exc
    if not (mix_dir / "rows.parquet").is_file():
        raise TrainStageError(f"{mix_dir}/rows.parquet not found: run the mix stage first (dvc repro mix)")
    try:
        return mixing.verify_mix_dir(mix_dir, curated_root)
    except mixing.MixIntegrityError as exc:
        raise TrainStageError(f"refusing to train on mix '{mix_dir.name}': it failed verification: {exc}") from exc


def check_student(student_dir: Path, params: dict) -> dict:
    """Provenance of the converted student, which must be the student the params ask for."""
    provenance = read_provenance(student_dir)
    wanted = student_params(params)
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


def log_run_inputs(mlflow, cfg: TrainParams, mix: str, manifest: dict, manifest_path: Path, rows,
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
    for key in ("n_examples", "n_dropped_over_cutoff", "tokens", "assistant_tokens", "max_tokens"):
        logged[f"data.{key}"] = data_stats[key]
    mlflow.log_params({k: ("null" if v is None else v) for k, v in logged.items()})

    with warnings.catch_warnings():
        # MLflow's schema inference warns about integer columns (ours never hold nulls) and about a
        # local path that two of its source classes could claim; neither concerns a logged dataset.
        warnings.filterwarnings("ignore", message=".*(integer column|interpreted in multiple ways).*")
        dataset = mlflow.data.from_pandas(rows.to_pandas(), source=str(manifest_path.resolve()), name=mix,
                                          digest=str(manifest.get("rows_digest")))
        mlflow.log_input(dataset, context="training")

    tags = {"mixdistill.stage": "train", "mixdistill.mix": mix, "mixdistill.student": str(student.get("source"))}
    for stage_path, md5 in tracking.dvc_stage_hashes(f"mix@{mix}").items():
        stage, _, path = stage_path.partition(":")
        if stage == f"mix@{mix}":        # the prefix would also match mix@<mix>_other
            tags[_tag_key(f"mixdistill.dvc_md5.{path}")] = md5
    mlflow.set_tags(tags)


def lineage_record(mix: str, mix_dir: Path, manifest: dict, paths, student: dict, final_dir: Path,
                   run_id: str) -> dict:
    """What `mixdistill lineage` re-verifies later: the mix and sources this checkpoint saw, and
    hashes of the weights it produced."""
    from curation.schema import file_digest

    return {
        "mix": mix, "mix_dir": str(mix_dir), "rows_digest": manifest.get("rows_digest"),
        "manifest_sha256": file_digest(mix_dir / "manifest.json"), "n_rows": manifest.get("n_rows"),
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
        "n_train_items": result.n_train_items,
        "trainable_parameters": result.trainable_parameters,
    }


def run_stage(params: dict, mix: str) -> dict:
    """Train one mix; returns the metrics written to ``train_metrics.json``."""
    paths = parse_paths(params)
    mix_names = list(((params.get("mix") or {}).get("mixes") or {}))
    cfg = parse_train(params, mix_names)
    if mix not in mix_names:
        raise TrainStageError(f"--mix: unknown mix '{mix}' (mixes under mix.mixes: {sorted(mix_names)})")
    mix_dir = Path(paths.mixes) / mix
    curated = Path(paths.curated)
    manifest = verify_mix(mix_dir, curated if curated.is_dir() else None)
    student = check_student(Path(paths.student), params)

    import polars as pl

    rows = pl.read_parquet(mix_dir / "rows.parquet")
    # Weights are trained in float32 (master copy); bf16, where enabled, is autocast by the Trainer.
    model, tokenizer = load_student(paths.student, "float32")
    data = prepare_sft_data(rows.to_dicts(), tokenizer, cfg.cutoff_len, cfg.over_cutoff)

    work_dir = Path(paths.checkpoints) / ".work" / mix
    out_dir = Path(paths.checkpoints) / mix
    run_fingerprint = fingerprint(cfg, manifest, student)
    is_main = int(os.environ.get("RANK", "0")) == 0
    if not is_main:        # other processes of a multi-GPU launch only train
        train_sft(model, tokenizer, data.examples, cfg, work_dir, fingerprint=run_fingerprint)
        return {}

    # Checkpoints of another run (other params, mix or student) are discarded here; what is left
    # belongs to this run, and a resumed run keeps logging into the MLflow run the killed one began.
    prepare_work_dir(work_dir, run_fingerprint)
    run_id_path = work_dir / RUN_ID_FILE
    resume_run = run_id_path.read_text().strip() if run_id_path.is_file() else None
    if resume_run and not tracking.run_exists(params, resume_run):
        log.warning("MLflow run %s of the interrupted training is gone; starting a new run", resume_run)
        resume_run = None

    with tracking.run(params, name=mix, run_id=resume_run) as active:
        import mlflow

        run_id_path.write_text(active.info.run_id + "\n")
        log_run_inputs(mlflow, cfg, mix, manifest, mix_dir / "manifest.json", rows, student, data.stats)
        result = train_sft(model, tokenizer, data.examples, cfg, work_dir, fingerprint=run_fingerprint,
                           run_name=mix, callbacks=[tracking.trainer_metrics_callback()])
        metrics = train_metrics(result, data.stats)
        (result.final_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        (result.final_dir / RUN_ID_FILE).write_text(active.info.run_id + "\n")
        lineage = lineage_record(mix, mix_dir, manifest, paths, student, result.final_dir, active.info.run_id)
        (result.final_dir / LINEAGE_FILE).write_text(json.dumps(lineage, indent=2) + "\n")
        mlflow.log_dict(lineage, LINEAGE_FILE)
        mlflow.set_tag("mixdistill.checkpoint_dir", str(out_dir))
        mlflow.log_metrics({f"summary.{k}": float(v) for k, v in metrics.items() if v is not None})
        mlflow.log_artifacts(str(result.final_dir), artifact_path="checkpoint")
        replace_dir(result.final_dir, out_dir)
    (Path(paths.checkpoints) / f"{mix}.{METRICS_FILE}").write_text(json.dumps(metrics, indent=2) + "\n")
    shutil.rmtree(work_dir, ignore_errors=True)
    log.info("mix %s: %d steps, final loss %.4f, %.1f tokens/s -> %s", mix, result.global_step,
             result.final_loss or float("nan"), result.tokens_per_second, out_dir)
    return metrics


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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mix", required=True, help="a mix name under mix.mixes")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--single-process", action="store_true",
                        help="do not relaunch on all GPUs (set by the relaunch itself)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not args.single_process:
        command = launch_command(["--mix", args.mix, "--params", args.params])
        if command is not None:
            log.info("several GPUs: relaunching as %s", " ".join(command))
            return subprocess.call(command)
    try:
        run_stage(load_params(args.params), args.mix)
    except (ParamsError, TrainParamsError, TrainDataError, StudentError, TrainStageError) as exc:
        raise SystemExit(f"train@{args.mix}: {exc}") from exc
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
