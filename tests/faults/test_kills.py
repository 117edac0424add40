"""Real SIGKILLs at chosen points of the curate and eval stages (train and teacher generation have
theirs in tests/training and tests/curation): the earlier outputs survive untouched, the next run
clears what the killed one left where DVC hashes, and resumes without losing or repeating work.

Each stage runs in a subprocess that swaps one function for a stand-in which writes a marker file
and sleeps; the test waits for the marker and kills the process there, so the point of the kill
is exact rather than timed."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from curation.schema import TRACE_COLUMNS, trace_id
from tests.evaluation.test_eval_stage import answer_for, evaluate, project, read_jsonl  # noqa: F401 (fixture)
from tests.generation.test_engines import save_tiny_model, student_tokenizer_dir  # noqa: F401 (fixture)
from tests.project import REPO, project_params


def kill_at(root: Path, snippet: str, marker: Path, timeout_s: float = 300) -> None:
    """Run ``snippet`` in a Python subprocess in ``root``; SIGKILL it once ``marker`` exists."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(snippet)], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout_s
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before the kill point:\n{proc.stderr.read().decode()[-3000:]}")
        assert time.monotonic() < deadline, "the kill point was not reached"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def run_stage(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", *args], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)


def trace_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        a, b = i + 2, 3 * i + 1
        problem = f"What is {a} plus {b}?"
        response = (f"We add the two numbers. First {a} and then {b} more, counting up from {a} gives "
                    f"{a + b} in total, case {i}. So the answer is $\\boxed{{{a + b}}}$.")
        row = {c: "" for c in TRACE_COLUMNS}
        row.update(trace_id=trace_id(problem, response, "T"), source="src", problem_id=f"p{i}", problem=problem,
                   reference_answer=str(a + b), prompt=problem, response=response, teacher="T", style="short",
                   teacher_size="small", finish_reason="stop", truncated=False, generation="{}", origin="{}")
        rows.append(row)
    return rows


@pytest.fixture
def curate_project(tmp_path, student_tokenizer_dir):  # noqa: F811
    save_tiny_model(tmp_path / "models/student", student_tokenizer_dir)
    (tmp_path / "data/traces").mkdir(parents=True)
    pl.DataFrame(trace_rows(30)).write_parquet(tmp_path / "data/traces/src.parquet")
    bench = tmp_path / "data/problems/benchmarks"
    bench.mkdir(parents=True)
    pl.DataFrame([{"problem_id": "q1", "problem": "An unrelated benchmark question about circles.",
                   "reference_answer": "1", "benchmark": "champ_test"}]).write_parquet(bench / "champ_test.parquet")
    params = project_params(sources={"src": {"kind": "file", "path": "unused.jsonl", "style": "short",
                                             "teacher_size": "small", "teacher": "T",
                                             "columns": {"problem": "problem", "response": "response"}}})
    params["curate"]["correctness"]["workers"] = 1
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    return tmp_path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_curate_killed_inside_its_output_write_keeps_the_old_set_and_the_rerun_cleans_up(curate_project):
    root = curate_project
    first = run_stage(root, "pipelines.curate", "--source", "src", "--no-mlflow")
    assert first.returncode == 0, first.stderr[-3000:]
    curated = root / "data/curated"
    before = snapshot(curated / "src")
    assert "kept.parquet" in before

    marker = root / "killed-here"
    kill_at(root, f"""
        import sys, time
        import pipelines.curate as stage

        def stall(*args, **kwargs):      # kept.parquet and rejected.parquet are written by now
            open({str(marker)!r}, "w").close()
            time.sleep(600)

        stage.validate_curated = stall
        sys.exit(stage.main(["--source", "src", "--no-mlflow"]))
    """, marker)
    left = [p.name for p in curated.iterdir() if p.name.startswith(".src.")]
    assert left, "the kill was meant to land inside the atomic write"
    assert snapshot(curated / "src") == before            # the old outputs are untouched

    again = run_stage(root, "pipelines.curate", "--source", "src", "--no-mlflow")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [p.name for p in curated.iterdir()] == ["src"]  # nothing left where DVC hashes
    after = snapshot(curated / "src")
    for name in ("kept.parquet", "rejected.parquet"):       # and the same curation as before
        assert pl.read_parquet(curated / "src" / name).equals(pl.read_parquet(io.BytesIO(before[name])))
    assert set(after) == set(before)


@pytest.mark.slow
def test_eval_killed_after_its_first_chunk_resumes_without_repeating_or_losing_samples(project):  # noqa: F811
    root = Path.cwd()
    Path("params.yaml").write_text(json.dumps(project))
    marker = root / "killed-here"
    kill_at(root, f"""
        import time
        from evaluation import run as eval_run
        from generation.engines import FakeEngine
        from pipelines.params import load_params
        from tests.evaluation.test_eval_stage import answer_for

        class StallAfterFirstChunk(FakeEngine):
            chunks = 0

            def generate(self, prompts, sampling):
                if self.chunks == 1:        # the first chunk is on disk: die here
                    open({str(marker)!r}, "w").close()
                    time.sleep(600)
                self.chunks += 1
                return super().generate(prompts, sampling)

        params = load_params("params.yaml")
        eval_run.evaluate("mix_a", params.layout, params.eval, engine=StallAfterFirstChunk(respond=answer_for))
    """, marker)
    samples = Path("data/eval/mix_a/samples.jsonl")
    saved = read_jsonl(samples)
    assert len(saved) == 2                                 # one chunk of batch_size 2
    assert not Path("data/eval/mix_a/scores.json").exists()

    from generation.engines import FakeEngine

    res = evaluate(project, "mix_a", engine=FakeEngine(respond=answer_for))
    assert (res["generated"], res["reused"]) == (3, 2)
    keys = [(r["benchmark"], r["problem_id"], r["sample_idx"]) for r in read_jsonl(samples)]
    assert len(keys) == len(set(keys)) == 5
    assert read_jsonl(samples)[:2] == saved                # the saved samples were kept as they were
    assert json.loads(Path("data/eval/mix_a/scores.json").read_text())


@pytest.mark.slow
def test_mix_killed_after_writing_its_temp_folder_keeps_the_old_mix(curate_project):
    root = curate_project
    params = json.loads((root / "params.yaml").read_text())
    params["mix"]["mixes"] = {"only": {"size": 10, "components": {"src": 1.0}}}
    params["train"]["mixes"] = ["only"]
    params["report"].update({r: "only" for r in ("long", "short", "large", "small", "mix_long", "mix_large")})
    (root / "params.yaml").write_text(json.dumps(params))
    assert run_stage(root, "pipelines.curate", "--source", "src", "--no-mlflow").returncode == 0
    first = run_stage(root, "pipelines.mix", "--mix", "only")
    assert first.returncode == 0, first.stderr[-3000:]
    mixes = root / "data/mixes"
    before = snapshot(mixes / "only")

    marker = root / "killed-here"
    kill_at(root, f"""
        import sys, time
        import pipelines.mix as stage

        real = stage.write_mix

        def write_then_stall(*args, **kwargs):    # the whole new mix is in the temp folder
            real(*args, **kwargs)
            open({str(marker)!r}, "w").close()
            time.sleep(600)

        stage.write_mix = write_then_stall
        sys.exit(stage.main(["--mix", "only"]))
    """, marker)
    assert any(p.name.startswith(".only.") for p in mixes.iterdir())
    assert snapshot(mixes / "only") == before

    again = run_stage(root, "pipelines.mix", "--mix", "only")
    assert again.returncode == 0, again.stderr[-3000:]
    assert not [p.name for p in mixes.iterdir() if p.name.startswith(".")]
    assert snapshot(mixes / "only") == before          # the same draw, byte for byte


@pytest.mark.slow
def test_traces_killed_inside_its_file_write_keeps_the_old_file_and_the_rerun_cleans_up(tmp_path):
    problems = tmp_path / "data/problems"
    problems.mkdir(parents=True)
    rows = [{"problem_id": f"p{i}", "problem": f"What is {i} plus one?", "reference_answer": str(i + 1)}
            for i in range(6)]
    pl.DataFrame(rows[:4]).write_parquet(problems / "train.parquet")
    pl.DataFrame(rows[4:]).write_parquet(problems / "test.parquet")
    (tmp_path / "traces.jsonl").write_text("".join(
        json.dumps({"problem": r["problem"], "response": f"It is {r['reference_answer']}."}) + "\n" for r in rows))
    params = project_params(sources={"src": {"kind": "file", "path": str(tmp_path / "traces.jsonl"), "style": "short",
                                             "teacher_size": "small", "teacher": "T",
                                             "columns": {"problem": "problem", "response": "response"}}})
    (tmp_path / "params.yaml").write_text(json.dumps(params))
    first = run_stage(tmp_path, "pipelines.traces", "--source", "src", "--no-mlflow")
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "data/traces/src.parquet"
    before = out.read_bytes()
    assert pl.read_parquet(out).height == 4                    # the two held-out problems' traces dropped

    marker = tmp_path / "killed-here"
    kill_at(tmp_path, f"""
        import sys, time
        from contextlib import contextmanager
        import pipelines.traces as stage

        real = stage.atomic_file

        @contextmanager
        def write_then_stall(*args, **kwargs):    # the new file is written, not yet renamed into place
            with real(*args, **kwargs) as f:
                yield f
                f.flush()
                open({str(marker)!r}, "w").close()
                time.sleep(600)

        stage.atomic_file = write_then_stall
        sys.exit(stage.main(["--source", "src", "--no-mlflow"]))
    """, marker)
    folder = out.parent
    assert [p.name for p in folder.iterdir() if p.name.startswith(".src.parquet.")]
    assert out.read_bytes() == before

    again = run_stage(tmp_path, "pipelines.traces", "--source", "src", "--no-mlflow")
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(p.name for p in folder.iterdir()) == ["src.parquet"]
    assert pl.read_parquet(out).equals(pl.read_parquet(io.BytesIO(before)))
