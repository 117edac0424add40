"""Where a stage's runs go and whether that store answers: the MLflow-free half of the seam
(:mod:`pipelines.tracking` re-exports all of it and is the only module that imports mlflow).

``probe`` runs before a stage does any work, so a dead tracking server stops the stage with its
outputs untouched; ``HTTP_DEFAULTS`` bound MLflow's retries once a run is under way.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from common.errors import MixdistillError

# MLflow's defaults (7 retries, backoff factor 2, 120 s timeout) keep a stage retrying a dead
# server for ~5 minutes; these give up within seconds. Users' own settings win (setdefault).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
PROBE_TIMEOUT_S = 3.0

class TrackingError(MixdistillError):
    """The tracking store cannot be used; nothing was done (exit 2)."""


class LoggingIncomplete(TrackingError):
    """The stage's outputs are complete, but logging them to MLflow failed part-way."""

    exit_code = 4


def settings(params):
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
    uri = settings(params).uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        root = Path(os.environ.get("DVC_ROOT") or ".")
        uri = "sqlite:///" + str((root / uri[len("sqlite:///"):]).resolve())
    return uri


def redacted(uri: str) -> str:
    """``uri`` without a password, for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def probe(params, enabled: bool = True) -> None:
    """Fail fast, before a stage does any work, when the tracking server does not answer.

    Reachable: ``/health`` answers 200, or 401/403 (a server behind authentication). Not: a refused
    connection, an unknown host, silence for ``PROBE_TIMEOUT_S``, or any other status (a proxy's
    502 for a server that is down, a 404 where no MLflow listens). Local stores (sqlite, file) have
    nothing to probe."""
    if not enabled:
        return
    import http.client
    import socket
    import ssl
    import urllib.error
    import urllib.request

    uri = tracking_uri(params)
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S).close()
        return
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):             # up, behind authentication
            return
        cause = f"HTTP {exc.code} from /health"     # e.g. a proxy's 502 for a dead server, or no MLflow there
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, ssl.SSLError):     # it answered TLS: MLflow's own settings decide
            return
        cause = f"no answer within {PROBE_TIMEOUT_S:g} s" if isinstance(exc.reason, socket.timeout) \
            else str(exc.reason)
    except (TimeoutError, socket.timeout):
        cause = f"no answer within {PROBE_TIMEOUT_S:g} s"
    except (OSError, http.client.HTTPException) as exc:      # reset, or not HTTP at all on that port
        cause = str(exc) or type(exc).__name__
    raise TrackingError(f"MLflow tracking server at {redacted(uri)} is unreachable ({cause}); start it, "
                        "point MLFLOW_TRACKING_URI elsewhere, or pass --no-mlflow")


def experiment_tags() -> dict[str, str]:
    """The DVC experiment a stage runs in (``dvc exp run`` sets these), as MLflow tags."""
    tags = {}
    for env, tag in (("DVC_EXP_NAME", "mixdistill.dvc_exp"), ("DVC_EXP_BASELINE_REV", "mixdistill.dvc_exp_baseline")):
        if os.environ.get(env):
            tags[tag] = os.environ[env]
    return tags


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
