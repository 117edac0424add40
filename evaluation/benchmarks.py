"""Evaluation benchmarks, normalised to ``problem_id, problem, reference_answer, benchmark``.

A benchmark spec (``eval.benchmarks.<name>`` in params.yaml) is one of

- ``{kind: champ_heldout}`` — the held-out CHAMP split written by the problems stage (default);
- ``{kind: hf, format: math500, id: HuggingFaceH4/MATH-500, split: test}`` — a hub dataset
  (``id``/``config``/``split`` default to the format's published location);
- ``{kind: file, format: gsm8k, path: data/gsm8k_test.jsonl}`` — a local JSONL file in the
  benchmark's published format.

Formats: ``math`` (MATH test: answer = last ``\\boxed{}`` of the solution), ``math500``, ``gsm8k``
(answer after ``####``), ``aime24``, ``amc23`` (numeric answer), ``olympiadbench`` (English,
text-only; ``final_answer`` is a list). Bad rows raise :class:`BenchmarkError` naming the file,
line and field.

File and hub frames also carry ``reference_raw``: the published reference field, JSON-encoded and
untouched (OlympiadBench's whole ``final_answer`` list with its ``$``, AMC's float, GSM8K's full
worked answer, MATH's solution), which ``eval.protocol: paper`` scores against as the paper did.
CHAMP held-out frames have none: their reference is already the published one.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Iterable

import polars as pl

from common.errors import MixdistillError
from common.io import JsonlError, iter_jsonl
from grading.boxes import last_boxed

BENCHMARK_COLUMNS = ("problem_id", "problem", "reference_answer", "benchmark")
REFERENCE_RAW = "reference_raw"       # file/hub frames only (see the module doc)

# Where each format is published on the hub: (dataset id, config, split).
HUB_DEFAULTS: dict[str, tuple[str, str | None, str]] = {
    "math": ("DigitalLearningGmbH/MATH-lighteval", "default", "test"),
    "math500": ("HuggingFaceH4/MATH-500", None, "test"),
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "aime24": ("HuggingFaceH4/aime_2024", None, "train"),
    "amc23": ("math-ai/amc23", None, "test"),
    "olympiadbench": ("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train"),
}


class BenchmarkError(MixdistillError, ValueError):
    """A benchmark spec or row is unusable; the message names the file/dataset, row and field."""


def _field(row: dict, name: str, where: str, types=(str,)):
    if name not in row or row[name] is None:
        raise BenchmarkError(f"{where}: field '{name}' is missing")
    value = row[name]
    if not isinstance(value, types) or isinstance(value, bool):
        raise BenchmarkError(f"{where}: field '{name}' has type {type(value).__name__}, "
                             f"expected {' or '.join(t.__name__ for t in types)}")
    if isinstance(value, str) and not value.strip():
        raise BenchmarkError(f"{where}: field '{name}' is empty")
    return value


def _number(value, where: str, name: str) -> str:
    """A numeric answer as text: integral floats lose their ``.0`` (AMC stores 27.0 for 27)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BenchmarkError(f"{where}: field '{name}' has type {type(value).__name__}, expected a number")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError as exc:
            raise BenchmarkError(f"{where}: field '{name}' is {value!r}, expected a number") from exc
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _strip_dollars(s: str) -> str:
    s = s.strip()
    while len(s) >= 2 and s.startswith("$") and s.endswith("$"):
        s = s[1:-1].strip()
    return s


def _row_math(row, where, index):
    solution = _field(row, "solution", where)
    answer = last_boxed(solution)
    if not answer:
        raise BenchmarkError(f"{where}: field 'solution' has no \\boxed{{...}} answer")
    pid = row.get("unique_id") or f"math-{index}"
    return str(pid), _field(row, "problem", where), answer


def _row_math500(row, where, index):
    return (_field(row, "unique_id", where), _field(row, "problem", where),
            _field(row, "answer", where))


def _row_gsm8k(row, where, index):
    answer = _field(row, "answer", where)
    if "####" not in answer:
        raise BenchmarkError(f"{where}: field 'answer' does not end with '#### <number>'")
    final = answer.rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise BenchmarkError(f"{where}: field 'answer' has nothing after '####'")
    pid = row.get("idx", index)
    return f"gsm8k-{pid}", _field(row, "question", where), final


def _row_aime24(row, where, index):
    problem = row.get("problem") if row.get("problem") is not None else row.get("question")
    answer = _field(row, "answer", where, (str, int, float))
    pid = _field(row, "id", where, (str, int))
    return (f"aime24-{pid}", _field({"problem": problem}, "problem", where),
            _number(answer, where, "answer"))


def _row_amc23(row, where, index):
    problem = row.get("question") if row.get("question") is not None else row.get("problem")
    pid = _field(row, "id", where, (str, int))
    return (f"amc23-{pid}", _field({"question": problem}, "question", where),
            _number(_field(row, "answer", where, (int, float, str)), where, "answer"))


def _row_olympiadbench(row, where, index):
    question = _field(row, "question", where)
    if row.get("context"):
        question = f"{row['context']}\n\n{question}"
    finals = _field(row, "final_answer", where, (list,))
    parts = [_strip_dollars(p) for p in finals if isinstance(p, str) and p.strip()]
    if len(parts) != len(finals) or not parts:
        raise BenchmarkError(f"{where}: field 'final_answer' must be a non-empty list of non-empty strings")
    # Multi-part answers are written "$69$,$84$"; one comma-separated reference is what we grade.
    answer = ", ".join(_strip_dollars(re.sub(r"\$\s*,\s*\$", ", ", p)) for p in parts)
    pid = _field(row, "id", where, (str, int))
    return f"olympiadbench-{pid}", question, answer


def _keep_olympiadbench(row: dict) -> bool:
    """English, text-only problems (the hub set mixes in Chinese and image problems)."""
    language = row.get("language")
    if language is not None and str(language).lower() not in ("english", "en"):
        return False
    if row.get("modality") not in (None, "Text-only", "text-only", "text"):
        return False
    images = [v for k, v in row.items() if k.startswith("image_") and v]
    return not images


FORMATS: dict[str, Callable] = {
    "math": _row_math, "math500": _row_math500, "gsm8k": _row_gsm8k,
    "aime24": _row_aime24, "amc23": _row_amc23, "olympiadbench": _row_olympiadbench,
}
ROW_FILTERS: dict[str, Callable[[dict], bool]] = {"olympiadbench": _keep_olympiadbench}
# The field each format publishes its reference in, kept raw for the paper's protocol.
RAW_REFERENCE_FIELDS = {"math": "solution", "math500": "answer", "gsm8k": "answer", "aime24": "answer",
                        "amc23": "answer", "olympiadbench": "final_answer"}


def normalise_rows(rows: Iterable[tuple[str, dict]], fmt: str, name: str) -> pl.DataFrame:
    """``rows`` yields ``(where, row)``; ``where`` (e.g. ``file.jsonl: line 3``) goes into errors."""
    if fmt not in FORMATS:
        raise BenchmarkError(f"benchmark '{name}': format '{fmt}' must be one of {', '.join(FORMATS)}")
    convert, keep = FORMATS[fmt], ROW_FILTERS.get(fmt, lambda r: True)
    out, seen = [], {}
    for index, (where, row) in enumerate(rows):
        if not isinstance(row, dict):
            raise BenchmarkError(f"{where}: expected a JSON object, got {type(row).__name__}")
        if not keep(row):
            continue
        pid, problem, answer = convert(row, where, index)
        if pid in seen:
            # Resumable evaluation keys saved samples by problem_id: ids must be unique.
            raise BenchmarkError(f"{where}: field 'problem_id' value {pid!r} repeats {seen[pid]}")
        seen[pid] = where
        out.append({"problem_id": pid, "problem": problem, "reference_answer": answer, "benchmark": name,
                    REFERENCE_RAW: json.dumps(row[RAW_REFERENCE_FIELDS[fmt]], ensure_ascii=False)})
    if not out:
        raise BenchmarkError(f"benchmark '{name}': no problems after reading and filtering")
    return pl.DataFrame(out, schema={c: pl.Utf8 for c in (*BENCHMARK_COLUMNS, REFERENCE_RAW)})


def read_jsonl(path: str | Path) -> Iterable[tuple[str, dict]]:
    path = Path(path)
    if not path.exists():
        raise BenchmarkError(f"{path}: benchmark file not found")
    try:
        for n, row in iter_jsonl(path):
            yield f"{path}: line {n}", row
    except JsonlError as exc:
        raise BenchmarkError(str(exc)) from exc


def _read_hub(spec: dict, fmt: str, name: str) -> Iterable[tuple[str, dict]]:
    from datasets import load_dataset

    default_id, default_config, default_split = HUB_DEFAULTS[fmt]
    dataset_id = spec.get("id", default_id)
    config = spec.get("config", default_config if dataset_id == default_id else None)
    split = spec.get("split", default_split)
    ds = load_dataset(dataset_id, config, split=split, revision=spec.get("revision"))
    label = f"hf:{dataset_id}" + (f"/{config}" if config else "") + f"[{split}]"
    for i, row in enumerate(ds):
        yield f"{label}: row {i}", row


def load_benchmark(name: str, spec: dict, heldout: pl.DataFrame | None = None) -> pl.DataFrame:
    """Load one benchmark as a frame with :data:`BENCHMARK_COLUMNS` (all strings), plus
    :data:`REFERENCE_RAW` for file and hub benchmarks."""
    if not isinstance(spec, dict):
        raise BenchmarkError(f"eval.benchmarks.{name}: expected a mapping, got {spec!r}")
    kind = spec.get("kind")
    if kind == "champ_heldout":
        if heldout is None:
            raise BenchmarkError(f"benchmark '{name}': kind champ_heldout needs the CHAMP test frame")
        missing = [c for c in ("problem_id", "problem", "reference_answer") if c not in heldout.columns]
        if missing:
            raise BenchmarkError(f"benchmark '{name}': held-out frame lacks column(s) {missing}")
        frame = heldout.select([pl.col(c).cast(pl.Utf8) for c in ("problem_id", "problem", "reference_answer")])
        if frame.height == 0:
            raise BenchmarkError(f"benchmark '{name}': the CHAMP held-out frame is empty")
        for i, row in enumerate(frame.iter_rows(named=True)):
            for c in ("problem_id", "problem", "reference_answer"):
                _field(row, c, f"champ held-out: row {i}")
        return frame.with_columns(pl.lit(name).alias("benchmark"))
    fmt = spec.get("format")
    if fmt not in FORMATS:
        raise BenchmarkError(f"eval.benchmarks.{name}.format: '{fmt}' must be one of {', '.join(FORMATS)}")
    if kind == "file":
        if not spec.get("path"):
            raise BenchmarkError(f"eval.benchmarks.{name}.path: a file benchmark needs a path")
        frame = normalise_rows(read_jsonl(spec["path"]), fmt, name)
    elif kind == "hf":
        frame = normalise_rows(_read_hub(spec, fmt, name), fmt, name)
    else:
        raise BenchmarkError(f"eval.benchmarks.{name}.kind: '{kind}' must be champ_heldout, hf or file")
    limit = spec.get("limit")
    return frame.head(int(limit)) if limit else frame
