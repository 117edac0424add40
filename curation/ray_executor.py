"""``curate.executor: ray``: the shard checks of ``curation.sharded`` on Ray actors.

Each Ray actor builds one :class:`~curation.shard_check.ShardChecker` (tokenizer, quality checks,
benchmark n-gram index broadcast to it with the checker, its own grading pool with the same hard
per-pair deadline) and checks whole shards. The driver sends it shards and receives the checked rows
with their dedup sketch columns, in source order, then goes on exactly as the local executor does
(dedup over digests and signatures, the same parts written). So the kept and rejected rows, their
reasons and the report are the same whichever executor ran.

Ray restarts an actor that dies and runs its shard again; a shard's output is a pure function of
its rows, and the driver only takes complete outputs, so no row is lost or seen twice. (Ray Data's
``map_batches`` was the first design: on a 2-CPU cluster its file-listing and read tasks waited
forever for CPU slots the checker actors held.) ``RAY_ADDRESS`` (or ``ray start --head`` then
``RAY_ADDRESS=auto``) points the run at a cluster; the project's packages travel with the job (Ray
``py_modules``), and the traces file and the benchmark folder must be on storage every node sees.
"""
from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from common.errors import MixdistillError

# A local cluster's size when none is given: MIXDISTILL_RAY_NUM_CPUS, else Ray's own (all cores).
NUM_CPUS_ENV = "MIXDISTILL_RAY_NUM_CPUS"


class ClusterError(MixdistillError, RuntimeError):
    """Ray is missing or its cluster cannot be reached."""


# The packages a Ray worker imports to check a shard.
SHIPPED_PACKAGES = ("common", "curation", "generation", "grading")


def ensure_ray():
    """Import Ray and connect: to ``RAY_ADDRESS`` when set, else a local cluster (once per process)."""
    try:
        import ray
    except ImportError as exc:
        raise ClusterError("curate.executor: ray needs Ray: pip install 'mixdistill[cluster]'") from exc
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if not address and os.environ.get(NUM_CPUS_ENV):
            kwargs["num_cpus"] = int(os.environ[NUM_CPUS_ENV])
        if address:      # the nodes run this checkout's code, not whatever they may have installed
            root = Path(__file__).resolve().parents[1]
            kwargs["runtime_env"] = {"py_modules": [str(root / name) for name in SHIPPED_PACKAGES]}
        try:
            ray.init(address=address or None, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"Ray cluster at RAY_ADDRESS={address!r} cannot be reached: {exc}") from exc
    return ray


class RemoteChecker:
    """One Ray actor: a ShardChecker built once, checking the shards it is sent."""

    def __init__(self, cur, tokenizer, benchmarks_dir: str, judge_cache: str | None, grading_workers: int):
        from curation.shard_check import ShardChecker

        # A failing constructor would make Ray restart the actor forever: the error is kept and
        # raised by the first call instead, which brings it to the driver as itself.
        self.checker, self.error = None, None
        try:
            self.checker = ShardChecker(cur, tokenizer, Path(benchmarks_dir),
                                        Path(judge_cache) if judge_cache else None, grading_workers=grading_workers)
        except Exception as exc:  # noqa: BLE001 - re-raised, unchanged, by check()
            self.error = exc

    def check(self, table):
        if self.error is not None:
            raise self.error
        checked, extra, flags, timings = self.checker(pl.from_arrow(table))
        return checked.to_arrow(), extra, flags, timings

    def close(self) -> None:
        if self.checker is not None:
            self.checker.close()


def _unwrap(exc: BaseException) -> BaseException:
    """The project error a worker raised, out of Ray's wrappers (RayTaskError and friends)."""
    seen = exc
    for _ in range(8):
        cause = getattr(seen, "cause", None)      # RayTaskError: the worker's own exception
        if isinstance(cause, MixdistillError):
            return cause
        if isinstance(seen, MixdistillError) and cause is None:
            return seen
        nxt = cause or seen.__cause__
        if nxt is None:
            break
        seen = nxt
    return exc


def ray_shards(traces_path: Path, cur, tokenizer, benchmarks_dir: Path, judge_cache: Path | None,
               label: str) -> Iterator[tuple[pl.DataFrame, dict, list, dict]]:
    """``(checked, extra, flags, timings)`` per ``shard_rows`` rows, in source order, checked by
    ``curate.ray.workers`` actors.

    The driver reads the shards (one at a time, as the local executor does) and keeps at most
    two per actor in flight, so the object store holds ``2 x workers`` shards at most. Shard ``k``
    goes to actor ``k mod workers``; an actor runs its calls in order, and results are taken in
    shard order. Actors restart when they die and rerun the call they were in
    (``max_restarts``/``max_task_retries``), so a killed worker costs time, not rows."""
    from curation.shard_check import iter_shards

    ray = ensure_ray()
    rc = cur.ray
    actor_class = ray.remote(num_cpus=rc.num_cpus_per_worker, max_restarts=-1, max_task_retries=-1)(RemoteChecker)
    # The constructor arguments (the tokenizer above all) sit in the object store under refs held
    # here for the whole run: a restarted actor reads them again, and Ray frees arguments nobody holds.
    held = [ray.put(value) for value in (cur, tokenizer, str(Path(benchmarks_dir).resolve()),
                                         str(judge_cache) if judge_cache else None, rc.grading_workers)]
    actors = [actor_class.remote(*held) for _ in range(rc.workers)]
    in_flight: deque = deque()
    depth = 2 * len(actors)
    shards = enumerate(iter_shards(Path(traces_path), cur.shard_rows))
    try:
        while True:
            while len(in_flight) < depth:
                item = next(shards, None)
                if item is None:
                    break
                k, frame = item
                in_flight.append(actors[k % len(actors)].check.remote(frame.to_arrow()))
            if not in_flight:
                break
            table, extra, flags, timings = ray.get(in_flight.popleft())
            yield pl.from_arrow(table), extra, flags, timings
    except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; ours come back as themselves
        inner = _unwrap(exc)
        if inner is not exc:
            raise inner from None
        raise
    finally:
        for actor in actors:
            try:
                ray.get(actor.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - a dead actor has nothing left to close
                pass
            ray.kill(actor)
