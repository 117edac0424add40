"""Held-out loss: the scores file's shape, the two stages end to end on a tiny project (tiny
random-init model with the student's tokenizer), MLflow logging, and an empty test split."""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
import yaml

from evaluation.heldout import HeldoutError, nll_metrics, read_heldout, summarise_scores
from pipelines import heldout as heldout_stage
from pipelines import heldout_score as score_stage
from tests.curation.test_heldout import COLUMNS, TEST_IDS, long_rows, problems, short_rows, write_source
from tests.project import project_params
from tests.training.conftest import tokenizer, tokenizer_dir  # noqa: F401 (fixtures)
from tests.training.helpers import tiny_model


@dataclass
class Score:
    mean_nll: float
    total_nll: float
    n_tokens: int


def frame(rows: list[tuple[str, str]]) -> pl.DataFrame:
    return pl.DataFrame([{"trace_id": t, "problem_id": "P", "problem": "q", "response": "r", "style": s,
                          "source": "src", "teacher": "T"} for t, s in rows])


def test_summary_is_the_mean_over_traces_of_each_traces_mean_nll():
    traces = frame([("a", "long"), ("b", "long"), ("c", "short")])
    scores = [Score(1.0, 10.0, 10), Score(3.0, 300.0, 100), Score(0.5, 1.0, 2)]
    out = summarise_scores("mix_x", traces, scores)
    assert out == {"model": "mix_x", "styles": {
        "long": {"mean_nll": 2.0, "n_traces": 2, "n_tokens": 110, "per_trace": {"a": 1.0, "b": 3.0}},
        "short": {"mean_nll": 0.5, "n_traces": 1, "n_tokens": 2, "per_trace": {"c": 0.5}}}}
    assert nll_metrics(out) == {"heldout/long/nll": 2.0, "heldout/short/nll": 0.5}
    with pytest.raises(HeldoutError, match="'c' scored no response token"):
        summarise_scores("mix_x", traces, scores[:2] + [Score(math.nan, 0.0, 0)])
    with pytest.raises(HeldoutError, match="2 scores for 3 held-out traces"):
        summarise_scores("mix_x", traces, scores[:2])


def test_read_heldout_names_the_file_and_the_fault(tmp_path):
    path = tmp_path / "traces.parquet"
    frame([("a", "long")]).drop("teacher").write_parquet(path)
    with pytest.raises(HeldoutError, match=r"traces.parquet: missing column\(s\) \['teacher'\]"):
        read_heldout(path)
    frame([("a", "long"), ("a", "short")]).write_parquet(path)
    with pytest.raises(HeldoutError, match="trace_id 'a' appears 2 times"):
        read_heldout(path)
    frame([("a", "long"), ("b", None)]).write_parquet(path)
    with pytest.raises(HeldoutError, match="row 2: field 'style' is null"):
        read_heldout(path)


# ---------------------------------------------------------------- the stages on a tiny project

PATHS = {"problems": "data/problems", "traces": "data/traces", "curated": "data/curated", "mixes": "data/mixes",
         "student": "models/student", "checkpoints": "models/checkpoints", "eval": "data/eval",
         "reports": "reports", "heldout": "data/heldout"}


def make_project(root: Path, tokenizer, test_ids: list[str]) -> dict:  # noqa: F811
    from training.student import convert_student

    source_dir = root / "tiny_source"
    tiny_model(tokenizer).save_pretrained(source_dir)
    tokenizer.save_pretrained(source_dir)
    convert_student(str(source_dir), root / "models" / "student")
    ckpt = root / "models" / "checkpoints" / "long"
    tiny_model(tokenizer, seed=1).save_pretrained(ckpt)      # a different model than the base
    tokenizer.save_pretrained(ckpt)
    all_problems = problems()
    (root / "data" / "problems").mkdir(parents=True)
    all_problems.filter(~pl.col("problem_id").is_in(test_ids)).write_parquet(root / "data/problems/train.parquet")
    all_problems.filter(pl.col("problem_id").is_in(test_ids)).write_parquet(root / "data/problems/test.parquet")
    base = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    curate = copy.deepcopy(base["curate"])
    curate.update(cutoff_len=200)
    curate["correctness"]["workers"] = 1
    src = {name: {"kind": "file", "style": style, "teacher_size": "large", "columns": COLUMNS,
                  "path": str(write_source(root, name, rows))}
           for name, style, rows in (("long_src", "long", long_rows()), ("short_src", "short", short_rows()))}
    params = project_params(paths=PATHS, sources=src, groups={"long": ["long_src"], "short": ["short_src"]},
                            student={"model": str(source_dir), "revision": None, "trust_remote_code": False,
                                     "dtype": "float32"},
                            curate=curate, heldout={"max_traces_per_style": 2, "seed": 0, "batch_size": 2},
                            tracking={"experiment": "test-heldout", "uri": f"sqlite:///{root}/mlflow.db"})
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


@pytest.fixture
def project(tmp_path, tokenizer, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return make_project(tmp_path, tokenizer, TEST_IDS)


def test_stages_build_the_set_and_score_base_and_a_checkpoint(project, capsys):
    from training.scoring import score_examples_unbatched
    from training.student import load_student

    assert heldout_stage.main([]) == 0
    traces = pl.read_parquet("data/heldout/traces.parquet")
    assert traces.group_by("style").len().sort("style").rows() == [("long", 2), ("short", 2)]
    assert set(traces["problem_id"]) <= set(TEST_IDS)
    summary = json.loads(Path("data/heldout/summary.json").read_text())
    assert summary["styles"]["long"]["rejected_by_reason"]["over_cutoff"] == 1 and "correctness" in summary["checks"]

    for name, mdir in (("base", "models/student"), ("long", "models/checkpoints/long")):
        assert score_stage.main(["--model", name, "--no-mlflow"]) == 0
        out = json.loads(Path(f"data/heldout/scores/{name}.json").read_text())
        assert set(out) == {"model", "styles"} and out["model"] == name
        model, tok = load_student(mdir)
        for style in ("long", "short"):
            part = traces.filter(pl.col("style") == style)
            got = out["styles"][style]
            assert set(got) == {"mean_nll", "n_traces", "n_tokens", "per_trace"}
            assert set(got["per_trace"]) == set(part["trace_id"]) and got["n_traces"] == 2
            ref = score_examples_unbatched(model, tok, part["problem"].to_list(), part["response"].to_list())
            for tid, r in zip(part["trace_id"].to_list(), ref):
                assert got["per_trace"][tid] == pytest.approx(r.mean_nll, abs=1e-4)
            assert got["n_tokens"] == sum(r.n_tokens for r in ref)
            assert got["mean_nll"] == pytest.approx(sum(got["per_trace"].values()) / 2)
    base, long = (json.loads(Path(f"data/heldout/scores/{m}.json").read_text()) for m in ("base", "long"))
    assert base["styles"]["long"]["per_trace"] != long["styles"]["long"]["per_trace"]
    assert not Path("data/heldout/.work/long.jsonl").exists()           # the resume file goes on success
    assert "heldout_score@long: long: mean NLL" in capsys.readouterr().out


def test_scores_go_into_the_checkpoints_run_and_the_base_run(project, capsys):
    from pipelines import tracking

    assert heldout_stage.main([]) == 0
    with tracking.open_run(project, name="long") as run:
        train_run = run.run_id
    Path("models/checkpoints/long/mlflow_run_id.txt").write_text(train_run + "\n")
    assert score_stage.main(["--model", "long"]) == 0
    out = json.loads(Path("data/heldout/scores/long.json").read_text())
    logged = tracking.get_run(project, train_run)
    assert logged["metrics"] == {"heldout/long/nll": pytest.approx(out["styles"]["long"]["mean_nll"]),
                                 "heldout/short/nll": pytest.approx(out["styles"]["short"]["mean_nll"])}
    assert logged["tags"]["mixdistill.model"] == "long"

    assert score_stage.main(["--model", "base"]) == 0
    base_run = Path("data/eval/base/mlflow_run_id.txt").read_text().strip()   # shared with eval_base
    assert tracking.get_run(project, base_run)["name"] == "base"
    assert score_stage.main(["--model", "base"]) == 0
    assert Path("data/eval/base/mlflow_run_id.txt").read_text().strip() == base_run

    # a run id from another store (a checkpoint pulled from a DVC remote): a new run, with a warning
    Path("models/checkpoints/long/mlflow_run_id.txt").write_text("f" * 32 + "\n")
    capsys.readouterr()
    assert score_stage.main(["--model", "long"]) == 0
    assert f"MLflow run {'f' * 32} (from models/checkpoints/long/mlflow_run_id.txt) is not in the store" \
        in capsys.readouterr().err


def test_a_lora_checkpoint_is_scored_with_its_adapter_merged_into_its_base(project):
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model

    from training.scoring import score_examples_unbatched
    from training.student import load_student

    assert heldout_stage.main([]) == 0
    base, tok = load_student("models/student")        # the adapter records this path as its base
    torch.manual_seed(3)
    adapted = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                              init_lora_weights=False))      # non-zero: it changes the loss
    ckpt = Path("models/checkpoints/long")
    shutil.rmtree(ckpt)
    adapted.save_pretrained(ckpt)
    assert (ckpt / "adapter_config.json").exists() and not (ckpt / "config.json").exists()
    assert score_stage.main(["--model", "long", "--no-mlflow"]) == 0
    got = json.loads(Path("data/heldout/scores/long.json").read_text())["styles"]["long"]["per_trace"]
    traces = pl.read_parquet("data/heldout/traces.parquet").filter(pl.col("style") == "long")
    merged = adapted.merge_and_unload()
    ref = score_examples_unbatched(merged, tok, traces["problem"].to_list(), traces["response"].to_list())
    plain, _ = load_student("models/student")
    unadapted = score_examples_unbatched(plain, tok, traces["problem"].to_list(), traces["response"].to_list())
    for tid, r, u in zip(traces["trace_id"].to_list(), ref, unadapted):
        assert got[tid] == pytest.approx(r.mean_nll, abs=1e-4) and got[tid] != pytest.approx(u.mean_nll, abs=1e-4)


def test_unknown_model_and_missing_set_are_one_line_errors(project, capsys):
    assert score_stage.main(["--model", "nope", "--no-mlflow"]) == 2
    assert "error: heldout_score@nope: --model: unknown model 'nope'" in capsys.readouterr().err
    assert score_stage.main(["--model", "base", "--no-mlflow"]) == 2
    assert "data/heldout/traces.parquet: not found; run the heldout stage first" in capsys.readouterr().err


def test_empty_test_split_says_no_held_out_problems_downstream(tmp_path, tokenizer, monkeypatch, capsys):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    make_project(tmp_path, tokenizer, test_ids=[])
    assert heldout_stage.main([]) == 0
    assert pl.read_parquet("data/heldout/traces.parquet").height == 0
    assert json.loads(Path("data/heldout/summary.json").read_text())["note"].startswith("no held-out problems")
    assert score_stage.main(["--model", "long", "--no-mlflow"]) == 0
    assert json.loads(Path("data/heldout/scores/long.json").read_text()) == {
        "model": "long", "styles": {}, "note": "no held-out problems"}
    assert "heldout_score@long: no held-out problems" in capsys.readouterr().out
