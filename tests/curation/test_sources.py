import json

import polars as pl
import pytest

from curation.schema import TRACE_COLUMNS
from curation.sources import (SourceError, assert_no_heldout, champ_problems, champ_traces,
                              load_source, read_table, rows_to_traces, split_problems)
from curation.config import SourceParams


def _file_source(path, **cols):
    return SourceParams(name="local", kind="file", style="long", teacher_size="large", path=str(path),
                        teacher="qwq", columns={"problem": "q", "response": "a", **cols})


@pytest.fixture(scope="module")
def champ():
    problems = champ_problems()
    train, test = split_problems(problems, 0.2, 13)
    return problems, train, test


def test_champ_split_is_deterministic_and_disjoint(champ):
    problems, train, test = champ
    assert problems.height == 270
    assert (train.height, test.height) == (216, 54)
    assert not set(train["problem_id"]) & set(test["problem_id"])
    # Same seed, shuffled input order: same split.
    _, test2 = split_problems(problems.sample(fraction=1.0, shuffle=True, seed=1), 0.2, 13)
    assert test2["problem_id"].to_list() == test["problem_id"].to_list()


def test_champ_traces_schema_and_truncation(champ):
    _, train, test = champ
    src = SourceParams(name="g4t", kind="champ", model="GPT-4 Turbo", style="long", teacher_size="large")
    frame = champ_traces(src, ["0-Shot", "5-Shot"], set(test["problem_id"]))
    assert frame.columns == TRACE_COLUMNS
    assert frame.height == 2 * 216
    assert frame["trace_id"].n_unique() == frame.height
    assert set(frame["problem_id"]) <= set(train["problem_id"])
    assert (frame["truncated"] == (frame["finish_reason"] == "length")).all()
    # The summary turn ("Now, summarize...") is not part of the solution.
    assert not frame["response"].str.contains("summarize the answer above").any()
    assert_no_heldout(frame, test, "g4t")


def test_heldout_leak_is_detected(champ):
    _, _, test = champ
    src = SourceParams(name="g4", kind="champ", model="GPT-4", style="short", teacher_size="large")
    leaky = champ_traces(src, ["0-Shot"], set())
    with pytest.raises(SourceError, match=r"g4: 54 trace\(s\) answer held-out problems"):
        assert_no_heldout(leaky, test, "g4")


def test_file_source_by_text_match_excludes_heldout(tmp_path, champ):
    _, train, test = champ
    held = test.row(0, named=True)
    path = tmp_path / "t.jsonl"
    rows = [{"q": held["problem"], "a": "leak \\boxed{1}"}, {"q": "What is 1+1?", "a": "\\boxed{2}", "ans": "2"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    frame = load_source(_file_source(path, reference_answer="ans"), champ_settings=[], heldout=test,
                        problems=train)
    assert frame["problem"].to_list() == ["What is 1+1?"]
    assert frame["reference_answer"].to_list() == ["2"]
    assert json.loads(frame["origin"][0])["row"] == 2


@pytest.mark.parametrize("content,match", [
    (b"", r"t.jsonl: file is empty"),
    (b'{"q": "x", "a": "y"}\n{"q": "x", "a": \n', r"t.jsonl: line 2: invalid JSON"),
    (b'{"q": "x", "a": "y"}\n{"q": "\xff\xfe", "a": "y"}\n', r"t.jsonl: line 2: not valid UTF-8"),
    (b'{"q": "x", "a": "y"}\n{"q": "x"}\n', r"t.jsonl: row 2: missing field 'a' \(mapped to response\)"),
    (b'{"q": "x", "a": null}\n', r"row 1: field 'a' is null \(mapped to response\)"),
    (b'{"q": "x", "a": 5}\n', r"row 1: field 'a' has type int, expected str"),
    (b'[1, 2]\n', r"line 1: expected a JSON object"),
])
def test_bad_jsonl_is_named(tmp_path, content, match):
    path = tmp_path / "t.jsonl"
    path.write_bytes(content)
    with pytest.raises(SourceError, match=match):
        rows, where = read_table(path)
        rows_to_traces(rows, _file_source(path), where, {})


def test_duplicate_explicit_ids(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "a", "q": "x", "a": "y"}\n{"id": "a", "q": "z", "a": "w"}\n')
    rows, where = read_table(path)
    with pytest.raises(SourceError, match=r"row 2: field 'id' duplicates the id of row 1"):
        rows_to_traces(rows, _file_source(path, trace_id="id"), where, {})


def test_parquet_and_json_sources(tmp_path):
    pl.DataFrame({"q": ["p1", "p2"], "a": ["r1", "r2"]}).write_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.json").write_text(json.dumps({"data": [{"q": "p1", "a": "r1"}]}))
    for name, n in (("t.parquet", 2), ("t.json", 1)):
        rows, where = read_table(tmp_path / name)
        frame = rows_to_traces(rows, _file_source(tmp_path / name), where, {})
        assert frame.height == n and frame["teacher"].to_list() == ["qwq"] * n
        assert frame["reference_answer"].null_count() == n  # no reference: rejected later, not dropped


def test_hf_source_on_local_files(tmp_path, champ):
    """The hub loader is the real datasets.load_dataset path, pointed at a local folder."""
    _, train, test = champ
    d = tmp_path / "hf_set"
    d.mkdir()
    pl.DataFrame({"problem": ["Compute 2+3.", "Compute 4*4."],
                  "solution": ["2+3=5, so \\boxed{5}", "\\boxed{16}"]}).write_parquet(d / "train.parquet")
    src = SourceParams(name="hub", kind="hf", id=str(d), split="train", style="long", teacher_size="large",
                       teacher="QwQ-32B-Preview", columns={"problem": "problem", "response": "solution"})
    frame = load_source(src, champ_settings=[], heldout=test, problems=train)
    assert frame.height == 2
    assert json.loads(frame["origin"][0])["hf_id"] == str(d)
    assert frame["teacher"].unique().to_list() == ["QwQ-32B-Preview"]
