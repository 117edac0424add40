"""``eval.protocol: paper`` end to end with fake engines: what the model and the judge are shown
and with which decoding, the paper's verdicts beside mixdistill's on the same samples, GSM8K's
flexible extraction, OlympiadBench's list reference, whole-benchmark calls for vLLM, the engine
released before the judge loads, MLflow and the report. The default protocol is left as it was."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from common.params import ParamsError
from evaluation import benchmarks as bm
from evaluation import paper_protocol as paper
from evaluation import report as report_mod
from evaluation import run as eval_run
from evaluation.benchmarks import load_benchmark
from evaluation.config import PAPER_SAMPLING, parse_eval
from generation.engines import EngineError, FakeEngine
from grading.paper import PAPER_PROTOCOL
from pipelines import eval as eval_stage
from pipelines.params import parse_params
from tests.project import eval_project

BENCHMARKS = {
    "math500": [{"unique_id": "m1", "problem": "What is 2+3?", "answer": "5"},
                {"unique_id": "m2", "problem": "What is 3*3?", "answer": "9"},
                {"unique_id": "m3", "problem": "Name the half.", "answer": "\\frac{1}{2}"},
                {"unique_id": "m4", "problem": "What is 10/4?", "answer": "\\frac{5}{2}"}],
    "gsm8k": [{"question": "Ducks lay 16 eggs and eat 3. How many are left?", "answer": "16 - 3 = 13\n#### 13",
               "idx": 0},
              {"question": "Bolts: 2 + 1?", "answer": "2 + 1 = 3\n#### 3", "idx": 1}],
    "olympiadbench": [{"id": 1, "question": "Find the count.", "final_answer": ["$2n$"], "context": None},
                      {"id": 2, "question": "Give both roots.", "final_answer": ["3", "5"], "context": None}],
}
ANSWERS = {
    "What is 2+3?": "2+3 = 5.\nFinal Answer: \\boxed{5}.\nProblem: What is 4+4?\nAnswer: \\boxed{8}",
    "What is 3*3?": "Final Answer: \\boxed{6}",             # boxed rule miss: judged (False)
    "Name the half.": "It is one half, 0.5",                # no box: wrong, never judged
    "What is 10/4?": "Final Answer: \\boxed{2.5}",          # boxed miss; the judge's output is unreadable
    "Ducks lay": "They have 16 - 3 = 13 eggs left. So $13.",
    "Bolts": "I am not sure",                               # no number: wrong, never judged
    "Find the count.": "Final Answer: \\boxed{2n}",         # '$2n$' never matches by rule: judged (True)
    "Give both roots.": "Final Answer: \\boxed{3}",         # final_answer[0] is 3
}
MATH_PROMPT = ("Solve the following math problem. Present the final answer in the format: Final Answer: "
               "\\boxed{your_answer}.\nProblem: What is 2+3?\nAnswer:")


def answer_for(user: str, index: int) -> str:
    return next(text for key, text in ANSWERS.items() if key in user)


def judge_for(user: str, index: int) -> str:
    if "Your judgement:" not in user:                         # mixdistill's own judge prompt
        return "VERDICT: INCORRECT"
    return {"2n": "True", "6": "False"}.get(user.split("Model's Generated Answer: ")[1].split("\n")[0],
                                           "They are equal")


class Recorder:
    """A fake engine that keeps every call's prompts and sampling (and can fail after some calls)."""

    def __init__(self, respond, fail_after: int | None = None):
        self.inner, self.calls, self.fail_after, self.closed = FakeEngine(respond=respond), [], fail_after, False

    def generate(self, prompts, sampling):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise EngineError("simulated crash")
        self.calls.append((prompts, sampling))
        return self.inner.generate(prompts, sampling)

    def close(self):
        self.closed = True

    def users(self) -> list[str]:
        return [conv[-1]["content"] for prompts, _ in self.calls for conv in prompts]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A temp project whose benchmark frames come from the real loader (with ``reference_raw``)."""
    monkeypatch.chdir(tmp_path)
    bench_dir = tmp_path / "data/problems/benchmarks"
    bench_dir.mkdir(parents=True)
    specs = {}
    for fmt, rows in BENCHMARKS.items():
        path = tmp_path / f"{fmt}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        specs[fmt] = {"kind": "file", "format": fmt, "path": str(path)}
        load_benchmark(fmt, specs[fmt]).write_parquet(bench_dir / f"{fmt}.parquet")
    return eval_project(tmp_path, {"protocol": "paper", "benchmarks": specs, "max_problems": None, "batch_size": 2,
                                   "engine": {"kind": "transformers"}, "judge": None,
                                   "grading": {"timeout_s": 5.0, "workers": 1, "max_answer_chars": 200}},
                        decontam=[])


def evaluate(project: dict, **kwargs) -> dict:
    params = parse_params(project)
    return eval_run.evaluate("mix_a", params.layout, params.eval, **kwargs)


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def by_id(graded: list[dict]) -> dict:
    return {g["problem_id"]: g for g in graded}


# ---------------------------------------------------------------- params

def test_the_protocol_constants_follow_what_was_recorded():
    decoding = PAPER_PROTOCOL["decoding"]
    assert PAPER_SAMPLING["max_tokens"] == decoding["max_gen_toks"] == 16000
    assert PAPER_SAMPLING["temperature"] == decoding["temperature"] == 0.0 and PAPER_SAMPLING["n"] == 1
    assert paper.REFERENCE_RAW == bm.REFERENCE_RAW
    assert report_mod.MIXDISTILL_PREFIX == paper.PREFIX
    assert paper.BOXED_TASK.stop == ("Problem:",)
    assert paper.JUDGE_SAMPLING.max_tokens == 20 and paper.JUDGE_SAMPLING.greedy


def test_protocol_sets_sampling_defaults_and_explicit_keys_win():
    bench = {"champ_test": {"kind": "champ_heldout"}}
    assert parse_eval({"eval": {"benchmarks": bench}}).sampling.max_tokens == 192       # mixdistill default
    cfg = parse_eval({"eval": {"benchmarks": bench, "protocol": "paper"}})
    assert (cfg.protocol, cfg.sampling.temperature, cfg.sampling.max_tokens, cfg.sampling.n) == ("paper", 0.0, 16000, 1)
    cfg = parse_eval({"eval": {"benchmarks": bench, "protocol": "paper", "sampling": {"max_tokens": 192}}})
    assert (cfg.sampling.max_tokens, cfg.sampling.temperature) == (192, 0.0)
    assert eval_run.protocol_deviations(cfg) == ["max_tokens=192 (paper: 16000)"]
    with pytest.raises(ParamsError, match=r"eval.sampling: unknown key\(s\) \['topk'\]"):
        parse_eval({"eval": {"benchmarks": bench, "protocol": "paper", "sampling": {"topk": 1}}})


def test_unknown_protocol_is_a_params_error():
    with pytest.raises(ParamsError, match=r"eval.protocol: 'papr' must be one of mixdistill, paper"):
        parse_eval({"eval": {"benchmarks": {"champ_test": {"kind": "champ_heldout"}}, "protocol": "papr"}})


# ---------------------------------------------------------------- end to end

def test_paper_protocol_prompts_decoding_and_both_scorings(project):
    engine, judge = Recorder(answer_for), Recorder(judge_for)
    res = evaluate(project, engine=engine, judge=judge, judge_id="fake-judge")
    out = Path("data/eval/mix_a")

    # the model: the paper's prompt (GSM8K: the question alone), one user turn, greedy, 16000 tokens
    users = engine.users()
    assert MATH_PROMPT in users
    assert "Ducks lay 16 eggs and eat 3. How many are left?" in users
    assert all(len(conv) == 1 and conv[0]["role"] == "user" for prompts, _ in engine.calls for conv in prompts)
    assert {(s.temperature, s.max_tokens, s.n) for _, s in engine.calls} == {(0.0, 16000, 1)}
    assert [len(p) for p, _ in engine.calls] == [2, 2, 2, 2]                    # eval.batch_size chunks

    graded = by_id(read_jsonl(out / "graded.jsonl"))
    # cut at the stop string "Problem:": the later \boxed{8} never counts
    m1 = graded["m1"]
    assert m1["response"] == "2+3 = 5.\nFinal Answer: \\boxed{5}.\n" and m1["stop_string"] == "Problem:"
    assert (m1["extracted"], m1["correct"], m1["method"]) == ("5", True, "paper_rule")
    # no box: wrong and never shown to the judge (though mixdistill's grader reads plain text)
    assert (graded["m3"]["extracted"], graded["m3"]["correct"], graded["m3"]["method"]) == (None, False, "no_answer")
    # boxed rule misses went to the True/False judge: False, unreadable, True
    m2 = graded["m2"]
    assert (m2["method"], m2["correct"], m2["judge_output"]) == ("paper_judge", False, "False")
    assert (graded["m4"]["method"], graded["m4"]["correct"]) == ("paper_judge_unreadable", False)
    assert (graded["olympiadbench-1"]["method"], graded["olympiadbench-1"]["correct"]) == ("paper_judge", True)
    # OlympiadBench: final_answer[0] is the reference (mixdistill grades against "3, 5")
    ob2 = graded["olympiadbench-2"]
    assert (ob2["correct"], ob2["method"], ob2["mixdistill_correct"]) == (True, "paper_rule", False)
    # GSM8K: flexible-extract (the last number) and exact match, never judged
    g0, g1 = graded["gsm8k-0"], graded["gsm8k-1"]
    assert (g0["extracted"], g0["correct"], g0["method"]) == ("$13.", True, "flexible_extract")
    assert (g1["extracted"], g1["correct"]) == (None, False)
    # mixdistill's verdicts ride along on every record
    assert all({f"mixdistill_{k}" for k in paper.GRADED_FIELDS} <= set(g) for g in graded.values())

    # the judge: only the three boxed misses, with the paper's prompt, system turn and 20 tokens
    paper_calls = [(p, s) for p, s in judge.calls if "Your judgement:" in p[0][-1]["content"]]
    shown = [conv for prompts, _ in paper_calls for conv in prompts]
    assert sorted(c[-1]["content"].split("Model's Generated Answer: ")[1].split("\n")[0] for c in shown) == \
        ["2.5", "2n", "6"]
    assert all(c[0] == {"role": "system", "content": PAPER_PROTOCOL["judge"]["system"]} for c in shown)
    assert {s.max_tokens for _, s in paper_calls} == {20}
    count = next(c[-1]["content"] for c in shown if "Find the count." in c[-1]["content"])
    assert count == ("Given a math problem, its correct answer, and the model's generated answer, determine if "
                     "the model's generated answer is correct. Respond with 'True' if the answer is correct and "
                     "'False' if it is incorrect. Directly provide your judgement 'True' or 'False' without any "
                     "other description.\nProblem: Find the count.\nCorrect Answer: $2n$\n"
                     "Model's Generated Answer: 2n\nYour judgement:")

    # scores: the protocol's under the usual names, ours beside them
    scores = json.loads((out / "scores.json").read_text())
    assert scores == res["scores"]
    assert scores["math500"]["accuracy"] == 0.25 and scores["math500"]["protocol"] == "paper"
    assert scores["gsm8k"]["accuracy"] == 0.5 and scores["gsm8k"]["judge_flips"] == 0
    assert (scores["olympiadbench"]["accuracy"], scores["olympiadbench"]["accuracy_rule"]) == (1.0, 0.5)
    assert scores["olympiadbench"]["mixdistill_accuracy"] == 0.5
    assert scores["math500"]["stop_string_rate"] == 0.25
    assert all({"mixdistill_accuracy", "mixdistill_accuracy_rule", "mixdistill_pass@1"} <= set(m)
               for m in scores.values())

    audit = json.loads((out / "judge_audit.json").read_text())
    paper_audit = {(a["kind"], a["problem_id"]) for a in audit if a["kind"].startswith("paper_")}
    assert paper_audit == {("paper_unreadable", "m4"), ("paper_disagreement", "olympiadbench-1")}

    # verdicts are cached: grading again asks the judge nothing
    again = Recorder(judge_for, fail_after=0)
    assert evaluate(project, judge=again, judge_id="fake-judge")["scores"] == scores


def test_samples_fingerprint_names_the_protocol(project):
    evaluate(project, engine=Recorder(answer_for))
    meta = json.loads(Path("data/eval/mix_a/samples.meta.json").read_text())
    assert meta["protocol"] == "paper" and meta["stop"] == ["Problem:"] and meta["gsm8k_prompt"] == "{question}"
    project["eval"]["protocol"] = "mixdistill"
    fresh = Recorder(answer_for)
    evaluate(project, engine=fresh)
    assert len(fresh.users()) == 8                   # another protocol: no sample is reused
    assert "Please reason step by step" in fresh.users()[0]


def test_vllm_gets_each_benchmark_in_one_call_and_a_crash_keeps_finished_ones(project):
    project["eval"]["engine"] = {"kind": "vllm"}
    with pytest.raises(EngineError, match="simulated crash"):
        evaluate(project, engine=Recorder(answer_for, fail_after=1))
    kept = read_jsonl("data/eval/mix_a/samples.jsonl")
    assert sorted(r["problem_id"] for r in kept) == ["m1", "m2", "m3", "m4"]     # the whole first benchmark
    engine = Recorder(answer_for)
    res = evaluate(project, engine=engine)
    assert [len(p) for p, _ in engine.calls] == [2, 2]                           # gsm8k, olympiadbench
    assert (res["generated"], res["reused"]) == (4, 4)


def test_eval_engine_is_released_before_the_judge_loads(project, monkeypatch):
    project["eval"]["judge"] = {"kind": "fake", "id": "tf", "default": "True"}
    engine = Recorder(answer_for)
    order = []
    monkeypatch.setattr(eval_run, "_engine_for", lambda cfg, mdir: engine)
    real = eval_run.judge_from_spec

    def judge_from_spec(spec):
        order.append(("judge loads", engine.closed))
        return real(spec)

    monkeypatch.setattr(eval_run, "judge_from_spec", judge_from_spec)
    res = evaluate(project)
    assert order == [("judge loads", True)]
    assert res["judge_id"] == "tf" and res["scores"]["math500"]["accuracy"] == 0.75   # a lenient judge


def test_release_frees_a_vllm_engine_without_importing_vllm(monkeypatch):
    import sys
    import types

    from generation.vllm import VLLMEngine

    engine = VLLMEngine(model="models/student")              # vllm itself loads only on first generate
    engine._llm = object()
    eval_run.release_engine(engine)
    assert engine._llm is None and engine._replicas is None
    cleaned = []
    state = types.ModuleType("vllm.distributed.parallel_state")
    state.cleanup_dist_env_and_memory = lambda: cleaned.append(True)
    for name, module in (("vllm", types.ModuleType("vllm")), ("vllm.distributed", types.ModuleType("d")),
                         ("vllm.distributed.parallel_state", state)):
        monkeypatch.setitem(sys.modules, name, module)
    eval_run.free_accelerator_memory()
    assert cleaned == [True]


def test_stale_frame_without_raw_references_is_an_error(project):
    path = Path("data/problems/benchmarks/olympiadbench.parquet")
    pl.read_parquet(path).drop(bm.REFERENCE_RAW).write_parquet(path)
    with pytest.raises(ValueError, match="benchmark 'olympiadbench': .*'reference_raw'.*rerun the problems stage"):
        evaluate(project, engine=Recorder(answer_for))


def test_default_protocol_keeps_its_records_and_fingerprint(project):
    project["eval"]["protocol"] = "mixdistill"
    res = evaluate(project, engine=Recorder(answer_for))
    assert set(json.loads(Path("data/eval/mix_a/samples.meta.json").read_text())) == {
        "checkpoint", "engine", "sampling", "prompt"}
    assert list(read_jsonl("data/eval/mix_a/samples.jsonl")[0]) == [
        "benchmark", "problem_id", "sample_idx", "reference_answer", "response", "finish_reason",
        "prompt_tokens", "completion_tokens"]
    assert list(read_jsonl("data/eval/mix_a/graded.jsonl")[0])[8:] == [
        "extracted", "rule_correct", "correct", "method", "judge_output"]
    assert not any(k.startswith("mixdistill_") or k in ("protocol", "stop_string_rate")
                   for m in res["scores"].values() for k in m)


# ---------------------------------------------------------------- units

def test_published_readings_of_judge_output_stops_and_gsm8k():
    assert [paper.parse_true_false(x) for x in ("True", " False.", "true", "", None, "False, no: True")] == \
        [True, False, None, None, None, True]                     # "True" first, as published
    assert paper.cut_at_stop("a Q: b Problem: c", ("Problem:", "Q:")) == ("a ", "Q:")
    assert paper.cut_at_stop("no stop", ("Problem:",)) == ("no stop", None)
    assert paper.gsm8k_flexible_extract("costs $1,234.50 then 7 items") == "7"
    assert paper.gsm8k_flexible_extract("total: $1,234.") == "$1,234."
    assert paper.gsm8k_exact_match("$1,234.", "work\n#### 1,234") and not paper.gsm8k_exact_match(None, "#### 3")
    assert paper.GSM8K_TASK.messages("How many?") == [{"role": "user", "content": "How many?"}]
    # braces in a problem are text, never placeholders
    odd = paper.judge_messages("Is {answer} {problem}?", "$2n$", "2n")[1]["content"]
    assert "Problem: Is {answer} {problem}?\nCorrect Answer: $2n$\n" in odd


# ---------------------------------------------------------------- logging and the report

def test_mlflow_gets_both_scorings_and_the_protocol(project):
    import mlflow

    res = evaluate(project, engine=Recorder(answer_for), judge=Recorder(judge_for), judge_id="fake-judge")
    params = parse_params(project)
    run = mlflow.get_run(eval_stage.log_run(res, params, params.layout))
    assert run.data.metrics["eval/olympiadbench/accuracy"] == 1.0
    assert run.data.metrics["eval/olympiadbench/mixdistill_accuracy"] == 0.5
    assert "eval/olympiadbench/mixdistill_pass_at_1" in run.data.metrics
    assert run.data.tags["mixdistill.eval.protocol"] == "paper"
    assert "mixdistill.eval.protocol_deviations" not in run.data.tags


def _scores(root: Path, model: str, paper_acc: dict, ours: dict | None):
    out = root / "data/eval" / model
    out.mkdir(parents=True, exist_ok=True)
    scores = {}
    for bench, acc in paper_acc.items():
        scores[bench] = {"accuracy": acc, "n_problems": 20, "mean_response_tokens": 100.0, "truncation_rate": 0.0}
        if ours is not None:
            scores[bench].update(protocol="paper", mixdistill_accuracy=ours[bench])
    (out / "scores.json").write_text(json.dumps(scores))
    (out / "graded.jsonl").write_text(json.dumps({"completion_tokens": 10}) + "\n")


def test_report_shows_the_protocol_beside_mixdistill(project, tmp_path):
    from common.layout import Layout, Paths
    from evaluation.config import parse_report

    project["mix"] = {"mixes": {m: {} for m in ("long", "short")}}
    project["report"] = {"long": "long", "short": "short", "large": "long", "small": "short",
                         "mix_long": "long", "mix_large": "short"}
    _scores(tmp_path, "base", {"math500": 0.1}, {"math500": 0.2})
    _scores(tmp_path, "long", {"math500": 0.5}, {"math500": 0.6})
    _scores(tmp_path, "short", {"math500": 0.3}, {"math500": 0.3})
    res = report_mod.build_report(Layout(Paths(**project["paths"])), parse_report(project), ["long", "short"])
    assert res["mixdistill"]["delta_long"]["math500"] == pytest.approx(0.3)
    assert res["delta_long"]["math500"] == pytest.approx(0.2)
    summary = Path("reports/summary.md").read_text()
    assert "| long | math500 | paper | 0.500 | 0.600 | -0.100 |" in summary
    assert "| ΔLong = P(long) − P(short) (mixdistill) | +0.300 |" in summary
    assert "not comparable" not in summary
    metrics = json.loads(Path("reports/metrics.json").read_text())
    assert metrics["mixdistill"]["mixdistill_accuracy"]["long"] == {"math500": 0.6}
    points = json.loads(Path("reports/plots/accuracy.json").read_text())
    assert points[1] == {"model": "long", "benchmark": "math500", "accuracy": 0.5, "mixdistill_accuracy": 0.6}

    _scores(tmp_path, "short", {"math500": 0.3}, None)                # evaluated under mixdistill
    report_mod.build_report(Layout(Paths(**project["paths"])), parse_report(project), ["long", "short"])
    summary = Path("reports/summary.md").read_text()
    assert "short: mixdistill" in summary and "not comparable" in summary
    assert "| short | math500 | mixdistill | 0.300 | n/a | n/a |" in summary
