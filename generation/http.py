"""OpenAI-compatible chat-completions engine (OpenAI, vLLM ``serve``, SGLang, TGI, ...).

Requests run on a bounded thread pool (``max_concurrency``) and are retried with exponential
backoff on 429, 5xx, timeouts and dropped connections. The API key is read from the environment
variable named in the config at request time, so it never sits in the object, its repr, logs or
error messages.
"""
from __future__ import annotations

import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from generation.engines import Completion, EngineError, Messages, SamplingConfig, check_prompts

RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
STOP_REASONS = frozenset({"stop", "eos", "end_turn", "stop_sequence"})


class OpenAIEngine:
    def __init__(self, base_url: str, model: str, api_key_env: str | None = "OPENAI_API_KEY",
                 max_concurrency: int = 8, timeout_s: float = 120.0, max_retries: int = 5,
                 backoff_s: float = 1.0, max_backoff_s: float = 60.0, extra_body: dict | None = None):
        if not base_url.startswith(("http://", "https://")):
            raise EngineError(f"openai.base_url: '{base_url}' must start with http:// or https://")
        if max_concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise EngineError("openai: max_concurrency >= 1, max_retries >= 0 and timeout_s > 0 needed")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.max_concurrency = max_concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.extra_body = dict(extra_body or {})
        self._local = threading.local()
        self.retries = 0                  # total retried attempts, for reports and tests
        self._count_lock = threading.Lock()
        if api_key_env:
            self._api_key()               # fail at construction, not after an hour of requests

    def __repr__(self) -> str:
        return (f"OpenAIEngine(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
                f"max_concurrency={self.max_concurrency})")

    def _api_key(self) -> str | None:
        if not self.api_key_env:
            return None
        key = os.environ.get(self.api_key_env)
        if not key:
            raise EngineError(f"openai: environment variable {self.api_key_env} is not set "
                              f"(it must hold the API key; set api_key_env: null for servers without one)")
        return key

    def _session(self) -> requests.Session:
        # One session (connection pool) per worker thread: Session is not documented thread-safe.
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def generate(self, prompts: list[Messages], sampling: SamplingConfig) -> list[list[Completion]]:
        check_prompts(prompts)
        # One request per sample (n=1, seed+i) instead of n>1 in one request: many compatible
        # servers ignore n, and per-request usage gives each sample its exact token count.
        jobs = [(p, s) for p in range(len(prompts)) for s in range(sampling.n)]
        with ThreadPoolExecutor(max_workers=self.max_concurrency) as pool:
            done = list(pool.map(lambda job: self._request(prompts[job[0]], sampling, job[1], job[0]), jobs))
        results = iter(done)
        return [[next(results) for _ in range(sampling.n)] for _ in prompts]

    def _body(self, conv: Messages, sampling: SamplingConfig, sample: int) -> dict:
        body = {"model": self.model, "messages": conv, "temperature": sampling.temperature,
                "top_p": sampling.top_p, "max_tokens": sampling.max_tokens, "n": 1,
                "seed": sampling.seed + sample}
        body.update(self.extra_body)
        return body

    def _request(self, conv: Messages, sampling: SamplingConfig, sample: int, index: int) -> Completion:
        headers = {"Content-Type": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = self._body(conv, sampling, sample)
        last_problem = ""
        for attempt in range(self.max_retries + 1):
            wait = None
            try:
                resp = self._session().post(self.url, json=body, headers=headers, timeout=self.timeout_s)
            except (requests.Timeout, requests.ConnectionError) as exc:
                # The exception text names the URL only; headers (the key) are not part of it.
                last_problem = f"{type(exc).__name__}"
            else:
                if resp.status_code == 200:
                    return self._parse(resp, index)
                last_problem = f"HTTP {resp.status_code}: {resp.text[:200]!r}"
                if resp.status_code not in RETRY_STATUS:
                    raise EngineError(f"openai: prompt {index}: {last_problem} (not retried)")
                wait = _retry_after(resp)
            if attempt == self.max_retries:
                break
            with self._count_lock:
                self.retries += 1
            if wait is None:
                # Exponential backoff with jitter, so parallel workers do not retry in lockstep.
                wait = self.backoff_s * (2 ** attempt) * (0.5 + random.random() / 2)
            time.sleep(min(wait, self.max_backoff_s))
        raise EngineError(f"openai: prompt {index}: gave up after {self.max_retries + 1} attempts; "
                          f"last: {last_problem}")

    def _parse(self, resp: requests.Response, index: int) -> Completion:
        where = f"openai: prompt {index}: response"
        try:
            data = resp.json()
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
            reason = choice.get("finish_reason")
            usage = data.get("usage") or {}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise EngineError(f"{where}: not a chat completion ({exc!r}): {resp.text[:200]!r}") from exc
        if reason == "length":
            finish = "length"
        elif reason in STOP_REASONS:
            finish = "stop"
        else:
            raise EngineError(f"{where}: field 'finish_reason' is {reason!r}, expected stop or length")
        for field in ("prompt_tokens", "completion_tokens"):
            if not isinstance(usage.get(field), int):
                raise EngineError(f"{where}: field 'usage.{field}' missing (token counts feed the metrics)")
        return Completion(text, finish, usage["prompt_tokens"], usage["completion_tokens"])


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None    # an HTTP date; fall back to our own backoff
