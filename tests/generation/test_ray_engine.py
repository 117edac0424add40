"""Engines on Ray (generation/ray_engine.py, VLLMEngine's data parallelism): prompt order, replicas
killed mid-shard, errors that read as on the local path, the samples' fingerprint, and resumable
teacher generation whose driver is SIGKILLed. One local Ray cluster serves the whole module."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from common.ray_cluster import INSTALL_HINT
from curation.config import parse_sources
from curation.errors import SourceError
from curation.teacher import generate_traces, plan_generation
from generation.engines import EngineError, FakeEngine, SamplingConfig
from generation.factory import make_engine
from generation.ray_engine import RayOptions, check_resources, shard_bounds
from tests.project import REPO, project_params

ray = pytest.importorskip("ray")

# The module's cluster pretends to have GPUs so that VLLMEngine's replicas (on a stand-in vllm)
# can be placed; nothing here touches CUDA.
FAKE_GPUS = 4
FAKE_VLLM = '''
import os

class SamplingParams:
    def __init__(self, **kw):
        self.__dict__.update(kw)

class LLM:
    def __init__(self, **kw):
        self.kw = kw

    def chat(self, prompts, sp, use_tqdm=False):
        from types import SimpleNamespace as ns
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return [ns(prompt_token_ids=[1, 2], outputs=[ns(text=f"{p[-1]['content']}|gpus={gpus}|bar={use_tqdm}",
                                                         finish_reason="stop", token_ids=[3])
                                                      for _ in range(sp.n)])
                for p in prompts]
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A two-CPU local cluster; its address lets subprocesses join it as RAY_ADDRESS."""
    fake = tmp_path_factory.mktemp("fake_vllm")
    (fake / "vllm").mkdir()
    (fake / "vllm" / "__init__.py").write_text(FAKE_VLLM)
    saved = os.environ.pop("RAY_ADDRESS", None)
    context = ray.init(num_cpus=2, num_gpus=FAKE_GPUS, include_dashboard=False,
                       runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                           [str(fake), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}})
    try:
        yield context.address_info["address"]
    finally:
        ray.shutdown()
        if saved is not None:
            os.environ["RAY_ADDRESS"] = saved


@pytest.fixture
def engines():
    """Engines a test builds; closed after it, so the next test's replicas find free CPUs."""
    made = []

    def build(spec):
        made.append(make_engine(spec))
        return made[-1]

    yield build
    for engine in made:
        engine.close()


def convs(*users: str) -> list[list[dict]]:
    return [[{"role": "system", "content": "be brief"}, {"role": "user", "content": u}] for u in users]


def answer(user: str, index: int) -> str:
    return f"{user} -> answer {len(user) * 7 + index} " + "word " * (len(user) % 5)


# ---------------------------------------------------------------- no cluster needed

def test_shards_are_contiguous_and_even():
    assert shard_bounds(7, 2) == [(0, 4), (4, 7)]
    assert shard_bounds(2, 4) == [(0, 1), (1, 2)]          # never an empty shard
    assert shard_bounds(9, 3) == [(0, 3), (3, 6), (6, 9)]


def test_bad_ray_options_name_the_key():
    cases = [({"replicas": 0}, r"engine.ray.replicas: 0 must be a positive integer"),
             ({"replica": 2}, r"engine.ray.replica: unknown key \(known: replicas, num_cpus"),
             ({"num_gpus": -1}, r"engine.ray.num_gpus: -1 must be a number >= 0"),
             ({"max_restarts": 1.5}, r"engine.ray.max_restarts: 1.5 must be a non-negative integer"),
             ([2], r"engine.ray: expected a mapping")]
    for ray_options, message in cases:
        with pytest.raises(EngineError, match=message):
            make_engine({"kind": "fake", "default": "x", "ray": ray_options})
    with pytest.raises(EngineError, match="engine.ray.replicas and engine.data_parallel_size both"):
        make_engine({"kind": "vllm", "model": "m", "data_parallel_size": 2, "ray": {"replicas": 2}})
    with pytest.raises(EngineError, match=r"engine.kind: 'vlm' must be one of"):
        make_engine({"kind": "vlm", "ray": {}})


def test_a_teacher_source_with_bad_ray_options_names_its_key_path(tmp_path):
    source = parse_sources({"sources": {"gen": {
        "kind": "generate", "style": "long", "teacher_size": "small", "teacher": "t", "template": "{problem}",
        "engine": {"kind": "fake", "default": "x", "ray": {"replicas": 0}}, "work_dir": str(tmp_path)}}})["gen"]
    problems = pl.DataFrame({"problem_id": ["p1"], "problem": ["What is 1 + 1?"], "reference_answer": ["2"]})
    with pytest.raises(SourceError, match=r"^sources.gen.engine: engine.ray.replicas: 0 must be a positive integer$"):
        generate_traces(source, problems, log=lambda message: None)


def test_missing_ray_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)           # `import ray` now raises ImportError
    with pytest.raises(EngineError) as err:
        make_engine({"kind": "fake", "default": "x", "ray": {"replicas": 2}})
    assert str(err.value) == f"ray: {INSTALL_HINT}" == "ray: Ray is not installed: pip install 'mixdistill[cluster]'"


def test_a_cluster_started_here_refuses_what_it_cannot_place():
    need, total = RayOptions(replicas=2, num_gpus=2), {"CPU": 8, "GPU": 1}
    with pytest.raises(EngineError, match=r"ray: 2 replicas x 2 GPUs need 4 GPUs, the cluster has 1 "):
        check_resources(need, total, total, started_here=True)
    said = []                           # a cluster found running may still grow: say so, then wait
    check_resources(need, total, total, started_here=False, log=said.append)
    assert said == ["ray: 2 replicas x 2 GPUs need 4 GPUs, the cluster has 1 now; the replicas wait until "
                    "nodes with them join"]
    said.clear()
    check_resources(need, {"CPU": 2, "GPU": 4}, {"CPU": 1, "GPU": 4}, started_here=True, log=said.append)
    assert said == ["ray: 2 replicas x 1 CPUs need 2 CPUs, 1 are free now; the replicas wait until other "
                    "actors release them"]
    check_resources(need, {"CPU": 2, "GPU": 4}, {"CPU": 2, "GPU": 4}, started_here=True, log=said.append)
    assert len(said) == 1


def test_the_ray_key_leaves_the_samples_fingerprint_alone(tmp_path):
    def plan(engine):
        source = {"kind": "generate", "style": "long", "teacher_size": "small", "teacher": "t", "engine": engine,
                  "template": "{problem}", "sampling": {"temperature": 0.7, "seed": 1}, "n": 2,
                  "work_dir": str(tmp_path)}
        return plan_generation(parse_sources({"sources": {"gen": source}})["gen"])

    alone, on_ray = plan({"kind": "fake", "default": "x"}), plan({"kind": "fake", "default": "x",
                                                                   "ray": {"replicas": 8, "num_cpus": 2}})
    assert on_ray.config_hash == alone.config_hash and on_ray.work_dir == alone.work_dir
    assert plan({"kind": "fake", "default": "y"}).config_hash != alone.config_hash   # what is made still counts


# ---------------------------------------------------------------- on the module's cluster

def test_results_match_the_inner_engine_in_prompt_order(cluster, engines):
    prompts = convs(*(f"question {i}" + "?" * i for i in range(7)))
    local = FakeEngine(respond=answer)
    on_ray = engines({"kind": "fake", "respond": answer, "ray": {"replicas": 2}})
    greedy, sampled = SamplingConfig(max_tokens=4), SamplingConfig(temperature=0.8, n=3, seed=2)
    assert on_ray.generate(prompts, greedy) == local.generate(prompts, greedy)
    got = on_ray.generate(prompts, sampled)
    assert got == local.generate(prompts, sampled) and [len(s) for s in got] == [3] * 7
    assert on_ray.generate([], greedy) == []


def test_each_replica_takes_one_contiguous_shard(cluster, engines):
    on_ray = engines({"kind": "fake", "respond": lambda user, i: str(os.getpid()), "ray": {"replicas": 2}})
    pids = [s[0].text for s in on_ray.generate(convs(*"abcdefg"), SamplingConfig())]
    assert pids[:4] == [pids[0]] * 4 and pids[4:] == [pids[4]] * 3 and pids[0] != pids[4]
    assert str(os.getpid()) not in pids


def test_a_replica_killed_mid_shard_reruns_only_its_shard(cluster, engines, tmp_path):
    seen, crashed = tmp_path / "seen.txt", tmp_path / "crashed"

    def respond(user: str, index: int) -> str:
        with open(seen, "a") as f:
            f.write(f"{user} {os.getpid()}\n")
        if user == "q5" and not crashed.exists():          # the worker process dies, once
            crashed.touch()
            os._exit(1)
        return f"answer to {user}"

    on_ray = engines({"kind": "fake", "respond": respond, "ray": {"replicas": 2}})
    users = [f"q{i}" for i in range(8)]
    got = on_ray.generate(convs(*users), SamplingConfig())
    assert [s[0].text for s in got] == [f"answer to {u}" for u in users]
    assert crashed.exists()
    runs = [line.split() for line in seen.read_text().splitlines()]
    counts = {u: sum(r[0] == u for r in runs) for u in users}
    # Shard q4..q7 ran up to q5, died, and ran again whole; shard q0..q3 ran once.
    assert counts == {"q0": 1, "q1": 1, "q2": 1, "q3": 1, "q4": 2, "q5": 2, "q6": 1, "q7": 1}
    first_q4, second_q4 = [pid for user, pid in runs if user == "q4"]
    assert first_q4 != second_q4                              # a fresh process took the shard over
    assert [s[0].text for s in on_ray.generate(convs("q9"), SamplingConfig())] == ["answer to q9"]
    on_ray.close()
    with pytest.raises(EngineError, match="ray: this engine was closed"):
        on_ray.generate(convs("q9"), SamplingConfig())


def test_a_replica_that_keeps_dying_is_an_engine_error(cluster, engines):
    def respond(user: str, index: int) -> str:
        os._exit(1)

    on_ray = engines({"kind": "fake", "respond": respond, "ray": {"replicas": 1, "max_restarts": 1}})
    with pytest.raises(EngineError, match=r"^ray: the replica given prompts 0\.\.1 died while generating and was "
                                          r"restarted 1 times \(engine.ray.max_restarts\)"):
        on_ray.generate(convs("a", "b"), SamplingConfig())


def test_inner_errors_read_as_on_the_local_path(cluster, engines):
    spec = {"kind": "fake", "responses": {"known": "yes"}}
    on_ray = engines({**spec, "ray": {"replicas": 2}})
    local = make_engine(spec)
    for prompts in (convs("known", "known", "unknown question"),                # the engine's own error
                    convs("known", "known", "known") + [[{"role": "user"}]]):  # bad input, numbered as given
        with pytest.raises(EngineError) as here:
            local.generate(prompts, SamplingConfig())
        with pytest.raises(EngineError) as there:
            on_ray.generate(prompts, SamplingConfig())
        assert type(there.value) is EngineError and str(there.value) == str(here.value)
    assert "prompt 3, message 0" in str(there.value)
    on_ray.close()                                          # its CPUs, for the next engine's replica
    with pytest.raises(EngineError) as here:                 # an engine that cannot start
        make_engine({"kind": "fake"})
    with pytest.raises(EngineError) as there:
        engines({"kind": "fake", "ray": {"replicas": 1}})
    assert type(there.value) is EngineError and str(there.value) == str(here.value)


def test_vllm_data_parallel_runs_one_actor_per_replica_on_its_own_gpus(cluster, engines, monkeypatch):
    monkeypatch.setenv("MIXDISTILL_PROGRESS", "1")         # replicas stay quiet all the same
    engine = engines({"kind": "vllm", "model": "m", "tensor_parallel_size": 2, "data_parallel_size": 2})
    got = [s[0].text for s in engine.generate(convs("a", "b", "c"), SamplingConfig())]
    assert [t.split("|")[0] for t in got] == ["a", "b", "c"] and all(t.endswith("|bar=False") for t in got)
    gpus = [t.split("|")[1] for t in got]
    assert gpus[0] == gpus[1] != gpus[2]                     # shards a,b and c
    assert all(len(g.removeprefix("gpus=").split(",")) == 2 for g in gpus)   # tensor_parallel_size GPUs each
    assert not set(gpus[0].removeprefix("gpus=").split(",")) & set(gpus[2].removeprefix("gpus=").split(","))
    engine.close()                                          # the actors go, and their GPUs with them
    deadline = time.monotonic() + 30
    while ray.available_resources().get("GPU", 0) < FAKE_GPUS:
        assert time.monotonic() < deadline, f"closed replicas still hold GPUs: {ray.available_resources()}"
        time.sleep(0.1)


def test_sampled_teacher_generation_spreads_problems_over_the_replicas(cluster, engines, tmp_path):
    """Sampling gives every problem its own seeded call; on Ray those calls run side by side, and the
    traces are the ones a local engine makes."""
    seen = tmp_path / "pids.txt"

    def respond(user: str, index: int) -> str:
        start = time.time()
        time.sleep(0.1)
        with open(seen, "a") as f:
            f.write(f"{os.getpid()} {start} {time.time()}\n")
        i = int(user.split()[2])
        return f"{i} and {i} make {2 * i}. \\boxed{{{2 * i}}}" if index else f"no idea about {i}"

    problems = pl.DataFrame({"problem_id": [f"p{i}" for i in range(6)], "problem": [f"What is {i} + {i}?" for i in range(6)],
                             "reference_answer": [str(2 * i) for i in range(6)]})

    def run(engine, work: str) -> list[dict]:
        source = parse_sources({"sources": {"gen": {
            "kind": "generate", "style": "long", "teacher_size": "small", "teacher": "t",
            "engine": {"kind": "fake", "default": "unused"}, "template": "{problem}",
            "sampling": {"temperature": 0.7, "seed": 4}, "n": 2, "select": "all", "chunk_size": 3,
            "work_dir": str(tmp_path / work)}}})["gen"]
        rows = generate_traces(source, problems, engine=engine, log=lambda message: None).to_dicts()
        for row in rows:
            generation = json.loads(row["generation"])
            generation.pop("timestamp")
            row["generation"] = generation
        return rows

    local = run(FakeEngine(respond=respond), "local")
    seen.unlink()
    on_ray = run(engines({"kind": "fake", "respond": respond, "ray": {"replicas": 2}}), "ray")
    assert on_ray == local and len(local) == 12
    spans = [(pid, float(a), float(b)) for pid, a, b in map(str.split, seen.read_text().splitlines())]
    assert len({pid for pid, _, _ in spans}) == 2              # both replicas answered...
    assert any(p != q and a < d and c < b for p, a, b in spans for q, c, d in spans)   # ...at the same time


# ---------------------------------------------------------------- resumable generation, driver SIGKILLed

def write_project(root: Path, problems: int) -> dict:
    (root / "data" / "problems").mkdir(parents=True)
    frame = pl.DataFrame({"problem_id": [f"p{i:02d}" for i in range(problems)],
                          "problem": [f"What is {i} + {i}?" for i in range(problems)],
                          "reference_answer": [str(2 * i) for i in range(problems)]})
    frame.write_parquet(root / "data" / "problems" / "train.parquet")
    frame.head(0).write_parquet(root / "data" / "problems" / "test.parquet")
    responses = {f"What is {i} + {i}?": f"{i} and {i} make {2 * i}. \\boxed{{{2 * i}}}" for i in range(problems)}
    params = project_params(**{
        "paths": {k: f"data/{k}" for k in ("problems", "traces", "curated", "mixes", "student", "checkpoints",
                                          "eval", "reports")},
        "sources": {"gen": {"kind": "generate", "style": "long", "teacher_size": "small",
                            "engine": {"kind": "fake", "responses": responses, "latency_s": 0.3,
                                       "ray": {"replicas": 2}},
                            "template": "{problem}", "sampling": {"temperature": 0.0}, "n": 1,
                            "select": "all", "chunk_size": 2}},
    })
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return responses


def samples_lines(root: Path) -> list[str]:
    return [line for p in sorted((root / "data" / "generation" / "gen").glob("*/samples.jsonl"))
            for line in p.read_text().splitlines()]


def start_traces(root: Path, address: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": address}
    return subprocess.Popen([sys.executable, "-m", "pipelines.traces", "--source", "gen"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_driver_resumes_without_losing_or_repeating_samples(cluster, tmp_path):
    responses = write_project(tmp_path, problems=8)
    proc = start_traces(tmp_path, cluster)
    deadline = time.monotonic() + 120
    while len(samples_lines(tmp_path)) < 2:               # the first chunk (2 problems) is on disk
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no chunk within 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = samples_lines(tmp_path)
    assert 2 <= len(before) < 8, "the kill came too late to test resuming"
    # The dead driver's replicas go with it: the cluster gets its CPUs back.
    deadline = time.monotonic() + 60
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() < deadline, f"replicas outlived their driver: {ray.available_resources()}"
        time.sleep(0.2)

    out, err = start_traces(tmp_path, cluster).communicate(timeout=180)
    assert "traces@gen: 8 traces" in out, err
    after = samples_lines(tmp_path)
    assert after[:len(before)] == before                   # the chunks made before the kill were kept as they were
    keys = [json.loads(line)["problem_id"] for line in after]
    assert sorted(keys) == [f"p{i:02d}" for i in range(8)]  # each problem exactly once
    traces = pl.read_parquet(tmp_path / "data" / "traces" / "gen.parquet")
    assert sorted(traces["response"]) == sorted(responses.values())
