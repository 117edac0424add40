"""mix.mixes.<name>.one_per_problem: each problem at most once, shares exact (curation/by_problem.py)."""
import json
import random

import polars as pl
import pytest

from common.params import ParamsError
from curation.by_problem import assign_problems
from curation.config import MixParams
from curation.mixing import MixError, build_mix, load_curated
from curation.schema import problem_key, trace_id


def _write(root, name, problems, traces_per_problem=1, style="long"):
    d = root / name
    d.mkdir(parents=True)
    rows = []
    for p in problems:
        for k in range(traces_per_problem):
            resp = f"{name} answer {k} to {p} \\boxed{{1}}"
            rows.append({"trace_id": trace_id(p, resp, name), "source": name, "problem_id": p, "problem": p,
                         "reference_answer": "1", "prompt": p, "response": resp, "teacher": name, "style": style,
                         "teacher_size": "large", "finish_reason": "stop", "truncated": False, "generation": "{}",
                         "origin": "{}", "response_tokens": 100, "sequence_tokens": 120})
    pl.DataFrame(rows).write_parquet(d / "kept.parquet")
    (d / "report.json").write_text(json.dumps({"contract": {"success": True}, "rejected_by_reason": {}}))


@pytest.fixture
def both_styles(tmp_path):
    problems = [f"Problem number {i}: find x." for i in range(100)]
    _write(tmp_path, "long", problems, traces_per_problem=2)
    # the short set writes the same problems with other spacing and case: still the same problems
    _write(tmp_path, "short", [p.upper().replace(" ", "  ") for p in problems], style="short")
    return tmp_path


def test_each_problem_once_and_shares_exact(both_styles):
    sources = {n: load_curated(both_styles, n) for n in ("long", "short")}
    mix = MixParams(name="mix_long", components={"long": 0.2, "short": 0.8}, size=100, one_per_problem=True)
    rows, manifest = build_mix(mix, {}, sources, seed=3)
    assert rows.height == 100
    assert rows.filter(pl.col("component") == "long").height == 20
    assert rows["problem"].map_elements(problem_key, return_dtype=pl.Utf8).n_unique() == 100
    assert manifest["one_per_problem"]["problems_in_mix"] == 100
    assert manifest["one_per_problem"]["problems_available"] == {"long": 100, "short": 100}
    again, _ = build_mix(mix, {}, sources, seed=3)
    assert again["trace_id"].to_list() == rows["trace_id"].to_list()
    # independent draws (the default) repeat problems across styles
    free, _ = build_mix(MixParams(name="mix_long", components={"long": 0.2, "short": 0.8}, size=100), {}, sources, 3)
    assert free["problem"].map_elements(problem_key, return_dtype=pl.Utf8).n_unique() < 100


def test_repair_pass_finds_an_assignment_greedy_misses():
    # "a" can use every problem, "b" only p0..p2: a greedy "a" first may take them all
    available = {"a": [f"p{i}" for i in range(6)], "b": ["p0", "p1", "p2"]}
    for seed in range(20):
        chosen, _ = assign_problems(available, {"a": 3, "b": 3}, random.Random(seed))
        assert sorted(chosen["b"]) == ["p0", "p1", "p2"] and sorted(chosen["a"]) == ["p3", "p4", "p5"]
    with pytest.raises(ValueError, match="component 'b' needs 4 distinct problems"):
        assign_problems(available, {"a": 2, "b": 4}, random.Random(0))


def test_too_few_problems_is_a_mix_error(both_styles):
    sources = {n: load_curated(both_styles, n) for n in ("long", "short")}
    mix = MixParams(name="m", components={"long": 0.5, "short": 0.5}, size=150, one_per_problem=True)
    with pytest.raises(MixError, match=r"mix 'm' \(one_per_problem\)"):
        build_mix(mix, {}, sources, seed=0)


def test_one_per_problem_needs_a_size_and_no_oversampling():
    with pytest.raises(ParamsError, match="mix.mixes.m.one_per_problem: needs a size"):
        MixParams(name="m", components={"a": 1.0}, token_budget=1000, one_per_problem=True)
    with pytest.raises(ParamsError, match="needs a size"):
        MixParams(name="m", components={"a": 1.0}, size=10, oversample=True, one_per_problem=True)
