"""Generation engines: one interface for evaluation and teacher generation.

Every backend takes chat conversations (lists of ``{"role", "content"}`` messages) and returns,
per conversation, ``n`` :class:`Completion` objects in the order of the prompts. The backends:

- :class:`TransformersEngine` — CPU default: batched, KV-cached, left-padded generation.
- :class:`~generation.vllm.VLLMEngine` — offline ``vllm.LLM`` on GPUs, tensor and data parallel (vllm imported lazily).
- :class:`~generation.http.OpenAIEngine` — any OpenAI-compatible ``/v1/chat/completions``.
- :class:`FakeEngine` — canned, deterministic answers for tests.

``generation.factory.make_engine({"kind": ..., ...})`` builds one from a params mapping.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from common.errors import MixdistillError

Messages = list[dict]
FINISH_REASONS = ("stop", "length")


class EngineError(MixdistillError, RuntimeError):
    """A backend failed in a way the caller should see (bad config, server refused, ...)."""


@dataclass(frozen=True)
class SamplingConfig:
    temperature: float = 0.0          # 0 means greedy decoding
    top_p: float = 1.0
    max_tokens: int = 512             # new tokens per completion
    n: int = 1                        # completions per prompt
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"sampling.temperature: {self.temperature} must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"sampling.top_p: {self.top_p} must be in (0, 1]")
        if not isinstance(self.max_tokens, int) or self.max_tokens <= 0:
            raise ValueError(f"sampling.max_tokens: {self.max_tokens!r} must be a positive integer")
        if not isinstance(self.n, int) or self.n <= 0:
            raise ValueError(f"sampling.n: {self.n!r} must be a positive integer")
        if self.n > 1 and self.temperature == 0:
            # n identical greedy samples would make pass@k and maj@k meaningless.
            raise ValueError(f"sampling.n: {self.n} samples need temperature > 0 (greedy gives n copies)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str                # "stop" (end of sequence) | "length" (max_tokens hit)
    prompt_tokens: int
    completion_tokens: int

    def __post_init__(self):
        if self.finish_reason not in FINISH_REASONS:
            raise ValueError(f"Completion.finish_reason: {self.finish_reason!r} not in {FINISH_REASONS}")


@runtime_checkable
class Engine(Protocol):
    """``generate`` returns one list of ``sampling.n`` completions per conversation, in order."""

    def generate(self, prompts: list[Messages], sampling: SamplingConfig) -> list[list[Completion]]:
        ...


def check_prompts(prompts: list[Messages]) -> None:
    for i, conv in enumerate(prompts):
        if not isinstance(conv, list) or not conv:
            raise EngineError(f"prompt {i}: expected a non-empty list of chat messages")
        for j, m in enumerate(conv):
            if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
                raise EngineError(f"prompt {i}, message {j}: needs 'role' and a string 'content'")


def last_user_message(conv: Messages) -> str:
    for m in reversed(conv):
        if m["role"] == "user":
            return m["content"]
    raise EngineError("conversation has no user message")


class FakeEngine:
    """Deterministic canned responses keyed by the last user message.

    ``responses`` maps a user message to a text (or a list of texts, one per sample index,
    cycled); ``respond`` is an alternative callable ``(user_message, sample_index) -> text``.
    ``latency_s`` simulates a per-request delay (used to benchmark the judge cache).
    Every prompt seen is kept in ``calls`` so tests can check what a model was shown.
    """

    def __init__(self, responses: dict | None = None, respond: Callable[[str, int], str] | None = None,
                 default: str | None = None, latency_s: float = 0.0):
        if responses is None and respond is None and default is None:
            raise EngineError("FakeEngine: give responses, respond or default")
        self.responses = dict(responses or {})
        self.respond = respond
        self.default = default
        self.latency_s = latency_s
        self.calls: list[Messages] = []

    def _text(self, user: str, index: int) -> str:
        if user in self.responses:
            canned = self.responses[user]
            return canned[index % len(canned)] if isinstance(canned, list) else canned
        if self.respond is not None:
            return self.respond(user, index)
        if self.default is not None:
            return self.default
        raise EngineError(f"FakeEngine: no canned response for user message {user[:80]!r}")

    def generate(self, prompts: list[Messages], sampling: SamplingConfig) -> list[list[Completion]]:
        check_prompts(prompts)
        out = []
        for conv in prompts:
            self.calls.append(conv)
            if self.latency_s:
                time.sleep(self.latency_s)
            user = last_user_message(conv)
            samples = []
            for i in range(sampling.n):
                words = self._text(user, i).split(" ")
                # Whitespace "tokens" stand in for a tokenizer; max_tokens truncates like a model would.
                finish = "length" if len(words) > sampling.max_tokens else "stop"
                words = words[: sampling.max_tokens]
                samples.append(Completion(" ".join(words), finish, len(user.split()), len(words)))
            out.append(samples)
        return out


class TransformersEngine:
    """Batched generation with a transformers causal LM (the CPU default).

    Prompts are rendered with the tokenizer's chat template, sorted by length so that each batch
    pads little, left-padded (decoder-only models continue from the right edge) and generated with
    the KV cache. Results are returned in the caller's order.
    """

    def __init__(self, model, tokenizer, batch_size: int = 16, name: str = "transformers"):
        if batch_size <= 0:
            raise EngineError(f"TransformersEngine: batch_size {batch_size} must be positive")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name = name
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            # Padding is masked out; any id works, eos is the conventional choice.
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = self._eos_ids()

    @classmethod
    def from_pretrained(cls, path: str | Path, batch_size: int = 16, dtype: str = "float32",
                        base_model: str | None = None, device: str = "cpu", threads: int | None = None):
        """Load a full checkpoint, or a LoRA adapter directory (``adapter_config.json``) on top of
        its base model (``base_model`` overrides the base recorded in the adapter config)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        path = Path(path)
        if not path.is_dir():
            raise EngineError(f"{path}: model directory not found")
        torch_dtype = getattr(torch, dtype, None)
        if not isinstance(torch_dtype, torch.dtype):
            raise EngineError(f"dtype: '{dtype}' is not a torch dtype (e.g. float32, bfloat16)")
        adapter_cfg = path / "adapter_config.json"
        if adapter_cfg.exists():
            from peft import PeftModel

            base = base_model or json.loads(adapter_cfg.read_text()).get("base_model_name_or_path")
            if not base:
                raise EngineError(f"{adapter_cfg}: field 'base_model_name_or_path' is empty; pass base_model")
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
            # Merging once makes generation as fast as a plain model (no per-step adapter matmuls).
            model = PeftModel.from_pretrained(model, str(path)).merge_and_unload()
            tok_dir = path if (path / "tokenizer_config.json").exists() else Path(base)
        else:
            from safetensors import SafetensorError

            try:
                model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype)
            except (SafetensorError, OSError) as exc:   # a weights file cut short or corrupted
                raise EngineError(f"{path}: cannot load the model weights ({str(exc).splitlines()[0]}); "
                                  "the checkpoint looks truncated or corrupted: rebuild it with the stage "
                                  "that wrote it (e.g. dvc repro -f train@<mix>)") from exc
            tok_dir = path
        tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
        model.to(device).eval()
        return cls(model, tokenizer, batch_size=batch_size, name=str(path))

    def _eos_ids(self) -> set[int]:
        ids = set()
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for e in (gen_eos if isinstance(gen_eos, list) else [gen_eos]) + [self.tokenizer.eos_token_id]:
            if e is not None:
                ids.add(int(e))
        if not ids:
            raise EngineError(f"{self.name}: neither tokenizer nor generation config has an eos token")
        return ids

    def render(self, conv: Messages) -> list[int]:
        """Token ids of a conversation with the generation prompt (the assistant turn opener)."""
        ids = self.tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def generate(self, prompts: list[Messages], sampling: SamplingConfig) -> list[list[Completion]]:
        import torch
        from transformers import GenerationConfig

        check_prompts(prompts)
        rendered = [self.render(conv) for conv in prompts]
        # One row per (prompt, sample); sorting by length keeps padding (wasted compute) small.
        rows = [(p, s) for p in range(len(prompts)) for s in range(sampling.n)]
        rows.sort(key=lambda r: (len(rendered[r[0]]), r))
        config = GenerationConfig(
            max_new_tokens=sampling.max_tokens,
            do_sample=not sampling.greedy,
            temperature=sampling.temperature if not sampling.greedy else None,
            top_p=sampling.top_p if not sampling.greedy else None,
            top_k=None,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=sorted(self.eos_ids),
            use_cache=True,
        )
        results: dict[tuple[int, int], Completion] = {}
        for b, start in enumerate(range(0, len(rows), self.batch_size)):
            batch = rows[start:start + self.batch_size]
            if not sampling.greedy:
                # A seed per batch makes a run reproducible for a fixed batch size and prompt set.
                torch.manual_seed(sampling.seed * 1_000_003 + b)
            width = max(len(rendered[p]) for p, _ in batch)
            pad = self.tokenizer.pad_token_id
            input_ids = torch.tensor([[pad] * (width - len(rendered[p])) + rendered[p] for p, _ in batch])
            attention = torch.tensor([[0] * (width - len(rendered[p])) + [1] * len(rendered[p])
                                      for p, _ in batch])
            with torch.inference_mode():
                out = self.model.generate(input_ids=input_ids.to(self.model.device),
                                          attention_mask=attention.to(self.model.device),
                                          generation_config=config)
            new = out[:, width:].tolist()
            for (p, s), tokens in zip(batch, new):
                results[(p, s)] = self._completion(tokens, len(rendered[p]), sampling.max_tokens)
        return [[results[(p, s)] for s in range(sampling.n)] for p in range(len(prompts))]

    def _completion(self, tokens: list[int], prompt_len: int, max_tokens: int) -> Completion:
        stop_at = next((i for i, t in enumerate(tokens) if t in self.eos_ids), None)
        if stop_at is not None:
            kept, finish, count = tokens[:stop_at], "stop", stop_at + 1   # the eos token was generated
        else:
            # No eos: the row ran to max_new_tokens (rows that stopped early end in padding = eos).
            kept, finish, count = tokens, "length", len(tokens)
        if finish == "length" and count < max_tokens:
            raise EngineError(f"{self.name}: generation ended after {count} < {max_tokens} tokens without eos")
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Completion(text, finish, prompt_len, count)


ENGINE_KINDS = ("transformers", "vllm", "openai", "fake")
