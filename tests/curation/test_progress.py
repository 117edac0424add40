"""Progress of a curation run (curation.suite.curate_frame, as the curate stage calls it): quiet
but for a summary line in captured logs, a bar with rows/s when forced on."""
from __future__ import annotations

import pytest

from common.progress import PROGRESS_ENV
from curation.config import CorrectnessParams, CurateParams
from curation.suite import curate_frame
from tests.curation.helpers import make_traces
from tests.curation.test_runner import WordTok

# Enough rows that a per-row or per-chunk print would show, few enough to run in a second or two.
ROWS = 400


def _traces():
    return make_traces([{"problem": f"Problem {i}: what is {i} + 1?",
                         "response": f"Adding one to {i} step by step gives {i + 1}. The answer is \\boxed{{{i + 1}}}.",
                         "reference_answer": str(i + 1 if i % 5 else i)} for i in range(ROWS)])


def _curate(tmp_path):
    cur = CurateParams(min_tokens=3, max_tokens=4096, cutoff_len=1024,
                       correctness=CorrectnessParams(timeout_s=5.0, workers=1))
    return curate_frame(_traces().drop("response_tokens", "sequence_tokens"), cur, WordTok(), tmp_path,
                        label="curate@test")


def test_captured_stderr_gets_one_summary_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    result = _curate(tmp_path)
    assert result.report["input"] == ROWS and result.report["rejected_by_reason"]["answer_mismatch"] == ROWS // 5
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("curate@test")]
    assert len(err.splitlines()) <= 3, err           # at most a handful, whatever the row count
    assert len(lines) == 1 and "\r" not in err
    steps = len(result.timings) + 1                  # the checks and grading, plus token counting
    assert lines[0].startswith(f"curate@test: {ROWS} rows through {steps} steps in ")
    assert "rows/s" in lines[0] and "correctness" in lines[0]


def test_forced_progress_draws_a_bar_with_rows_per_second(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    result = _curate(tmp_path)
    err = capsys.readouterr().err
    steps = len(result.timings) + 1
    assert "curate@test" in err and f"{steps}/{steps}" in err and "\r" in err
    assert "rows/s" in err and "last=correctness" in err


@pytest.mark.parametrize("value", ["0", ""])
def test_forced_off_or_unset_never_draws(tmp_path, capsys, monkeypatch, value):
    monkeypatch.setenv(PROGRESS_ENV, value)
    _curate(tmp_path)
    assert "\r" not in capsys.readouterr().err
