"""`mixdistill ui`: the MLflow UI on this project's store, opened on the experiment's runs.

    mixdistill ui                 # serve the local store, print the experiment's link
    mixdistill ui --open          # ... and open it in the browser
    mixdistill ui --port 5001     # another port

With the local SQLite store (params ``tracking.uri``) it starts ``mlflow ui`` on it, waits until
the server answers, prints the link and serves until Ctrl-C. With a tracking server
(``MLFLOW_TRACKING_URI=http(s)://...``) there is nothing to start: it prints that server's link.

The link carries ``?workflowType=machine_learning``: MLflow 3.17's UI opens an experiment on the
page its GenAI / Model training switch names (GenAI in a browser that never chose), and reads the
experiment's ``mlflow.experimentKind`` tag only in builds where that switch is off; the link sets
the switch, so the experiment opens on its runs table.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path

from pipelines import stage, tracking
from pipelines.params import load_params

STARTUP_LIMIT_S = 120.0


class UIError(tracking.TrackingError):
    """The UI could not be started (exit 2)."""


def landing_url(base: str, experiment_id: str) -> str:
    """The experiment's page in the MLflow UI at ``base``, on its runs table."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}?workflowType=machine_learning"


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/health", timeout=2).close()
        return True
    except (urllib.error.URLError, OSError):
        return False


def serve(uri: str, host: str, port: int) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow ui`` on the SQLite store ``uri``; return it once it answers, with its URL."""
    db = Path(uri[len("sqlite:///"):])
    base = f"http://{host}:{port}"
    if _answers(base):
        raise UIError(f"something already answers at {base}; pick another --port")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri,
           "--default-artifact-root", (db.parent / "mlartifacts").resolve().as_uri(),
           "--host", host, "--port", str(port), "--workers", "1"]
    # its own log goes to stderr: stdout carries only the link, for scripts that read it
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=sys.stderr)
    deadline = time.monotonic() + STARTUP_LIMIT_S
    while not _answers(base):
        if proc.poll() is not None:
            raise UIError(f"mlflow ui exited with status {proc.returncode} before answering at {base}")
        if time.monotonic() > deadline:
            proc.kill()
            raise UIError(f"mlflow ui did not answer at {base} within {STARTUP_LIMIT_S:.0f} s")
        time.sleep(0.5)
    return proc, base


def main(argv=None) -> int:
    ap = stage.parser(__doc__, prog="mixdistill ui", mlflow=False)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=5000)
    ap.add_argument("--open", action="store_true", help="open the link in the default browser")
    args = ap.parse_args(argv)

    def body():
        params = load_params(args.params)
        uri = tracking.tracking_uri(params)
        name = tracking.settings(params).experiment
        if not uri.startswith(("sqlite:///", "http://", "https://")):
            raise UIError(f"tracking store {tracking.redacted(uri)}: mixdistill ui serves a sqlite:/// store "
                          "or links to an http(s) server; start `mlflow ui` on it yourself")
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
            raise UIError(f"no MLflow store at {uri[len('sqlite:///'):]} yet: run `dvc repro` first")
        proc, store = None, tracking.redacted(uri)
        if uri.startswith("sqlite:///"):
            proc, uri = serve(uri, args.host, args.port)   # then read through it: one store opening, not two
        else:
            tracking.probe(params)
        try:
            found = tracking.experiment_id(params, uri)
            if found is None:
                raise UIError(f"experiment '{name}' is not in {store} yet: run `dvc repro` first")
        except tracking.TrackingError:
            if proc is not None:
                proc.terminate()
                proc.wait(30)
            raise
        url = landing_url(uri, found)
        print(f"MLflow UI, experiment '{name}': {url}", flush=True)
        if args.open:
            webbrowser.open(url)
        if proc is None:
            return 0
        print("serving until Ctrl-C", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: proc.terminate())
        try:
            return 0 if proc.wait() in (0, -signal.SIGTERM) else 1
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait(10)
            return 0

    return stage.run("ui", body)


if __name__ == "__main__":
    sys.exit(main())
