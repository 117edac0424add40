"""Content digests: canonical JSON, files, frames and model directories.

Every hash in manifests, lineage records, fingerprints and provenance comes from here, so two
places never disagree on how a thing is hashed.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

# What a model generates depends on these files, not on run records kept beside them.
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja")
RUN_RECORDS = frozenset({"mlflow_run_id.txt", "lineage.json", "train_metrics.json"})


def dumps(obj) -> str:
    """Canonical JSON (sorted keys, UTF-8 kept) used in records and digests."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)


def _feed(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def file_digest(path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (``md5`` is what dvc.lock records)."""
    h = hashlib.new(algorithm)
    _feed(h, Path(path))
    return h.hexdigest()


def frame_digest(frame, columns: list[str] | None = None) -> str:
    """Order-sensitive digest of a polars frame's content (manifests and lineage)."""
    cols = columns or frame.columns
    h = hashlib.sha256()
    h.update(dumps(cols).encode())
    # NDJSON is a canonical, version-independent text form (polars' row hashes are not stable
    # across releases).
    h.update(frame.select(cols).write_ndjson().encode("utf-8"))
    return h.hexdigest()[:20]


def model_files(path: Path) -> list[Path]:
    """The files of a model directory that decide what it generates: weights, configs,
    tokenizer, chat template; not run records, not hidden files."""
    return sorted(p for p in Path(path).rglob("*") if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES
                  and p.name not in RUN_RECORDS
                  and not any(part.startswith(".") for part in p.relative_to(path).parts))


def model_digest(path, cache_file: Path | None = None) -> str:
    """Content hash of a model directory. Hashing a large checkpoint takes minutes, so with
    ``cache_file`` the digest is remembered by each file's (name, size, mtime)."""
    path = Path(path)
    files = model_files(path)
    if not files:
        raise FileNotFoundError(f"{path}: no model files (expected config.json and weights)")
    stats = [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    key, cache = str(path.resolve()), {}
    if cache_file is not None:
        try:
            cache = json.loads(Path(cache_file).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            cache = {}                 # no cache yet, or a damaged one: it only costs a re-hash
        if cache.get(key, {}).get("files") == stats:
            return cache[key]["digest"]
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(path)).encode())
        _feed(h, p)
    digest = h.hexdigest()[:20]
    if cache_file is not None:
        from common.io import write_json

        cache[key] = {"files": stats, "digest": digest}
        write_json(cache_file, cache)
    return digest
