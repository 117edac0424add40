"""Small inline trace frames for curation tests."""
from __future__ import annotations

import polars as pl

from common.digests import dumps
from curation.schema import TRACE_SCHEMA, trace_id

TOKEN_COLUMNS = {"response_tokens": pl.Int64, "sequence_tokens": pl.Int64}
# Stands in for the chat template and prompt when a row gives no sequence_tokens.
PROMPT_TOKENS = 20


def make_traces(rows: list[dict]) -> pl.DataFrame:
    """A frame with every schema column plus ``response_tokens``/``sequence_tokens``.

    Each row gives only what its test is about; the rest is filled: problem ``p<i>``, response
    ``"The answer is 1."``, finish ``stop``, not truncated, response tokens = whitespace words,
    sequence tokens = response tokens + ``PROMPT_TOKENS``. Extra keys become extra columns."""
    filled = []
    for i, given in enumerate(rows):
        row = {
            "source": "test", "problem_id": f"p{i}", "problem": f"Problem {i}: compute the value.",
            "reference_answer": "1", "response": "The answer is 1.", "teacher": "teacher-a",
            "style": "long", "teacher_size": "large", "finish_reason": "stop", "truncated": False,
            "generation": dumps({}), "origin": dumps({"row": i}),
        }
        row.update(given)
        row.setdefault("prompt", row["problem"])
        row.setdefault("trace_id", trace_id(row["problem"], row["response"] or "", row["teacher"]))
        words = len((row["response"] or "").split())
        row.setdefault("response_tokens", words)
        row.setdefault("sequence_tokens", row["response_tokens"] + PROMPT_TOKENS)
        filled.append(row)
    schema = {**TRACE_SCHEMA, **TOKEN_COLUMNS}
    if not filled:
        return pl.DataFrame(schema=schema)
    extra = [k for k in filled[0] if k not in schema]
    frame = pl.DataFrame(filled, schema_overrides=schema, infer_schema_length=None)
    return frame.select([pl.col(c).cast(t) for c, t in schema.items()] + extra)
