"""The one trace schema every source is converted into.

A trace is one teacher response to one problem. Columns are plain polars types so that every
stage can read them from Parquet without this package; ``generation`` and ``origin`` hold JSON
strings because their keys differ between sources (sampling params, HF revision, file path...).
"""
from __future__ import annotations

import hashlib
import re

import polars as pl

TRACE_SCHEMA: dict[str, pl.DataType] = {
    "trace_id": pl.Utf8,          # content hash, stable across runs and machines
    "source": pl.Utf8,            # name of the source in params.yaml
    "problem_id": pl.Utf8,
    "problem": pl.Utf8,
    "reference_answer": pl.Utf8,
    "prompt": pl.Utf8,            # what the teacher was asked (may equal ``problem``)
    "response": pl.Utf8,          # the teacher's solution text
    "teacher": pl.Utf8,
    "style": pl.Utf8,             # "long" | "short" chain of thought
    "teacher_size": pl.Utf8,      # "large" | "small"
    "finish_reason": pl.Utf8,     # "stop" | "length" | "unknown"
    "truncated": pl.Boolean,      # the generation hit a length limit
    "generation": pl.Utf8,        # JSON: sampling params and provenance known for this trace
    "origin": pl.Utf8,            # JSON: where the trace came from (package / hub id / file, row)
}
TRACE_COLUMNS = list(TRACE_SCHEMA)
REQUIRED_TEXT = ("problem_id", "problem", "reference_answer", "response", "teacher")
STYLES = ("long", "short")
TEACHER_SIZES = ("large", "small", "human")


def trace_id(problem: str, response: str, teacher: str) -> str:
    """Content hash of what makes a trace itself: the same text from the same teacher is the same
    trace whichever file or source it was read from."""
    h = hashlib.sha256()
    for part in (teacher, problem, response):
        h.update(part.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:20]


def conform(frame: pl.DataFrame) -> pl.DataFrame:
    """Select and order the schema columns with their types (extra columns are dropped)."""
    return frame.select([pl.col(c).cast(t) for c, t in TRACE_SCHEMA.items()])


def normalize_problem(text: str) -> str:
    """Whitespace/case-insensitive key used to match the same problem across sources."""
    return re.sub(r"\s+", " ", text).strip().lower()


def problem_key(text: str) -> str:
    return hashlib.sha256(normalize_problem(text).encode("utf-8")).hexdigest()[:16]
