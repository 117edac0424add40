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
from evaluation.report import ReportError, build_report as _build_report
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


def write_graded(root: Path, model: str, correct: dict[str, list[bool]]):
    """scores.json and graded.jsonl as the eval stage writes them: one greedy sample per problem."""
    out = root / "data/eval" / model
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps({b: {"accuracy": sum(v) / len(v), "n_problems": len(v),
                                                     "mean_response_tokens": 50.0, "truncation_rate": 0.0}
                                                 for b, v in correct.items()}))
    (out / "graded.jsonl").write_text("".join(
        json.dumps({"benchmark": b, "problem_id": f"P_{i}", "sample_idx": 0, "correct": ok, "rule_correct": ok,
                    "completion_tokens": 50}) + "\n" for b, v in correct.items() for i, ok in enumerate(v)))


def first(k: int, n: int = 20) -> list[bool]:
    return [i < k for i in range(n)]


REPORT_MIXES = ("long", "short", "small", "mix_long", "mix_large")


def test_report_prints_intervals_and_marks_noise(project, tmp_path):
    project["mix"] = {"mixes": {m: {} for m in REPORT_MIXES}}
    # long beats short on one problem (noise); short (the large teacher) beats small on nine
    for model, k in {"base": 0, "long": 10, "short": 9, "small": 0, "mix_long": 10, "mix_large": 5}.items():
        write_graded(tmp_path, model, {"champ_test": first(k)})
    res = build_report(project)
    summary = Path("reports/summary.md").read_text()
    # by hand: one discordant problem of 20 -> replicate counts Bin(20, 1/20): [0, 3/20], McNemar p = 1
    assert "| ΔLong = P(long: long) − P(short: short) | +0.050 [+0.000, +0.150] p=1 (noise) |" in summary
    large = next(line for line in summary.splitlines() if line.startswith("| ΔLarge"))
    assert "+0.450 [" in large and "p=0.0039" in large and "(noise)" not in large      # 9 vs 0: 2 / 2^9
    assert "| mix_long − long | +0.000 [+0.000, +0.000] p=1 (noise) |" in summary
    # 4 to 0 of 20: Bin(20, 1/5) puts 1.2% on 0, so the interval misses 0, but McNemar's p = 2/16
    assert "| mix_large − short | -0.200 [-0.400, -0.050] p=0.12 (noise) |" in summary
    assert "| base | 0.000 [0.000, 0.000] | 50 | 0.00 |" in summary
    assert "read small deltas as noise" not in summary and "paired bootstrap interval over problems" in summary
    assert "10,000 resamples" in summary and "seed 0" in summary
    assert res["intervals"]["delta_large"]["champ_test"].low > 0

    metrics = json.loads(Path("reports/metrics.json").read_text())
    for kept in ("accuracy", "delta_long", "delta_large", "gains"):
        assert kept in metrics
    intervals = metrics["intervals"]
    assert set(intervals) == {"delta_long", "delta_large", *(f"accuracy/{m}" for m in ("base", *REPORT_MIXES)),
                              "gain/mix_long_vs_long", "gain/mix_long_vs_short", "gain/mix_large_vs_short",
                              "gain/mix_large_vs_small"}
    assert intervals["delta_long"] == {"champ_test": {"low": 0.0, "high": pytest.approx(0.15), "p": 1.0}}
    assert intervals["delta_large"]["champ_test"]["p"] == pytest.approx(2 / 512)
    assert intervals["accuracy/long"]["champ_test"]["p"] is None
    assert intervals["accuracy/long"]["champ_test"]["low"] < 0.5 < intervals["accuracy/long"]["champ_test"]["high"]
    assert metrics["bootstrap"] == {"resamples": 10000, "seed": 0, "confidence": 0.95}

    project["report"] = {**project["report"], "bootstrap": {"resamples": 2000, "seed": 3}}
    again = build_report(project)
    assert again["delta_long"] == res["delta_long"] and "2,000 resamples" in Path("reports/summary.md").read_text()


def test_report_without_per_problem_verdicts_says_so_and_pairs_only_common_problems(project, tmp_path):
    project["mix"] = {"mixes": {"long": {}, "short": {}}}
    write_scores(tmp_path, "long", {"champ_test": 0.5}, [5])         # graded.jsonl without problem ids
    write_scores(tmp_path, "short", {"champ_test": 0.3}, [5])
    build_report(project)
    summary = Path("reports/summary.md").read_text()
    assert "| ΔLong = P(long: long) − P(short: short) | +0.200 |" in summary
    assert "No intervals" in summary
    assert json.loads(Path("reports/metrics.json").read_text())["intervals"]["delta_long"] == {
        "champ_test": {"low": None, "high": None, "p": None}}
    write_graded(tmp_path, "long", {"champ_test": first(10)})
    write_graded(tmp_path, "short", {"champ_test": first(9, n=18)})  # evaluated on fewer problems
    build_report(project)
    delta = next(line for line in Path("reports/summary.md").read_text().splitlines() if line.startswith("| ΔLong"))
    assert delta.endswith("(noise) † |")


def test_report_refuses_graded_samples_that_disagree_with_the_scores(project, tmp_path):
    project["mix"] = {"mixes": {"long": {}}}
    write_graded(tmp_path, "long", {"champ_test": first(10)})
    scores = tmp_path / "data/eval/long/scores.json"
    scores.write_text(scores.read_text().replace('"accuracy": 0.5', '"accuracy": 0.55'))
    with pytest.raises(ReportError, match=r"data/eval/long/graded.jsonl: 'champ_test': per-problem accuracy "
                                          r"averages 0.500000 but scores.json says 0.550000"):
        build_report(project)
    graded = tmp_path / "data/eval/long/graded.jsonl"
    lines = graded.read_text().splitlines()
    graded.write_text("\n".join(lines[:3] + [json.dumps({"completion_tokens": 4})] + lines[4:]) + "\n")
    with pytest.raises(ReportError, match=r"graded.jsonl: line 4: field 'problem_id' missing"):
        build_report(project)
    graded.write_text(lines[0].replace('"correct": true', '"correct": "yes"') + "\n")
    with pytest.raises(ReportError, match=r"graded.jsonl: line 1: field 'correct' missing or not a bool"):
        build_report(project)


def test_report_intervals_for_both_graders_under_the_paper_protocol(project, tmp_path):
    project["mix"] = {"mixes": {m: {} for m in REPORT_MIXES}}
    for model, (paper_k, ours_k) in {"base": (0, 0), "long": (12, 8), "short": (4, 8), "small": (4, 4),
                                     "mix_long": (12, 8), "mix_large": (4, 4)}.items():
        write_graded(tmp_path, model, {"math500": first(paper_k)})
        ours = first(ours_k)
        graded = tmp_path / "data/eval" / model / "graded.jsonl"
        graded.write_text("".join(json.dumps({**json.loads(line), "mixdistill_correct": ok,
                                              "mixdistill_rule_correct": ok}) + "\n"
                                  for line, ok in zip(graded.read_text().splitlines(), ours)))
        scores = tmp_path / "data/eval" / model / "scores.json"
        doc = json.loads(scores.read_text())
        doc["math500"].update(protocol="paper", mixdistill_accuracy=ours_k / 20)
        scores.write_text(json.dumps(doc))
    res = build_report(project)
    assert res["mixdistill"]["delta_long"]["math500"] == pytest.approx(0.0)
    summary = Path("reports/summary.md").read_text()
    # long vs short: 8 to 0 under the protocol; identical under mixdistill's grader
    protocol_row = next(line for line in summary.splitlines() if line.startswith("| ΔLong = P(long) − P(short) (protocol)"))
    assert "+0.400 [" in protocol_row and "p=0.0078" in protocol_row and "(noise)" not in protocol_row
    assert "| ΔLong = P(long) − P(short) (mixdistill) | +0.000 [+0.000, +0.000] p=1 (noise) |" in summary
    # the same samples of `long`, graded twice: the protocol says right on 4 problems ours calls wrong
    assert "| long | math500 | paper | 0.600 | 0.400 [0.200, 0.600] | +0.200 [" in summary
    intervals = json.loads(Path("reports/metrics.json").read_text())["intervals"]
    assert {"mixdistill/delta_long", "mixdistill/delta_large", "mixdistill/accuracy/long",
            "grader/long", "gain/mix_long_vs_short"} <= set(intervals)
    assert intervals["grader/long"]["math500"]["p"] == pytest.approx(2 / 16)
    assert intervals["mixdistill/delta_long"]["math500"] == {"low": 0.0, "high": 0.0, "p": 1.0}


def test_bootstrap_params_are_checked():
    from common.params import ParamsError
    from evaluation.config import parse_report

    assert parse_report({"report": {}}).bootstrap.resamples == 10000
    with pytest.raises(ParamsError, match=r"report.bootstrap.resamples: 10 must be an integer >= 100"):
        parse_report({"report": {"bootstrap": {"resamples": 10}}})
    with pytest.raises(ParamsError, match=r"report.bootstrap.confidence: 1.5"):
        parse_report({"report": {"bootstrap": {"confidence": 1.5}}})
    with pytest.raises(ParamsError, match=r"report.bootstrap: unknown key\(s\) \['sed'\]"):
        parse_report({"report": {"bootstrap": {"sed": 1}}})


def write_heldout(root: Path, model: str, styles: dict[str, list[float]], note: str | None = None):
    folder = root / "data/heldout/scores"
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"model": model, "styles": {s: {"mean_nll": sum(v) / len(v), "n_traces": len(v), "n_tokens": 10 * len(v),
                                          "per_trace": {f"{s}-t{i}": x for i, x in enumerate(v)}}
                                      for s, v in styles.items()}}
    if note:
        doc["note"] = note
    (folder / f"{model}.json").write_text(json.dumps(doc))


def test_report_heldout_loss_table_when_scores_exist(project, tmp_path):
    project["mix"] = {"mixes": {m: {} for m in REPORT_MIXES}}
    for model in ("base", *REPORT_MIXES):
        write_graded(tmp_path, model, {"champ_test": first(5)})
    build_report(project)
    summary = Path("reports/summary.md").read_text()
    assert "Held-out loss: not computed (no `<model>.json` under `data/heldout/scores`" in summary
    assert "## Held-out loss by style" not in summary
    assert "heldout_loss" not in json.loads(Path("reports/metrics.json").read_text())

    base_long, base_short = [2.0, 2.1, 1.9, 2.2, 2.0], [1.0, 1.2, 0.8, 1.1, 0.9]
    write_heldout(tmp_path, "base", {"long": base_long, "short": base_short})
    write_heldout(tmp_path, "long", {"long": [x - 0.5 for x in base_long],                    # every trace -0.5
                                     "short": [x + d for x, d in zip(base_short, (0.1, -0.1, 0.1, -0.1, 0.0))]})
    res = build_report(project)
    summary = Path("reports/summary.md").read_text()
    assert "## Held-out loss by style" in summary and "| model | long | short | long − base | short − base |" in summary
    row = next(line for line in summary.splitlines() if line.startswith("| long | 1.540 |"))
    assert "| -0.500 [-0.500, -0.500] |" in row and row.endswith("(noise) |")
    assert "| base | 2.040 | 1.000 | — | — |" in summary
    assert "Not scored: short, small, mix_long, mix_large." in summary
    metrics = json.loads(Path("reports/metrics.json").read_text())
    assert metrics["heldout_loss"] == {"base": {"long": pytest.approx(2.04), "short": pytest.approx(1.0)},
                                       "long": {"long": pytest.approx(1.54), "short": pytest.approx(1.0)}}
    assert res["heldout_loss"] == metrics["heldout_loss"]
    long_change = metrics["intervals"]["heldout/long/long"]["heldout"]
    assert long_change["low"] == pytest.approx(-0.5) and long_change["high"] == pytest.approx(-0.5)
    assert long_change["p"] is None
    assert metrics["intervals"]["heldout/short/long"]["heldout"]["low"] < 0 < \
        metrics["intervals"]["heldout/short/long"]["heldout"]["high"]
    assert "delta_long" in metrics["intervals"] and "accuracy" in metrics


def test_report_heldout_scores_without_problems_or_damaged(project, tmp_path):
    project["mix"] = {"mixes": {"long": {}}}
    write_graded(tmp_path, "long", {"champ_test": first(5)})
    write_heldout(tmp_path, "long", {}, note="no held-out problems")
    build_report(project)
    assert "Held-out loss: not computed (the scores say: no held-out problems)." in \
        Path("reports/summary.md").read_text()
    write_heldout(tmp_path, "base", {"long": [1.0, 2.0]})
    path = tmp_path / "data/heldout/scores/base.json"
    doc = json.loads(path.read_text())
    doc["styles"]["long"]["mean_nll"] = 1.7                     # not the mean over traces
    path.write_text(json.dumps(doc))
    with pytest.raises(ReportError, match=r"data/heldout/scores/base.json: styles.long.mean_nll: 1.7 is not the "
                                          r"mean of per_trace"):
        build_report(project)
    doc["styles"]["long"].update(mean_nll=1.5, n_traces=3)
    path.write_text(json.dumps(doc))
    with pytest.raises(ReportError, match=r"styles.long.n_traces: 3 but per_trace holds 2 traces"):
        build_report(project)
    path.write_text(json.dumps({**doc, "model": "long"}))
    with pytest.raises(ReportError, match=r"base.json: field 'model' is 'long', expected 'base'"):
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
