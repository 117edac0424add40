"""common.progress: a bar on a terminal or when forced, a handful of summary lines otherwise."""
from __future__ import annotations

import io

import pytest

from common.progress import PROGRESS_ENV, Progress, ProgressSettingError, StepProgress, progress_enabled


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_decides_unless_the_env_forces(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert progress_enabled(Terminal()) is True
    assert progress_enabled(io.StringIO()) is False
    monkeypatch.setenv(PROGRESS_ENV, "0")
    assert progress_enabled(Terminal()) is False
    monkeypatch.setenv(PROGRESS_ENV, "1")
    assert progress_enabled(io.StringIO()) is True
    monkeypatch.setenv(PROGRESS_ENV, "sometimes")
    with pytest.raises(ProgressSettingError, match=r"environment variable MIXDISTILL_PROGRESS='sometimes': "
                                                   r"expected 1 or 0"):
        progress_enabled(io.StringIO())


def test_quiet_loop_prints_milestones_and_one_summary(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    out = io.StringIO()
    with Progress(1000, "eval: generate", "problem", initial=200, milestones=3, stream=out) as bar:
        for _ in range(800):
            bar.update(1, tokens=50)
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 + 1             # 1000 updates, 4 lines: the 25/50/75 % marks (250 is past 200), end
    assert [line.split(" (")[0] for line in lines] == [
        "eval: generate: 250/1000 problems", "eval: generate: 500/1000 problems",
        "eval: generate: 750/1000 problems", lines[-1].split(" (")[0]]
    assert lines[-1].startswith("eval: generate: 1000/1000 problems in ")
    assert "problem/s" in lines[-1] and "tokens/s" in lines[-1]
    assert "\r" not in out.getvalue()


def test_forced_bar_shows_rates(monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    out = io.StringIO()
    with Progress(4, "gen", "problem", stream=out) as bar:
        for _ in range(4):
            bar.note(correct=3)
            bar.update(1, tokens=100)
    text = out.getvalue()
    assert "\r" in text and "4/4" in text
    assert "problem/s" in text and "tokens/s" in text and "correct=3" in text


def test_steps_record_rows_per_second(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    out = io.StringIO()
    with StepProgress("curate@x", rows=1000, steps=1, stream=out) as steps:
        steps.record("token_counts", 0.5)
        steps.add_steps(2)
        timings = steps.timings()
        timings["length"] = 0.1
        timings["correctness"] = 2.0
    assert dict(timings) == {"length": 0.1, "correctness": 2.0}
    assert out.getvalue().splitlines() == [
        "curate@x: 1000 rows through 3 steps in 2.6s (slowest: correctness 500 rows/s, "
        "token_counts 2,000 rows/s, length 10,000 rows/s)"]
