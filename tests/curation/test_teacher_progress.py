"""Teacher generation progress: the shared helper's few lines off a terminal, its bar when forced."""
from __future__ import annotations

from common.progress import PROGRESS_ENV
from curation.teacher import generate_traces
from generation.engines import FakeEngine
from tests.curation.test_teacher import problems_frame, respond, source_params

PROBLEMS = 40


def test_captured_logs_get_milestones_and_a_summary(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    generate_traces(source_params(tmp_path, chunk_size=1), problems_frame(PROBLEMS),
                    engine=FakeEngine(respond=respond), log=lambda m: None)
    lines = [line for line in capsys.readouterr().err.splitlines() if f"/{PROBLEMS} problems" in line]
    assert len(lines) == 4, lines                      # 40 chunks: the 25/50/75 % marks and the summary
    assert f"{PROBLEMS}/{PROBLEMS} problems in " in lines[-1]
    assert "problem/s" in lines[-1] and "tokens/s" in lines[-1] and "correct=" in lines[-1]


def test_forced_bar_shows_problems_tokens_and_correct(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    generate_traces(source_params(tmp_path, chunk_size=4), problems_frame(8),
                    engine=FakeEngine(respond=respond), log=lambda m: None)
    err = capsys.readouterr().err
    assert "\r" in err and "8/8" in err and "problem/s" in err and "tokens/s" in err and "correct=" in err
