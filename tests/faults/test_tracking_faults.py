"""A dead tracking server (issue 13): every stage that logs refuses to start when the server does
not answer, leaving its outputs as they were; a server killed mid-run costs the logging, not the
outputs, and the stage says so within seconds instead of retrying for minutes.

The unreachable case needs no model: the probe runs before a stage reads anything but its params,
so the outputs in place (sentinel files here) must come out byte for byte the same. The killed
case runs the tiny pipeline's train stage against a real ``mlflow server`` and kills the server
(SIGKILL) once the run is open."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import QUIET_ENV, REPO, MlflowServer, free_port, make_tiny_project, tiny_params

# The probe waits PROBE_TIMEOUT_S at most; the rest is importing the stage. Far below MLflow's
# default retry schedule (~5 minutes), which is what the bound is about.
UNREACHABLE_BUDGET_S = 30
KILLED_BUDGET_S = 60          # from the kill to the stage's exit, training the rest included


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def sentinel_project(tmp_path, monkeypatch):
    """Params of a tiny project whose every stage output already holds a file of an earlier run."""
    params = tiny_params(tmp_path, tmp_path / "student_source")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    paths = params["paths"]
    outputs = [Path(paths["curated"]) / "champ_gpt4", Path(paths["checkpoints"]) / "long",
               Path(paths["eval"]) / "long", Path(paths["eval"])]
    for directory in outputs:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "earlier_run.json").write_text('{"kept": 3}\n')
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("stage, module, argv", [
    ("curate@champ_gpt4", "pipelines.curate", ["--source", "champ_gpt4"]),
    ("train@long", "pipelines.train", ["--mix", "long", "--single-process"]),
    ("eval@long", "pipelines.eval", ["--model", "long"]),
    ("eval@calibrate", "pipelines.eval", ["--calibrate", "--limit", "2"]),
])
def test_an_unreachable_server_stops_the_stage_before_any_work(sentinel_project, monkeypatch, capsys,
                                                               stage, module, argv):
    import importlib

    port = free_port()          # nobody listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    before = tree_digest(sentinel_project)
    start = time.monotonic()
    code = importlib.import_module(module).main([*argv, "--params", "params.yaml"])
    seconds = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2, err
    assert (f"error: {stage}: MLflow tracking server at http://127.0.0.1:{port} is unreachable (" in err
            and "); start it, point MLFLOW_TRACKING_URI elsewhere, or pass --no-mlflow" in err), err
    assert "Traceback" not in err
    assert seconds < UNREACHABLE_BUDGET_S, seconds
    assert tree_digest(sentinel_project) == before        # nothing written, replaced or deleted
    assert not (sentinel_project / "must_not_exist.db").exists()


def test_the_unreachable_message_hides_a_password_in_the_uri(sentinel_project, monkeypatch, capsys):
    from pipelines import curate

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://alice:s3cret@127.0.0.1:{free_port()}")
    assert curate.main(["--source", "champ_gpt4", "--params", "params.yaml"]) == 2
    err = capsys.readouterr().err
    assert "alice:***@127.0.0.1" in err and "s3cret" not in err


# ----------------------------------------------------------------------------- killed mid-run

def _child(code: str, cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def trained_inputs(tmp_path_factory):
    """A tiny project up to its mixes (student, problems, traces, curate, mix), built with
    --no-mlflow: what train@long needs."""
    root = make_tiny_project(tmp_path_factory.mktemp("killed"))
    calls = [("pipelines.student", []), ("pipelines.problems", [])]
    calls += [(m, [flag, name, "--no-mlflow"] if m == "pipelines.curate" else [flag, name])
              for m, flag in (("pipelines.traces", "--source"), ("pipelines.curate", "--source"))
              for name in ("champ_gpt4_turbo", "champ_gpt4")]
    calls += [("pipelines.mix", ["--mix", "long"])]
    code = ("import importlib, sys\n"
            f"for module, argv in {calls!r}:\n"
            "    code = importlib.import_module(module).main([*argv, '--params', 'params.yaml'])\n"
            "    if code: sys.exit(f'{module} {argv} exited {code}')\n")
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = _child(code, root, env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return root


@pytest.mark.slow
def test_a_server_killed_mid_run_costs_the_logging_not_the_checkpoint(trained_inputs):
    root = trained_inputs
    server = MlflowServer(root / "server")
    server.root.mkdir(exist_ok=True)
    server.launch()
    try:
        server.wait_ready()
        env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": server.url}
        train = subprocess.Popen([sys.executable, "-m", "pipelines.train", "--mix", "long", "--single-process",
                                  "--params", "params.yaml"], cwd=root, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        run_id_file = root / "models" / "checkpoints" / ".work" / "long" / "mlflow_run_id.txt"
        deadline = time.monotonic() + 300
        while not run_id_file.exists() and train.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert run_id_file.exists(), "the train stage never opened its MLflow run"
        os.killpg(server.process.pid, signal.SIGKILL)         # the server dies; no goodbye
        killed = time.monotonic()
        _, err = train.communicate(timeout=KILLED_BUDGET_S + 60)
        after_kill = time.monotonic() - killed
    finally:
        server.stop()
    checkpoint = root / "models" / "checkpoints" / "long"
    assert train.returncode == 4, err[-3000:]
    assert f"error: train@long: outputs are complete at {checkpoint}; logging to MLflow failed: " in err, err[-3000:]
    assert "Traceback" not in err
    assert after_kill < KILLED_BUDGET_S, after_kill
    # The outputs are whole: weights, tokenizer, lineage, metrics, and the DVC metrics file.
    assert {"model.safetensors", "config.json", "lineage.json", "train_metrics.json"} <= \
        {p.name for p in checkpoint.iterdir()}
    assert (root / "models" / "checkpoints" / "long.train_metrics.json").is_file()
    print(f"train@long exited {after_kill:.1f} s after the server was killed")


class _HealthOnce(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args):
        pass


@pytest.mark.slow
@pytest.mark.parametrize("stage, argv, outputs", [
    ("curate@champ_gpt4", ["pipelines.curate", "--source", "champ_gpt4"], "data/curated/champ_gpt4"),
    ("eval@long", ["pipelines.eval", "--model", "long"], "data/eval/long"),
])
def test_a_server_gone_after_the_probe_costs_the_logging_not_the_outputs(trained_inputs, stage, argv, outputs):
    """The server answers the probe, then is gone: the stage's outputs are written in full, and its
    end says so (deterministic, unlike a kill timed against a stage of a second or two)."""
    root = trained_inputs
    env = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    if not (root / "models" / "checkpoints" / "long" / "config.json").exists():
        done = _child("from pipelines.train import main; import sys; sys.exit(main(['--mix', 'long', "
                      "'--single-process', '--no-mlflow', '--params', 'params.yaml']))", root, env, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    server = HTTPServer(("127.0.0.1", 0), _HealthOnce)
    probe_answered = threading.Thread(target=lambda: (server.handle_request(), server.server_close()))
    probe_answered.start()
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{server.server_port}"
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", *argv, "--params", "params.yaml"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    seconds = time.monotonic() - start
    probe_answered.join(timeout=5)
    assert done.returncode == 4, done.stderr[-3000:]
    assert f"error: {stage}: outputs are complete at {root / outputs}; logging to MLflow failed: " in done.stderr
    assert "Connection refused" in done.stderr and "Traceback" not in done.stderr
    assert seconds < KILLED_BUDGET_S, seconds
    written = {p.name for p in (root / outputs).iterdir()}
    expected = {"kept.parquet", "rejected.parquet", "report.json"} if stage.startswith("curate") \
        else {"graded.jsonl", "scores.json", "judge_audit.json", "samples.jsonl"}
    assert expected <= written, written
