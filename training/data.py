"""SFT data: chat formatting with assistant-only labels (prompt from ``common.prompt``), packing.

One example is ``prompt tokens + completion tokens``:

- the prompt is exactly what the evaluation stage feeds the model at generation time
  (``apply_chat_template(..., add_generation_prompt=True)`` of ``build_prompt(problem)``), so the
  student is trained on the very prefix it will see;
- the completion is the teacher response and the template's end-of-turn token, so the student
  learns to stop; only completion tokens carry labels (prompt positions are -100).

Length policy: curation already rejects rows over ``cutoff_len``, so a row that still exceeds it
means the mix was curated with another cutoff. By default that is an error (``over_cutoff:
error``); ``over_cutoff: drop`` drops such rows and reports how many per component;
``over_cutoff: truncate`` cuts them at the cutoff (LLaMA-Factory's behaviour, for runs that
reproduce it) and reports how many per component. Nothing is cut or dropped silently: a cut-off
solution teaches the student to stop mid-proof without an answer, and a silent drop would
change the mix's shares.

Packing (on by default) groups examples into packs of at most ``pack_tokens`` by best-fit
decreasing; a batch is flattened padding-free by ``transformers.DataCollatorWithFlattening`` into
one row with positions restarting at 0 for each example, plus the example boundaries
(``cu_seq_lens_*``). The attention function in ``training.trainer`` uses those boundaries, so
examples in a pack never see each other whatever the cache setting.
"""
from __future__ import annotations

import bisect
import logging
from collections import Counter
from dataclasses import dataclass, field

import torch

from common.errors import MixdistillError
from common.prompt import build_messages, prompt_text

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


class TrainDataError(MixdistillError, ValueError):
    """The mix cannot be turned into training examples under the current params."""


def _completion_text(tokenizer, problem: str, response: str, prompt: str) -> str:
    full = tokenizer.apply_chat_template(build_messages(problem, response), tokenize=False)
    if not full.startswith(prompt):
        raise TrainDataError("the chat template renders the conversation with a different prefix than the "
                             "generation prompt, so assistant tokens cannot be located; use a template whose "
                             "generation prompt is a prefix of the full chat")
    completion = full[len(prompt):]
    # Keep the end-of-turn token (the model must learn to stop) but not what the template adds
    # after it (a newline) - nothing is generated there.
    end = completion.rfind(tokenizer.eos_token) if tokenizer.eos_token else -1
    return completion[: end + len(tokenizer.eos_token)] if end >= 0 else completion


def encode_example(tokenizer, problem: str, response: str) -> dict:
    """``{"input_ids", "labels"}`` for one problem/response pair (labels -100 on the prompt)."""
    return encode_examples(tokenizer, [problem], [response])[0]


def encode_examples(tokenizer, problems: list[str], responses: list[str]) -> list[dict]:
    prompts = [prompt_text(tokenizer, p) for p in problems]
    completions = [_completion_text(tokenizer, p, r, pr) for p, r, pr in zip(problems, responses, prompts)]
    # Prompt and completion are tokenized apart: the prompt then matches the generation-time
    # tokenization exactly (chat markers are special tokens, so no merge crosses the boundary).
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    return [{"input_ids": list(p) + list(c), "labels": [IGNORE_INDEX] * len(p) + list(c), "prompt_len": len(p)}
            for p, c in zip(prompt_ids, completion_ids)]


@dataclass
class SFTData:
    examples: list[dict]                      # {"input_ids", "labels"} ready for a collator
    stats: dict = field(default_factory=dict)


def prepare_sft_data(rows: list[dict], tokenizer, cutoff_len: int, over_cutoff: str = "error") -> SFTData:
    """Tokenize mix rows (``problem``, ``response``; ``trace_id``/``component`` for messages).

    Raises ``TrainDataError`` naming ``train.cutoff_len`` when even a prompt does not fit, and when
    a full example does not fit under ``over_cutoff: error``.
    """
    if not rows:
        raise TrainDataError("the mix has no rows to train on")
    for key in ("problem", "response"):
        if key not in rows[0]:
            raise TrainDataError(f"mix rows have no '{key}' column (columns: {sorted(rows[0])})")
    encoded = encode_examples(tokenizer, [r["problem"] for r in rows], [r["response"] for r in rows])

    longest_prompt = max(range(len(rows)), key=lambda i: encoded[i]["prompt_len"])
    if encoded[longest_prompt]["prompt_len"] >= cutoff_len:
        raise TrainDataError(
            f"train.cutoff_len: {cutoff_len} is below the longest prompt ({encoded[longest_prompt]['prompt_len']} "
            f"tokens, trace {rows[longest_prompt].get('trace_id', longest_prompt)}); no response token would fit")

    over = [i for i, e in enumerate(encoded) if len(e["input_ids"]) > cutoff_len]
    if over and over_cutoff == "error":
        worst = max(over, key=lambda i: len(encoded[i]["input_ids"]))
        raise TrainDataError(
            f"train.cutoff_len: {len(over)} of {len(rows)} examples exceed {cutoff_len} tokens (longest "
            f"{len(encoded[worst]['input_ids'])}, trace {rows[worst].get('trace_id', worst)}). Curation should "
            "have rejected them: re-curate with curate.cutoff_len <= train.cutoff_len, raise train.cutoff_len, "
            "or set train.over_cutoff: drop")
    truncated = set(over) if over_cutoff == "truncate" else set()
    for i in sorted(truncated):      # as LLaMA-Factory does at its cutoff: counted, never silent
        encoded[i] = {**encoded[i], "input_ids": encoded[i]["input_ids"][:cutoff_len],
                      "labels": encoded[i]["labels"][:cutoff_len]}
    if truncated:
        log.warning("truncated %d of %d examples to cutoff_len=%d (by component: %s)", len(truncated), len(rows),
                    cutoff_len, dict(Counter(str(rows[i].get("component", "all")) for i in truncated)))
    dropped = set(over) - truncated
    if dropped:
        by_component = Counter(str(rows[i].get("component", "all")) for i in dropped)
        log.warning("dropped %d of %d examples over cutoff_len=%d (by component: %s)",
                    len(dropped), len(rows), cutoff_len, dict(by_component))
    examples = [{"input_ids": e["input_ids"], "labels": e["labels"]}
                for i, e in enumerate(encoded) if i not in dropped]
    lengths = [len(e["input_ids"]) for e in examples]
    stats = {
        "n_rows": len(rows),
        "n_examples": len(examples),
        "n_dropped_over_cutoff": len(dropped),
        "dropped_by_component": dict(Counter(str(rows[i].get("component", "all")) for i in dropped)),
        "dropped_trace_ids": [rows[i].get("trace_id") for i in sorted(dropped)],
        "n_truncated_over_cutoff": len(truncated),
        "truncated_by_component": dict(Counter(str(rows[i].get("component", "all")) for i in truncated)),
        "tokens": sum(lengths),
        "assistant_tokens": sum(sum(1 for t in e["labels"] if t != IGNORE_INDEX) for e in examples),
        "max_tokens": max(lengths) if lengths else 0,
        "max_prompt_tokens": encoded[longest_prompt]["prompt_len"],
    }
    return SFTData(examples=examples, stats=stats)


def pack_by_length(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing bin packing: indices of examples grouped into packs of at most
    ``capacity`` tokens. Deterministic (ties keep input order). Every index appears once."""
    too_long = [n for n in lengths if n > capacity]
    if too_long:
        raise TrainDataError(f"train.pack_tokens: {capacity} is below an example of {max(too_long)} tokens")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    packs: list[list[int]] = []
    # Remaining room of open packs, kept sorted as (room, pack index) for a bisect best-fit lookup.
    rooms: list[tuple[int, int]] = []
    for i in order:
        slot = bisect.bisect_left(rooms, (lengths[i], -1))
        if slot == len(rooms):
            packs.append([i])
            room, pack_index = capacity - lengths[i], len(packs) - 1
        else:
            room, pack_index = rooms.pop(slot)
            packs[pack_index].append(i)
            room -= lengths[i]
        if room > 0:
            bisect.insort(rooms, (room, pack_index))
    return packs


class ListDataset(torch.utils.data.Dataset):
    """A list as a map-style dataset (items are examples, or packs of examples)."""

    def __init__(self, items: list):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def packed_dataset(examples: list[dict], pack_tokens: int) -> ListDataset:
    packs = pack_by_length([len(e["input_ids"]) for e in examples], pack_tokens)
    return ListDataset([{"examples": [examples[i] for i in pack]} for pack in packs])


class TokenCounter:
    """Counts real (non-padding) and processed tokens of the batches a collator builds."""

    def __init__(self):
        self.real_tokens = 0
        self.processed_tokens = 0

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.processed_tokens if self.processed_tokens else 1.0


class PackedCollator(TokenCounter):
    """Flattens the packs of a batch into one padding-free row via the library collator, with
    positions reset per example and the example boundaries (``cu_seq_lens_q/k``) for attention."""

    def __init__(self):
        super().__init__()
        from transformers import DataCollatorWithFlattening

        self._flatten = DataCollatorWithFlattening(return_flash_attn_kwargs=True)

    def __call__(self, items: list[dict]) -> dict:
        examples = [ex for item in items for ex in item["examples"]]
        batch = self._flatten([{"input_ids": ex["input_ids"], "labels": ex["labels"]} for ex in examples])
        n = batch["input_ids"].numel()
        self.real_tokens += n
        self.processed_tokens += n
        return batch


class PaddedCollator(TokenCounter):
    """Right-pads a batch of examples (``packing: false``); padding is masked out of attention
    and loss."""

    def __init__(self, tokenizer):
        super().__init__()
        from transformers import DataCollatorForSeq2Seq

        self._pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX)

    def __call__(self, examples: list[dict]) -> dict:
        batch = self._pad([{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples])
        self.real_tokens += int(batch["attention_mask"].sum())
        self.processed_tokens += batch["input_ids"].numel()
        return batch
