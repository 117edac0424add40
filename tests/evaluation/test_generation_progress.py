"""Eval generation progress: a few lines with problems and tokens/s in captured logs, a bar when forced."""
from __future__ import annotations

from types import SimpleNamespace

import polars as pl

from common.progress import PROGRESS_ENV
from evaluation.run import generate_missing, open_samples
from generation.engines import FakeEngine, SamplingConfig

PROBLEMS = 60


def _run(tmp_path):
    frames = {"champ_test": pl.DataFrame({"problem_id": [f"P_{i}" for i in range(PROBLEMS)],
                                          "problem": [f"What is {i} + 1?" for i in range(PROBLEMS)],
                                          "reference_answer": [str(i + 1) for i in range(PROBLEMS)]})}
    cfg = SimpleNamespace(protocol="ours", engine={"kind": "transformers"}, batch_size=2,
                          sampling=SamplingConfig(max_tokens=16))
    with open_samples(tmp_path, {"model": "fake"}) as store:
        return generate_missing(FakeEngine(default=r"one two three \boxed{1}"), store, frames, cfg)


def test_captured_logs_get_a_handful_of_lines(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert _run(tmp_path) == PROBLEMS                  # 30 chunks of 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4, lines                      # three milestones and the summary, not one per chunk
    assert lines[-1].startswith(f"eval: generate: {PROBLEMS}/{PROBLEMS} problems in ")
    assert "problem/s" in lines[-1] and "tokens/s" in lines[-1]


def test_forced_bar_shows_problems_and_tokens_per_second(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    _run(tmp_path)
    err = capsys.readouterr().err
    assert "\r" in err and f"{PROBLEMS}/{PROBLEMS}" in err
    assert "problem/s" in err and "tokens/s" in err and "benchmark=champ_test" in err


def test_resumed_run_counts_stored_problems_as_done(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    _run(tmp_path)
    capsys.readouterr()
    assert _run(tmp_path) == 0
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"eval: generate: {PROBLEMS}/{PROBLEMS} problems")
