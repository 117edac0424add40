"""Progress inside the math-verify step: a bar per pair on a terminal, three lines in captured logs
only for a batch long enough to wait for, nothing for a short one."""
from __future__ import annotations

from common.progress import PROGRESS_ENV
from grading.grader import Grader


def echo_checker(answer, variants, timeout, tail=None):
    return (answer in variants, "math_verify")


# Pairs the string fast path cannot settle: each goes to the checker.
PAIRS = ([f"\\frac{{{i}}}{{2}}" for i in range(40)], [f"{i / 2}" for i in range(40)])


def test_forced_bar_counts_pairs_through_the_worker_pool(capsys, monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    monkeypatch.setattr(Grader, "BAR_DELAY_S", 0.0)
    with Grader(workers=1) as grader:
        verdicts = grader.grade_answers(*PAIRS)
    assert all(v.correct for v in verdicts) and grader.stats["math_verify"] == 40
    err = capsys.readouterr().err
    assert "grading: math-verify:" in err and "/40 [" in err and "pair/s" in err
    assert err.endswith("\r") and err.rsplit("\r", 2)[-2].strip() == ""     # the bar is cleared at the end


def test_quiet_logs_get_three_lines_for_a_long_batch_and_none_for_a_short_one(capsys, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    with Grader(workers=0, checker=echo_checker) as grader:
        grader.grade_answers(PAIRS[0][:10], PAIRS[1][:10])
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(Grader, "QUIET_LINES_FROM_PAIRS", 20)
    with Grader(workers=0, checker=echo_checker) as grader:
        grader.grade_answers(*PAIRS)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "grading: math-verify: 10/40 pairs", "grading: math-verify: 20/40 pairs", "grading: math-verify: 30/40 pairs"]
