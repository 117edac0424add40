"""Any engine spec run as replicas on a Ray cluster (teacher generation and eval at cluster scale).

A spec with a ``ray`` mapping, e.g. ``{"kind": "vllm", "model": ..., "tensor_parallel_size": 2,
"ray": {"replicas": 4}}``, becomes a :class:`RayEngine`: ``replicas`` Ray actors, each building the
spec without its ``ray`` key in its own process (for vllm on ``tensor_parallel_size`` GPUs of its
own, vLLM sharding the model inside the actor). ``generate`` splits the prompts into contiguous
shards, one per replica, and returns the results in prompt order, so the callers (and their
resumable sample store, :mod:`generation.store`) see one engine: the driver still writes every
chunk before it asks for the next, and killing the driver kills its actors with it.

Where: ``RAY_ADDRESS`` set connects to that cluster (the driver's ``common`` and ``generation``
packages travel with the job, so the nodes need only the libraries); unset starts a local cluster
(the machine's cores, more if the replicas ask for more, its GPUs); a Ray already initialised by
the caller is used as it is.

Failures: a replica whose process dies (out of memory, a crash, a lost node) is restarted by Ray
and only its shard is run again (``max_restarts`` times); the results are gathered by shard, so
none is duplicated or dropped. An error the inner engine raises comes back as itself, with the
message the local path gives. Ray is imported only when such an engine is built.
"""
from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from typing import Callable

from common.errors import MixdistillError, first_line
from common.ray_cluster import ClusterError, connect, import_ray
from generation.engines import Completion, Engine, EngineError, Messages, SamplingConfig, check_prompts


@dataclass(frozen=True)
class RayOptions:
    replicas: int = 1
    num_cpus: float = 1.0               # per replica: an engine's driver loop needs about one core
    num_gpus: float = 0.0               # per replica; vllm defaults to its tensor_parallel_size
    max_restarts: int = 3               # a replica that keeps dying is a real fault, not bad luck


def parse_ray_options(raw, inner: dict, where: str = "engine.ray") -> RayOptions:
    """The ``ray`` mapping of an engine spec, checked (no Ray needed)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise EngineError(f"{where}: expected a mapping such as {{replicas: 2}}, got {type(raw).__name__}")
    known = ("replicas", "num_cpus", "num_gpus", "max_restarts")
    for key in raw:
        if key not in known:
            raise EngineError(f"{where}.{key}: unknown key (known: {', '.join(known)})")
    for key in ("replicas", "max_restarts"):
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < (1 if key == "replicas" else 0)):
            least = "a positive" if key == "replicas" else "a non-negative"
            raise EngineError(f"{where}.{key}: {value!r} must be {least} integer")
    for key in ("num_cpus", "num_gpus"):
        value = raw.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise EngineError(f"{where}.{key}: {value!r} must be a number >= 0")
    if inner.get("kind") == "vllm" and int(inner.get("data_parallel_size", 1) or 1) > 1:
        raise EngineError(f"{where}.replicas and engine.data_parallel_size both ask for replicas: "
                          "set only one of them")
    default_gpus = inner.get("tensor_parallel_size", 1) if inner.get("kind") == "vllm" else 0
    return RayOptions(replicas=raw.get("replicas", 1), num_cpus=float(raw.get("num_cpus", 1.0)),
                      num_gpus=float(raw.get("num_gpus", default_gpus)),
                      max_restarts=raw.get("max_restarts", RayOptions.max_restarts))


def shard_bounds(count: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous ``[start, stop)`` ranges over ``count`` items, at most ``parts`` of them, sizes
    differing by at most one (the first ones take the remainder)."""
    parts = max(1, min(parts, count))
    size, extra = divmod(count, parts)
    bounds, start = [], 0
    for i in range(parts):
        stop = start + size + (i < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def check_resources(need: RayOptions, total: dict, free: dict, started_here: bool, log=None) -> None:
    """Refuse replicas that a cluster this process started can never place (Ray would wait for
    them forever); on a cluster found running, an autoscaler may still add nodes, so only say so.
    Say so too when the cluster has room but other actors hold it: the replicas wait for them."""
    log = log or _stderr
    for resource, per_replica in (("GPU", need.num_gpus), ("CPU", need.num_cpus)):
        wanted = need.replicas * per_replica
        has, idle = float(total.get(resource, 0)), float(free.get(resource, 0))
        head = f"ray: {need.replicas} replicas x {per_replica:g} {resource}s need {wanted:g} {resource}s"
        if wanted > has + 1e-9:
            if started_here:
                key = "num_gpus" if resource == "GPU" else "num_cpus"
                raise EngineError(f"{head}, the cluster has {has:g} (set RAY_ADDRESS to use a bigger cluster, "
                                  f"or lower engine.ray.{key} / replicas)")
            log(f"{head}, the cluster has {has:g} now; the replicas wait until nodes with them join")
        elif wanted > idle + 1e-9:
            log(f"{head}, {idle:g} are free now; the replicas wait until other actors release them")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _connect(options: RayOptions):
    """Ray, joined to ``RAY_ADDRESS``'s cluster or a local one (at least the machine's cores, so
    that a later engine of this run, a judge, fits beside it), and whether this process started it."""
    try:
        started_here = connect(("common", "generation"), min_cpus=options.replicas * options.num_cpus)
        return import_ray(), started_here
    except ClusterError as exc:
        raise EngineError(f"ray: {exc}") from exc


class _Replica:
    """The actor: one inner engine, ``build(spec)``, in its own worker process."""

    def __init__(self, build: Callable[[dict], Engine], spec: dict):
        from common.progress import PROGRESS_ENV

        # Several replicas' bars would interleave in the driver's log; the driver keeps its own.
        os.environ[PROGRESS_ENV] = "0"
        self.error: BaseException | None = None
        try:
            self.engine = build(spec)
        except Exception as exc:        # kept for ready(): an actor whose __init__ raises is just "dead"
            self.engine, self.error = None, exc

    def ready(self) -> None:
        if self.error is not None:
            raise self.error

    def generate(self, prompts: list[Messages], sampling: SamplingConfig) -> list[list[Completion]]:
        self.ready()
        return self.engine.generate(prompts, sampling)


class RayEngine:
    """An inner engine spec run as ``options.replicas`` Ray actors, each building it with ``build``
    (``make_engine``, passed in rather than imported: the factory imports this module); see the
    module docstring."""

    def __init__(self, build: Callable[[dict], Engine], inner: dict, options: RayOptions):
        self.inner, self.options = dict(inner), options
        ray, started_here = _connect(options)
        self._ray = ray
        check_resources(options, ray.cluster_resources(), ray.available_resources(), started_here)
        actor = ray.remote(_Replica).options(num_cpus=options.num_cpus, num_gpus=options.num_gpus,
                                              max_restarts=options.max_restarts,
                                              max_task_retries=options.max_restarts)
        self._actors = [actor.remote(build, self.inner) for _ in range(options.replicas)]
        self._lock = threading.Lock()
        self._next = 0                  # round-robin start, so concurrent small calls spread out
        # Load every replica's model now: an engine that cannot start fails here, as a local one would.
        try:
            self._gather([a.ready.remote() for a in self._actors], [None] * len(self._actors), "starting")
        except BaseException:
            self.close()                # its replicas would hold their CPUs/GPUs as long as the driver lives
            raise

    @classmethod
    def from_spec(cls, build: Callable[[dict], Engine], spec: dict) -> RayEngine:
        inner = {k: v for k, v in spec.items() if k != "ray"}
        return cls(build, inner, parse_ray_options(spec.get("ray"), inner))

    @property
    def parallel_calls(self) -> int:
        """How many one-prompt calls can run at once (one per replica)."""
        return self.options.replicas

    def generate(self, prompts: list[Messages], sampling: SamplingConfig) -> list[list[Completion]]:
        # Checked here, where prompt numbers are the caller's, not a shard's.
        check_prompts(prompts)
        if not prompts:
            return []
        if self._actors is None:
            raise EngineError("ray: this engine was closed")
        bounds = shard_bounds(len(prompts), len(self._actors))
        with self._lock:
            first, self._next = self._next, (self._next + len(bounds)) % len(self._actors)
        refs = [self._actors[(first + i) % len(self._actors)].generate.remote(prompts[a:b], sampling)
                for i, (a, b) in enumerate(bounds)]
        parts = self._gather(refs, bounds, "generating")
        out: list[list[Completion]] = []
        for (a, b), part in zip(bounds, parts):
            if len(part) != b - a:
                raise EngineError(f"ray: a replica returned {len(part)} results for prompts {a}..{b - 1}")
            out.extend(part)
        return out

    def _gather(self, refs: list, bounds: list, doing: str) -> list:
        ray = self._ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        results = []
        for i, (ref, span) in enumerate(zip(refs, bounds)):
            where = f"the replica given prompts {span[0]}..{span[1] - 1}" if span else f"replica {i}"
            try:
                results.append(ray.get(ref))
            except RayTaskError as exc:     # the inner engine raised: give back its own error
                cause = exc.cause
                if isinstance(cause, MixdistillError):
                    raise cause from None
                raise cause from exc
            except RayActorError as exc:
                raise EngineError(f"ray: {where} died while {doing} and was restarted "
                                  f"{self.options.max_restarts} times (engine.ray.max_restarts): "
                                  f"{_first_line(exc)}; its logs are under the Ray session's logs/ "
                                  "(often out of memory)") from exc
            except RayError as exc:
                raise EngineError(f"ray: {where} failed while {doing}: {type(exc).__name__}: "
                                  f"{_first_line(exc)}") from exc
        return results

    def close(self) -> None:
        """Stop the replicas (their processes go, and with them what they hold on GPUs)."""
        actors, self._actors = self._actors, None
        for actor in actors or ():
            self._ray.kill(actor, no_restart=True)


def _first_line(exc: BaseException) -> str:
    return first_line(exc).rstrip(".")
