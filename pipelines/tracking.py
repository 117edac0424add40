"""The run-logging seam: every MLflow call of the project is in this module.

Stages log through the logger that :func:`open_run` yields: :class:`MlflowLogger` writes
to the configured store, :class:`NullLogger` (``--no-mlflow``) drops everything, so a stage reads
the same either way and no other module imports mlflow.

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
import warnings
from contextlib import contextmanager
from pathlib import Path


def _settings(params):
    """The ``tracking:`` settings of a loaded :class:`~pipelines.params.Params` (or of a raw
    params mapping, as tools and tests pass)."""
    from pipelines.params import TrackingParams

    if isinstance(params, dict):
        from common.params import build, section

        return build(TrackingParams, section(params, "tracking", required=False), "tracking")
    return getattr(params, "tracking", params)


def tracking_uri(params) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    uri = _settings(params).uri
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


def configure(params):
    """Point MLflow at the configured store and experiment; return the mlflow module."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    experiment = _settings(params).experiment
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


def run_exists(params, run_id: str) -> bool:
    """Whether the configured store holds ``run_id`` (a run id file can outlive its store, or
    come with a checkpoint pulled from a DVC remote into a project with another store)."""
    mlflow = configure(params)
    try:
        mlflow.get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def get_run(params, run_id: str) -> dict:
    """A run's name, status, params, tags (without MLflow's own) and metrics; raises on an unknown id."""
    mlflow = configure(params)
    run = mlflow.MlflowClient().get_run(run_id)
    return {"run_id": run_id, "name": run.info.run_name, "status": run.info.status,
            "experiment_id": run.info.experiment_id, "params": dict(run.data.params),
            "tags": {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")},
            "metrics": dict(run.data.metrics)}


def load_run_dict(params, run_id: str, artifact: str) -> dict:
    """A JSON artifact logged to a run (raises when it cannot be read)."""
    return configure(params).artifacts.load_dict(f"runs:/{run_id}/{artifact}")


class NullLogger:
    """``--no-mlflow``: accepts every call and records nothing."""
    run_id = None

    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict, step: int | None = None) -> None: ...
    def log_artifact(self, path, artifact_path: str | None = None) -> None: ...
    def log_artifacts(self, directory, artifact_path: str | None = None) -> None: ...
    def log_dict(self, data: dict, artifact_file: str) -> None: ...
    def log_table(self, data: dict, artifact_file: str) -> None: ...
    def log_dataset(self, frame, *, source: str, name: str, digest: str, context: str) -> None: ...
    def set_tags(self, tags: dict) -> None: ...

    def metrics_callback(self):
        return None


class MlflowLogger(NullLogger):
    """Logs into the active MLflow run."""

    def __init__(self, mlflow, run_id: str):
        self._mlflow, self.run_id = mlflow, run_id

    def log_params(self, params: dict) -> None:
        self._mlflow.log_params(params)

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        self._mlflow.log_metrics(metrics, step=step)

    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_artifacts(self, directory, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifacts(str(directory), artifact_path=artifact_path)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        self._mlflow.log_dict(data, artifact_file)

    def log_table(self, data: dict, artifact_file: str) -> None:
        self._mlflow.log_table(data=data, artifact_file=artifact_file)

    def log_dataset(self, frame, *, source: str, name: str, digest: str, context: str) -> None:
        with warnings.catch_warnings():
            # MLflow's schema inference warns about integer columns (ours never hold nulls) and about
            # a local path that two of its source classes could claim; neither concerns a logged dataset.
            warnings.filterwarnings("ignore", message=".*(integer column|interpreted in multiple ways).*")
            dataset = self._mlflow.data.from_pandas(frame.to_pandas(), source=source, name=name, digest=digest)
            self._mlflow.log_input(dataset, context=context)

    def set_tags(self, tags: dict) -> None:
        self._mlflow.set_tags(tags)

    def metrics_callback(self):
        return trainer_metrics_callback()


@contextmanager
def open_run(params, name: str, tags: dict | None = None, run_id: str | None = None, enabled: bool = True):
    """Start (or resume, given ``run_id``) a run tagged with the git commit and yield its
    logger; with ``enabled=False`` yield a :class:`NullLogger`."""
    if not enabled:
        yield NullLogger()
        return
    mlflow = configure(params)
    # A resumed run keeps the experiment tags it was created with (an eval re-run in another DVC
    # experiment does not relabel the training run it logs into).
    all_tags = {"mixdistill.git_commit": git_commit() or "unknown", **(experiment_tags() if run_id is None else {}),
                **(tags or {})}
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else name) as active:
        mlflow.set_tags(all_tags)
        yield MlflowLogger(mlflow, active.info.run_id)


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
