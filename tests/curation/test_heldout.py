"""The held-out trace set: only test-split problems, both styles, curation's checks, a seeded subset."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest

from common.layout import HELDOUT_COLUMNS
from common.params import ParamsError
from curation.config import CurateParams, SourceParams
from curation.heldout import build_heldout, heldout_source_traces, seeded_subset, style_sources
from curation.sources import load_source
from tests.training.conftest import tokenizer, tokenizer_dir  # noqa: F401 (fixtures)

TEST_IDS = ["P00", "P01", "P02", "P03"]
COLUMNS = {"problem": "problem", "response": "response", "problem_id": "id", "reference_answer": "answer",
           "finish_reason": "finish"}


def problems() -> pl.DataFrame:
    return pl.DataFrame([{"problem_id": f"P{i:02d}", "problem": f"What is {i} plus one?",
                          "reference_answer": str(i + 1)} for i in range(10)])


def solution(i: int, variant: int, answer: int | None = None) -> str:
    answer = i + 1 if answer is None else answer
    return (f"We read the problem, variant {variant}. Adding {i} and one gives {i + 1}, "
            f"which we check by counting up from {i}. Therefore the answer is \\boxed{{{answer}}}.")


def write_source(tmp_path: Path, name: str, rows: list[dict]) -> Path:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def source(tmp_path: Path, name: str, style: str, rows: list[dict]) -> SourceParams:
    return SourceParams(name=name, kind="file", style=style, teacher_size="large",
                        path=str(write_source(tmp_path, name, rows)), columns=COLUMNS, teacher=f"teacher_{name}")


def long_rows() -> list[dict]:
    rows = [{"id": f"P{i:02d}", "problem": f"What is {i} plus one?", "response": solution(i, v), "answer": str(i + 1),
             "finish": "stop"} for i in range(10) for v in (1, 2)]
    bad = [("P01", "   \u200b ", "stop"),                                    # empty_response
           ("P02", solution(2, 3), "length"),                                # truncated_generation
           ("P03", " ".join(f"n{k}" for k in range(400)) + " \\boxed{4}", "stop")]   # over_cutoff
    rows += [{"id": pid, "problem": f"What is {int(pid[1:])} plus one?", "response": text,
              "answer": str(int(pid[1:]) + 1), "finish": finish} for pid, text, finish in bad]
    return rows


def short_rows() -> list[dict]:
    return [{"id": f"P{i:02d}", "problem": f"What is {i} plus one?",
             "response": f"{i} + 1 = {i + 1}, so \\boxed{{{i + 1}}}.", "answer": str(i + 1), "finish": "stop"}
            for i in range(10)]


# over_cutoff: flag keeps long traces for training; the held-out set still rejects them
CURATE = CurateParams(min_tokens=8, max_tokens=4096, cutoff_len=200, over_cutoff="flag")


@pytest.fixture
def sources(tmp_path):
    return {"long_src": source(tmp_path, "long_src", "long", long_rows()),
            "short_src": source(tmp_path, "short_src", "short", short_rows()),
            "other_short": source(tmp_path, "other_short", "short", short_rows()[:2])}


def split():
    all_problems = problems()
    return all_problems.filter(pl.col("problem_id").is_in(TEST_IDS)), all_problems


def build(sources, tokenizer, n, seed=0, groups=None):  # noqa: F811
    test, all_problems = split()
    by_style = style_sources(sources, {"long": ["long_src"], "short": ["short_src"]} if groups is None else groups)
    return build_heldout(by_style, test, all_problems, CURATE, tokenizer, champ_settings=[], max_per_style=n,
                         seed=seed)


def expected_ids(frame: pl.DataFrame, n: int, seed: int) -> list[str]:
    """The subset by its definition: each problem's best-ranked trace, best first, first n."""
    rank = {t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest() for t in frame["trace_id"].to_list()}
    best: dict[str, str] = {}
    for pid, tid in zip(frame["problem_id"].to_list(), frame["trace_id"].to_list()):
        if pid not in best or rank[tid] < rank[best[pid]]:
            best[pid] = tid
    return sorted(sorted(best.values(), key=rank.get)[:n])


def test_heldout_holds_only_test_problems_of_both_styles_with_exact_counts(sources, tokenizer):  # noqa: F811
    traces, summary = build(sources, tokenizer, n=3)
    assert traces.columns == list(HELDOUT_COLUMNS)
    assert set(traces["problem_id"]) <= set(TEST_IDS)
    assert traces.group_by("style").len().sort("style").rows() == [("long", 3), ("short", 3)]
    assert traces.filter(pl.col("style") == "long")["problem_id"].n_unique() == 3     # one per problem first
    assert set(traces["source"]) == {"long_src", "short_src"}                          # other_short is in no group
    assert set(traces.filter(pl.col("style") == "short")["teacher"]) == {"teacher_short_src"}
    long = summary["styles"]["long"]
    assert (long["candidates"], long["passed"], long["selected"]) == (11, 8, 3)
    # the blank response is also too short: every reason of a row is counted
    assert long["rejected_by_reason"] == {"empty_response": 1, "too_short": 1, "truncated_generation": 1,
                                          "over_cutoff": 1}
    assert (summary["styles"]["short"]["candidates"], summary["styles"]["short"]["selected"]) == (4, 3)
    assert summary["n_heldout_problems"] == 4 and "note" not in summary

    everything, _ = build(sources, tokenizer, n=None)
    for style, n in (("long", 3), ("short", 3)):
        pool = everything.filter(pl.col("style") == style)
        assert sorted(traces.filter(pl.col("style") == style)["trace_id"]) == expected_ids(pool, n, seed=0)
    assert everything.group_by("style").len().sort("style").rows() == [("long", 8), ("short", 4)]


def test_subset_is_seeded_and_independent_of_row_order(sources, tokenizer):  # noqa: F811
    everything, _ = build(sources, tokenizer, n=None)
    long = everything.filter(pl.col("style") == "long")
    first = seeded_subset(long, 3, seed=5)
    assert sorted(first["trace_id"]) == expected_ids(long, 3, seed=5)
    assert seeded_subset(long.reverse(), 3, seed=5)["trace_id"].to_list() == first["trace_id"].to_list()
    assert seeded_subset(long, 5, seed=5)["problem_id"].n_unique() == 4      # a second trace only after all four
    assert seeded_subset(long, None, seed=5).height == long.height


def test_heldout_traces_are_exactly_what_the_traces_stage_leaves_out(sources):
    test, all_problems = split()
    src = sources["long_src"]
    training = load_source(src, champ_settings=[], heldout=test, problems=all_problems)
    held = heldout_source_traces(src, test, all_problems, [])
    assert set(training["trace_id"]).isdisjoint(held["trace_id"])
    assert training.height + held.height == len(long_rows())
    assert set(held["problem_id"]) == set(TEST_IDS)


def test_a_held_out_problem_is_matched_by_its_text_too(tmp_path):
    test, all_problems = split()
    rows = [{"problem": "  what is 1 PLUS one? ", "response": solution(1, 1)}]   # no id: matched by text
    src = SourceParams(name="noid", kind="file", style="long", teacher_size="large",
                       path=str(write_source(tmp_path, "noid", rows)),
                       columns={"problem": "problem", "response": "response"})
    assert heldout_source_traces(src, test, all_problems, []).height == 1


def test_empty_test_split_gives_an_empty_set_and_a_note(sources, tokenizer):  # noqa: F811
    _, all_problems = split()
    traces, summary = build_heldout(style_sources(sources, {}), all_problems.head(0), all_problems, CURATE, tokenizer,
                                    champ_settings=[], max_per_style=3, seed=0)
    assert traces.height == 0 and traces.columns == list(HELDOUT_COLUMNS)
    assert summary["note"].startswith("no held-out problems") and summary["styles"] == {}


def test_a_style_without_traces_is_noted(sources, tokenizer):  # noqa: F811
    traces, summary = build({"long_src": sources["long_src"]}, tokenizer, n=3, groups={})
    assert set(traces["style"]) == {"long"}
    assert summary["styles"]["short"]["selected"] == 0
    assert summary["note"] == "no short traces of held-out problems"


def test_styles_come_from_groups_or_from_each_source_style(sources):
    assert {s: [x.name for x in m] for s, m in style_sources(sources, {}).items()} == \
        {"long": ["long_src"], "short": ["short_src", "other_short"]}
    with pytest.raises(ParamsError, match=r"groups.long: source\(s\) \['short_src'\] have another style"):
        style_sources(sources, {"long": ["short_src"]})


def test_answer_check_rejects_wrong_answers(tmp_path, tokenizer):  # noqa: F811
    from grading.grader import Grader

    rows = short_rows()[:4]
    rows[1] = {**rows[1], "response": "1 + 1 = 3, so \\boxed{3}."}
    src = {"short_src": source(tmp_path, "short_src", "short", rows)}
    test, all_problems = split()
    grader = Grader(timeout_s=5.0, workers=1)
    try:
        traces, summary = build_heldout(style_sources(src, {"short": ["short_src"]}), test, all_problems, CURATE,
                                        tokenizer, champ_settings=[], max_per_style=None, seed=0, grader=grader)
    finally:
        grader.close()
    assert summary["styles"]["short"]["rejected_by_reason"] == {"answer_mismatch": 1}
    assert sorted(traces["problem_id"]) == ["P00", "P02", "P03"]
    assert "correctness" in summary["checks"]
