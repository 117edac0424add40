"""SFT data: prompt, assistant-only labels, cutoff policy, packing, collators."""
from __future__ import annotations

import pytest
import torch

from tests.training.helpers import make_rows
from training.data import (IGNORE_INDEX, PackedCollator, PaddedCollator, TrainDataError,
                           encode_example, pack_by_length, packed_dataset, prepare_sft_data)
from common.prompt import build_prompt, prompt_text


def test_build_prompt_appends_the_boxed_instruction():
    assert build_prompt("  What is 2 + 3?\n") == (
        "What is 2 + 3?\n\nPlease reason step by step, and put your final answer within \\boxed{}.")


def test_labels_mask_exactly_the_prompt(tokenizer):
    example = encode_example(tokenizer, "What is 2 + 3?", "2 + 3 = 5. The answer is \\boxed{5}.")
    ids, labels = example["input_ids"], example["labels"]
    # The prompt is exactly what generation feeds the model (eval stage reuses build_prompt).
    gen_prompt = tokenizer(prompt_text(tokenizer, "What is 2 + 3?"), add_special_tokens=False)["input_ids"]
    n_prompt = len(gen_prompt)
    assert ids[:n_prompt] == gen_prompt
    assert example["prompt_len"] == n_prompt
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert all(label != IGNORE_INDEX for label in labels[n_prompt:])
    # The completion is the response followed by the end-of-turn token, and nothing after it.
    assert ids[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(ids[n_prompt:-1]) == "2 + 3 = 5. The answer is \\boxed{5}."
    assert tokenizer.decode(ids[:n_prompt]).endswith("<|im_start|>assistant\n")
    # The prompt ends its user turn with the boxed instruction.
    assert "within \\boxed{}.<|im_end|>" in tokenizer.decode(ids[:n_prompt])


def test_prompt_tokens_match_the_chat_template_generation_prompt(tokenizer):
    direct = tokenizer.apply_chat_template([{"role": "user", "content": build_prompt("Find x.")}],
                                           add_generation_prompt=True, tokenize=True, return_dict=True)
    assert encode_example(tokenizer, "Find x.", "x = 1")["input_ids"][:len(direct["input_ids"])] == \
        list(direct["input_ids"])


def test_prepare_counts_tokens(tokenizer):
    rows = make_rows(6)
    data = prepare_sft_data(rows, tokenizer, cutoff_len=512)
    lengths = [len(e["input_ids"]) for e in data.examples]
    assert data.stats["n_examples"] == 6 and data.stats["n_dropped_over_cutoff"] == 0
    assert data.stats["tokens"] == sum(lengths)
    assert data.stats["max_tokens"] == max(lengths)
    assert data.stats["assistant_tokens"] == sum(sum(t != IGNORE_INDEX for t in e["labels"]) for e in data.examples)


def test_cutoff_below_the_longest_prompt_is_refused(tokenizer):
    rows = make_rows(3)
    prompt_len = encode_example(tokenizer, rows[0]["problem"], rows[0]["response"])["prompt_len"]
    with pytest.raises(TrainDataError, match=r"train.cutoff_len: 20 is below the longest prompt \(\d+ tokens, "
                                             r"trace t00\d\)"):
        prepare_sft_data(rows, tokenizer, cutoff_len=20)
    assert prompt_len > 20


def test_over_cutoff_rows_fail_by_default_and_are_never_truncated(tokenizer):
    rows = make_rows(8)
    lengths = [len(encode_example(tokenizer, r["problem"], r["response"])["input_ids"]) for r in rows]
    cutoff = sorted(lengths)[4]                     # the 3 longest rows (distinct lengths) exceed it
    over = [r["trace_id"] for r, n in zip(rows, lengths) if n > cutoff]
    assert len(over) == 3
    with pytest.raises(TrainDataError, match=rf"train.cutoff_len: 3 of 8 examples exceed {cutoff} tokens"):
        prepare_sft_data(rows, tokenizer, cutoff_len=cutoff)

    data = prepare_sft_data(rows, tokenizer, cutoff_len=cutoff, over_cutoff="drop")
    assert data.stats["n_dropped_over_cutoff"] == 3
    assert data.stats["dropped_trace_ids"] == sorted(over)
    assert sum(data.stats["dropped_by_component"].values()) == 3
    kept = [n for n in lengths if n <= cutoff]
    assert sorted(len(e["input_ids"]) for e in data.examples) == sorted(kept)   # whole, not cut

    cut = prepare_sft_data(rows, tokenizer, cutoff_len=cutoff, over_cutoff="truncate")   # as LLaMA-Factory
    assert (cut.stats["n_truncated_over_cutoff"], cut.stats["n_dropped_over_cutoff"]) == (3, 0)
    assert sum(cut.stats["truncated_by_component"].values()) == 3
    assert sorted(len(e["input_ids"]) for e in cut.examples) == sorted(min(n, cutoff) for n in lengths)
    assert all(len(e["labels"]) == len(e["input_ids"]) for e in cut.examples)


def test_best_fit_decreasing_packing():
    # 5 -> new pack (room 3); 4 -> new (room 4); 3 -> best fit is room 3; 3 -> room 4;
    # 2 -> nothing fits, new pack; 1 -> best fit is the pack with room 1.
    assert pack_by_length([5, 4, 3, 3, 2, 1], capacity=8) == [[0, 2], [1, 3, 5], [4]]
    lengths = [(i * 37) % 23 + 1 for i in range(200)]
    packs = pack_by_length(lengths, capacity=64)
    assert sorted(i for p in packs for i in p) == list(range(200))
    assert all(sum(lengths[i] for i in p) <= 64 for p in packs)
    assert len(packs) == -(-sum(lengths) // 64)      # optimal here: no pack wasted
    with pytest.raises(TrainDataError, match="train.pack_tokens: 8 is below an example of 9 tokens"):
        pack_by_length([3, 9], capacity=8)


def test_packed_collator_flattens_with_reset_positions_and_boundaries():
    examples = [{"input_ids": [11, 12, 13], "labels": [-100, 12, 13]},
                {"input_ids": [21, 22], "labels": [-100, 22]},
                {"input_ids": [31, 32, 33, 34], "labels": [-100, -100, 33, 34]}]
    dataset = packed_dataset(examples, pack_tokens=6)
    assert [len(item["examples"]) for item in dataset.items] == [2, 1]     # [4, 2] and [3]
    collator = PackedCollator()
    batch = collator([dataset[0], dataset[1]])
    assert batch["input_ids"].tolist() == [[31, 32, 33, 34, 21, 22, 11, 12, 13]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 0, 1, 2]]
    assert batch["labels"].tolist() == [[-100, -100, 33, 34, -100, 22, -100, 12, 13]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 4, 6, 9]
    assert "attention_mask" not in batch
    assert collator.real_tokens == collator.processed_tokens == 9


def test_padded_collator_counts_padding(tokenizer):
    collator = PaddedCollator(tokenizer)
    batch = collator([{"input_ids": [5, 6, 7, 8], "labels": [-100, 6, 7, 8]},
                      {"input_ids": [9, 10], "labels": [-100, 10]}])
    assert batch["input_ids"].shape == (2, 4)
    assert batch["labels"][1].tolist() == [-100, 10, -100, -100]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert (collator.real_tokens, collator.processed_tokens) == (6, 8)
    assert collator.padding_efficiency == pytest.approx(0.75)
    assert isinstance(batch["input_ids"], torch.Tensor)
