"""Per-arm recipes (train.arms), the paper presets, and `mixdistill recipe` with its parity list."""
import json
import subprocess
import sys

import pytest

from common.params import ParamsError
from pipelines.params import parse_params
from pipelines.recipe import describe
from tests.project import REPO, project_params
from training.config import recipe_for


def _params(preset: str):
    raw = project_params()
    raw["preset"] = preset
    return parse_params(raw)


def test_the_paper_preset_reproduces_each_published_arm():
    params = _params("paper")
    desc = describe(params)
    long, mix = desc["arms"]["long"]["recipe"], desc["arms"]["mix_long"]["recipe"]
    # exp/MATH_long_CoT.yaml / exp/MATH_short_CoT.yaml
    assert (long["cutoff_len"], long["per_device_batch_size"], long["grad_accum"], long["packing"]) == (8192, 2, 1, "none")
    # exp/MATH_mix.yaml
    assert (mix["cutoff_len"], mix["per_device_batch_size"], mix["grad_accum"], mix["packing"]) == (4096, 5, 4, "neat")
    for arm in (long, mix):
        assert (arm["learning_rate"], arm["epochs"], arm["lr_scheduler"], arm["warmup_ratio"], arm["bf16"]) == \
            (1e-5, 2, "cosine", 0.0, True)
        assert arm["deepspeed"] == "configs/deepspeed_zero3.json" and arm["over_cutoff"] == "truncate"
    assert params.curate.cutoff_len == 8192 and params.curate.over_cutoff == "flag"
    words = " ".join(desc["parity"])
    assert "cutoff_len differs between arms: 8192 for" in words and "4096 for mix_large, mix_long" in words
    assert "packing differs" in words


def test_the_aligned_preset_leaves_only_the_data_different():
    assert describe(_params("paper_aligned"))["parity"] == []
    assert describe(_params("default"))["parity"] == []


def test_arms_are_checked_by_key_path():
    raw = project_params()
    raw["train"]["arms"] = {"nope": {"batch_size": 2}}
    with pytest.raises(ParamsError, match="train.arms.nope: unknown mix 'nope'"):
        parse_params(raw)
    raw["train"]["arms"] = {"long": {"mixes": ["long"]}}
    with pytest.raises(ParamsError, match=r"train.arms.long: \['mixes'\] cannot be set per arm"):
        parse_params(raw)
    raw["train"]["arms"] = {"long": {"batch_size": 0}}
    with pytest.raises(ParamsError, match="train.arms.long.batch_size: 0 must be a positive integer"):
        parse_params(raw)
    raw["train"]["arms"] = {"long": {"learning_rate": 1e-4, "lora": {"r": 4}}}
    params = parse_params(raw)
    arm = recipe_for(params.train, "long")
    assert (arm.learning_rate, arm.lora.r, arm.lora.alpha) == (1e-4, 4, params.train.lora.alpha)
    assert recipe_for(params.train, "short").learning_rate == params.train.learning_rate


def test_recipe_command_prints_json_and_refuses_an_unknown_preset():
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "recipe", "--preset", "paper", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    desc = json.loads(out.stdout)
    assert set(desc["arms"]) == set(_params("paper").train.mixes) and desc["parity"]
    bad = subprocess.run([sys.executable, "-m", "pipelines.cli", "recipe", "--preset", "papr"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "preset: 'papr' is not defined" in bad.stderr and "Traceback" not in bad.stderr


def test_the_report_carries_each_arms_recipe_and_the_parity_in_words(tmp_path, monkeypatch):
    from tests.evaluation.test_eval_stage import write_scores
    from evaluation.report import build_report

    params = _params("paper")                 # parsed in the repo: its deepspeed config path is relative
    arms = describe(params, with_data=False)
    monkeypatch.chdir(tmp_path)
    for model in ["base", *params.train.mixes]:
        write_scores(tmp_path, model, {"champ_test": 0.5}, [10])
    from common.layout import Layout, Paths

    layout = Layout(Paths(**{k: str(tmp_path / v) for k, v in vars(params.paths).items()}))
    build_report(layout, params.report, list(params.mix.mixes), arms=arms)
    summary = (tmp_path / "reports/summary.md").read_text()
    assert "## Arms: training recipe and parity" in summary and "**The arms differ in more than their data**" in summary
    assert "| mix_long | 4096 | neat | 5 x 4 |" in summary and "| long | 8192 | none | 2 x 1 |" in summary
    metrics = json.loads((tmp_path / "reports/metrics.json").read_text())
    assert metrics["arms"]["recipes"]["mix_long"]["cutoff_len"] == 4096 and metrics["arms"]["parity"]
