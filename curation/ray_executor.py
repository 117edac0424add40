"""``curate.executor: ray``: the shard checks of ``curation.sharded`` as a Ray Data ``map_batches``.

The dataset is the source's shards, one descriptor row each; an actor pool maps it. Each actor
builds one :class:`~curation.shard_check.ShardChecker` (tokenizer, quality checks, the benchmark n-gram
index built once by the driver and broadcast, its own grading pool with the same hard per-pair deadline),
reads the rows of each shard it is given from the traces file and returns them checked, with their
dedup sketch columns. The driver takes the shards in source order and writes the same parts as the
local executor; their sketches go to the object store, where dedup is decided as Ray Data group-bys
(``curation.ray_dedup``) with the local resolver's decisions. So the kept and rejected rows, their
reasons and the report are the same whichever executor ran.

Ray restarts an actor that dies and runs its shard again; a shard's output is a pure function of
its rows, and the driver only takes complete outputs, so no row is lost or seen twice. (Mapping the
Parquet file itself, ``read_parquet(...).map_batches``, was the first design: on a 2-CPU cluster its
file-listing task waited forever for a CPU the checker actors held, and one file became one block.
A dataset of shard descriptors has no read tasks and one block per shard.) ``RAY_ADDRESS`` (or ``ray
start --head`` then ``RAY_ADDRESS=auto``) points the run at a cluster; the project's packages travel
with the job (Ray ``py_modules``), and the traces file must be on storage every node sees (the
benchmark folder need not be: its n-gram index travels with the actors).
"""
from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from common.errors import MixdistillError
from common.progress import Progress
from common.ray_cluster import ClusterError, connect, import_ray

# The packages a Ray worker imports to check a shard (shipped to a real cluster's nodes).
SHIPPED_PACKAGES = ("common", "curation", "generation", "grading")


class ShardCheck:
    """The ``map_batches`` function: one per actor, a ShardChecker built once, checking each shard
    it is given (a row ``shard, start, rows``) by reading those rows of the source itself."""

    def __init__(self, source: str, cur, tokenizer, decontaminator, judge_cache: str | None,
                 grading_workers: int):
        from curation.shard_check import ShardChecker

        # A failing constructor would make Ray restart the actor forever: the error is kept and
        # given back by each call instead (see __call__), which brings it to the driver as itself.
        self.source, self.checker, self.error = Path(source), None, None
        try:
            self.checker = ShardChecker(cur, tokenizer, None, Path(judge_cache) if judge_cache else None,
                                        grading_workers=grading_workers, decontaminator=decontaminator)
        except Exception as exc:  # noqa: BLE001 - re-raised, unchanged, by __call__
            self.error = exc

    def __call__(self, batch):
        import pyarrow as pa

        from curation.shard_check import read_shard

        shards, checked, meta, errors = batch["shard"].to_pylist(), [], [], []
        for start, rows in zip(batch["start"].to_pylist(), batch["rows"].to_pylist()):
            # A project error (bad input, a missing benchmark) comes back as a value: Ray Data's
            # wrapper would keep only its text, and the driver raises it as itself.
            try:
                if self.error is not None:
                    raise self.error
                table, extra, flags, timings = self.checker(read_shard(self.source, start, rows))
            except MixdistillError as exc:
                checked.append(None)
                meta.append(None)
                errors.append(pickle.dumps(exc))
                continue
            checked.append(_ipc(table.to_arrow()))
            meta.append(pickle.dumps((extra, flags, timings)))
            errors.append(None)
        return pa.table({"shard": pa.array(shards, pa.int64()), "checked": pa.array(checked, pa.large_binary()),
                         "meta": pa.array(meta, pa.large_binary()), "error": pa.array(errors, pa.large_binary())})

    def __del__(self):        # Ray Data deletes the function when it shuts the actor down
        if getattr(self, "checker", None) is not None:
            self.checker.close()


def _ipc(table) -> bytes:
    """A checked shard as one Arrow IPC stream: a single value of the output row, whatever its
    columns (Ray Data's blocks then never split or re-type a shard)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(data: bytes) -> pl.DataFrame:
    import pyarrow as pa

    return pl.from_arrow(pa.ipc.open_stream(data).read_all())


def ray_shards(traces_path: Path, total: int, cur, tokenizer, benchmarks_dir: Path, judge_cache: Path | None,
               label: str) -> Iterator[tuple[pl.DataFrame, dict, list, dict]]:
    """``(checked, extra, flags, timings)`` per ``shard_rows`` rows of the ``total`` the source holds,
    in source order, checked by a Ray Data ``map_batches`` over the shards on a pool of ``curate.ray.workers`` actors.

    The dataset holds one small row per shard (its number, first row and row count), so nothing but
    these descriptors leaves the driver: each actor reads its shard's row groups from the traces file
    and returns the checked rows as one Arrow IPC value. The pool runs at most two shards per actor
    at once and Ray Data's streaming executor holds back finished ones the driver has not taken, so
    the object store holds a few shards at a time. Results come in shard order
    (``preserve_order``). Actors restart when they die and rerun the shard they were in
    (``max_restarts``/``max_task_retries``), so a killed worker costs time, not rows."""
    from curation.shard_check import shard_spans
    from curation.suite import build_decontaminator

    rc = cur.ray
    # Built once here: Ray keeps the actors' constructor arguments in its object store, so each
    # node fetches this one copy of the benchmark n-gram index (a broadcast) and the benchmark
    # folder need not be on storage the nodes see. A missing benchmark fails here, before Ray starts.
    decontaminator = build_decontaminator(cur, Path(benchmarks_dir))
    try:
        connect(SHIPPED_PACKAGES, min_cpus=rc.workers * rc.num_cpus_per_worker, log_to_driver=False)
        ray = import_ray()
    except ClusterError as exc:
        raise ClusterError(f"curate.executor: ray: {exc}") from exc
    import ray.data

    spans = shard_spans(total, cur.shard_rows)
    workers = min(rc.workers, len(spans))
    shards = ray.data.from_items([{"shard": k, "start": s, "rows": n} for k, (s, n) in enumerate(spans)],
                                 override_num_blocks=len(spans))
    checked = shards.map_batches(
        ShardCheck, batch_size=1, batch_format="pyarrow", num_cpus=rc.num_cpus_per_worker,
        compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=2),
        fn_constructor_args=(str(Path(traces_path).resolve()), cur, tokenizer, decontaminator,
                             str(judge_cache) if judge_cache else None, rc.grading_workers))
    # (Ray Data restarts a pool actor that dies and retries its task by default: max_restarts and
    # max_task_retries -1; the kill test in tests/curation/test_ray_executor.py holds it to that.)
    checked.context.execution_options.preserve_order = True
    checked.context.enable_progress_bars = False       # the stage shows its own, below
    progress = Progress(total, f"{label} on Ray ({workers} actors)",
                        unit="row", milestones=3 if len(spans) > 3 else 0)
    try:
        for k, row in enumerate(checked.iter_rows()):
            if row["shard"] != k:        # preserve_order is what keeps the outputs the local ones
                raise RuntimeError(f"{traces_path}: Ray returned shard {row['shard']} where {k} was due")
            if row["error"] is not None:
                raise pickle.loads(row["error"])
            extra, flags, timings = pickle.loads(row["meta"])
            frame = _from_ipc(row["checked"])
            progress.update(frame.height)
            yield frame, extra, flags, timings
    finally:
        progress.close()
