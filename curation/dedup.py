"""Exact and near-duplicate responses, keeping the best member of each duplicate cluster.

Duplicates are judged on the response text alone, not per ``problem_id``: the same problem
imported from two sources carries two different ids, and identical solution text under them is
the same training example twice. Identical text for genuinely different problems does not occur
in practice (none among CHAMP's 19,440 responses, 30% of which are exact copies within a
problem); when short generic text repeats across problems ("I cannot solve this."), dropping the
copies loses nothing.

Who is kept: rows are ranked by ``prefer`` first (for the runner: passed every other check),
then by source order. Each exact-duplicate group keeps its best-ranked row. Among those, rows are
visited in rank order and a row is a ``near_duplicate`` when the Jaccard similarity of its word
shingles with a row already kept reaches ``near_threshold``; otherwise it is kept. Every dropped
row is therefore close to a kept one (no chaining through dropped rows), and the result depends
only on the rows and ``prefer``.

The work is split so that a source never has to be in memory at once (see ``curation.sharded``):

1. :func:`sketch_rows` runs per shard, wherever the shard is checked. For each distinct normalised
   text it gives a 128-bit digest (the exact-duplicate key), a datasketch MinHash signature over
   its hashed word shingles, and the shingle-hash set itself.
2. :class:`DuplicateResolver` takes every shard's sketch in source order and keeps, per distinct
   text, the digest, the best rank and 128-bit keys of the LSH bands (the band layout is
   datasketch's own ``MinHashLSH`` for the threshold, so the candidates are the ones its index
   would return); shingle sets go to disk. Exact duplicates are a group-by on the digest. Texts
   linked by a shared band form components; each component of two or more texts runs the greedy
   pass above, confirming a candidate on the exact Jaccard of the two shingle sets, so the
   decision carries no MinHash estimation noise (about 0.03 at 128 permutations).

:func:`duplicate_reasons` does all of it for one in-memory frame.
"""
from __future__ import annotations

import hashlib
import operator
import os
from dataclasses import dataclass

import numpy as np
import polars as pl
from datasketch import MinHash, MinHashLSH

from curation.checks import ngram_hashes, normalise_whitespace, text_chunks, word_hashes

# Bounds the exploded shingle table (about 40 bytes per word) whatever the source size.
CHUNK_BYTES = 64 << 20
# LSH banding is an S-curve, not a step: an index built at 0.85 with 128 permutations finds a pair
# of Jaccard 0.85 only 46% of the time. Banding 0.15 lower finds it 97.5% of the time (0.9: 99.9%),
# and the exact Jaccard of the shingle sets then drops the extra candidates.
LSH_RECALL_MARGIN = 0.15
# Rank offset of rows that are not preferred: any source has fewer rows than this.
NOT_PREFERRED = 1 << 40


def band_layout(near_threshold: float, num_perm: int) -> list[tuple[int, int]]:
    """The (start, end) signature ranges of datasketch's MinHashLSH built for this threshold."""
    if not 0.0 < near_threshold <= 1.0:
        raise ValueError(f"near_threshold {near_threshold} must be in (0, 1]")
    return list(MinHashLSH(threshold=max(near_threshold - LSH_RECALL_MARGIN, 0.05), num_perm=num_perm).hashranges)


def _shingle_sets(texts: pl.Series, shingle: int) -> list[np.ndarray]:
    """Per text, the sorted distinct 32-bit hashes of its word ``shingle``-grams (lower-cased
    whitespace words); texts shorter than ``shingle`` words get an empty array."""
    out: list[np.ndarray] = []
    for _, chunk in text_chunks(texts, CHUNK_BYTES):
        grams = ngram_hashes(word_hashes(chunk), shingle)
        # datasketch's default scheme takes 32-bit inputs; folding the halves keeps all 64 bits'
        # information, and a 32-bit collision inside one response is too rare to move a Jaccard.
        folded = grams.select(
            pl.col("row"),
            ((pl.col("gram") // (1 << 32)) ^ (pl.col("gram") % (1 << 32))).cast(pl.UInt32).alias("h"))
        rows = folded["row"].to_numpy()          # already in row order: words were exploded in order
        hashes = folded["h"].to_numpy()
        bounds = np.searchsorted(rows, np.arange(chunk.len() + 1))
        out.extend(np.unique(hashes[bounds[i]:bounds[i + 1]]) for i in range(chunk.len()))
    return out


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted distinct hash arrays."""
    common = np.intersect1d(a, b, assume_unique=True).size
    return common / (a.size + b.size - common)


def text_digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def sketch_rows(responses: pl.Series, *, num_perm: int = 128, shingle: int = 5, seed: int = 1) -> pl.DataFrame:
    """Per row: ``dedup_digest`` (16 bytes of the normalised text; null for an empty text) and, on
    the first row of each distinct text in this batch only, ``dedup_signature`` (its MinHash
    values, uint32 bytes; empty when the text has no shingle) and ``dedup_shingles`` (its sorted
    distinct shingle hashes, uint32 bytes). These columns are all dedup needs of a row: they can
    travel from a worker, and the text itself can be dropped."""
    texts = pl.DataFrame({"t": responses}).select(normalise_whitespace(pl.col("t")).fill_null("")).to_series()
    first: dict[str, int] = {}
    digest: list[bytes | None] = []
    for i, t in enumerate(texts.to_list()):
        digest.append(text_digest(t) if t else None)
        if t:
            first.setdefault(t, i)
    rows = list(first.values())
    shingles = _shingle_sets(texts.gather(rows), shingle) if rows else []
    signature: list[bytes | None] = [None] * texts.len()
    sets: list[bytes | None] = [None] * texts.len()
    with_grams = [k for k, s in enumerate(shingles) if s.size]
    minhashes = MinHash.generator((shingles[k].tolist() for k in with_grams), num_perm=num_perm, seed=seed,
                                  hashfunc=operator.index)  # the values are hashes already
    for k in range(len(rows)):
        signature[rows[k]], sets[rows[k]] = b"", shingles[k].astype(np.uint32).tobytes()
    for k, mh in zip(with_grams, minhashes):
        # datasketch keeps its values below 2**32 (its max_hash), so they fit 32 bits exactly
        signature[rows[k]] = mh.hashvalues.astype(np.uint32).tobytes()
    return pl.DataFrame({"dedup_digest": pl.Series(digest, dtype=pl.Binary),
                         "dedup_signature": pl.Series(signature, dtype=pl.Binary),
                         "dedup_shingles": pl.Series(sets, dtype=pl.Binary)})


SKETCH_COLUMNS = ("dedup_digest", "dedup_signature", "dedup_shingles")


class MemoryShingles:
    """Shingle sets by entry id, in memory (one frame's worth)."""

    def __init__(self):
        self._sets: list[np.ndarray] = []

    def put_many(self, blobs: list[bytes]) -> None:
        self._sets.extend(np.frombuffer(b, dtype=np.uint32) for b in blobs)

    def get(self, ids: np.ndarray) -> list[np.ndarray]:
        return [self._sets[t] for t in ids.tolist()]


class DiskShingles:
    """Shingle sets by entry id in one append-only file: only LSH candidates are ever read back,
    one ``pread`` each, so the sets of a whole source never sit in memory."""

    def __init__(self, path):
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self._ends: list[np.ndarray] = []
        self._size = 0

    def put_many(self, blobs: list[bytes]) -> None:
        os.pwrite(self._fd, b"".join(blobs), self._size)
        ends = self._size + np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._ends.append(ends)
        self._size = int(ends[-1]) if ends.size else self._size

    def get(self, ids: np.ndarray) -> list[np.ndarray]:
        ends = np.concatenate([[0], *self._ends])
        self._ends = [ends[1:]]                  # one array from now on
        return [np.frombuffer(os.pread(self._fd, int(ends[t + 1] - ends[t]), int(ends[t])), dtype=np.uint32)
                for t in ids.tolist()]

    def close(self) -> None:
        os.close(self._fd)


# Two 64-bit lanes per LSH band (a 128-bit band key): rows share a band exactly when their
# signature slices are equal, except with probability ~2**-128 per pair, and any candidate is
# still confirmed on the exact Jaccard of its shingle sets.
_LANES = ((np.uint64(0x9E3779B97F4A7C15), np.uint64(0x100000001B3)),
          (np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9)))


def _mix64(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def band_keys(signature: np.ndarray, bands) -> np.ndarray:
    """(rows, bands, 2) uint64: a 128-bit key of each LSH band slice of each signature."""
    out = np.empty((signature.shape[0], len(bands), 2), dtype=np.uint64)
    sig = signature.astype(np.uint64)
    with np.errstate(over="ignore"):
        for b, (start, end) in enumerate(bands):
            for lane, (seed, prime) in enumerate(_LANES):
                h = np.full(signature.shape[0], seed, dtype=np.uint64)
                for j in range(start, end):
                    h = _mix64((h ^ sig[:, j]) * prime)
                out[:, b, lane] = h
    return out


class DuplicateResolver:
    """Takes the sketch columns of every row, in source order, a batch at a time, and decides
    every row's dedup reason.

    Each batch's distinct texts become entries; the same text in two batches is two entries,
    joined by digest when resolving. Memory per entry: its 16-byte digest, best rank, and LSH band
    keys (16 bytes per band), all in numpy arrays; the shingle sets go to ``shingles`` (a
    :class:`MemoryShingles` or :class:`DiskShingles`); texts are never held."""

    def __init__(self, *, near_threshold: float = 0.85, num_perm: int = 128, shingles=None):
        self.near_threshold = near_threshold
        self.bands = band_layout(near_threshold, num_perm)
        self.num_perm = num_perm
        self.shingles = shingles if shingles is not None else MemoryShingles()
        self._digests: list[np.ndarray] = []
        self._best: list[np.ndarray] = []
        self._keys: list[np.ndarray] = []
        self._has: list[np.ndarray] = []
        self._entries = 0

    def add(self, sketch: pl.DataFrame, ranks: np.ndarray) -> np.ndarray:
        """Register a batch (its :func:`sketch_rows` columns and :func:`rank_rows` ranks); returns
        each row's entry id (-1: empty text)."""
        ranks = np.asarray(ranks, dtype=np.int64)
        out = np.full(sketch.height, -1, dtype=np.int64)
        local: dict[bytes, int] = {}
        digests, best, signatures, has, blobs = [], [], [], [], []
        for i, (d, sig, sets) in enumerate(zip(sketch["dedup_digest"].to_list(), sketch["dedup_signature"].to_list(),
                                               sketch["dedup_shingles"].to_list())):
            if d is None:
                continue
            k = local.get(d)
            if k is None:
                if sig is None:
                    raise ValueError("dedup sketch: a text's first row in its batch carries no signature")
                k = local[d] = len(digests)
                digests.append(d)
                best.append(ranks[i])
                has.append(bool(sig))
                signatures.append(sig if sig else bytes(4 * self.num_perm))
                blobs.append(sets)
            elif ranks[i] < best[k]:
                best[k] = ranks[i]
            out[i] = self._entries + k
        if digests:
            sig = np.frombuffer(b"".join(signatures), dtype=np.uint32).reshape(len(digests), self.num_perm)
            self._keys.append(band_keys(sig, self.bands))
            self._digests.append(np.array(digests, dtype="S16"))
            self._best.append(np.array(best, dtype=np.int64))
            self._has.append(np.array(has, dtype=bool))
            self.shingles.put_many(blobs)
            self._entries += len(digests)
        return out

    def resolve(self) -> "Resolution":
        """Exact groups by digest, then the greedy near-duplicate pass over every LSH component."""
        if not self._entries:
            return Resolution(group=np.zeros(0, np.int64), best_rank=np.zeros(0, np.int64), near=np.zeros(0, bool))
        digests = np.concatenate(self._digests)
        _, first, group = np.unique(digests, return_index=True, return_inverse=True)
        group = group.ravel()
        best = np.full(first.size, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(best, group, np.concatenate(self._best))
        keys = np.concatenate(self._keys)[first]            # one entry stands for each text
        has = np.concatenate(self._has)[first]
        self._digests, self._keys = [], []
        near = np.zeros(first.size, dtype=bool)
        for texts in self._components(keys, has):
            texts = texts[np.argsort(best[texts], kind="stable")]
            sets = self.shingles.get(first[texts])
            near[greedy_component(texts, keys, sets, self.near_threshold)] = True
        return Resolution(group=group, best_rank=best, near=near)

    def _components(self, keys: np.ndarray, has_shingles: np.ndarray) -> list[np.ndarray]:
        """Text ids of every LSH-linked group of two or more texts with shingles."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components

        live = np.flatnonzero(has_shingles)
        n = live.size
        if n < 2:
            return []
        src, dst = [], []
        for b in range(keys.shape[1]):
            _, band_group = np.unique(keys[live, b, :], axis=0, return_inverse=True)
            band_group = band_group.ravel()
            order = np.argsort(band_group, kind="stable")
            same = band_group[order[1:]] == band_group[order[:-1]]
            src.append(order[:-1][same])
            dst.append(order[1:][same])
        src, dst = np.concatenate(src), np.concatenate(dst)
        graph = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(n, n))
        count, label = connected_components(graph, directed=False)
        sizes = np.bincount(label, minlength=count)
        multi = np.flatnonzero(sizes[label] > 1)
        by_label = multi[np.argsort(label[multi], kind="stable")]
        cuts = np.flatnonzero(np.diff(label[by_label])) + 1
        return [live[c] for c in np.split(by_label, cuts)] if by_label.size else []


@dataclass
class Resolution:
    group: np.ndarray      # per entry: its distinct text
    best_rank: np.ndarray  # per text: the rank of the row that keeps it
    near: np.ndarray       # per text: dropped as a near duplicate

    def reasons(self, entry: np.ndarray, ranks: np.ndarray) -> list[str | None]:
        """Each row's dedup reason from its entry id and rank."""
        entry, ranks = np.asarray(entry, dtype=np.int64), np.asarray(ranks, dtype=np.int64)
        valid = entry >= 0
        text = self.group[entry[valid]]
        exact = np.zeros(entry.size, dtype=bool)
        near = np.zeros(entry.size, dtype=bool)
        exact[valid] = ranks[valid] != self.best_rank[text]
        near[valid] = self.near[text] & ~exact[valid]
        return ["exact_duplicate" if e else "near_duplicate" if n else None
                for e, n in zip(exact.tolist(), near.tolist())]


def greedy_component(texts: np.ndarray, keys: np.ndarray, sets: list[np.ndarray],
                     near_threshold: float) -> list[int]:
    """Text ids (of ``texts``, given in rank order with their shingle ``sets``) dropped as near
    duplicates: a text is dropped when it shares an LSH band with an already kept text of
    Jaccard >= ``near_threshold``, as a datasketch index of the kept texts would find it."""
    dropped: list[int] = []
    index: list[dict[bytes, list[int]]] = [{} for _ in range(keys.shape[1])]
    for pos, tid in enumerate(texts.tolist()):
        row = [keys[tid, b].tobytes() for b in range(keys.shape[1])]
        candidates = sorted({k for b, key in enumerate(row) for k in index[b].get(key, ())})
        if any(jaccard(sets[pos], sets[k]) >= near_threshold for k in candidates):
            dropped.append(tid)
            continue
        for b, key in enumerate(row):
            index[b].setdefault(key, []).append(pos)
    return dropped


def duplicate_reasons(frame: pl.DataFrame, prefer: pl.Series | None = None, *,
                      near_threshold: float = 0.85, num_perm: int = 128, shingle: int = 5,
                      seed: int = 1) -> pl.Series:
    """``exact_duplicate`` / ``near_duplicate`` / null per row (see the module docstring).

    near_threshold 0.85 over 5-word shingles is strict: each changed word alters 5 shingles, so
    a copy stays above it only while fewer than ~1.6% of its words differ (a changed connective,
    a reformatted equation). That is the intent: two solutions of one problem sharing their
    set-up and answer but argued differently are both worth keeping. On CHAMP it marks 13 of
    the 13,493 distinct responses, each the same model answering the same problem under two
    prompt settings. ``seed`` picks the MinHash permutations; since candidates are confirmed on
    exact Jaccard it can only change which near pairs are found, and the index is banded so
    that almost all are. Responses with fewer than ``shingle`` words have no shingles and take
    part in exact dedup only; empty responses are never duplicates (the empty check rejects
    them).
    """
    n = frame.height
    if prefer is None:
        prefer = pl.Series("prefer", [True] * n, dtype=pl.Boolean)
    if prefer.len() != n:
        raise ValueError(f"prefer has {prefer.len()} values for {n} rows")
    resolver = DuplicateResolver(near_threshold=near_threshold, num_perm=num_perm)
    ranks = rank_rows(prefer, 0)
    text_id = resolver.add(sketch_rows(frame["response"], num_perm=num_perm, shingle=shingle, seed=seed), ranks)
    return pl.Series("dedup", resolver.resolve().reasons(text_id, ranks), dtype=pl.Utf8)


def rank_rows(prefer: pl.Series, row_offset: int) -> np.ndarray:
    """Rank of each row: preferred rows (a null counts as not) before all others, source order
    (``row_offset`` + position) breaking ties."""
    index = np.arange(prefer.len(), dtype=np.int64) + row_offset
    return np.where(prefer.fill_null(False).to_numpy(), index, index + NOT_PREFERRED)
