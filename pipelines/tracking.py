"""MLflow tracking helpers. All MLflow calls of the project live in pipelines/.

The store defaults to a local SQLite file inside the project (params ``tracking.uri``);
``MLFLOW_TRACKING_URI`` in the environment wins, so a team ``mlflow server`` is honoured.

A relative SQLite path is anchored at the project root: ``DVC_ROOT``, which DVC sets for every
stage and points at the *parent* repository when ``dvc exp run --queue`` / ``--temp`` runs the
stage in a temporary copy, so queued experiments log into the same store as the workspace
instead of one that is deleted with the copy.
"""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path


def tracking_uri(params: dict) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    uri = (params.get("tracking") or {}).get("uri", "sqlite:///mlflow.db")
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        root = Path(os.environ.get("DVC_ROOT") or ".")
        uri = "sqlite:///" + str((root / uri[len("sqlite:///"):]).resolve())
    return uri


def experiment_tags() -> dict[str, str]:
    """The DVC experiment a stage runs in (``dvc exp run`` sets these), as MLflow tags."""
    tags = {}
    for env, tag in (("DVC_EXP_NAME", "mixdistill.dvc_exp"), ("DVC_EXP_BASELINE_REV", "mixdistill.dvc_exp_baseline")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


def configure(params: dict):
    """Point MLflow at the configured store and experiment; return the mlflow module."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    experiment = (params.get("tracking") or {}).get("experiment", "mixdistill")
    if uri.startswith("sqlite:") and mlflow.get_experiment_by_name(experiment) is None:
        # Keep artifacts next to the SQLite store rather than in the working directory.
        root = Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
        mlflow.create_experiment(experiment, artifact_location=root.resolve().as_uri())
    mlflow.set_experiment(experiment)
    return mlflow


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def dvc_stage_hashes(stage_prefix: str, lock_path: str | Path = "dvc.lock") -> dict[str, str]:
    """md5 hashes of the outputs of the stages whose name starts with ``stage_prefix`` in dvc.lock
    (as of the last completed repro)."""
    import yaml

    lock_path = Path(lock_path)
    if not lock_path.exists():
        return {}
    lock = yaml.safe_load(lock_path.read_text()) or {}
    out = {}
    for stage, info in (lock.get("stages") or {}).items():
        if stage.startswith(stage_prefix):
            for o in info.get("outs") or []:
                out[f"{stage}:{o['path']}"] = o.get("md5", "")
    return out


def run_exists(params: dict, run_id: str) -> bool:
    """Whether the configured store holds ``run_id`` (a run id file can outlive its store, or
    come with a checkpoint pulled from a DVC remote into a project with another store)."""
    mlflow = configure(params)
    try:
        mlflow.get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


@contextmanager
def run(params: dict, name: str, tags: dict | None = None, run_id: str | None = None):
    """Start (or resume, given ``run_id``) a run tagged with the git commit."""
    mlflow = configure(params)
    # A resumed run keeps the experiment tags it was created with (an eval re-run in another DVC
    # experiment does not relabel the training run it logs into).
    all_tags = {"mixdistill.git_commit": git_commit() or "unknown", **(experiment_tags() if run_id is None else {}),
                **(tags or {})}
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else name) as active:
        mlflow.set_tags(all_tags)
        yield active


def trainer_metrics_callback():
    """A ``TrainerCallback`` that logs the Trainer's numeric logs (loss, learning rate, grad norm,
    tokens/s, epoch; the final runtime summary) to the active MLflow run at the global step.

    Used instead of transformers' ``report_to="mlflow"``, whose callback also logs every model
    config and TrainingArguments field (~200 params) into the run; the train stage logs the
    params that define the run itself (``train.*``, ``mix.*``, ``student.*``, ``data.*``)."""
    import mlflow
    from transformers import TrainerCallback

    class MlflowMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or mlflow.active_run() is None:
                return
            numeric = {k: float(v) for k, v in logs.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if numeric:
                mlflow.log_metrics(numeric, step=state.global_step)

    return MlflowMetrics()
