"""problems.set in MATH format, several hub configs, test_fraction 0 (curation/problem_sets.py)."""
import json

import polars as pl
import pytest

from common.params import ParamsError
from curation import problem_sets
from curation.config import ProblemsParams, SourceParams
from curation.problem_sets import load_problem_set, split_problems
from curation.runner import run_curation
from curation.sources import SourceError, load_source
from grading.grader import Grader
from pipelines.params import parse_params
from tests.project import project_params

MATH_ROWS = [
    {"problem": "What is $1+1$?", "solution": "We add. $1+1=\\boxed{2}$.", "level": "Level 1", "type": "Algebra"},
    {"problem": "Simplify $\\frac{2}{4}$.", "solution": "Halve: $\\boxed{\\frac{1}{2}}$ (not \\boxed{2}) so "
                "the answer is $\\boxed{\\dfrac12}$.", "level": "Level 2", "type": "Prealgebra"},
    {"problem": "Find $x$ if $x^2=9$, $x>0$.", "solution": "$x=\\boxed{3}$", "level": "Level 1", "type": "Algebra"},
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_math_format_takes_the_last_box_of_the_solution(tmp_path):
    path = _jsonl(tmp_path / "math_train.jsonl", MATH_ROWS)
    problems = load_problem_set({"kind": "file", "path": str(path), "format": "math"})
    assert problems["reference_answer"].to_list() == ["2", "\\dfrac12", "3"]
    assert problems["category"].to_list() == ["Algebra", "Prealgebra", "Algebra"]
    assert problems["problem_id"].n_unique() == 3


def test_a_solution_without_a_box_names_file_row_and_field(tmp_path):
    rows = [*MATH_ROWS[:2], {"problem": "Say hi.", "answer_text": "hi", "solution": "Just say hi."}]
    path = _jsonl(tmp_path / "math_train.jsonl", rows)
    with pytest.raises(SourceError, match=r"math_train.jsonl: row 3: field 'solution' has no \\boxed\{\}"):
        load_problem_set({"kind": "file", "path": str(path), "format": "math"})
    renamed = _jsonl(tmp_path / "renamed.jsonl", [{"question": r["problem"], "worked": r["solution"]} for r in MATH_ROWS])
    got = load_problem_set({"kind": "file", "path": str(renamed), "format": "math",
                            "columns": {"problem": "question", "solution": "worked"}})
    assert got.height == 3


def test_several_hub_configs_are_joined(monkeypatch):
    calls = []

    def fake_rows(dataset_id, split, revision=None, config=None):
        calls.append((dataset_id, split, revision, config))
        return [r for r in MATH_ROWS if r["type"].lower() == config], {}

    monkeypatch.setattr(problem_sets, "load_hf_rows", fake_rows)
    got = load_problem_set({"kind": "hf", "id": "EleutherAI/hendrycks_math", "format": "math", "revision": "abc",
                            "configs": ["algebra", "prealgebra"]})
    assert calls == [("EleutherAI/hendrycks_math", "train", "abc", "algebra"),
                     ("EleutherAI/hendrycks_math", "train", "abc", "prealgebra")]
    assert got["category"].to_list() == ["algebra", "algebra", "prealgebra"]


def test_test_fraction_zero_keeps_every_problem_for_training(tmp_path):
    problems = load_problem_set({"kind": "file", "path": str(_jsonl(tmp_path / "m.jsonl", MATH_ROWS)), "format": "math"})
    train, test = split_problems(problems, 0.0, 13)
    assert (train.height, test.height) == (3, 0)
    assert ProblemsParams(set={"kind": "champ"}, test_fraction=0).test_fraction == 0
    for bad in (1.0, -0.1, "0.2", True):
        with pytest.raises(ParamsError, match=r"problems.test_fraction: .* must be in \[0, 1\)"):
            ProblemsParams(set={"kind": "champ"}, test_fraction=bad)
    with pytest.raises(ParamsError, match="problems.set.format: 'mathml' must be one of"):
        ProblemsParams(set={"kind": "file", "path": "x", "format": "mathml"})


def test_without_a_heldout_split_decontamination_covers_every_eval_benchmark():
    benchmarks = {"math500": {"kind": "file", "path": "m.jsonl", "format": "math500"},
                  "gsm8k": {"kind": "file", "path": "g.jsonl", "format": "gsm8k"}}
    raw = project_params(problems={"set": {"kind": "champ"}, "test_fraction": 0},
                         eval={"benchmarks": benchmarks},
                         curate={**project_params()["curate"], "decontam": {"ngram": 13, "benchmarks": []}})
    assert parse_params(raw).curate.decontam.benchmarks == ["gsm8k", "math500"]
    raw["eval"]["benchmarks"]["champ_test"] = {"kind": "champ_heldout"}
    with pytest.raises(ParamsError, match="eval.benchmarks.champ_test: kind champ_heldout needs a held-out split"):
        parse_params(raw)


def test_traces_matched_by_problem_text_and_unmatched_ones_kept_for_the_report(tmp_path, capsys):
    problems = load_problem_set({"kind": "file", "path": str(_jsonl(tmp_path / "m.jsonl", MATH_ROWS)), "format": "math"})
    traces = _jsonl(tmp_path / "long.jsonl", [
        {"problem": "  What is   $1+1$?", "solution": "Long thought... \\boxed{2}"},      # spacing differs
        {"problem": "A problem not in MATH.", "solution": "\\boxed{7}"}])
    src = SourceParams(name="long", kind="file", style="long", teacher_size="large", teacher="qwq",
                       path=str(traces), columns={"problem": "problem", "response": "solution"})
    empty = problems.head(0)
    frame = load_source(src, champ_settings=[], heldout=empty, problems=problems)
    assert frame["reference_answer"].to_list() == ["2", None]
    assert "1 trace(s) match no problem of problems.set" in capsys.readouterr().err
    with Grader(workers=0) as grader:
        result = run_curation(frame.with_columns(response_tokens=pl.lit(10), sequence_tokens=pl.lit(20)),
                              row_checks=[], grader=grader)
    assert result.rejected["reasons"].to_list() == [["no_reference"]]
    assert result.report["no_reference"] == {"traces": 1, "problems": ["A problem not in MATH."]}
