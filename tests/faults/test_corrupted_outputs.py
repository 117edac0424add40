"""A stage reading what an earlier one left broken (a truncated Parquet or safetensors file, an
engine that cannot start, a grading pair that times out): one message naming the file, exit 2,
and nothing the earlier runs saved is lost."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import polars as pl
import pytest

from common.io import ParquetError, read_parquet
from curation.mixing import load_curated
from generation.engines import EngineError
from pipelines import eval as eval_stage
from tests.evaluation.test_eval_stage import answer_for, evaluate, project  # noqa: F401 (fixture)
from tests.generation.test_engines import save_tiny_model, student_tokenizer_dir  # noqa: F401 (fixture)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_parquet_names_its_file(tmp_path):
    path = tmp_path / "kept.parquet"
    pl.DataFrame({"a": list(range(1000)), "b": ["x" * 20] * 1000}).write_parquet(path)
    truncate(path)
    with pytest.raises(ParquetError, match=rf"{path}: not a readable Parquet file .*re-running the stage"):
        read_parquet(path)
    with pytest.raises(FileNotFoundError, match="nope.parquet: not found"):
        read_parquet(tmp_path / "nope.parquet")


def test_mix_reading_a_truncated_kept_set_says_which(tmp_path):
    src = tmp_path / "champ_gpt4"
    src.mkdir()
    pl.DataFrame({"trace_id": [f"t{i}" for i in range(500)]}).write_parquet(src / "kept.parquet")
    (src / "report.json").write_text(json.dumps({"contract": {"success": True}}))
    truncate(src / "kept.parquet", 0.3)
    with pytest.raises(ParquetError, match=r"champ_gpt4/kept.parquet: not a readable Parquet file"):
        load_curated(tmp_path, "champ_gpt4")


def test_eval_with_a_truncated_benchmark_file_exits_2_naming_it(project, capsys):  # noqa: F811
    Path("params.yaml").write_text(json.dumps(project))
    truncate(Path("data/problems/benchmarks/gsm8k.parquet"))
    assert eval_stage.main(["--model", "mix_a", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "error: eval@mix_a: data/problems/benchmarks/gsm8k.parquet: not a readable Parquet file" in err
    assert "Traceback" not in err


def test_eval_of_a_checkpoint_with_truncated_weights_keeps_its_saved_samples(project, student_tokenizer_dir, capsys):  # noqa: F811
    ckpt = Path("models/checkpoints/mix_a")
    for f in ckpt.iterdir():
        f.unlink()
    save_tiny_model(ckpt, student_tokenizer_dir)
    from generation.engines import TransformersEngine

    evaluate(project, "mix_a", engine=TransformersEngine.from_pretrained(ckpt, batch_size=4))
    samples = Path("data/eval/mix_a/samples.jsonl")
    saved = samples.read_bytes()
    truncate(ckpt / "model.safetensors")            # a copy cut short: the digest changes, so the
    Path("params.yaml").write_text(json.dumps(project))   # saved samples are another model's now
    assert eval_stage.main(["--model", "mix_a", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "models/checkpoints/mix_a: cannot load the model weights" in err and "truncated or corrupted" in err
    assert "Traceback" not in err
    assert samples.read_bytes() == saved             # not discarded before a new sample exists


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_engine_that_cannot_connect_loses_no_saved_samples(project, monkeypatch, capsys):  # noqa: F811
    from generation.engines import FakeEngine

    evaluate(project, "mix_a", engine=FakeEngine(respond=answer_for))
    samples, meta = Path("data/eval/mix_a/samples.jsonl"), Path("data/eval/mix_a/samples.meta.json")
    saved, saved_meta = samples.read_bytes(), meta.read_bytes()
    project["eval"]["engine"] = {"kind": "openai", "base_url": f"http://127.0.0.1:{closed_port()}/v1",
                                 "model": "served", "api_key_env": "MIXDISTILL_TEST_KEY", "max_retries": 1,
                                 "timeout_s": 2.0}
    monkeypatch.setenv("MIXDISTILL_TEST_KEY", "not-a-real-key")
    Path("params.yaml").write_text(json.dumps(project))
    assert eval_stage.main(["--model", "mix_a", "--no-mlflow"]) == 2
    err = capsys.readouterr().err
    assert "error: eval@mix_a: openai: prompt" in err and "Traceback" not in err
    assert "not-a-real-key" not in err
    assert samples.read_bytes() == saved and meta.read_bytes() == saved_meta


def test_curation_counts_the_pairs_it_retried(tmp_path):
    """A pair that timed out once is tried again with twice the budget; the report says how many."""
    from curation.runner import run_curation
    from grading.grader import Grader
    from tests.grading.test_grader import slow_checker

    from tests.curation.test_runner import _frame

    frame = _frame([r"so the answer is \boxed{slow}", r"so the answer is \boxed{fast}"], refs=["x", "y"])
    with Grader(timeout_s=0.5, workers=1, checker=slow_checker) as grader:
        result = run_curation(frame, row_checks=[], grader=grader)
    assert result.report["grading_retries"] == {"retried": 1, "timed_out_again": 0}
    assert result.report["kept"] == 2
