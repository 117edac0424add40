"""Paper mode offline: files in the published schemas through every stage, on CPU, by ``dvc exp run``.

A MATH-train file (problem / level / type / solution, the reference in the solution's last box),
UWNSL-format long and short trace files (problem / solution, no answer column) and the five eval
benchmarks in their published row schemas (MATH-500, AIME24, AMC23, OlympiadBench, GSM8K test)
run with configs/paper.params.yaml (test_fraction 0, references joined by problem text,
one-trace-per-problem Mix-Long, the paper's per-arm recipes) with its hub ids pointed at these
files and the tiny default student. The project is a fresh git + DVC repository holding this
checkout's dvc.yaml and code, and the run is ``dvc exp run -S preset=paper``, as a user types it:
every stage of the DAG (evaluation of the base student, held-out loss and the report included),
in a few minutes. The rows are written here (our own problems), in the published schemas.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from configs.make_paper_params import OUT as PAPER_PARAMS
from tests.e2e.conftest import QUIET_ENV
from tests.project import REPO

pytestmark = pytest.mark.slow

N = 30


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _problems():
    return [(f"What is ${a} \\times {a + 3}$? Give the product.", str(a * (a + 3))) for a in range(2, 2 + N)]


def _fixtures(root):
    problems = _problems()
    math_train = [{"problem": p, "level": "Level 1", "type": "Prealgebra",
                   "solution": f"Multiply: the product is $\\boxed{{{ans}}}$."} for p, ans in problems]
    long = [{"problem": p, "solution": (f"Okay, let me think. I need the product in {p} Let me compute it step by "
                                        f"step. Wait, let me double-check the multiplication once more. "
                                        f"Yes, the result is {ans}.\n\nFinal Answer: \\boxed{{{ans}}}")}
            for p, ans in problems]
    long.append({"problem": "A problem that is not in the MATH set at all.", "solution": "Hmm. \\boxed{1}"})
    # the short set spells the problems with other spacing: matched by normalised text all the same
    short = [{"problem": "  " + p.replace(" ", "  "), "solution": f"{p.split('$')[1]} = {ans}. \\boxed{{{ans}}}"}
             for p, ans in problems]
    short[0]["solution"] = "It is \\boxed{12345}."              # wrong: rejected as answer_mismatch
    bench = root / "bench"
    bench.mkdir()
    return {
        "math_train": _jsonl(root / "math_train.jsonl", math_train),
        "long": _jsonl(root / "long_cot.jsonl", long), "short": _jsonl(root / "short_cot.jsonl", short),
        "math500": _jsonl(bench / "math500.jsonl", [{"problem": "What is $7+8$?", "solution": "$\\boxed{15}$",
                                                      "answer": "15", "subject": "Prealgebra", "level": 1,
                                                      "unique_id": "test/prealgebra/1.json"}]),
        "aime24": _jsonl(bench / "aime24.jsonl", [{"id": 1, "problem": "Find $2^{10} \\bmod 1000$.",
                                                   "solution": "$1024$", "answer": "24", "url": "x", "year": 2024}]),
        "amc23": _jsonl(bench / "amc23.jsonl", [{"id": 0, "problem": "What is $6 \\cdot 7$?", "answer": 42.0,
                                                 "url": "x", "question": "What is $6 \\cdot 7$?"}]),
        "olympiadbench": _jsonl(bench / "olympiadbench.jsonl", [{
            "id": 1, "subfield": "Algebra", "context": None, "question": "Find the real $x$ with $x^3=27$.",
            "solution": ["Cube root."], "final_answer": ["$3$"], "is_multiple_answer": False, "unit": None,
            "answer_type": "Numerical", "error": None, "question_type": "Open-ended", "language": "English",
            "modality": "Text-only"}]),
        "gsm8k": _jsonl(bench / "gsm8k_test.jsonl", [{"question": "Tom has 3 apples and buys 4 more. How many?",
                                                       "answer": "3+4=<<3+4=7>>7\n#### 7", "idx": 0}]),
    }


def _project(root, files):
    p = yaml.safe_load(PAPER_PARAMS.read_text())
    p["problems"]["set"] = {"kind": "file", "path": files["math_train"], "format": "math"}
    cols = {"problem": "problem", "response": "solution"}
    p["sources"] = {"uwnsl_long": {"kind": "file", "path": files["long"], "style": "long", "teacher_size": "large",
                                   "teacher": "QwQ-32B-Preview", "columns": cols},
                    "uwnsl_short": {"kind": "file", "path": files["short"], "style": "short",
                                    "teacher_size": "large", "teacher": "Qwen2.5-32B-Instruct", "columns": cols}}
    p["mix"]["mixes"] = {"long": {"size": 20, "components": {"uwnsl_long": 1.0}},
                         "short": {"size": 20, "components": {"uwnsl_short": 1.0}},
                         "mix_long": {"size": N - 1, "one_per_problem": True,
                                      "components": {"uwnsl_long": 0.2, "uwnsl_short": 0.8}}}
    p["report"].update(long="long", short="short", large="short", small="long", mix_long="mix_long",
                       mix_large="mix_long")
    p["train"]["mixes"] = ["mix_long"]
    p["eval"]["benchmarks"] = {name: {"kind": "file", "path": files[name], "format": name}
                               for name in ("math500", "aime24", "amc23", "olympiadbench", "gsm8k")}
    p["eval"]["max_problems"] = 1
    p["eval"]["sampling"] = {"max_tokens": 8}
    # the paper's recipe, sized for a CPU: the tiny default student, one optimizer step, no GPU features
    paper = p["presets"]["paper"]
    paper["student"] = {"model": p["student"]["model"], "dtype": "float32"}     # the tiny default, not the 3B
    paper["train"].update(max_steps=1, bf16=False, deepspeed=None, gradient_checkpointing=False)
    paper["eval"].update(sampling={"max_tokens": 8}, max_problems=1, batch_size=4)    # the paper's protocol, short
    paper["train"]["arms"] = {"mix_long": {**paper["train"]["arms"]["mix_long"], "batch_size": 1, "grad_accum": 1}}
    p["curate"]["contract"]["min_kept_fraction"] = 0.5
    (root / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


# What dvc.yaml's stages run and depend on: the project's packages, copied as they are here.
CODE = ("common", "curation", "generation", "grading", "evaluation", "training", "pipelines", "configs")


def _dvc_project(root: Path) -> dict:
    """``root`` as a git + DVC repository with this checkout's dvc.yaml and code; the env to run in."""
    for name in CODE:
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / ".gitignore").write_text("mlflow.db\nmlartifacts/\n")
    env = dict(os.environ, **QUIET_ENV, MLFLOW_TRACKING_URI=f"sqlite:///{root}/mlflow.db", DVC_NO_ANALYTICS="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
               GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.invalid",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.invalid")
    env.pop("PYTHONPATH", None)                  # the stages import the project's own copy
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["git", "add", "-A"],
                ["git", "commit", "-qm", "paper mode, offline"]):
        _run(root, env, cmd, timeout=120)
    return env


def _run(root, env, cmd, timeout=1800):
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}: {out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def test_paper_mode_runs_offline_end_to_end_through_dvc_exp_run(tmp_path):
    files = _fixtures(tmp_path)
    root = tmp_path / "project"
    root.mkdir()
    _project(root, files)
    env = _dvc_project(root)
    run = _run(root, env, ["dvc", "exp", "run", "-n", "paper-offline", "-S", "preset=paper"])
    assert "Ran experiment(s): paper-offline" in run.stdout + run.stderr
    shown = json.loads(_run(root, env, ["dvc", "exp", "show", "--json"], timeout=300).stdout)
    exps = [e for rev in shown for x in (rev.get("experiments") or []) for e in x.get("revs", [])
            if e.get("name") == "paper-offline"]
    assert exps and (exps[0]["data"]["metrics"] or {}).get("reports/metrics.json"), "the experiment has its report"
    assert _run(root, env, ["dvc", "status", "--json"], timeout=300).stdout.strip() in ("{}", "")

    assert pl.read_parquet(root / "data/problems/test.parquet").height == 0      # test_fraction 0
    long_report = json.loads((root / "data/curated/uwnsl_long/report.json").read_text())
    assert long_report["no_reference"]["traces"] == 1                               # listed, not hidden
    short_rejected = pl.read_parquet(root / "data/curated/uwnsl_short/rejected.parquet")
    assert short_rejected["reasons"].to_list() == [["answer_mismatch"]]
    rows = pl.read_parquet(root / "data/mixes/mix_long/rows.parquet")
    assert rows.height == N - 1 and rows["problem_id"].n_unique() == N - 1            # one trace per problem
    assert rows.filter(pl.col("component") == "uwnsl_long").height == round(0.2 * (N - 1))
    recipe = json.loads(_run(root, env, [sys.executable, "-m", "pipelines.cli", "recipe", "--json"],
                             timeout=300).stdout)
    assert recipe["arms"]["mix_long"]["recipe"]["packing"] == "neat"
    metrics = json.loads((root / "models/checkpoints/mix_long.train_metrics.json").read_text())
    assert (metrics["n_truncated_over_cutoff"], metrics["n_dropped_over_cutoff"]) == (0, 0)   # all under 4096
    for model in ("mix_long", "base"):
        scores = json.loads((root / f"data/eval/{model}/scores.json").read_text())
        assert {"math500", "aime24", "amc23", "olympiadbench", "gsm8k"} <= set(scores)
        for bench in ("math500", "gsm8k"):    # the paper's protocol, with mixdistill's grader beside it
            assert scores[bench]["protocol"] == "paper" and "mixdistill_accuracy" in scores[bench]
    report = json.loads((root / "reports/metrics.json").read_text())
    assert "mix_long" in json.dumps(report) and (root / "reports/summary.md").is_file()
