"""Exact and near-duplicate responses, keeping the best member of each duplicate cluster.

Duplicates are judged on the response text alone, not per ``problem_id``: the same problem
imported from two sources carries two different ids, and identical solution text under them is
the same training example twice. Identical text for genuinely different problems does not occur
in practice (none among CHAMP's 19,440 responses, 30% of which are exact copies within a
problem); when short generic text repeats across problems ("I cannot solve this."), dropping the
copies loses nothing.

Who is kept: rows are ranked by ``prefer`` first (for the runner: passed every other check),
then by frame order. Each exact-duplicate group keeps its best-ranked row. Among those, rows are
visited in rank order and a row is a ``near_duplicate`` when the Jaccard similarity of its word
shingles with a row already kept reaches ``near_threshold``; otherwise it is kept. Every dropped
row is therefore close to a kept one (no chaining through dropped rows), and the result depends
only on the frame and ``prefer``.

Near-duplicate search uses datasketch: one MinHash per response over hashed word shingles (the
shingle hashes come from polars, vectorised, and are fed to ``MinHash.generator`` through an
identity hash function) and a ``MinHashLSH`` index to find candidates. A candidate is confirmed
on the exact Jaccard of the two shingle-hash sets, so the decision carries no MinHash estimation
noise (about 0.03 at 128 permutations), and the index is banded for recall (see below).
"""
from __future__ import annotations

import operator

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


def _shingle_sets(texts: pl.Series, shingle: int) -> list[np.ndarray]:
    """Per text, the 32-bit hashes of its word ``shingle``-grams (lower-cased whitespace words), in
    text order with repeats; texts shorter than ``shingle`` words get an empty array."""
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
        out.extend(hashes[bounds[i]:bounds[i + 1]] for i in range(chunk.len()))
    return out


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.unique(a), np.unique(b)    # only for LSH candidates, which are few
    common = np.intersect1d(a, b, assume_unique=True).size
    return common / (a.size + b.size - common)


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
    if not 0.0 < near_threshold <= 1.0:
        raise ValueError(f"near_threshold {near_threshold} must be in (0, 1]")

    index = pl.int_range(pl.len(), dtype=pl.Int64)
    keyed = frame.select(
        normalise_whitespace(pl.col("response")).alias("text"),
        # Preferred rows rank before all others; frame order breaks ties.
        pl.when(pl.lit(prefer).fill_null(False)).then(index).otherwise(index + n).alias("rank"))
    has_text = pl.col("text").fill_null("") != ""
    keyed = keyed.with_columns(
        (has_text & (pl.col("rank") != pl.col("rank").min().over("text"))).alias("exact"))
    reasons: list[str | None] = [("exact_duplicate" if e else None) for e in keyed["exact"].to_list()]

    # Near-duplicate pass over the rows that remain, best rank first.
    candidates = keyed.with_row_index("pos").filter(has_text & ~pl.col("exact")).sort("rank")
    if candidates.height < 2:
        return pl.Series("dedup", reasons, dtype=pl.Utf8)
    rows = candidates["pos"].to_list()
    shingles = _shingle_sets(candidates["text"], shingle)
    minhashes = MinHash.generator((s.tolist() for s in shingles), num_perm=num_perm, seed=seed,
                                  hashfunc=operator.index)  # the values are hashes already
    lsh = MinHashLSH(threshold=max(near_threshold - LSH_RECALL_MARGIN, 0.05), num_perm=num_perm)
    for key, (row, grams, mh) in enumerate(zip(rows, shingles, minhashes)):
        if not grams.size:
            continue
        if any(_jaccard(grams, shingles[other]) >= near_threshold for other in sorted(lsh.query(mh))):
            reasons[row] = "near_duplicate"
        else:
            lsh.insert(key, mh, check_duplication=False)  # the index keeps band hashes only
    return pl.Series("dedup", reasons, dtype=pl.Utf8)
