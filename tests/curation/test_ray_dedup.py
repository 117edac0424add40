"""Dedup as Ray Data group-bys (curation/ray_dedup.py) decides every row as the local resolver does:
exact copies within and across shards, near-duplicate chains, texts too short for shingles, empty
texts, preferred rows."""
from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest

from curation.dedup import DuplicateResolver, rank_rows, sketch_rows

ray = pytest.importorskip("ray")
from curation.ray_dedup import RayDuplicateResolver, RayResolution, _digest_array  # noqa: E402


WORDS = "the sum of two odd numbers is even so we add one and divide by three to get the answer".split()


def texts(seed: int = 0, n: int = 240) -> list[str]:
    """Long base texts, one-word edits of them (near copies, some chained), exact copies, short
    texts and empty ones, shuffled."""
    rng = random.Random(seed)
    base = [" ".join(rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(120)) for _ in range(n // 6)]
    out = list(base)
    for b in base[: n // 8]:
        words = b.split()
        for _ in range(rng.randrange(1, 4)):          # a chain of edits: each close to the one before
            words[rng.randrange(len(words))] = "changed" + str(rng.randrange(10**6))
            out.append(" ".join(words))
    out += [rng.choice(out) for _ in range(n // 4)]    # exact copies
    out += ["short answer 5", "short answer 5", "x = 3", "", "", "  "]
    rng.shuffle(out)
    return out


def both(responses: list[str], prefer: list[bool], shard: int):
    local, on_ray = DuplicateResolver(near_threshold=0.85), RayDuplicateResolver(near_threshold=0.85)
    keys_local, keys_ray, ranks_all = [], [], []
    for start in range(0, len(responses), shard):
        chunk = pl.Series("response", responses[start:start + shard])
        ranks = rank_rows(pl.Series(prefer[start:start + shard]), start)
        sketch = sketch_rows(chunk)
        keys_local.append(local.add(sketch, ranks))
        keys_ray.append(on_ray.add(sketch, ranks).to_list())
        ranks_all.append(ranks)
    ranks = np.concatenate(ranks_all)
    expected = local.resolve().reasons(np.concatenate(keys_local), ranks)
    got = on_ray.resolve().reasons([k for ks in keys_ray for k in ks], ranks)
    return expected, got, on_ray.stats


@pytest.mark.parametrize("shard", [37, 1000])
def test_ray_dedup_gives_every_row_the_local_reason(cluster, shard):
    responses = texts()
    prefer = [random.Random(i).random() > 0.3 for i in range(len(responses))]
    expected, got, stats = both(responses, prefer, shard)
    assert got == expected
    assert expected.count("exact_duplicate") > 30 and expected.count("near_duplicate") > 10   # the case is real
    assert stats["near"] == len({r for r, why in zip(responses, expected) if why == "near_duplicate"})
    assert stats["in_components"] > stats["near"]


def test_nothing_to_dedup(cluster):
    resolver = RayDuplicateResolver()
    resolver.add(sketch_rows(pl.Series("response", ["", None], dtype=pl.Utf8)), np.array([0, 1]))
    assert resolver.resolve().reasons([None, None], [0, 1]) == [None, None]


def test_resolution_lookup_without_copies():
    resolution = RayResolution(_digest_array([]), np.zeros(0, np.int64), _digest_array([b"\x00" * 16]))
    assert resolution.reasons([b"\x00" * 16, b"\x01" * 16, None], [3, 4, 5]) == ["near_duplicate", None, None]
