"""``mixdistill grade``: a JSONL file of responses graded line by line, all input checked first."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from common.io import JsonlError, atomic_file, iter_jsonl
from grading.grader import Grader, GradingInputError, Verdict
from grading.paper import paper_is_equiv, paper_last_box
from grading.rules import HouseRules

PROTOCOLS = ("mixdistill", "paper")


def _check_fields(row: dict, where: str, response_field: str, reference_field: str) -> None:
    for field, ok, expected in (
        (response_field, lambda v: isinstance(v, str), "a string"),
        (reference_field, lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool)
         or (isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v)),
         "a string, a number or a list of strings"),
    ):
        if field not in row:
            raise GradingInputError(f"{where}: field '{field}' is missing")
        if not ok(row[field]):
            raise GradingInputError(f"{where}: field '{field}' must be {expected}, got {type(row[field]).__name__}")


def _read_rows(path: Path, response_field: str, reference_field: str) -> list[dict]:
    rows = []
    try:
        for lineno, row in iter_jsonl(path):
            _check_fields(row, f"{path}, line {lineno}", response_field, reference_field)
            rows.append(row)
    except JsonlError as exc:
        where = str(exc.path) if exc.lineno is None else f"{exc.path}, line {exc.lineno}"
        raise GradingInputError(f"{where}: {exc.reason}") from None
    if not rows:
        raise GradingInputError(f"{path}: empty file, no JSON lines to grade")
    return rows


def _paper_verdict(response: str, reference) -> Verdict:
    box = paper_last_box(response)
    if box is None:
        return Verdict(None, False, "no_answer")
    return Verdict(box, paper_is_equiv(response, reference), "paper_rule")


def grade_file(in_path, out_path, *, timeout_s: float = 5.0, workers: int = 2,
               response_field: str = "response", reference_field: str = "reference",
               rules: HouseRules | None = None, protocol: str = "mixdistill") -> dict:
    """Grade a JSONL file of responses; write each row plus extracted_answer/correct/grade_method.

    ``protocol``: "mixdistill" (our grader: extraction heuristics, house rules, math-verify) or
    "paper" (the published rule of Li et al. 2025 alone, :mod:`grading.paper`: the last box,
    string-normalised equality; no judge, no math-verify; methods "paper_rule" / "no_answer").
    All input is validated before anything is written, and the output appears (atomically, by
    rename) only when grading succeeded. Returns {n, correct, accuracy, by_method}.
    """
    if protocol not in PROTOCOLS:
        raise GradingInputError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    in_path, out_path = Path(in_path), Path(out_path)
    if out_path.is_dir():
        raise GradingInputError(f"{out_path}: is a folder; name the output file (e.g. {out_path / 'graded.jsonl'})")
    if not out_path.parent.is_dir():
        raise GradingInputError(f"{out_path}: folder {out_path.parent} does not exist")
    if in_path.exists() and out_path.exists() and in_path.resolve() == out_path.resolve():
        raise GradingInputError(f"{out_path}: is the input file; write the graded lines elsewhere")
    rows = _read_rows(in_path, response_field, reference_field)
    if protocol == "paper":
        verdicts = [_paper_verdict(r[response_field], r[reference_field]) for r in rows]
    else:
        with Grader(timeout_s=timeout_s, workers=workers, rules=rules) as grader:
            verdicts = grader.grade_many([r[response_field] for r in rows], [r[reference_field] for r in rows])
    with atomic_file(out_path, encoding="utf-8") as out:    # appears whole, by rename, or not at all
        for row, verdict in zip(rows, verdicts):
            row = {**row, "extracted_answer": verdict.extracted, "correct": verdict.correct,
                   "grade_method": verdict.method}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    correct = sum(v.correct for v in verdicts)
    return {"n": len(verdicts), "correct": correct, "accuracy": correct / len(verdicts),
            "by_method": dict(Counter(v.method for v in verdicts))}

