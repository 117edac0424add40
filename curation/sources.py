"""Trace and problem sources: the champ-dataset package (offline default), Hugging Face dataset
ids, and local JSONL / JSON / Parquet files, all converted into the one trace schema.

Malformed input raises :class:`SourceError` naming the file, row and field.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from typing import Iterable

import polars as pl

from common.io import JsonlError, ParquetError, iter_jsonl, read_parquet
from common.digests import dumps
from curation.errors import SourceError
from curation.schema import conform, problem_key, trace_id

CHAMP_SUMMARY_PREFIX = "Now, summarize the answer above"


# --------------------------------------------------------------------------- problem ids / split

def numeric_answer(value, where: str, field: str, mapped: str | None = None):
    """A number given as a reference answer, as text (5.0 -> "5"); NaN / Infinity are refused,
    naming ``where`` and ``field``. Anything but a number is returned unchanged."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise SourceError(f"{where}: field '{field}' is {value}"
                              f"{f' (mapped to {mapped})' if mapped else ''}: not an answer")
        return str(int(value)) if float(value).is_integer() else str(value)
    return value


def split_problems(problems: pl.DataFrame, test_fraction: float, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Deterministic train/test split: problems are ranked by a seeded hash of their id, so the
    split does not depend on row order and adding a problem moves no other problem."""
    ranked = problems.with_columns(
        pl.col("problem_id").map_elements(
            lambda pid: hashlib.sha256(f"{seed}:{pid}".encode()).hexdigest(), return_dtype=pl.Utf8
        ).alias("_rank")
    ).sort("_rank")
    n_test = 0 if test_fraction == 0 else max(1, round(problems.height * test_fraction))
    test = ranked.head(n_test).drop("_rank").sort("problem_id")
    train = ranked.slice(n_test).drop("_rank").sort("problem_id")
    return train, test


# --------------------------------------------------------------------------- CHAMP

def champ_path() -> Path:
    spec = importlib.util.find_spec("champ_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("champ-dataset is not installed (pip install champ-dataset)")
    path = Path(spec.submodule_search_locations[0]) / "dataset_files" / "v0.json"
    if not path.exists():
        raise SourceError(f"{path}: CHAMP data file missing from the champ-dataset package")
    return path


def load_champ_raw() -> dict:
    path = champ_path()
    return json.loads(path.read_text(encoding="utf-8"))["problems"]


def champ_origin() -> dict:
    try:
        version = importlib.metadata.version("champ-dataset")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - installed with the project
        version = "unknown"
    return {"package": "champ-dataset", "version": version, "file": "dataset_files/v0.json"}


def champ_problems(raw: dict | None = None) -> pl.DataFrame:
    raw = raw if raw is not None else load_champ_raw()
    rows = []
    for pid, p in raw.items():
        fws = {k: {"start_idx": v.get("start_idx"), "end_idx": v.get("end_idx"), "text": v.get("text"),
                   "author": v.get("author")} for k, v in (p.get("fws_annotations") or {}).items()}
        rows.append({"problem_id": pid, "problem": p["_text"], "reference_answer": p["_answer"],
                     "category": p.get("category"), "fws": dumps(fws)})
    return pl.DataFrame(rows).sort("problem_id")


def _champ_solution(messages: list[dict]) -> tuple[str | None, str | None, str]:
    """(prompt, response, finish_reason) of one CHAMP conversation.

    The solution is the model turn answering the last problem-bearing user turn; CHAMP then asks
    for a one-sentence summary, which is not part of the solution."""
    idx_summary = next((i for i in range(len(messages) - 1, -1, -1)
                        if messages[i]["role"] == "User" and
                        (messages[i]["text"] or "").startswith(CHAMP_SUMMARY_PREFIX)), len(messages))
    model_turns = [i for i in range(idx_summary) if messages[i]["role"].startswith("Model.")]
    if not model_turns:
        return None, None, "unknown"
    i = model_turns[-1]
    user = next((messages[j]["text"] for j in range(i - 1, -1, -1) if messages[j]["role"] == "User"), None)
    msg = messages[i]
    finish = "length" if msg.get("error") in ("LENGTH_CURRENT", "LENGTH_PREVIOUS") else "stop"
    return user, msg.get("text"), finish


def champ_traces(source, settings: Iterable[str], exclude_problem_ids: set[str],
                 raw: dict | None = None) -> pl.DataFrame:
    """One trace per (problem, prompt setting) for one CHAMP model, held-out problems excluded."""
    raw = raw if raw is not None else load_champ_raw()
    settings = list(settings)
    origin = champ_origin()
    rows = []
    for pid, p in raw.items():
        if pid in exclude_problem_ids:
            continue
        for setting in settings:
            conv = p["conversations"].get(f"{source.model}|{setting}")
            if conv is None:
                continue
            prompt, response, finish = _champ_solution(conv["messages"])
            if response is None:
                # CHAMP stores text=None only for turns after a truncated one; the solution turn
                # itself always has text. Keep the row so it is counted and rejected, not lost.
                response = ""
            rows.append(_row(source, pid, p["_text"], p["_answer"], prompt or p["_text"], response,
                             teacher=source.model, finish=finish,
                             generation={"setting": setting, "system": conv["messages"][0].get("text")},
                             origin={**origin, "conversation": f"{source.model}|{setting}"}))
    if not rows:
        raise SourceError(f"sources.{source.name}: CHAMP has no conversations for model "
                          f"'{source.model}' and settings {settings}")
    return conform(pl.DataFrame(rows))


def champ_human_traces(source, exclude_problem_ids: set[str], raw: dict | None = None) -> pl.DataFrame:
    """CHAMP's human step-by-step solutions as a short-CoT source.

    The human steps state the result in prose; we append one line with the reference answer in
    \\boxed{} so the student learns the same answer format as from model teachers. This is recorded
    in each trace's ``generation`` (answer_appended) so it is never hidden."""
    from grading.answers import reference_variants

    raw = raw if raw is not None else load_champ_raw()
    origin = champ_origin()
    rows = []
    for pid, p in raw.items():
        if pid in exclude_problem_ids:
            continue
        steps = [s["_text"] for s in p["solution"]["steps"]]
        variants = reference_variants(p["_answer"]) or [p["_answer"]]
        boxed = next((v for v in variants if re.fullmatch(r"-?[\d.,/]+", v.strip())), variants[0])
        response = "\n".join(steps) + f"\nThe final answer is $\\boxed{{{boxed}}}$."
        rows.append(_row(source, pid, p["_text"], p["_answer"], p["_text"], response,
                         teacher="human", finish="stop",
                         generation={"answer_appended": boxed},
                         origin={**origin, "field": "solution.steps"}))
    return conform(pl.DataFrame(rows))


def _row(source, pid, problem, reference, prompt, response, *, teacher, finish, generation, origin) -> dict:
    return {
        "trace_id": trace_id(problem, response, teacher),
        "source": source.name, "problem_id": pid, "problem": problem, "reference_answer": reference,
        "prompt": prompt, "response": response, "teacher": teacher, "style": source.style,
        "teacher_size": source.teacher_size, "finish_reason": finish, "truncated": finish == "length",
        "generation": dumps(generation), "origin": dumps(origin),
    }


# --------------------------------------------------------------------------- files and the hub

def read_table(path: str | Path, fmt: str | None = None) -> tuple[list[dict], str]:
    """Read JSONL / JSON / Parquet into a list of row dicts, with row-precise errors."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path}: file not found")
    fmt = fmt or {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".parquet": "parquet"}.get(
        path.suffix.lower())
    if fmt is None:
        raise SourceError(f"{path}: cannot tell the format from the suffix; set format: jsonl|json|parquet")
    if path.stat().st_size == 0:
        raise SourceError(f"{path}: file is empty")
    if fmt == "parquet":
        try:
            return read_parquet(path).to_dicts(), str(path)
        except ParquetError as exc:
            raise SourceError(str(exc)) from exc
    if fmt == "json":
        data = path.read_bytes()
        try:
            obj = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise SourceError(f"{path}: line {line}: not valid UTF-8 (byte {exc.start})") from exc
        except json.JSONDecodeError as exc:
            raise SourceError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from exc
        if isinstance(obj, dict):  # {"data": [...]} or {"rows": [...]}: take the one list inside
            lists = [v for v in obj.values() if isinstance(v, list)]
            obj = lists[0] if len(lists) == 1 else None
        if not isinstance(obj, list) or not all(isinstance(r, dict) for r in obj):
            raise SourceError(f"{path}: expected a JSON list of objects")
        return obj, str(path)
    rows = []
    try:
        for lineno, obj in iter_jsonl(path):
            obj["__line__"] = lineno
            rows.append(obj)
    except JsonlError as exc:
        raise SourceError(str(exc)) from exc
    if not rows:
        raise SourceError(f"{path}: no rows (only blank lines)")
    return rows, str(path)


def load_hf_rows(dataset_id: str, split: str, revision: str | None = None,
                 config: str | None = None) -> tuple[list[dict], dict]:
    """Rows of a Hugging Face dataset (a hub id, or a local dataset folder / saved dataset);
    ``config`` names a dataset configuration (MATH's subjects)."""
    import datasets

    local = Path(dataset_id)
    try:
        if local.is_dir() and (local / "dataset_info.json").exists() and not (local / "data").exists():
            ds = datasets.load_from_disk(str(local))
            ds = ds[split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(dataset_id, config, split=split, revision=revision)
    except Exception as exc:
        what = f"config {config}, split {split}" if config else f"split {split}"
        raise SourceError(f"{dataset_id} ({what}): cannot load dataset: {exc}") from exc
    fingerprint = getattr(ds, "_fingerprint", None)
    origin = {"hf_id": dataset_id, "split": split, "revision": revision, "fingerprint": fingerprint,
              **({"config": config} if config else {})}
    return ds.to_list(), origin


def rows_to_traces(rows: list[dict], source, where: str, base_origin: dict,
                   problems_by_key: dict[str, dict] | None = None) -> pl.DataFrame:
    """Map input rows to the trace schema through ``source.columns`` (schema column -> input column).

    Reference answers come from a mapped column, else from the problem set matched by problem
    text; a trace with neither keeps a null reference and is rejected by curation (no_reference)."""
    cols = source.columns
    out = []
    seen_ids: dict[str, int] = {}
    for i, r in enumerate(rows):
        row_no = r.get("__line__", i + 1)
        loc = f"{where}: row {row_no}"

        def field(schema_col, required=True, kind=str):
            col = cols.get(schema_col)
            if col is None:
                return None
            if col not in r:
                if required:
                    raise SourceError(f"{loc}: missing field '{col}' (mapped to {schema_col})")
                return None
            val = r[col]
            if val is None:
                if required:
                    raise SourceError(f"{loc}: field '{col}' is null (mapped to {schema_col})")
                return None
            if kind is str and schema_col == "reference_answer":
                val = numeric_answer(val, loc, col, mapped=schema_col)
            if not isinstance(val, kind):
                raise SourceError(f"{loc}: field '{col}' has type {type(val).__name__}, expected "
                                  f"{kind.__name__} (mapped to {schema_col})")
            return val

        problem = field("problem")
        response = field("response")
        reference = field("reference_answer", required=False)
        pid = field("problem_id", required=False, kind=(str, int))
        pid = str(pid) if pid is not None else problem_key(problem)
        if reference is None and problems_by_key:
            match = problems_by_key.get(problem_key(problem))
            reference = match["reference_answer"] if match else None
        teacher = field("teacher", required=False) or source.teacher or source.name
        finish = field("finish_reason", required=False) or "unknown"
        if finish not in ("stop", "length", "unknown"):
            raise SourceError(f"{loc}: field '{cols['finish_reason']}' is '{finish}', "
                              "expected stop, length or unknown")
        explicit_id = field("trace_id", required=False, kind=(str, int))
        tid = str(explicit_id) if explicit_id is not None else trace_id(problem, response, teacher)
        if explicit_id is not None and tid in seen_ids:
            raise SourceError(f"{loc}: field '{cols['trace_id']}' duplicates the id of row {seen_ids[tid]} ('{tid}')")
        seen_ids.setdefault(tid, row_no)
        prompt = field("prompt", required=False) or problem
        out.append({
            "trace_id": tid, "source": source.name, "problem_id": pid, "problem": problem,
            "reference_answer": reference, "prompt": prompt, "response": response, "teacher": teacher,
            "style": source.style, "teacher_size": source.teacher_size, "finish_reason": finish,
            "truncated": finish == "length",
            "generation": dumps({k: r[c] for k, c in cols.items() if k.startswith("gen_") and c in r}),
            "origin": dumps({**base_origin, "row": row_no}),
        })
    if not out:
        raise SourceError(f"{where}: no rows")
    return conform(pl.DataFrame(out, infer_schema_length=None))


def load_source(source, *, champ_settings: list[str], heldout: pl.DataFrame,
                problems: pl.DataFrame | None = None) -> pl.DataFrame:
    """Load one configured source and drop traces of held-out problems (by id and by text)."""
    heldout_ids = set(heldout["problem_id"].to_list())
    if source.kind == "champ":
        frame = champ_traces(source, champ_settings, heldout_ids)
    elif source.kind == "champ_human":
        frame = champ_human_traces(source, heldout_ids)
    elif source.kind == "generate":
        from curation.teacher import generate_traces  # the engines stay off the import path

        frame = generate_traces(source, problems, exclude_problem_ids=heldout_ids)
    else:
        by_key = None
        if problems is not None and problems.height:
            by_key = {problem_key(p): r for p, r in zip(problems["problem"].to_list(), problems.to_dicts())}
        if source.kind == "hf":
            rows, origin = load_hf_rows(source.id, source.split, source.revision)
            where = f"{source.id} ({source.split})"
        else:
            rows, where = read_table(source.path, source.format)
            origin = {"file": str(Path(source.path).resolve())}
        frame = rows_to_traces(rows, source, where, origin, by_key)
    if source.limit:
        frame = frame.head(source.limit)
    heldout_keys = set(problem_key(p) for p in heldout["problem"].to_list())
    keep = ~frame["problem_id"].is_in(list(heldout_ids)) & ~frame["problem"].map_elements(
        problem_key, return_dtype=pl.Utf8).is_in(list(heldout_keys))
    dropped = frame.height - int(keep.sum())
    if dropped:
        print(f"sources.{source.name}: {dropped} trace(s) answer held-out (test split) problems and are "
              "left out of training", file=sys.stderr)
    unmatched = int(frame["reference_answer"].is_null().sum())
    if unmatched:
        print(f"sources.{source.name}: {unmatched} trace(s) match no problem of problems.set; curation "
              "rejects them as no_reference and lists them in its report", file=sys.stderr)
    return frame.filter(keep)


def assert_no_heldout(frame: pl.DataFrame, heldout: pl.DataFrame, where: str) -> None:
    """The held-out split must never reach a training source: checked, not assumed."""
    ids = set(heldout["problem_id"].to_list())
    keys = set(problem_key(p) for p in heldout["problem"].to_list())
    bad = frame.filter(pl.col("problem_id").is_in(list(ids)) |
                       pl.col("problem").map_elements(problem_key, return_dtype=pl.Utf8).is_in(list(keys)))
    if bad.height:
        raise SourceError(f"{where}: {bad.height} trace(s) answer held-out problems, e.g. "
                          f"{bad['problem_id'].head(5).to_list()}")
