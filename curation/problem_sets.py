"""The problem set (``problems.set``): CHAMP, a hub dataset or a local file, in answer-column or
MATH format, and its deterministic train/test split."""
from __future__ import annotations

import polars as pl

from curation.errors import SourceError
from curation.sources import (champ_problems, load_hf_rows, numeric_answer, problem_key, read_table,
                              split_problems)
from grading.boxes import last_boxed

__all__ = ["load_problem_set", "split_problems"]


def load_problem_set(spec: dict) -> pl.DataFrame:
    """The problem set of ``problems.set``: CHAMP, a hub dataset or a local file.

    With ``format: math`` rows are MATH-format (``problem``, ``solution``; rename with
    ``columns``) and the reference is the last ``\\boxed{}`` of the solution; a row without one
    is an error naming it. ``configs`` (hub only) loads and joins several dataset configs, e.g.
    MATH's seven subjects; the config goes into ``category``."""
    kind = spec["kind"]
    if kind == "champ":
        return champ_problems()
    math_format = spec.get("format") == "math"
    file_format = None if spec.get("format") in (None, "math") else spec["format"]
    cols = {"problem_id": "problem_id", "problem": "problem", "reference_answer": "answer",
            "solution": "solution", "category": "type", **(spec.get("columns") or {})}
    parts: list[tuple[list[dict], str, str | None]] = []
    if kind == "hf":
        for config in spec.get("configs") or [None]:
            rows, _ = load_hf_rows(spec["id"], spec.get("split", "train"), spec.get("revision"), config)
            label = f"{spec['id']} ({f'{config}, ' if config else ''}{spec.get('split', 'train')})"
            parts.append((rows, label, config))
    else:
        rows, where = read_table(spec["path"], spec.get("file_format") or file_format)
        parts.append((rows, where, None))
    out, seen = [], {}
    for rows, where, config in parts:
        for i, r in enumerate(rows):
            row_no = r.get("__line__", i + 1)
            needs = ("problem", "solution") if math_format else ("problem", "reference_answer")
            for need in needs:
                if r.get(cols[need]) is None:
                    raise SourceError(f"{where}: row {row_no}: missing or null field '{cols[need]}'")
            if math_format:
                reference = last_boxed(str(r[cols["solution"]]))
                if reference is None or not reference.strip():
                    raise SourceError(f"{where}: row {row_no}: field '{cols['solution']}' has no \\boxed{{}} "
                                      "answer (format: math takes the reference from its last box)")
            else:
                reference = str(numeric_answer(r[cols["reference_answer"]], f"{where}: row {row_no}",
                                               cols["reference_answer"]))
            pid = str(r.get(cols["problem_id"]) or problem_key(r[cols["problem"]]))
            if pid in seen:
                raise SourceError(f"{where}: row {row_no}: field '{cols['problem_id']}' duplicates "
                                  f"{seen[pid]} ('{pid}')")
            seen[pid] = f"{where}: row {row_no}"
            category = config or (str(r[cols["category"]]) if r.get(cols["category"]) is not None else None)
            out.append({"problem_id": pid, "problem": str(r[cols["problem"]]), "reference_answer": reference,
                        "category": category, "fws": "{}"})
    if not out:
        raise SourceError(f"{parts[0][1]}: the problem set has no rows")
    return pl.DataFrame(out, schema={"problem_id": pl.Utf8, "problem": pl.Utf8, "reference_answer": pl.Utf8,
                                     "category": pl.Utf8, "fws": pl.Utf8})
