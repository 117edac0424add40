"""Packed examples must not see each other: per-example logits and the loss of a packed row
equal those of the same examples run separately / padded (the packing trap, see GUIDE.md)."""
from __future__ import annotations

import pytest
import torch

from tests.training.helpers import make_rows, tiny_model
from training.data import PackedCollator, PaddedCollator, packed_dataset, prepare_sft_data
from training.trainer import PACKED_ATTENTION, use_packed_attention


@pytest.fixture()
def examples(tokenizer):
    return prepare_sft_data(make_rows(4), tokenizer, cutoff_len=256).examples


@pytest.mark.parametrize("use_cache", [True, False])
def test_per_example_logits_equal_packed_vs_separate(tokenizer, examples, use_cache):
    model = tiny_model(tokenizer).eval()
    with torch.no_grad():
        separate = [model(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in examples]
    assert use_packed_attention(model) == PACKED_ATTENTION
    batch = PackedCollator()([{"examples": examples}])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        # use_cache=True is the setting under which stock sdpa lets later examples see earlier ones.
        packed = model(**inputs, use_cache=use_cache).logits[0]
    start = 0
    for expected in separate:
        got = packed[start:start + len(expected)]
        assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
        start += len(expected)
    assert start == packed.shape[0]


def test_packed_and_padded_batches_give_the_same_loss(tokenizer, examples):
    padded_model = tiny_model(tokenizer).eval()
    packed_model = tiny_model(tokenizer).eval()
    use_packed_attention(packed_model)
    padded = PaddedCollator(tokenizer)(examples)
    packed = PackedCollator()(packed_dataset(examples, pack_tokens=4096).items)
    with torch.no_grad():
        loss_padded = padded_model(**padded).loss
        loss_packed = packed_model(**packed).loss
    n_label_tokens = sum(sum(t != -100 for t in e["labels"][1:]) for e in examples)
    assert int((packed["labels"] != -100).sum()) == n_label_tokens
    assert loss_packed.item() == pytest.approx(loss_padded.item(), abs=1e-5)
    assert loss_packed.item() > 1.0       # a random model: the comparison is not between two zeros


def test_packed_attention_is_plain_sdpa_without_boundaries(tokenizer, examples):
    """Generation and padded batches go through the registered implementation unchanged."""
    reference = tiny_model(tokenizer).eval()
    model = tiny_model(tokenizer).eval()
    use_packed_attention(model)
    batch = PaddedCollator(tokenizer)(examples[:2])
    with torch.no_grad():
        expected = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        got = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["attention_mask"].bool()
    assert torch.allclose(got[mask], expected[mask], atol=1e-5)
