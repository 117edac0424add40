"""The eval stage end to end in a temp project (fake engine, then a tiny random model), resuming
from saved samples, MLflow logging into the checkpoint's run, and the report stage."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from common.digests import model_digest
from common.layout import BASE_MODEL
from evaluation import run as eval_run
from evaluation.report import build_report as _build_report
from generation.engines import EngineError, FakeEngine
from pipelines import eval as eval_stage
from pipelines.params import parse_params
from tests.project import eval_project
from tests.generation.test_engines import save_tiny_model, student_tokenizer_dir  # noqa: F401 (fixture)

PROBLEMS = {"champ_test": [("P_1", "What is 2+3?", "5"), ("P_2", "What is 3*3?", "9"), ("P_3", "Half of 1?", "1/2")],
            "gsm8k": [("gsm8k-0", "Ducks lay 16 eggs, eat 3. Left?", "13"), ("gsm8k-1", "Bolts: 2 + 1?", "3")]}
ANSWERS = {"What is 2+3?": r"So \boxed{5}.", "What is 3*3?": r"I think \boxed{6}.", "Half of 1?": r"\boxed{\frac{1}{2}}",
           "Ducks lay": r"\boxed{13}", "Bolts": "I am not sure " * 3}


def answer_for(user: str, index: int) -> str:
    return next(text for key, text in ANSWERS.items() if key in user)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A temp project root with prepared benchmark frames and a placeholder checkpoint (the real
    prompt builder and rule grader are used)."""
    monkeypatch.chdir(tmp_path)
    bench_dir = tmp_path / "data/problems/benchmarks"
    bench_dir.mkdir(parents=True)
    for name, rows in PROBLEMS.items():
        pl.DataFrame([{"problem_id": p, "problem": q, "reference_answer": a, "benchmark": name}
                      for p, q, a in rows]).write_parquet(bench_dir / f"{name}.parquet")
    return eval_project(tmp_path, {
        "benchmarks": {"champ_test": {"kind": "champ_heldout"},
                       "gsm8k": {"kind": "file", "format": "gsm8k", "path": "unused.jsonl"}},
        "max_problems": 24, "batch_size": 2,
        "sampling": {"temperature": 0.0, "top_p": 1.0, "max_tokens": 64, "n": 1, "seed": 0},
        "ks": [1], "engine": {"kind": "transformers"}, "judge": None,
        "grading": {"timeout_s": 5.0, "workers": 1, "max_answer_chars": 200}}, decontam=["champ_test"])



def evaluate(project: dict, name: str, **kwargs) -> dict:
    params = parse_params(project)
    return eval_run.evaluate(name, params.layout, params.eval, **kwargs)


def log_run(result: dict, project: dict) -> str:
    params = parse_params(project)
    return eval_stage.log_run(result, params, params.layout)


def build_report(project: dict) -> dict:
    """The report over whatever mixes the test names (the root's cross-checks are not its subject)."""
    from common.layout import Layout, Paths
    from evaluation.config import parse_report

    return _build_report(Layout(Paths(**project["paths"])), parse_report(project), list(project["mix"]["mixes"]))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_evaluate_with_fake_engine_and_judge(project):
    # A (wrongly) lenient judge for "6": the point is that a judge flip is counted and audited.
    judge = FakeEngine(respond=lambda user, i: "VERDICT: CORRECT" if "<candidate>\n6\n" in user
                       else "VERDICT: INCORRECT")
    res = evaluate(project, "mix_a", engine=FakeEngine(respond=answer_for), judge=judge, judge_id="fake")
    out = Path("data/eval/mix_a")
    assert res["scores"]["champ_test"]["accuracy"] == 1.0
    assert res["scores"]["champ_test"]["accuracy_rule"] == pytest.approx(2 / 3)
    assert res["scores"]["champ_test"]["judge_flips"] == 1
    assert res["scores"]["gsm8k"]["accuracy"] == 0.5 and res["scores"]["gsm8k"]["boxed_rate"] == 0.5
    assert json.loads((out / "scores.json").read_text()) == res["scores"]
    audit = json.loads((out / "judge_audit.json").read_text())
    assert [(a["kind"], a["problem_id"], a["extracted_answer"], a["reference"]) for a in audit] == [
        ("disagreement", "P_2", "6", "9")]
    graded = read_jsonl(out / "graded.jsonl")
    assert [(g["benchmark"], g["problem_id"], g["correct"]) for g in graded] == [
        ("champ_test", "P_1", True), ("champ_test", "P_2", True), ("champ_test", "P_3", True),
        ("gsm8k", "gsm8k-0", True), ("gsm8k", "gsm8k-1", False)]
    assert (res["generated"], res["reused"]) == (5, 0)


class CrashAfter:
    """Answers ``chunks`` generate calls, then fails like a killed process would."""

    def __init__(self, chunks: int):
        self.inner, self.left, self.prompts = FakeEngine(respond=answer_for), chunks, 0

    def generate(self, prompts, sampling):
        if self.left == 0:
            raise EngineError("simulated crash")
        self.left -= 1
        self.prompts += len(prompts)
        return self.inner.generate(prompts, sampling)


def test_resume_generates_only_missing_samples(project):
    with pytest.raises(EngineError, match="simulated crash"):
        evaluate(project, "mix_a", engine=CrashAfter(chunks=1))
    samples = Path("data/eval/mix_a/samples.jsonl")
    assert len(read_jsonl(samples)) == 2                         # the first chunk survived
    with samples.open("a") as f:
        f.write('{"benchmark": "champ_test", "problem_id": "P_3", "sam')   # a write cut short
    engine = CrashAfter(chunks=10)
    res = evaluate(project, "mix_a", engine=engine)
    assert engine.prompts == 3 and (res["generated"], res["reused"]) == (3, 2)
    keys = [(r["benchmark"], r["problem_id"], r["sample_idx"]) for r in read_jsonl(samples)]
    assert len(keys) == len(set(keys)) == 5
    again = CrashAfter(chunks=0)                                 # nothing left: never called
    assert evaluate(project, "mix_a", engine=again)["generated"] == 0


def test_resume_after_a_crash_that_lost_only_the_newline(project):
    with pytest.raises(EngineError, match="simulated crash"):
        evaluate(project, "mix_a", engine=CrashAfter(chunks=1))
    samples = Path("data/eval/mix_a/samples.jsonl")
    samples.write_bytes(samples.read_bytes().rstrip(b"\n"))      # last record complete, newline lost
    engine = CrashAfter(chunks=10)
    res = evaluate(project, "mix_a", engine=engine)
    assert (res["generated"], res["reused"]) == (3, 2)          # the complete record is kept...
    keys = [(r["benchmark"], r["problem_id"], r["sample_idx"]) for r in read_jsonl(samples)]
    assert len(keys) == len(set(keys)) == 5                     # ...and new ones start on their own line


def test_changed_checkpoint_starts_afresh(project, capsys):
    evaluate(project, "mix_a", engine=FakeEngine(respond=answer_for))
    Path("models/checkpoints/mix_a/config.json").write_text('{"model_type": "retrained"}')
    engine = CrashAfter(chunks=10)
    evaluate(project, "mix_a", engine=engine)
    assert engine.prompts == 5
    assert "its samples are replaced by this run" in capsys.readouterr().err


def test_checkpoint_digest_follows_the_model_not_the_run_records(tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model.safetensors").write_bytes(b"weights")
    (ckpt / "chat_template.jinja").write_text("{{ messages }}")
    first = model_digest(ckpt)
    for record in ("lineage.json", "train_metrics.json", "mlflow_run_id.txt"):   # a retrain's records
        (ckpt / record).write_text("run specific")
    assert model_digest(ckpt) == first
    (ckpt / "chat_template.jinja").write_text("{{ other }}")                   # prompts change
    assert model_digest(ckpt) != first


def test_corrupt_saved_sample_is_an_error(project):
    evaluate(project, "mix_a", engine=FakeEngine(respond=answer_for))
    samples = Path("data/eval/mix_a/samples.jsonl")
    lines = samples.read_text().splitlines()
    samples.write_text("\n".join([lines[0], "{broken", *lines[1:]]) + "\n")
    with pytest.raises(ValueError, match=r"samples.jsonl: line 2: invalid JSON.*delete .* to generate its samples again"):
        evaluate(project, "mix_a", engine=FakeEngine(respond=answer_for))


def test_missing_checkpoint_exits_with_message(project, tmp_path, capsys):
    Path("params.yaml").write_text(json.dumps(project))
    assert eval_stage.main(["--model", "nope", "--no-mlflow"]) == 2
    assert "models/checkpoints/nope: no checkpoint for model 'nope'" in capsys.readouterr().err


def test_tiny_model_end_to_end_logs_into_training_run(project, student_tokenizer_dir):  # noqa: F811
    import mlflow

    from pipelines import tracking

    project["eval"]["sampling"]["max_tokens"] = 4
    ckpt = Path("models/checkpoints/mix_a")
    save_tiny_model(ckpt, student_tokenizer_dir)
    with tracking.open_run(project, name="train-mix_a") as run:
        train_run = run.run_id
    (ckpt / "mlflow_run_id.txt").write_text(train_run + "\n")
    res = evaluate(project, "mix_a")
    assert res["generated"] == 5
    assert all(m["truncation_rate"] == 1.0 and m["mean_response_tokens"] == 4.0 for m in res["scores"].values())
    assert log_run(res, project) == train_run
    run = mlflow.get_run(train_run)
    assert run.data.metrics["eval/champ_test/accuracy"] == 0.0
    assert run.data.metrics["eval/gsm8k/pass_at_1"] == 0.0
    assert run.data.tags["mixdistill.model"] == "mix_a"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(train_run, "eval")}
    assert {"eval/judge_audit.json", "eval/graded.jsonl", "eval/scores.json"} <= artifacts


def test_base_gets_its_own_reused_run(project):
    import mlflow

    student = Path("models/student")
    student.mkdir(parents=True)
    (student / "config.json").write_text("{}")
    res = evaluate(project, BASE_MODEL, engine=FakeEngine(respond=answer_for))
    first = log_run(res, project)
    assert mlflow.get_run(first).info.run_name == "base"
    assert log_run(res, project) == first


def test_run_id_unknown_to_the_store_gets_a_new_run(project, capsys):
    # A checkpoint pulled from a DVC remote names a run of another MLflow store.
    import mlflow

    res = evaluate(project, "mix_a", engine=FakeEngine(respond=answer_for))
    (Path("models/checkpoints/mix_a") / "mlflow_run_id.txt").write_text("f" * 32 + "\n")
    run_id = log_run(res, project)
    assert run_id != "f" * 32 and mlflow.get_run(run_id).info.run_name == "mix_a"
    assert f"MLflow run {'f' * 32}" in capsys.readouterr().err


# ---------------------------------------------------------------- report stage

def write_scores(root: Path, model: str, acc: dict[str, float], tokens: list[int]):
    out = root / "data/eval" / model
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps({b: {"accuracy": a, "n_problems": 20, "mean_response_tokens": 100.0,
                                                     "truncation_rate": 0.1} for b, a in acc.items()}))
    (out / "graded.jsonl").write_text("".join(json.dumps({"completion_tokens": t}) + "\n" for t in tokens))


def test_report_deltas_tables_and_plots(project, tmp_path):
    project["mix"] = {"mixes": {m: {} for m in ("long", "short", "small", "mix_long", "mix_large", "human")}}
    accs = {"base": 0.1, "long": 0.5, "short": 0.3, "small": 0.2, "mix_long": 0.55, "mix_large": 0.25}
    for model, a in accs.items():
        write_scores(tmp_path, model, {"champ_test": a, "gsm8k": a / 2}, [10, 20, 30])
    res = build_report(project)
    assert res["delta_long"]["champ_test"] == pytest.approx(0.2)
    assert res["delta_large"]["gsm8k"] == pytest.approx(0.05)
    assert res["gains"]["mix_long_vs_long"]["champ_test"] == pytest.approx(0.05)
    assert res["gains"]["mix_large_vs_small"]["champ_test"] == pytest.approx(0.05)
    assert res["missing"] == ["human"]
    metrics = json.loads(Path("reports/metrics.json").read_text())
    assert metrics["accuracy"]["base"] == {"champ_test": 0.1, "gsm8k": 0.05}
    points = json.loads(Path("reports/plots/accuracy.json").read_text())
    assert len(points) == 12 and points[0] == {"model": "base", "benchmark": "champ_test", "accuracy": 0.1}
    summary = Path("reports/summary.md").read_text()
    assert "| ΔLong = P(long: long) − P(short: short) | +0.200 | +0.100 |" in summary
    assert "Not evaluated (no scores.json): human." in summary
    for png in ("accuracy.png", "response_lengths.png"):
        assert Path("reports", png).read_bytes()[:4] == b"\x89PNG"


def test_report_roles_are_configurable_and_missing_parts_are_na(project, tmp_path):
    project["mix"] = {"mixes": {"long": {}, "short": {}}}
    project["report"] = {"short": "long", "long": "short"}
    write_scores(tmp_path, "long", {"champ_test": 0.5}, [5])
    write_scores(tmp_path, "short", {"champ_test": 0.3}, [5])
    res = build_report(project)
    assert res["delta_long"]["champ_test"] == pytest.approx(-0.2)
    assert res["delta_large"]["champ_test"] is None                # "small" was never evaluated
    assert "n/a" in Path("reports/summary.md").read_text()
    with pytest.raises(Exception, match="unknown key"):
        build_report({**project, "report": {"bogus": 1}})


def test_report_without_scores_is_an_error(project):
    project["mix"] = {"mixes": {"long": {}}}
    with pytest.raises(FileNotFoundError, match="no model has scores.json"):
        build_report(project)


@pytest.mark.parametrize("change,message", [
    ({"ks": [1, 4]}, r"eval.ks: \[4\] exceed eval.sampling.n = 1"),
    ({"engine": {"kind": "tpu"}}, r"eval.engine.kind: 'tpu'"),
    ({"max_problems": 0}, r"eval.max_problems: 0"),
    ({"sampling": {"n": 4}}, r"eval.sampling: sampling.n: 4 samples need temperature > 0"),
    ({"bogus": 1}, r"eval: unknown key\(s\) \['bogus'\]"),
    ({"benchmarks": {"x": {"kind": "ftp"}}}, r"eval.benchmarks.x.kind"),
])
def test_eval_params_errors(change, message):
    from common.params import ParamsError
    from evaluation.config import parse_eval

    with pytest.raises(ParamsError, match=message):
        parse_eval({"eval": {"benchmarks": {"champ_test": {"kind": "champ_heldout"}}, **change}})


def test_repo_params_parse():
    from pipelines.params import load_params

    params = load_params(Path(__file__).resolve().parents[2] / "params.yaml")
    assert "champ_test" in params.eval.benchmarks and params.eval.sampling.n == 1
    assert params.report.large == "short"


def test_calibration_is_logged_as_a_run_with_its_confusion_matrices(project, tmp_path):
    import mlflow

    from grading.grader import Grader
    from grading.judge import JudgeGrader, calibrate_on_champ

    with Grader(workers=0) as grader:
        result = calibrate_on_champ(JudgeGrader(grader), limit=12)
    run_id = eval_stage.log_calibration(result, parse_params(project))
    run = mlflow.get_run(run_id)
    assert run.info.run_name == "calibrate" and run.data.tags["mixdistill.stage"] == "calibrate"
    assert run.data.metrics["n"] == 12
    assert run.data.metrics["calibration/rule/accuracy"] == pytest.approx(result["rule"]["accuracy"])
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run_id,
                                                                artifact_path="calibration/confusion.json")).read_text())
    assert len(table["data"]) == 4           # (rule, rule + judge) x (human right, human wrong)
    counts = sum(row[2] + row[3] for row in table["data"])
    assert counts == 2 * 12
