import json
from pathlib import Path

import polars as pl
import pytest

from curation.decontam import Decontaminator
from tests.curation.helpers import make_traces

# 31 words once normalised.
LONG = ("Every morning Aya goes for a $9$-kilometer-long walk and stops at a coffee shop afterwards. "
        "When she walks at a constant speed of $s$ kilometers per hour, the walk takes her 4 hours.")
SHORT = "Compute $\\dbinom{8}{4}$."
SEQUENCE = ("Let $a_1, a_2, a_3, a_4, a_5, a_6, a_7$ be real numbers with $a_1 = 1$. Find the "
            "largest possible value of $a_7$ given that consecutive terms differ by at most two.")

BENCHMARKS = {"bench_a": [LONG, SEQUENCE], "bench_b": [SHORT, LONG]}


@pytest.fixture(scope="module")
def decon():
    return Decontaminator(BENCHMARKS, ngram=13)


def run(decon, rows):
    frame = make_traces(rows)
    found = decon.match_frame(frame)
    assert decon(frame).to_list() == [("contaminated" if m else None) for m in found["contaminated_by"]]
    assert decon.matches(frame) == found["contaminated_by"].to_list()
    return list(zip(found["contaminated_by"].to_list(), found["contaminated_in"].to_list()))


def test_problem_copy_is_found_through_formatting(decon):
    reformatted = LONG.replace("$9$", "\\(9\\)").replace("$s$", "s").replace(",", "").upper()
    assert run(decon, [{"problem": reformatted}, {"problem": "Prefix. " + LONG + " Suffix."}]) == [
        ("bench_a", "problem"), ("bench_a", "problem")]


def test_thirteen_words_hit_twelve_do_not(decon):
    thirteen = "A different story: she walks at a constant speed of s kilometers per hour, the walk ends."
    twelve = "A different story: she walks at a constant speed of s kilometers per hour, the end."
    assert run(decon, [{"response": thirteen}, {"response": twelve}]) == [
        ("bench_a", "response"), (None, None)]


def test_response_restating_the_problem(decon):
    response = f"We are told: {LONG} So the speed is s = 2.5 and the answer is 204 minutes."
    assert run(decon, [{"problem": "An unrelated word problem about trains.", "response": response}]) == [
        ("bench_a", "response")]


def test_short_problem_matches_exactly_only(decon):
    rows = [{"problem": "compute \\dbinom{8}{4}"}, {"problem": "Compute $\\binom{8}{4}$."},
            {"problem": "Compute $\\dbinom{8}{4}$ and then double it."}]
    assert run(decon, rows) == [("bench_b", "problem"), (None, None), (None, None)]


def test_formula_runs_are_not_evidence(decon):
    # Shares the 15-token run "a 1 a 2 ... a 7" (and more) with SEQUENCE, but fewer than 5 words
    # of two or more characters in any shared 13-gram.
    response = "Write $a_1, a_2, a_3, a_4, a_5, a_6, a_7$ for the digits of the sum and add them."
    assert run(decon, [{"response": response}]) == [(None, None)]
    strict = Decontaminator(BENCHMARKS, ngram=13, min_content_words=0)
    assert strict.matches(make_traces([{"response": response}])) == ["bench_a"]


def test_first_benchmark_wins_and_problem_before_response(decon):
    # LONG is in both benchmarks: the first listed is named.
    assert run(decon, [{"problem": LONG}]) == [("bench_a", "problem")]
    rows = [{"problem": SHORT, "response": "Restating: " + LONG}]
    assert run(decon, rows) == [("bench_b", "problem")]


def test_many_rows_share_a_problem(decon):
    rows = [{"problem": LONG if i % 3 == 0 else f"Problem number {i} about a walk."} for i in range(30)]
    assert [m for m, _ in run(decon, rows)] == [("bench_a" if i % 3 == 0 else None) for i in range(30)]


def test_no_benchmarks_and_validation():
    empty = Decontaminator({})
    assert empty.matches(make_traces([{"problem": LONG}])) == [None]
    assert Decontaminator({"b": []})(make_traces([{}])).to_list() == [None]
    with pytest.raises(ValueError, match="min_content_words 14"):
        Decontaminator(BENCHMARKS, ngram=13, min_content_words=14)


BENCH_DIR = Path(__file__).resolve().parents[3] / "shared" / "benchmarks"


@pytest.mark.benchmarks
@pytest.mark.skipif(not (BENCH_DIR / "math500.jsonl").exists(), reason="needs ../shared/benchmarks")
def test_real_benchmark_copies_are_found():
    lines = (BENCH_DIR / "math500.jsonl").read_text(encoding="utf-8").splitlines()
    problems = [json.loads(line)["problem"] for line in lines]
    decon = Decontaminator({"math500": problems})
    rows = [{"problem": p.replace("$", " "), "response": "Answer: 1."} for p in problems[:100]]
    rows += [{"problem": "Find the area of a square of side 3.", "response": "We restate: " + p}
             for p in problems[100:200]]
    found = decon.match_frame(make_traces(rows))
    # As the trace's problem, every copy is found (short ones by exact normalised match).
    assert found["contaminated_in"][:100].to_list() == ["problem"] * 100
    # Restated inside a response, a copy is found when the problem has a 13-word window.
    words = pl.Series(problems[100:200]).str.to_lowercase().str.extract_all(r"[^\W_]+").list.len()
    assert (words >= 13).sum() == 87
    assert found["contaminated_in"][100:].to_list() == [("response" if n >= 13 else None) for n in words]
