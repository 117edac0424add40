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

A dead tracking server is handled alike by every stage: :func:`probe` stops it before any work
(exit 2, outputs untouched); a server that dies later turns the logger into a no-op at its first
failed call, the stage completes its outputs, then :meth:`MlflowLogger.raise_if_failed` says so
(exit 4). ``HTTP_DEFAULTS`` bound MLflow's retries to seconds instead of ~5 minutes.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import posixpath
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

from pipelines.tracking_store import (HTTP_DEFAULTS, PROBE_TIMEOUT_S, LoggingIncomplete, TrackingError,  # noqa: F401
                                      dvc_stage_hashes, experiment_tags, git_commit, probe, redacted, settings,
                                      tracking_uri)

log = logging.getLogger("pipelines.tracking")

# The experiment's kind: MLflow 3 UIs that read it open the experiment on its runs, not the GenAI
# overview (empty for a fine-tuning project). 3.17's UI lets its GenAI / Model training switch
# decide instead (remembered per browser; the link `mixdistill ui` prints sets it): see README.
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"
NOTE_TAG = "mlflow.note.content"          # the run's description in the UI
MODEL_ID_TAG = "mixdistill.model_id"       # the logged model of a checkpoint's run (eval links to it)
VERSION_TAG = "mixdistill.registered_model"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def configure(params):
    """Point MLflow at the configured store and experiment; return the mlflow module."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import mlflow

    uri = tracking_uri(params)
    mlflow.set_tracking_uri(uri)
    experiment = settings(params).experiment
    if uri.startswith("sqlite:") and mlflow.get_experiment_by_name(experiment) is None:
        # Keep artifacts next to the SQLite store rather than in the working directory.
        root = Path(uri[len("sqlite:///"):]).parent / "mlartifacts"
        mlflow.create_experiment(experiment, artifact_location=root.resolve().as_uri(), tags={KIND_TAG: KIND})
    found = mlflow.set_experiment(experiment)
    if KIND_TAG not in found.tags:       # created elsewhere or before the tag; a user's own choice stays
        mlflow.MlflowClient().set_experiment_tag(found.experiment_id, KIND_TAG, KIND)
    return mlflow


def run_exists(params, run_id: str) -> bool:
    """Whether the configured store holds ``run_id`` (a run id file can outlive its store, or
    come with a checkpoint pulled from a DVC remote into a project with another store)."""
    try:
        configure(params).get_run(run_id)
        return True
    except _store_errors() as exc:
        if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise TrackingError(f"MLflow store at {redacted(tracking_uri(params))} failed: {_cause(exc)}") from exc


def experiment_id(params, uri: str | None = None) -> str | None:
    """The configured experiment's id in the configured store (or in the one at ``uri``), or None
    where it has none yet (nothing is created: for tools that only read)."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    from mlflow import MlflowClient

    uri = uri or tracking_uri(params)
    try:
        found = MlflowClient(tracking_uri=uri).get_experiment_by_name(settings(params).experiment)
    except _store_errors() as exc:
        raise TrackingError(f"MLflow store at {redacted(uri)} failed: {_cause(exc)}") from exc
    return None if found is None else found.experiment_id


def _store_errors() -> tuple[type[BaseException], ...]:
    """What a store that stopped answering raises (MLflow wraps most, not all, of requests')."""
    import requests
    from mlflow.exceptions import MlflowException

    return MlflowException, requests.exceptions.RequestException, OSError


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


def model_version_run(params, uri: str) -> str:
    """The run that produced the registered model version ``models:/<name>/<version>``."""
    match = re.fullmatch(r"models:/([^/]+)/(\d+)", uri)
    if not match:
        raise TrackingError(f"{uri}: expected models:/<registered model>/<version number>")
    mlflow = configure(params)
    try:
        version = mlflow.MlflowClient().get_model_version(match[1], match[2])
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"{uri}: not in the model registry at {redacted(tracking_uri(params))} "
                            f"({_cause(exc)})") from exc
    if not version.run_id:
        raise TrackingError(f"{uri}: the model version names no run to trace")
    return version.run_id


def _cause(exc: BaseException) -> str:
    """One line of an exception, capped: MLflow's connection errors nest three reprs deep."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    request, errno = re.search(r"API request to (\S+)", text), re.findall(r"\[Errno -?\d+\] [^'\")]+", text)
    if request and errno:          # the call that failed and the socket's reason, not urllib3's wrapping
        text = f"{request[1]} failed: {errno[-1].strip()}"
    return text if len(text) <= 300 else text[:297] + "..."


def _parse_note(note: str) -> dict[str, str]:
    sections = {}
    for block in note.split("\n\n"):
        match = re.match(r"\*\*(.+?)\*\*: (.*)", block, re.S)
        if match:
            sections[match[1]] = match[2]
    return sections


class NullLogger:
    """``--no-mlflow``: takes every call an :class:`MlflowLogger` takes, records nothing, returns None."""
    run_id = failure = None

    def __getattr__(self, name):
        if name.startswith("_") or not callable(getattr(MlflowLogger, name, None)):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


def _guarded(method):
    """After the first failed call (server gone, store error) the logger records the cause and
    drops every later call: the stage finishes its outputs, then reports the failure."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.failure is not None:
            return None
        try:
            return method(self, *args, **kwargs)
        except self.errors as exc:
            self.failure = _cause(exc)
            log.warning("MLflow logging stopped: %s", self.failure)
            return None
    return call


class MlflowLogger:
    """Logs into one MLflow run (see :func:`open_run`)."""

    def __init__(self):
        self.errors = _store_errors()
        self._mlflow, self.run_id, self.failure, self._datasets = None, None, None, {}

    @_guarded
    def start(self, params, name: str, tags: dict, run_id: str | None) -> None:
        self._mlflow = configure(params)
        active = self._mlflow.start_run(run_id=run_id, run_name=None if run_id else name)
        self.run_id = active.info.run_id
        self._mlflow.set_tags(tags)

    def end(self, status: str) -> None:
        if self._mlflow is None or self._mlflow.active_run() is None:
            return
        try:
            self._mlflow.end_run("FAILED" if self.failure else status)
        except self.errors as exc:
            self.failure = self.failure or _cause(exc)

    def raise_if_failed(self, outputs) -> None:
        if self.failure is not None:
            raise LoggingIncomplete(f"outputs are complete at {outputs}; logging to MLflow failed: {self.failure}")

    @_guarded
    def log_params(self, params: dict) -> None:
        self._mlflow.log_params(params)

    @_guarded
    def log_metrics(self, metrics: dict, step: int | None = None, model_id: str | None = None,
                    dataset: str | None = None) -> None:
        self._mlflow.log_metrics(metrics, step=step, model_id=model_id,
                                 dataset=self._datasets.get(dataset) if dataset else None)

    @_guarded
    def log_artifact(self, path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    @_guarded
    def log_artifacts(self, directory, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifacts(str(directory), artifact_path=artifact_path)

    @_guarded
    def log_dict(self, data: dict, artifact_file: str) -> None:
        self._mlflow.log_dict(data, artifact_file)

    @_guarded
    def log_table(self, data: dict, artifact_file: str) -> None:
        """A table the UI renders; it replaces an earlier one of that name, where MLflow's own
        ``log_table`` appends (a re-run of eval into its checkpoint's run would double every row)."""
        folder = posixpath.dirname(artifact_file) or None
        if artifact_file not in {f.path for f in self._mlflow.MlflowClient().list_artifacts(self.run_id, folder)}:
            self._mlflow.log_table(data=data, artifact_file=artifact_file)      # also tags it as a table
            return
        import pandas as pd

        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp, posixpath.basename(artifact_file))
            pd.DataFrame(data).to_json(path, orient="split", index=False, date_format="iso")   # log_table's format
            self._mlflow.log_artifact(str(path), artifact_path=folder)

    @_guarded
    def log_dataset(self, frame, *, source: str, name: str, digest: str | None, context: str) -> None:
        with warnings.catch_warnings():
            # MLflow's schema inference warns about integer columns (ours never hold nulls) and about
            # a local path that two of its source classes could claim; neither concerns a logged dataset.
            warnings.filterwarnings("ignore", message=".*(integer column|interpreted in multiple ways).*")
            dataset = self._mlflow.data.from_pandas(frame.to_pandas(), source=source, name=name, digest=digest)
            self._mlflow.log_input(dataset, context=context)
        self._datasets[name] = dataset          # metrics computed on it name it (log_metrics dataset=)

    @_guarded
    def set_tags(self, tags: dict) -> None:
        self._mlflow.set_tags(tags)

    @_guarded
    def get_tag(self, key: str) -> str | None:
        return self._mlflow.MlflowClient().get_run(self.run_id).data.tags.get(key)

    @_guarded
    def update_note(self, section: str, text: str) -> None:
        """Set one ``**section**: text`` paragraph of the run's description, keeping the others."""
        current = self.get_tag(NOTE_TAG)
        if self.failure is not None:
            return
        sections = _parse_note(current or "")
        sections[section] = " ".join(text.split())
        self._mlflow.set_tag(NOTE_TAG, "\n\n".join(f"**{k}**: {v}" for k, v in sections.items()))

    @_guarded
    def log_model(self, files_dir, *, reference_path, name: str, mode: str, weights_sha256: dict,
                  params: dict | None = None, tags: dict | None = None) -> str | None:
        """Log a checkpoint as a logged model of this run; return its model id.

        ``copy`` logs a full checkpoint with the transformers flavour (``mlflow.transformers.
        load_model`` loads it back); ``reference`` logs its small files plus ``reference.json``
        (path and sha256 of each weight file), since the weights are a DVC output already. A LoRA
        adapter is small and always logged whole."""
        files_dir = Path(files_dir)
        params = {k: str(v) for k, v in (params or {}).items()}
        tags = {k: str(v) for k, v in (tags or {}).items()}
        adapter = (files_dir / "adapter_config.json").is_file()
        if mode == "copy" and not adapter:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            # Components rather than the checkpoint path: MLflow 3.17's path route breaks on
            # transformers 5 (it reads the pipeline class off a name that is now a string).
            components = {"model": AutoModelForCausalLM.from_pretrained(files_dir),
                          "tokenizer": AutoTokenizer.from_pretrained(files_dir)}
            info = self._mlflow.transformers.log_model(
                transformers_model=components, name=name, task="text-generation", params=params,
                tags={**tags, "mixdistill.weights": "copied"}, pip_requirements=_requirements(),
                model_type="transformers")
            return info.model_id
        reference_path = Path(reference_path).resolve()
        model = self._mlflow.initialize_logged_model(
            name=name, source_run_id=self.run_id, params=params, model_type="peft-adapter" if adapter else "reference",
            tags={**tags, "mixdistill.weights": "copied adapter" if adapter else f"reference to {reference_path}"})
        with tempfile.TemporaryDirectory() as tmp:
            for path in files_dir.iterdir():
                if path.is_file() and (adapter or not path.name.endswith(WEIGHT_SUFFIXES)):
                    shutil.copy2(path, tmp)
            reference = {"path": str(reference_path), "weights_sha256": weights_sha256,
                         "fetch": f"dvc pull {reference_path}  (the checkpoint is a DVC output)"}
            Path(tmp, "reference.json").write_text(json.dumps(reference, indent=2) + "\n")
            self._mlflow.MlflowClient().log_model_artifacts(model.model_id, tmp)
        self._mlflow.finalize_logged_model(model.model_id, "READY")
        return model.model_id

    @_guarded
    def register_model(self, model_id: str, name: str, tags: dict, description: str = "") -> str | None:
        version = self._mlflow.register_model(f"models:/{model_id}", name, tags={k: str(v) for k, v in tags.items()})
        if description:
            self._mlflow.MlflowClient().update_model_version(name, version.version, description=description)
        self._mlflow.set_tags({VERSION_TAG: f"models:/{name}/{version.version}"})
        return str(version.version)

    def metrics_callback(self):
        return trainer_metrics_callback(self)


def _requirements() -> list[str]:
    """Pinned requirements of a copied checkpoint, given rather than inferred (inference loads the
    model in a subprocess: minutes for nothing the pins do not say)."""
    import torch
    import transformers

    return [f"transformers=={transformers.__version__}", f"torch=={torch.__version__.split('+')[0]}"]


@contextmanager
def open_run(params, name: str, tags: dict | None = None, run_id: str | None = None, enabled: bool = True):
    """Start (or resume, given ``run_id``) a run tagged with the git commit and yield its
    logger; with ``enabled=False`` yield a :class:`NullLogger`."""
    if not enabled:
        yield NullLogger()
        return
    # A resumed run keeps the experiment tags it was created with (an eval re-run in another DVC
    # experiment does not relabel the training run it logs into).
    all_tags = {"mixdistill.git_commit": git_commit() or "unknown", **(experiment_tags() if run_id is None else {}),
                **(tags or {})}
    logger = MlflowLogger()
    logger.start(params, name, all_tags, run_id)
    try:
        yield logger
    except BaseException:
        logger.end("FAILED")
        raise
    logger.end("FINISHED")


def trainer_metrics_callback(logger: MlflowLogger):
    """A ``TrainerCallback`` that logs the Trainer's numeric logs (loss, learning rate, grad norm,
    tokens/s, epoch; the final runtime summary) through ``logger`` at the global step.

    Used instead of transformers' ``report_to="mlflow"``, whose callback also logs every model
    config and TrainingArguments field (~200 params) into the run; the train stage logs the
    params that define the run itself (``train.*``, ``mix.*``, ``student.*``, ``data.*``)."""
    from transformers import TrainerCallback

    class MlflowMetrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            numeric = {k: float(v) for k, v in logs.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            if numeric:
                logger.log_metrics(numeric, step=state.global_step)

    return MlflowMetrics()
