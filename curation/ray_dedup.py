"""Dedup on Ray (``curate.executor: ray``): the decisions of :class:`curation.dedup.DuplicateResolver`,
taken as Ray Data group-bys across the cluster instead of in the stage's process.

Each checked shard's sketch rows (digest, rank, MinHash signature and shingle set on a text's first
row in the shard) go to the object store as they arrive; the driver keeps only their references.
Then:

1. **exact duplicates, a hash group-by on the digest**: per distinct text its best rank, its row
   count, its signature and shingle set (``aggregate(Min, Count)``; a text's signature and shingles
   are the same on every row that carries them);
2. **LSH bands, a group-by on (band, key)**: each text with shingles gives one row per band of
   datasketch's layout for the threshold; the band keys two or more texts share are the candidate
   links. Only those rows come back to the driver, which joins them into components (union-find);
3. **the exact Jaccard confirmation, a group-by on the component**: each component of two or more
   texts runs :func:`curation.dedup.greedy_component`, the local pass itself, on its members'
   signatures and shingle sets, wherever Ray puts it.

What the driver holds at the end is the best rank of each text that has copies, and the texts
dropped as near duplicates: memory follows the duplicates, not the source. The ranks are unique and
the greedy pass is the local one, so every row gets the reason the local resolver gives it.
"""
from __future__ import annotations

import logging
import sys
import time

import numpy as np
import polars as pl

from curation.dedup import band_keys, band_layout, greedy_component


def _band_rows(batch, bands: list, num_perm: int):
    """One row per (text with shingles, band): the band's 128-bit key as two uint64 lanes."""
    import pyarrow as pa
    import pyarrow.compute as pc

    batch = batch.filter(pc.greater(pc.binary_length(batch["sig"]), 0))   # texts without shingles take no part
    sig = np.frombuffer(b"".join(batch["sig"].to_pylist()), dtype=np.uint32).reshape(batch.num_rows, num_perm)
    keys = band_keys(sig, bands)                        # (texts, bands, 2)
    n, b = keys.shape[0], keys.shape[1]
    digest = np.repeat(np.arange(n), b)
    return pa.table({"band": pa.array(np.tile(np.arange(b, dtype=np.int32), n)),
                     "k0": pa.array(keys[:, :, 0].ravel()), "k1": pa.array(keys[:, :, 1].ravel()),
                     "digest": batch["digest"].take(pa.array(digest))})


def _rows_with_keys(batch, keys: set):
    """The band rows whose (band, key) two or more texts share."""
    import pyarrow as pa

    cols = [batch[c].to_pylist() for c in ("band", "k0", "k1")]
    return batch.filter(pa.array([k in keys for k in zip(*cols)], pa.bool_()))


def _members(batch, label: dict):
    """The texts of some component, with its label (the digest that stands for it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    batch = batch.filter(pc.is_in(batch["digest"], value_set=pa.array(list(label), pa.binary())))
    return batch.append_column("component", pa.array([label[d] for d in batch["digest"].to_pylist()], pa.binary()))


def _greedy(group, near_threshold: float, bands: list, num_perm: int):
    """The near duplicates of one component (its members' rows): the local greedy pass."""
    import pyarrow as pa

    order = np.argsort(group["best"].to_numpy(), kind="stable")      # ranks are unique
    sig = np.frombuffer(b"".join(group["sig"].take(pa.array(order)).to_pylist()), dtype=np.uint32)
    keys = band_keys(sig.reshape(order.size, num_perm), bands)
    sets = [np.frombuffer(s, dtype=np.uint32) for s in group["shingles"].take(pa.array(order)).to_pylist()]
    dropped = greedy_component(np.arange(order.size), keys, sets, near_threshold)
    return pa.table({"digest": group["digest"].take(pa.array(order[dropped], type=pa.int64()))})


class _UnionFind:
    def __init__(self):
        self.parent: dict[bytes, bytes] = {}

    def find(self, x: bytes) -> bytes:
        root = self.parent.setdefault(x, x)
        while root != self.parent[root]:
            root = self.parent[root]
        while x != root:                                  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: bytes, b: bytes) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _digest_array(values) -> np.ndarray:
    return np.array(values, dtype="S16")


class RayResolution:
    """Every row's dedup reason from its digest and rank (the interface of ``dedup.Resolution``)."""

    def __init__(self, dup_digests: np.ndarray, dup_best: np.ndarray, near: np.ndarray):
        order = np.argsort(dup_digests, kind="stable")
        self.dup_digests, self.dup_best = dup_digests[order], dup_best[order]
        self.near = np.sort(near)

    @staticmethod
    def _find(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not sorted_keys.size:
            return np.zeros(keys.size, dtype=bool), np.zeros(keys.size, dtype=np.int64)
        pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
        return sorted_keys[pos] == keys, pos

    def reasons(self, digests, ranks) -> list[str | None]:
        digests = list(digests)
        ranks = np.asarray(ranks, dtype=np.int64)
        valid = np.array([d is not None for d in digests], dtype=bool)
        keys = _digest_array([d if d is not None else b"" for d in digests])
        has_copies, pos = self._find(self.dup_digests, keys)
        exact = valid & has_copies & (ranks != self.dup_best[pos] if self.dup_best.size else False)
        near = valid & self._find(self.near, keys)[0] & ~exact
        return ["exact_duplicate" if e else "near_duplicate" if n else None
                for e, n in zip(exact.tolist(), near.tolist())]


class RayDuplicateResolver:
    """``add`` each shard's sketch as it is checked, then ``resolve`` on the cluster (see the
    module docstring). Needs a connected Ray (``curation.ray_executor`` connects it)."""

    def __init__(self, *, near_threshold: float = 0.85, num_perm: int = 128, label: str = "curate"):
        self.near_threshold, self.num_perm, self.label = near_threshold, num_perm, label
        self.bands = band_layout(near_threshold, num_perm)
        self._refs: list = []
        self.stats: dict = {}

    def add(self, sketch: pl.DataFrame, ranks: np.ndarray) -> pl.Series:
        """Put a shard's sketch rows in the object store; returns each row's key for
        :meth:`RayResolution.reasons` (its digest; null for an empty text)."""
        import ray

        rows = sketch.with_columns(pl.Series("rank", np.asarray(ranks, dtype=np.int64))).filter(
            pl.col("dedup_digest").is_not_null())
        table = rows.select(pl.col("dedup_digest").alias("digest"), "rank",
                            pl.col("dedup_signature").alias("sig"),
                            pl.col("dedup_shingles").alias("shingles")).to_arrow()
        if table.num_rows:
            self._refs.append(ray.put(table))
        return sketch["dedup_digest"]

    def resolve(self) -> RayResolution:
        import pyarrow as pa
        import ray
        import ray.data
        from ray.data.aggregate import Count, Min

        if not self._refs:
            return RayResolution(_digest_array([]), np.zeros(0, np.int64), _digest_array([]))
        started = time.perf_counter()
        # Ray Data logs three INFO lines per dataset it runs (six here); the stage prints one line
        logging.getLogger("ray.data").setLevel(logging.WARNING)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False
        parts = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        texts = ray.data.from_arrow_refs(self._refs).groupby("digest", num_partitions=parts).aggregate(
            Min("rank", alias_name="best"), Count(alias_name="rows"),
            Min("sig", alias_name="sig"), Min("shingles", alias_name="shingles")).materialize()
        dup = _collect(texts.filter(expr="rows > 1").select_columns(["digest", "best"]), ("digest", "best"))

        band_rows = texts.select_columns(["digest", "sig"]).map_batches(
            _band_rows, batch_format="pyarrow", fn_kwargs={"bands": self.bands, "num_perm": self.num_perm}
        ).materialize()
        shared = _collect(band_rows.groupby(["band", "k0", "k1"], num_partitions=parts).aggregate(
            Count(alias_name="texts")).filter(expr="texts > 1"), ("band", "k0", "k1"))
        hot = set(zip(shared["band"], shared["k0"], shared["k1"]))
        links = _collect(band_rows.map_batches(_rows_with_keys, batch_format="pyarrow", fn_kwargs={"keys": hot}),
                         ("band", "k0", "k1", "digest")) if hot else {}
        components = _UnionFind()
        first_by_key: dict[tuple, bytes] = {}
        for key, digest in zip(zip(links.get("band", []), links.get("k0", []), links.get("k1", [])),
                               links.get("digest", [])):
            components.union(first_by_key.setdefault(key, digest), digest)
        label = {d: components.find(d) for d in list(components.parent)}
        near_digests: list[bytes] = []
        if label:
            members = texts.map_batches(_members, batch_format="pyarrow", fn_kwargs={"label": label})
            near_digests = _collect(members.groupby("component", num_partitions=parts).map_groups(
                _greedy, batch_format="pyarrow",
                fn_kwargs={"near_threshold": self.near_threshold, "bands": self.bands, "num_perm": self.num_perm}),
                ("digest",))["digest"]
        self._refs = []
        self.stats = {"texts": texts.count(), "texts_with_copies": len(dup["digest"]),
                      "in_components": len(label), "near": len(near_digests),
                      "seconds": round(time.perf_counter() - started, 2)}
        st = self.stats
        print(f"{self.label} dedup on Ray: {st['texts']} distinct texts, {st['texts_with_copies']} with exact "
              f"copies, {st['in_components']} in near-duplicate components, {st['near']} dropped as near "
              f"duplicates, in {st['seconds']:.1f} s", file=sys.stderr, flush=True)
        return RayResolution(_digest_array(dup["digest"]), np.asarray(dup["best"], dtype=np.int64),
                             _digest_array(near_digests))


def _collect(ds, columns: tuple[str, ...]) -> dict[str, list]:
    """The named columns of a (small) dataset, on the driver."""
    import pyarrow as pa
    import ray

    tables = [t for t in ray.get(ds.select_columns(list(columns)).to_arrow_refs()) if t.num_rows]
    if not tables:
        return {c: [] for c in columns}
    table = pa.concat_tables(tables)
    return {c: table[c].to_pylist() for c in columns}
