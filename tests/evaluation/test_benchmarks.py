"""Benchmark loaders: the real public files in ../shared/benchmarks (skipped when absent), hub
loading through a patched ``datasets.load_dataset``, and malformed files."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from evaluation import benchmarks as bm
from evaluation.benchmarks import BENCHMARK_COLUMNS, REFERENCE_RAW, BenchmarkError, last_boxed, load_benchmark

SHARED = Path(__file__).resolve().parents[3] / "shared" / "benchmarks"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/benchmarks not present")


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@needs_shared
@pytest.mark.benchmarks
@pytest.mark.parametrize("fmt,file,count,first_id,first_answer", [
    ("math500", "math500.jsonl", 500, "test/precalculus/807.json", r"\left( 3, \frac{\pi}{2} \right)"),
    ("gsm8k", "gsm8k_test.jsonl", 1319, "gsm8k-0", "18"),
    ("aime24", "aime24.jsonl", 30, "aime24-60", "204"),
    ("amc23", "amc23.jsonl", 40, "amc23-0", "27"),
    ("olympiadbench", "olympiadbench.jsonl", 675, "olympiadbench-1606", "2"),
])
def test_shared_files_load(fmt, file, count, first_id, first_answer):
    frame = load_benchmark(fmt, {"kind": "file", "format": fmt, "path": str(SHARED / file)})
    assert frame.columns == [*BENCHMARK_COLUMNS, REFERENCE_RAW]
    assert frame.height == count
    assert frame["problem_id"].n_unique() == count
    assert (frame["problem_id"][0], frame["reference_answer"][0]) == (first_id, first_answer)
    assert frame["benchmark"].unique().to_list() == [fmt]
    assert frame["problem"].str.len_chars().min() > 10


@needs_shared
@pytest.mark.benchmarks
def test_shared_answer_normalisation():
    amc = load_benchmark("amc23", {"kind": "file", "format": "amc23", "path": str(SHARED / "amc23.jsonl")})
    assert amc["reference_answer"].to_list()[:4] == ["27", "36", "45", "3159"]
    aime = load_benchmark("aime24", {"kind": "file", "format": "aime24", "path": str(SHARED / "aime24.jsonl")})
    assert aime.filter(pl.col("problem_id") == "aime24-67")["reference_answer"].to_list() == ["25"]  # "025"
    ob = load_benchmark("ob", {"kind": "file", "format": "olympiadbench", "path": str(SHARED / "olympiadbench.jsonl")})
    answers = ob["reference_answer"].to_list()
    assert answers[1] == r"\frac{1}{2 n+2}"                              # "$...$" stripped
    assert "(1,8,19), (2,7,13), (4,5,7)" in answers
    assert "69, 84" in answers                                           # "$69$,$84$"
    gsm = load_benchmark("gsm8k", {"kind": "file", "format": "gsm8k", "path": str(SHARED / "gsm8k_test.jsonl"),
                                   "limit": 3})
    assert gsm["reference_answer"].to_list() == ["18", "3", "70000"]


@needs_shared
@pytest.mark.benchmarks
def test_shared_raw_references_are_the_published_fields():
    """``reference_raw`` keeps what the paper's scorer read: untouched, JSON-typed."""
    def raw(fmt, file):
        frame = load_benchmark(fmt, {"kind": "file", "format": fmt, "path": str(SHARED / file)})
        return dict(zip(frame["problem_id"], (json.loads(v) for v in frame[REFERENCE_RAW])))

    assert raw("amc23", "amc23.jsonl")["amc23-0"] == 27.0                    # a float, as published
    assert raw("aime24", "aime24.jsonl")["aime24-67"] == "025"
    ob = raw("olympiadbench", "olympiadbench.jsonl")
    assert ob["olympiadbench-1606"] == ["2"]
    assert ["$69$,$84$"] in ob.values() and [r"$\frac{1}{2 n+2}$"] in ob.values()
    assert raw("gsm8k", "gsm8k_test.jsonl")["gsm8k-0"].endswith("#### 18")


def test_math_format_takes_last_balanced_boxed(tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "p1", "solution": r"so \boxed{2} then \boxed{\frac{1}{2}}.", "unique_id": "a"},
        {"problem": "p2", "solution": r"\fbox{x^{2}}", "level": "Level 1"}])
    frame = load_benchmark("math", {"kind": "file", "format": "math", "path": str(path)})
    assert frame.drop(REFERENCE_RAW).rows() == [("a", "p1", r"\frac{1}{2}", "math"), ("math-1", "p2", "x^{2}", "math")]
    # the paper's protocol reads MATH's reference from the solution itself
    assert json.loads(frame[REFERENCE_RAW][0]) == r"so \boxed{2} then \boxed{\frac{1}{2}}."
    assert last_boxed(r"\boxed{unclosed") is None


def test_olympiadbench_keeps_english_text_only(tmp_path):
    base = {"question": "Find x.", "final_answer": ["$3$"], "context": None}
    path = write_jsonl(tmp_path / "ob.jsonl", [
        {**base, "id": 1, "language": "English", "modality": "Text-only"},
        {**base, "id": 2, "language": "Chinese", "modality": "Text-only"},
        {**base, "id": 3, "language": "English", "modality": "Multimodal"},
        {**base, "id": 4, "image_1": "<img>"},
        {**base, "id": 5, "context": "Let x be 3."}])
    frame = load_benchmark("ob", {"kind": "file", "format": "olympiadbench", "path": str(path)})
    assert frame["problem_id"].to_list() == ["olympiadbench-1", "olympiadbench-5"]
    assert frame["problem"].to_list()[1] == "Let x be 3.\n\nFind x."


def test_hub_loading_uses_published_defaults(monkeypatch):
    calls = []

    def fake_load_dataset(dataset_id, config, split, revision=None):
        calls.append((dataset_id, config, split, revision))
        return [{"question": "Q?", "answer": "work\n#### 1,234", "idx": 7}]

    import datasets

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    frame = load_benchmark("gsm8k", {"kind": "hf", "format": "gsm8k"})
    assert calls == [("openai/gsm8k", "main", "test", None)]
    assert frame.rows() == [("gsm8k-7", "Q?", "1234", "gsm8k", '"work\\n#### 1,234"')]
    load_benchmark("g2", {"kind": "hf", "format": "gsm8k", "id": "me/gsm-copy", "split": "dev", "revision": "abc"})
    assert calls[1] == ("me/gsm-copy", None, "dev", "abc")


def test_hub_errors_name_dataset_and_row(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [{"problem": "p", "unique_id": "u"}])
    with pytest.raises(BenchmarkError, match=r"hf:HuggingFaceH4/MATH-500\[test\]: row 0: field 'answer' is missing"):
        load_benchmark("math500", {"kind": "hf", "format": "math500"})


@pytest.mark.parametrize("rows,fmt,message", [
    (['{"problem": "p", "answer": "1", "unique_id": "a"}', '{"problem": "q", '], "math500",
     r"bad.jsonl: line 2: invalid JSON: Expecting property name .* \(column 18\)"),
    ([{"problem": "p", "answer": "1", "unique_id": "a"}, {"problem": "q", "unique_id": "b"}], "math500",
     r"bad.jsonl: line 2: field 'answer' is missing"),
    ([{"problem": "", "answer": "1", "unique_id": "a"}], "math500", r"line 1: field 'problem' is empty"),
    ([{"question": "q", "answer": "no marker"}], "gsm8k", r"line 1: field 'answer' does not end with '#### <number>'"),
    ([{"id": 1, "question": "q", "answer": "twelve"}], "amc23", r"line 1: field 'answer' is 'twelve', expected a number"),
    ([{"id": 1, "question": "q", "answer": True}], "amc23", r"line 1: field 'answer' has type bool"),
    ([{"id": 1, "question": "q", "final_answer": "3"}], "olympiadbench", r"line 1: field 'final_answer' has type str"),
    ([{"problem": "p", "solution": "no box"}], "math", r"line 1: field 'solution' has no \\boxed"),
    (["[1, 2]"], "math500", r"line 1: expected a JSON object, got list"),
    ([{"problem": "p", "answer": "1", "unique_id": "a"}, {"problem": "q", "answer": "2", "unique_id": "a"}],
     "math500", r"line 2: field 'problem_id' value 'a' repeats .*line 1"),
])
def test_malformed_files_name_file_line_field(tmp_path, rows, fmt, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with pytest.raises(BenchmarkError, match=message):
        load_benchmark("b", {"kind": "file", "format": fmt, "path": str(path)})


def test_invalid_utf8_is_a_benchmark_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"problem": "p", "answer": "1", "unique_id": "a"}\n{"problem": "caf\xe9"}\n')
    with pytest.raises(BenchmarkError, match=r"bad\.jsonl: line 2: not valid UTF-8 \(byte 0xe9"):
        load_benchmark("b", {"kind": "file", "format": "math500", "path": str(path)})


def test_spec_errors(tmp_path):
    with pytest.raises(BenchmarkError, match="benchmark file not found"):
        load_benchmark("b", {"kind": "file", "format": "gsm8k", "path": str(tmp_path / "none.jsonl")})
    with pytest.raises(BenchmarkError, match=r"eval.benchmarks.b.format: 'csv'"):
        load_benchmark("b", {"kind": "file", "format": "csv", "path": "x"})
    with pytest.raises(BenchmarkError, match=r"eval.benchmarks.b.kind: 'ftp'"):
        load_benchmark("b", {"kind": "ftp", "format": "gsm8k"})
    with pytest.raises(BenchmarkError, match="needs the CHAMP test frame"):
        load_benchmark("champ_test", {"kind": "champ_heldout"})
    with pytest.raises(BenchmarkError, match="no problems"):
        load_benchmark("b", {"kind": "file", "format": "gsm8k", "path": str(write_jsonl(tmp_path / "e.jsonl", []))})


def test_champ_heldout_selects_and_tags():
    heldout = pl.DataFrame({"problem_id": ["P_1", "P_2"], "problem": ["a?", "b?"],
                            "reference_answer": ["1", "2^(n-1)"], "fws": ["{}", "{}"]})
    frame = load_benchmark("champ_test", {"kind": "champ_heldout"}, heldout)
    assert frame.rows() == [("P_1", "a?", "1", "champ_test"), ("P_2", "b?", "2^(n-1)", "champ_test")]
    with pytest.raises(BenchmarkError, match=r"champ held-out: row 1: field 'reference_answer' is missing"):
        load_benchmark("champ_test", {"kind": "champ_heldout"},
                       heldout.with_columns(pl.Series("reference_answer", ["1", None])))


def test_every_format_has_a_hub_default():
    assert set(bm.HUB_DEFAULTS) == set(bm.FORMATS)
