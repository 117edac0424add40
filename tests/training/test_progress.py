"""The Trainer's own progress bar: on when stderr is a terminal or MIXDISTILL_PROGRESS=1, and then
it shows the steps with each log's loss and tokens/s."""
from __future__ import annotations

import pytest

from common.progress import PROGRESS_ENV
from tests.training.helpers import make_rows, tiny_model, train_section
from training.config import parse_train
from training.data import prepare_sft_data
from training.trainer import train_sft, training_arguments_kwargs


@pytest.mark.parametrize("value, disabled", [("1", False), ("0", True), (None, True)])
def test_bar_follows_the_progress_setting(monkeypatch, tmp_path, value, disabled):
    if value is None:
        monkeypatch.delenv(PROGRESS_ENV, raising=False)     # pytest's captured stderr is no terminal
    else:
        monkeypatch.setenv(PROGRESS_ENV, value)
    cfg = parse_train({"train": train_section()}, ["tiny"])
    assert training_arguments_kwargs(cfg, tmp_path)["disable_tqdm"] is disabled


def test_forced_bar_shows_steps_loss_and_tokens_per_second(tokenizer, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    examples = prepare_sft_data(make_rows(4), tokenizer, cutoff_len=256).examples
    cfg = parse_train({"train": train_section(max_steps=2, pack_tokens=256, save_steps=100)}, ["tiny"])
    train_sft(tiny_model(tokenizer), tokenizer, examples, cfg, tmp_path / "work")
    captured = capsys.readouterr()
    assert "2/2" in captured.err and "\r" in captured.err   # the step bar (stderr), with its ETA while running
    # each log, written above the bar (tqdm.write: stdout)
    assert "'loss'" in captured.out and "'tokens_per_second'" in captured.out
