"""Engine specs as records: what may be written down, what identifies a model, which library ran.

A teacher source records its engine in every trace's provenance and hashes it into its sample
store's fingerprint; these helpers decide what of a spec is safe to record (no credentials) and
what of it changes the samples (not concurrency or timeouts).
"""
from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from common.digests import model_digest
from generation.engines import EngineError

# Engine-spec keys that change how fast or where samples are made, not what they are: left out
# of the config hash so that retuning them after a crash keeps the samples already made. "ray"
# (generation.ray_engine) only spreads calls over replicas, and a teacher's sampled call is one
# seeded problem whatever runs it: moving a run onto a cluster keeps what one machine made.
EXECUTION_ONLY_KEYS = frozenset({
    "api_key_env", "max_concurrency", "timeout_s", "max_retries", "backoff_s", "max_backoff_s",
    "threads", "device", "data_parallel_size", "gpu_memory_utilization", "enable_prefix_caching",
    "latency_s", "ray",
})
# Spec keys that may hold a credential (api_key, hf_token, Authorization, ...), matched as whole
# "_"-separated words so that max_tokens or tokenizer stay; a key ending in _env names a variable.
SECRET_KEY = re.compile(r"(^|_)(api_?key|key|token|secret|password|passwd|authorization|bearer|cookie|"
                        r"credentials?)($|_)", re.I)
LIBRARY = {"transformers": ("transformers", "transformers"), "vllm": ("vllm", "vllm"),
           "openai": ("openai-compatible", "requests"), "fake": ("fake", "mixdistill")}




_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def looks_like_a_key(value) -> bool:
    """A value given where an environment variable's *name* belongs that is not a variable name,
    or that reads like a credential (long, mixed letters and digits)."""
    if not isinstance(value, str):
        return False
    if not _ENV_NAME.fullmatch(value):
        return True
    return len(value) >= 32 and any(c.isdigit() for c in value) and any(c.islower() for c in value)


def check_secrets(spec, where: str = "engine") -> None:
    """Refuse credentials written into a spec (they would end up in params, logs and metadata):
    inline ``api_key``-like keys, and ``*_env`` keys whose value is not a variable name. The
    message names the key, never the value."""
    if isinstance(spec, dict):
        for key, value in spec.items():
            path = f"{where}.{key}"
            if SECRET_KEY.search(str(key)) and not str(key).endswith("_env") and value not in (None, ""):
                raise EngineError(f"{path}: credentials never go in params (the value is not shown); put it in "
                                  "an environment variable and name that variable with api_key_env")
            if str(key).endswith("_env") and looks_like_a_key(value):
                raise EngineError(f"{path}: must name an environment variable (e.g. OPENAI_API_KEY); the value "
                                  "given looks like the credential itself (not shown). Put it in the "
                                  "environment and write the variable's name here")
            check_secrets(value, path)
    elif isinstance(spec, list):
        for i, value in enumerate(spec):
            check_secrets(value, f"{where}[{i}]")


def public_spec(spec):
    """An engine spec safe to record: credential-like keys dropped, URLs without userinfo or query."""
    if isinstance(spec, dict):
        return {k: public_spec(v) for k, v in spec.items()
                if not (SECRET_KEY.search(str(k)) and not str(k).endswith("_env"))
                and not (str(k).endswith("_env") and looks_like_a_key(v))}
    if isinstance(spec, list):
        return [public_spec(v) for v in spec]
    if isinstance(spec, str) and spec.startswith(("http://", "https://")):
        parts = urlsplit(spec)                     # keep scheme://host:port/path; no user:pass@, no ?key=
        return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    return spec


def resolve_model(spec: dict, cache_file: Path | None = None) -> tuple[dict, str, str | None]:
    """(spec for ``make_engine``, teacher model id, revision).

    A local directory's revision is its content digest; a hub id is downloaded once with
    ``huggingface_hub.snapshot_download`` (pinned by ``engine.revision`` if given) and its revision
    is the commit that was fetched; an OpenAI-compatible endpoint is known by its model name only."""
    spec = dict(spec)
    kind = spec["kind"]
    if kind == "openai":
        return spec, str(spec.get("model")), None
    if kind == "fake":
        return spec, str(spec.get("model", "fake")), None
    model = spec.get("model")
    if not model:
        raise EngineError("engine.model: name the teacher (a hub id or a local directory)")
    revision = spec.pop("revision", None)
    if Path(model).is_dir():
        if revision:
            raise EngineError(f"engine.revision: '{revision}' pins a hub id, but '{model}' is a local directory")
        try:
            return spec, str(model), "sha256:" + model_digest(Path(model), cache_file)
        except FileNotFoundError as exc:
            raise EngineError(f"engine.model: {exc}") from exc
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(str(model), revision=revision)
    except Exception as exc:  # hub errors come in many types; all mean "cannot get this model"
        raise EngineError(f"engine.model: '{model}' is not a local directory and could not be fetched "
                          f"from the hub: {type(exc).__name__}: {exc}") from exc
    spec["model"] = str(local)
    return spec, str(model), Path(local).name   # snapshots/<commit>


def engine_versions(kind: str) -> tuple[str, str]:
    """(engine name, "library version") for provenance."""
    name, library = LIBRARY.get(kind, (kind, "mixdistill"))
    try:
        return name, f"{library} {importlib.metadata.version(library)}"
    except importlib.metadata.PackageNotFoundError:
        return name, f"{library} (not installed)"
