"""``make_engine``: an engine from its params mapping (``eval.engine``, a source's ``engine``).

Kept apart from the engines so that the backends with heavy or optional dependencies (vLLM, the
HTTP client) are imported only when asked for, without an import cycle.
"""
from __future__ import annotations

from generation.engines import ENGINE_KINDS, Engine, EngineError, FakeEngine, TransformersEngine
from generation.spec import check_secrets


def make_engine(spec: dict) -> Engine:
    """Build an engine from a params mapping: ``{"kind": "transformers", "model": "models/student",
    "batch_size": 16}``, ``{"kind": "vllm", "model": ..., "tensor_parallel_size": 2}``,
    ``{"kind": "openai", "base_url": ..., "model": ..., "api_key_env": "OPENAI_API_KEY"}`` or
    ``{"kind": "fake", "responses": {...}}``. Any of them with a ``ray`` mapping (``{"replicas": 4}``)
    runs as that many replicas on a Ray cluster (:mod:`generation.ray_engine`)."""
    if not isinstance(spec, dict) or "kind" not in spec:
        raise EngineError(f"engine spec {spec!r}: needs a 'kind' (one of {', '.join(ENGINE_KINDS)})")
    check_secrets(spec)
    if spec["kind"] not in ENGINE_KINDS:
        raise EngineError(f"engine.kind: '{spec['kind']}' must be one of {', '.join(ENGINE_KINDS)}")
    if "ray" in spec:
        from generation.ray_engine import RayEngine

        return RayEngine.from_spec(make_engine, spec)
    kind, kwargs = spec["kind"], {k: v for k, v in spec.items() if k != "kind"}
    try:
        if kind == "transformers":
            if "model" not in kwargs:
                raise EngineError("engine.model: a transformers engine needs a model directory")
            return TransformersEngine.from_pretrained(kwargs.pop("model"), **kwargs)
        if kind == "vllm":
            from generation.vllm import VLLMEngine

            return VLLMEngine(**kwargs)
        if kind == "openai":
            from generation.http import OpenAIEngine

            return OpenAIEngine(**kwargs)
        if kind == "fake":
            return FakeEngine(**kwargs)
    except TypeError as exc:
        raise EngineError(f"engine '{kind}': {exc}") from exc
    raise EngineError(f"engine.kind: '{kind}' must be one of {', '.join(ENGINE_KINDS)}")
