"""`mixdistill ui`: serves the project's store and prints the link that opens the experiment's runs."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from pipelines import tracking, ui
from tests.e2e.conftest import QUIET_ENV, free_port

ROOT = Path(__file__).resolve().parents[2]


def project(tmp_path: Path, monkeypatch, with_store: bool = True) -> Path:
    """A folder with the project's params.yaml and, optionally, its store holding one run."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if with_store:
        params = {"tracking": {"uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "experiment": "mixdistill"}}
        with tracking.open_run(params, name="mix_long"):
            pass
    return tmp_path


def env(**extra) -> dict:
    out = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DVC_ROOT")}
    return out | QUIET_ENV | {"PYTHONPATH": str(ROOT)} | extra


def ui_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "ui", *args]


def test_landing_url_sets_the_model_training_switch():
    assert ui.landing_url("http://h:5000/", "7") == "http://h:5000/#/experiments/7?workflowType=machine_learning"


@pytest.mark.parametrize("with_store, says", [(False, "no MLflow store at"), (True, "experiment 'other' is not in")])
def test_nothing_to_show_is_one_error_line(tmp_path, monkeypatch, with_store, says):
    root = project(tmp_path, monkeypatch, with_store)
    if with_store:                              # a store, but not holding the configured experiment
        text = (root / "params.yaml").read_text().replace("experiment: mixdistill", "experiment: other")
        (root / "params.yaml").write_text(text)
    done = subprocess.run(ui_command("--port", str(free_port())), cwd=root, env=env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]          # after the log of the server it started, if any
    assert last.startswith("error: ui: ") and says in last and "Traceback" not in done.stderr
    if with_store:
        assert str(root / "mlflow.db") in last             # the store, not the server started on it


def test_serves_the_local_store_and_prints_the_runs_link(tmp_path, monkeypatch):
    root = project(tmp_path, monkeypatch)
    experiment_id = tracking.experiment_id({"tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}"}})
    port = free_port()
    log = (tmp_path / "ui.log").open("w")
    proc = subprocess.Popen(ui_command("--port", str(port)), cwd=root, env=env(), stdout=subprocess.PIPE,
                            stderr=log, text=True)
    try:
        line = proc.stdout.readline()
        base = f"http://127.0.0.1:{port}"
        assert line.strip() == f"MLflow UI, experiment 'mixdistill': {ui.landing_url(base, experiment_id)}"
        # the server behind the link holds this project's runs
        query = json.dumps({"experiment_ids": [experiment_id]}).encode()
        request = urllib.request.Request(f"{base}/api/2.0/mlflow/runs/search", data=query,
                                         headers={"Content-Type": "application/json"})
        runs = json.loads(urllib.request.urlopen(request, timeout=10).read())["runs"]
        assert [r["info"]["run_name"] for r in runs] == ["mix_long"]

        # a second one on the same port says so instead of starting
        busy = subprocess.run(ui_command("--port", str(port)), cwd=root, env=env(), capture_output=True,
                              text=True, timeout=120)
        assert busy.returncode == 2 and "already answers at" in busy.stderr

        # with a tracking server in MLFLOW_TRACKING_URI there is nothing to start: the link is printed
        linked = subprocess.run(ui_command(), cwd=root, env=env(MLFLOW_TRACKING_URI=base), capture_output=True,
                                text=True, timeout=120)
        assert linked.returncode == 0, linked.stderr
        assert linked.stdout.strip() == f"MLflow UI, experiment 'mixdistill': {ui.landing_url(base, experiment_id)}"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
