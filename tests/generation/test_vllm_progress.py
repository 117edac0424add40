"""vLLM's own request bar follows MIXDISTILL_PROGRESS / the terminal rule (fake vllm module)."""
from __future__ import annotations

import sys
import types

import pytest

from common.progress import PROGRESS_ENV
from generation.engines import SamplingConfig
from generation.factory import make_engine


@pytest.mark.parametrize("value, shown", [("1", True), ("0", False), (None, False)])
def test_vllm_bar_only_when_progress_is_on(monkeypatch, value, shown):
    seen = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            pass

        def chat(self, prompts, sp, use_tqdm=False):
            seen["use_tqdm"] = use_tqdm
            out = types.SimpleNamespace
            return [out(prompt_token_ids=[1], outputs=[out(text="a", finish_reason="stop", token_ids=[2])])
                    for _ in prompts]

    fake = types.ModuleType("vllm")
    fake.LLM = FakeLLM
    fake.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    if value is None:
        monkeypatch.delenv(PROGRESS_ENV, raising=False)       # pytest's captured stderr is no terminal
    else:
        monkeypatch.setenv(PROGRESS_ENV, value)
    make_engine({"kind": "vllm", "model": "m"}).generate([[{"role": "user", "content": "p"}]], SamplingConfig())
    assert seen["use_tqdm"] is shown
