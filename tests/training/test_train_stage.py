"""The train@MIX stage end to end on a tiny project: outputs, MLflow run, refusals, resume."""
from __future__ import annotations

import re

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.train import main as train_main
from tests.training.helpers import REPO, make_project, make_rows, read_json, train_section


@pytest.fixture()
def project(tmp_path, tokenizer, monkeypatch):
    root = make_project(tmp_path, tokenizer, make_rows(8), train_section(max_steps=3, save_steps=2))
    monkeypatch.chdir(root)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    return root


def test_train_stage_writes_checkpoint_metrics_and_mlflow_run(project):
    assert train_main(["--mix", "tiny"]) == 0

    out = project / "models" / "checkpoints" / "tiny"
    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja",
            "train_metrics.json", "mlflow_run_id.txt"} <= files
    metrics = read_json(out / "train_metrics.json")
    assert metrics == read_json(project / "models" / "checkpoints" / "tiny.train_metrics.json")
    assert metrics["steps"] == 3 and metrics["n_examples"] == 8 and metrics["padding_efficiency"] == 1.0
    assert metrics["tokens_per_second"] > 0 and metrics["final_loss"] > 0
    assert not (project / "models" / "checkpoints" / ".work" / "tiny").exists()     # cleaned on success

    import mlflow

    run = mlflow.get_run((out / "mlflow_run_id.txt").read_text().strip())
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.learning_rate"] == "0.001" and params["train.packing"] == "True"
    assert params["mix.shares.long"] == "0.5" and params["mix.n_rows"] == "8"
    assert params["student.source"].endswith("tiny_source")
    # Only the params that define the run: not transformers' ~200 config/TrainingArguments fields.
    assert "learning_rate" not in params and "vocab_size" not in params
    assert all(k.split(".")[0] in {"train", "mix", "student", "data"} for k in params), sorted(params)
    assert run.data.tags["mixdistill.mix"] == "tiny"
    assert "mixdistill.git_commit" in run.data.tags
    client = mlflow.MlflowClient()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1, 2, 3]
    assert len(client.get_metric_history(run.info.run_id, "tokens_per_second")) == 3
    assert len(client.get_metric_history(run.info.run_id, "learning_rate")) == 3
    dataset_inputs = run.inputs.dataset_inputs
    assert len(dataset_inputs) == 1
    manifest = read_json(project / "data" / "mixes" / "tiny" / "manifest.json")
    assert dataset_inputs[0].dataset.digest == manifest["rows_digest"]
    assert dataset_inputs[0].dataset.name == "tiny"
    assert dataset_inputs[0].tags[0].value == "training"
    # The checkpoint is a logged model holding a reference to the weights (tracking.log_weights), and
    # a version of the mix's registered model; the weights themselves stay out of the store.
    model = mlflow.get_logged_model(run.data.tags["mixdistill.model_id"])
    assert model.source_run_id == run.info.run_id and model.tags["mixdistill.weights"] == f"reference to {out}"
    name, version = run.data.tags["mixdistill.registered_model"][len("models:/"):].split("/")
    assert name.endswith("-tiny") and client.get_model_version(name, version).run_id == run.info.run_id
    assert not any(a.path.endswith(".safetensors") for a in client.list_artifacts(run.info.run_id))


def test_refuses_a_mix_that_fails_verification(tmp_path, tokenizer, monkeypatch, capsys):
    root = make_project(tmp_path, tokenizer, make_rows(4), contract_success=False)
    monkeypatch.chdir(root)
    assert train_main(["--mix", "tiny"]) == 2
    assert re.search(r"error: train@tiny: refusing to train on mix 'tiny': it failed verification: "
                     r"mix 'tiny': source 'src_long' failed its contract", capsys.readouterr().err)
    assert not (root / "models" / "checkpoints" / "tiny").exists()


def test_refuses_an_unknown_mix_and_a_stale_student(project, capsys):
    assert train_main(["--mix", "nope"]) == 2
    assert re.search(r"error: train@nope: --mix: unknown mix 'nope' \(mixes under mix.mixes: \['tiny'\]\)",
                     capsys.readouterr().err)
    import yaml

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["student"]["model"] = "Qwen/Qwen2.5-3B-Instruct"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    assert train_main(["--mix", "tiny"]) == 2
    assert re.search(r"was converted from '.*tiny_source' \(revision None, float32\) but the "
                     r"params ask for 'Qwen/Qwen2.5-3B-Instruct' \(revision None, float32\): "
                     r"rerun the student stage", capsys.readouterr().err)


def test_several_gpus_relaunch_the_stage_with_accelerate(monkeypatch):
    import torch

    from pipelines.train import launch_command

    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert launch_command(["--mix", "long"]) == [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "4",
        "-m", "pipelines.train", "--mix", "long", "--single-process"]
    monkeypatch.setenv("LOCAL_RANK", "0")                    # already under a launcher
    assert launch_command(["--mix", "long"]) is None
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert launch_command(["--mix", "long"]) is None


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_checkpoint(tmp_path, tokenizer):
    """A real process killed mid-run; the rerun resumes from its checkpoint, in the same MLflow run."""
    root = make_project(tmp_path, tokenizer, make_rows(24),
                        train_section(max_steps=40, save_steps=5, pack_tokens=256, learning_rate=1e-4))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
           "PYTHONPATH": str(REPO)}
    work = root / "models" / "checkpoints" / ".work" / "tiny"
    command = [sys.executable, "-m", "pipelines.train", "--mix", "tiny"]
    first = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while not (work / "checkpoint-10" / "trainer_state.json").exists():
        assert first.poll() is None, first.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "no checkpoint within 10 minutes"
        time.sleep(0.5)
    first.send_signal(signal.SIGKILL)
    first.wait()
    run_id = (work / "mlflow_run_id.txt").read_text().strip()
    saved = max(int(p.name.split("-")[1]) for p in work.glob("checkpoint-*") if (p / "trainer_state.json").exists())
    assert 10 <= saved < 40

    second = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"resuming from models/checkpoints/.work/tiny/checkpoint-{saved}" in second.stderr
    out = root / "models" / "checkpoints" / "tiny"
    metrics = read_json(out / "train_metrics.json")
    assert metrics["resumed_from_step"] == saved and metrics["steps"] == 40
    assert (out / "mlflow_run_id.txt").read_text().strip() == run_id

    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    steps = [m.step for m in mlflow.MlflowClient().get_metric_history(run_id, "loss")]
    assert sorted(set(steps)) == list(range(1, 41))            # both sessions logged into one run
    assert Path(work).exists() is False
