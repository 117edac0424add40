"""The SFT recipe on a tiny model: learning, packed = padded, resume, LoRA."""
from __future__ import annotations

import shutil

import pytest
import torch

from tests.training.helpers import make_rows, tiny_model, train_section
from training.config import parse_train
from training.data import PaddedCollator, prepare_sft_data
from training.trainer import FINGERPRINT_FILE, last_complete_checkpoint, train_sft


def cfg_for(**overrides):
    return parse_train({"train": train_section(**overrides)}, ["tiny"])


@pytest.fixture()
def examples(tokenizer):
    return prepare_sft_data(make_rows(12), tokenizer, cutoff_len=256).examples


def mean_loss(model, tokenizer, examples) -> float:
    model.eval()
    with torch.no_grad():
        loss = model(**PaddedCollator(tokenizer)(examples)).loss.item()
    model.train()
    return loss


def test_loss_decreases_on_a_small_mix(tokenizer, examples, tmp_path):
    model = tiny_model(tokenizer)
    before = mean_loss(model, tokenizer, examples)
    cfg = cfg_for(epochs=4, learning_rate=3e-3, pack_tokens=512, save_steps=100)
    result = train_sft(model, tokenizer, examples, cfg, tmp_path / "work")
    after = mean_loss(model, tokenizer, examples)
    assert after < before - 1.0, (before, after)
    assert result.final_loss < result.log_history[0]["loss"]
    assert result.global_step == 4 * result.n_train_items        # one pack per step
    assert result.padding_efficiency == 1.0
    assert result.tokens_seen == 4 * sum(len(e["input_ids"]) for e in examples)
    assert result.tokens_per_second > 0
    assert result.attention == "mixdistill_packed_sdpa"
    saved = sorted(p.name for p in result.final_dir.iterdir())
    assert "model.safetensors" in saved and "chat_template.jinja" in saved and "training_args.bin" not in saved
    config = (result.final_dir / "config.json").read_text()
    assert "mixdistill" not in config and '"use_cache": true' in config   # a stock config for later stages


def test_packed_and_padded_training_take_the_same_step(tokenizer, examples, tmp_path):
    """Same examples in one optimizer step: same loss and same updated weights."""
    batch = examples[:4]
    packed_model, padded_model = tiny_model(tokenizer), tiny_model(tokenizer)
    packed = train_sft(packed_model, tokenizer, batch, cfg_for(max_steps=1, pack_tokens=4096),
                       tmp_path / "packed")
    padded = train_sft(padded_model, tokenizer, batch, cfg_for(max_steps=1, packing=False, batch_size=4),
                       tmp_path / "padded")
    assert packed.n_train_items == 1 and padded.n_train_items == 4
    assert packed.final_loss == pytest.approx(padded.final_loss, abs=1e-5)
    assert padded.padding_efficiency < 1.0 and packed.padding_efficiency == 1.0
    # Summation order differs between one packed row and four padded rows, so float32 weights may
    # differ in the last bits (1.6e-6 seen here on 1 of 8192 elements); the step itself is 1e-3.
    for (name, a), (_, b) in zip(packed_model.named_parameters(), padded_model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_activation_checkpointing_keeps_packed_examples_apart(tokenizer, examples, tmp_path):
    """Checkpointed layers must still receive the example boundaries: same step as without."""
    plain, checkpointed = tiny_model(tokenizer), tiny_model(tokenizer)
    a = train_sft(plain, tokenizer, examples[:4], cfg_for(max_steps=1, pack_tokens=4096), tmp_path / "a")
    b = train_sft(checkpointed, tokenizer, examples[:4],
                  cfg_for(max_steps=1, pack_tokens=4096, gradient_checkpointing=True), tmp_path / "b")
    assert checkpointed.is_activation_checkpointing and not plain.is_activation_checkpointing
    assert b.final_loss == pytest.approx(a.final_loss, abs=1e-6)
    for (name, x), (_, y) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        assert torch.allclose(x, y, atol=1e-6), name


def test_resume_continues_from_the_saved_step(tokenizer, examples, tmp_path):
    cfg = cfg_for(max_steps=4, save_steps=2, pack_tokens=256)
    straight = tiny_model(tokenizer)
    full = train_sft(straight, tokenizer, examples, cfg, tmp_path / "straight", fingerprint="run-a")
    assert full.global_step == 4 and full.resumed_from_step == 0

    # A run killed after its step-2 checkpoint: only that checkpoint is left in its work dir.
    killed = tmp_path / "killed"
    killed.mkdir()
    shutil.copytree(tmp_path / "straight" / "checkpoint-2", killed / "checkpoint-2")
    (killed / "checkpoint-4").mkdir()                     # killed while saving: no trainer_state.json
    (killed / FINGERPRINT_FILE).write_text("run-a\n")
    assert last_complete_checkpoint(killed).name == "checkpoint-2"

    resumed_model = tiny_model(tokenizer, seed=123)        # weights come from the checkpoint
    resumed = train_sft(resumed_model, tokenizer, examples, cfg, killed, fingerprint="run-a")
    assert resumed.resumed_from_step == 2 and resumed.global_step == 4
    assert [h["step"] for h in resumed.log_history if "loss" in h] == [1, 2, 3, 4]   # history restored
    assert resumed.final_loss == pytest.approx(full.final_loss, abs=1e-5)
    for (name, a), (_, b) in zip(straight.named_parameters(), resumed_model.named_parameters()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_checkpoints_of_another_run_are_not_resumed(tokenizer, examples, tmp_path):
    cfg = cfg_for(max_steps=2, save_steps=2, pack_tokens=256)
    train_sft(tiny_model(tokenizer), tokenizer, examples, cfg, tmp_path / "work", fingerprint="run-a")
    again = train_sft(tiny_model(tokenizer), tokenizer, examples, cfg, tmp_path / "work", fingerprint="run-b")
    assert again.resumed_from_step == 0 and again.global_step == 2


def lora_cfg(merge: bool):
    return cfg_for(method="lora", max_steps=3, learning_rate=1e-2,
                   lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "merge": merge})


def test_lora_changes_only_adapter_weights(tokenizer, examples, tmp_path):
    model = tiny_model(tokenizer)
    base_before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train_sft(model, tokenizer, examples, lora_cfg(merge=False), tmp_path / "work")
    assert 0 < result.trainable_parameters < result.total_parameters
    after = model.state_dict()           # LoRA layers were injected into this model in place
    lora_names = [n for n in after if "lora_" in n]
    assert len(lora_names) == 2 * 2 * 2                      # A and B, for q and v, in two layers
    assert any(after[n].abs().sum() > 0 for n in lora_names if "lora_B" in n)   # B starts at zero
    base_names = [n for n in after if "lora_" not in n]
    assert len(base_names) == len(base_before)
    for name in base_names:
        assert torch.equal(after[name], base_before[name.replace("base_layer.", "")]), f"{name} changed"
    saved = {p.name for p in result.final_dir.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= saved
    assert "model.safetensors" not in saved and "merged" not in saved


def test_lora_merge_writes_a_plain_model(tokenizer, examples, tmp_path):
    from transformers import AutoModelForCausalLM

    base = tiny_model(tokenizer)
    q_before = base.model.layers[0].self_attn.q_proj.weight.detach().clone()
    result = train_sft(base, tokenizer, examples, lora_cfg(merge=True), tmp_path / "work")
    merged = AutoModelForCausalLM.from_pretrained(result.final_dir / "merged")
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight, q_before)
    assert (result.final_dir / "merged" / "tokenizer.json").is_file()
