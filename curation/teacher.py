"""Teacher generation: a trace source that asks a teacher model instead of importing its answers.

A ``kind: generate`` source renders each train problem with a prompt template, samples ``n``
completions from a generation engine (``evaluation.engines``: transformers, vLLM, any
OpenAI-compatible endpoint), grades every sample with the curation :class:`Grader` and keeps up
to ``k`` correct ones per problem (rejection sampling). The result is a trace set in the common
schema, written by the ``traces@SOURCE`` stage and curated like any imported source.

Crash safety. Samples go to ``<work_dir>/<source>/<config hash>/chunk-NNNNNN.jsonl``, one file
per batch of problems, written to a temp file, fsync'd and renamed into place: a chunk is on disk
whole or not at all. A rerun skips the problems found in chunks, so a kill at any point loses at
most the chunk in flight and never duplicates one. The directory is keyed by a hash of all that
shapes a sample (engine, model revision, template, sampling, n, seed), so a changed config never
mixes old samples in; what only shapes the selection (select, k, max_problems, chunk_size) is left
out of the hash, so changing it reuses every sample already paid for.

Determinism. A problem's samples never depend on which problems share its engine call: greedy
decoding ignores the seed; vLLM seeds a generator per request; every other engine, when sampling,
gets one call per problem seeded from (seed, problem_id) (OpenAI-compatible requests then send
that seed + sample index). So chunk boundaries, and therefore kills, do not change the output.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import os
import re
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit, urlunsplit

import polars as pl

from curation.io import JsonlError, iter_jsonl, write_json
from curation.schema import conform, dumps, trace_id
from curation.sources import SourceError
from evaluation.engines import Completion, EngineError, SamplingConfig, make_engine

SELECT_MODES = ("shortest_correct", "first_correct", "all_correct", "all")
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "seed")
FORMAT_VERSION = 1                      # bump when the chunk record layout changes
# Grading as curate.correctness does by default: a hard 5 s per pair (math-verify can hang).
GRADE_TIMEOUT_S = 5.0
GRADE_WORKERS = 2
# Engine-spec keys that change how fast or where samples are made, not what they are: left out
# of the config hash so that retuning them after a crash keeps the samples already made.
EXECUTION_ONLY_KEYS = frozenset({
    "api_key_env", "max_concurrency", "timeout_s", "max_retries", "backoff_s", "max_backoff_s",
    "threads", "device", "data_parallel_size", "gpu_memory_utilization", "enable_prefix_caching",
    "latency_s",
})
# Spec keys that may hold a credential (api_key, hf_token, Authorization, ...), matched as whole
# "_"-separated words so that max_tokens or tokenizer stay; a key ending in _env names a variable.
SECRET_KEY = re.compile(r"(^|_)(api_?key|key|token|secret|password|passwd|authorization|bearer|cookie|"
                        r"credentials?)($|_)", re.I)
LIBRARY = {"transformers": ("transformers", "transformers"), "vllm": ("vllm", "vllm"),
           "openai": ("openai-compatible", "requests"), "fake": ("fake", "mixdistill")}


# --------------------------------------------------------------------------- prompt templates

@dataclass(frozen=True)
class Template:
    name: str
    user: str                     # contains {problem}; substituted literally (LaTeX braces are safe)
    system: str | None = None

    def messages(self, problem: str) -> list[dict]:
        user = {"role": "user", "content": self.user.replace("{problem}", problem)}
        return ([{"role": "system", "content": self.system}] if self.system else []) + [user]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(dumps({"system": self.system, "user": self.user}).encode("utf-8")).hexdigest()


# The paper's long CoT came from QwQ-32B-Preview and its short CoT from Qwen2.5-32B-Instruct; the
# style comes mostly from the teacher, the prompts only ask for it. The system line is QwQ's own
# ("think step-by-step"); both ask for \boxed{} so the Grader finds the answer.
TEMPLATES = {
    "long_cot": Template(
        "long_cot",
        "{problem}\n\nPlease reason step by step, exploring the problem thoroughly and checking your "
        "work before concluding, and put your final answer within \\boxed{}.",
        system="You are a helpful and harmless assistant. You should think step-by-step."),
    "short_cot": Template(
        "short_cot",
        "{problem}\n\nSolve the problem with a concise step-by-step solution, and put your final "
        "answer within \\boxed{}."),
}


def resolve_template(spec: str) -> Template:
    """A named template, or custom text containing ``{problem}`` (named "custom"; its sha256 tells
    custom texts apart)."""
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    if not isinstance(spec, str) or "{problem}" not in spec:
        raise SourceError(f"template: {spec!r} must be one of {', '.join(TEMPLATES)} or a text with {{problem}}")
    return Template("custom", spec)


# --------------------------------------------------------------------------- seeds and secrets

def derive_seed(seed: int, problem_id: str) -> int:
    """A problem's own seed: a function of (seed, problem_id) only, never of batch position. 31 bits
    because some servers reject larger seeds."""
    return int(hashlib.sha256(f"{seed}:{problem_id}".encode("utf-8")).hexdigest()[:8], 16) & 0x7FFFFFFF


def public_spec(spec):
    """An engine spec safe to record: credential-like keys dropped, URLs without userinfo or query."""
    if isinstance(spec, dict):
        return {k: public_spec(v) for k, v in spec.items()
                if not (SECRET_KEY.search(str(k)) and not str(k).endswith("_env"))}
    if isinstance(spec, list):
        return [public_spec(v) for v in spec]
    if isinstance(spec, str) and spec.startswith(("http://", "https://")):
        parts = urlsplit(spec)                     # keep scheme://host:port/path; no user:pass@, no ?key=
        return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))
    return spec


# --------------------------------------------------------------------------- model identity

def dir_digest(path: Path, cache_file: Path | None = None) -> str:
    """Content hash of a model directory (retraining the student changes it). Hashing a large
    checkpoint takes minutes, so the digest is cached by each file's (name, size, mtime)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise SourceError(f"{path}: engine.model directory holds no files")
    stats = [[str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    key, cache = str(path.resolve()), {}
    try:
        cache = json.loads(cache_file.read_text(encoding="utf-8")) if cache_file else {}
    except (OSError, ValueError):
        pass                           # no cache yet, or a damaged one: it only costs a re-hash
    if cache.get(key, {}).get("files") == stats:
        return cache[key]["digest"]
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(path)).encode("utf-8") + b"\x00")
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    digest = "sha256:" + h.hexdigest()[:20]
    if cache_file is not None:
        cache[key] = {"files": stats, "digest": digest}
        write_json(cache_file, cache)
    return digest


def resolve_model(spec: dict, cache_file: Path | None = None) -> tuple[dict, str, str | None]:
    """(spec for ``make_engine``, teacher model id, revision).

    A local directory's revision is its content digest; a hub id is downloaded once with
    ``huggingface_hub.snapshot_download`` (pinned by ``engine.revision`` if given) and its revision
    is the commit that was fetched; an OpenAI-compatible endpoint is known by its model name only."""
    spec = dict(spec)
    kind = spec["kind"]
    if kind == "openai":
        return spec, str(spec.get("model")), None
    if kind == "fake":
        return spec, str(spec.get("model", "fake")), None
    model = spec.get("model")
    if not model:
        raise SourceError("engine.model: name the teacher (a hub id or a local directory)")
    revision = spec.pop("revision", None)
    if Path(model).is_dir():
        if revision:
            raise SourceError(f"engine.revision: '{revision}' pins a hub id, but '{model}' is a local directory")
        return spec, str(model), dir_digest(Path(model), cache_file)
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(str(model), revision=revision)
    except Exception as exc:  # hub errors come in many types; all mean "cannot get this model"
        raise SourceError(f"engine.model: '{model}' is not a local directory and could not be fetched "
                          f"from the hub: {type(exc).__name__}: {exc}") from exc
    spec["model"] = str(local)
    return spec, str(model), Path(local).name   # snapshots/<commit>


def engine_versions(kind: str) -> tuple[str, str]:
    """(engine name, "library version") for provenance."""
    name, library = LIBRARY.get(kind, (kind, "mixdistill"))
    try:
        return name, f"{library} {importlib.metadata.version(library)}"
    except importlib.metadata.PackageNotFoundError:
        return name, f"{library} (not installed)"


# --------------------------------------------------------------------------- samples and chunks

@dataclass
class Sample:
    problem_id: str
    problem_sha: str              # hash of problem text + reference: an edited problem is regenerated
    sample_index: int
    response: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    engine_seed: int              # the seed given to the engine for this sample's call
    timestamp: str
    extracted: str | None = None
    correct: bool = False
    grade_method: str = ""

    @property
    def accepted(self) -> bool:
        # A truncated sample may carry a right \boxed{} by luck; it is no complete solution.
        return self.correct and self.finish_reason == "stop"


SAMPLE_FIELDS = {f.name for f in fields(Sample)}


def problem_sha(problem: str, reference: str) -> str:
    return hashlib.sha256(f"{problem}\x00{reference}".encode("utf-8")).hexdigest()[:16]


class ChunkStore:
    """Append-only chunk files in one work directory, guarded by an exclusive lock."""

    def __init__(self, directory: Path, n: int):
        self.dir, self.n = Path(directory), n
        self._lock_fd: int | None = None

    def __enter__(self) -> ChunkStore:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # flock is released by the kernel when the holder dies, even by SIGKILL.
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SourceError(f"{self.dir}: another generation run holds this work directory; "
                              "wait for it or stop it") from None
        self._lock_fd = fd
        for stale in self.dir.glob(".chunk-*"):   # temp files of a run killed mid-write
            stale.unlink()
        return self

    def __exit__(self, *exc) -> None:
        os.close(self._lock_fd)

    def chunk_files(self) -> list[Path]:
        return sorted(self.dir.glob("chunk-*.jsonl"))

    def load(self) -> dict[tuple[str, str], list[Sample]]:
        """Samples by (problem_id, problem_sha); each problem complete (indexes 0..n-1) and unique."""
        by_problem: dict[tuple[str, str], list[Sample]] = {}
        seen_in: dict[tuple[str, str], str] = {}
        for path in self.chunk_files():
            grouped: dict[tuple[str, str], list[Sample]] = {}
            # Chunks are renamed into place only once fsync'd whole, so a torn last line is damage,
            # not an interrupted write: no torn-tail tolerance here.
            try:
                for lineno, rec in iter_jsonl(path):
                    sample = self._parse(f"{path}: line {lineno}", rec)
                    grouped.setdefault((sample.problem_id, sample.problem_sha), []).append(sample)
            except JsonlError as exc:
                advice = "" if exc.lineno is None else "; delete this chunk to regenerate it"
                raise SourceError(f"{exc}{advice}") from exc
            for key, samples in grouped.items():
                if key in seen_in:
                    raise SourceError(f"{path}: problem '{key[0]}' was already generated in {seen_in[key]} "
                                      "(two runs wrote this directory?); delete one of the two chunks")
                indexes = sorted(s.sample_index for s in samples)
                if indexes != list(range(self.n)):
                    raise SourceError(f"{path}: problem '{key[0]}' has sample indexes {indexes}, expected "
                                      f"0..{self.n - 1}; delete this chunk to regenerate it")
                seen_in[key] = path.name
                by_problem[key] = sorted(samples, key=lambda s: s.sample_index)
        return by_problem

    @staticmethod
    def _parse(where: str, rec: dict) -> Sample:
        missing = sorted(SAMPLE_FIELDS - set(rec))
        if missing:
            raise SourceError(f"{where}: field '{missing[0]}' is missing; delete this chunk to regenerate it")
        for name, kind in (("problem_id", str), ("sample_index", int), ("response", str)):
            if not isinstance(rec[name], kind):
                raise SourceError(f"{where}: field '{name}' has type {type(rec[name]).__name__}, expected {kind.__name__}")
        return Sample(**{k: rec[k] for k in SAMPLE_FIELDS})

    def append(self, samples: list[Sample]) -> Path:
        numbers = [int(p.stem.split("-")[1]) for p in self.chunk_files()]
        final = self.dir / f"chunk-{(max(numbers) + 1) if numbers else 0:06d}.jsonl"
        tmp = self.dir / f".{final.name}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for s in samples:
                f.write(json.dumps(asdict(s), ensure_ascii=False, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())          # the data is on disk before the name says it is done
        os.replace(tmp, final)
        dir_fd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)              # and the rename itself survives a power cut
        finally:
            os.close(dir_fd)
        return final


# --------------------------------------------------------------------------- rejection sampling

def select_samples(samples: list[Sample], select: str, k: int | None = None) -> list[Sample]:
    """The samples one problem keeps, in sample order.

    Identical responses are one trace (same trace_id), so only the first of them counts. "Correct"
    means graded correct and finished (not cut at max_tokens). shortest_correct / first_correct
    keep up to ``k`` (default 1) by completion tokens / sample index; all_correct keeps every
    correct one; all keeps every distinct sample, graded or not."""
    if select not in SELECT_MODES:
        raise SourceError(f"select: '{select}' must be one of {', '.join(SELECT_MODES)}")
    distinct, texts = [], set()
    for s in sorted(samples, key=lambda s: s.sample_index):
        if s.response not in texts:
            texts.add(s.response)
            distinct.append(s)
    if select == "all":
        return distinct
    accepted = [s for s in distinct if s.accepted]
    if select == "all_correct":
        return accepted
    k = k or 1
    if select == "first_correct":
        return accepted[:k]
    shortest = sorted(accepted, key=lambda s: (s.completion_tokens, len(s.response), s.sample_index))[:k]
    return sorted(shortest, key=lambda s: s.sample_index)


# --------------------------------------------------------------------------- the generation run

@dataclass
class Plan:
    """Everything fixed before the first sample: what to ask, whom, and where samples live."""
    template: Template
    sampling: SamplingConfig
    engine_spec: dict             # for make_engine (hub ids resolved to a local snapshot)
    provenance: dict              # teacher_model, teacher_revision, engine, engine_version
    config: dict                  # what the hash covers (written to config.json)
    config_hash: str
    work_dir: Path


def plan_generation(source) -> Plan:
    """Template, sampling, model identity and config hash of a (validated) generate source."""
    template = resolve_template(source.template)
    sampling = SamplingConfig(**{**source.sampling, "n": source.n})
    root = Path(source.work_dir)
    try:
        engine_spec, model_id, revision = resolve_model(source.engine, root / "model_digests.json")
    except SourceError as exc:
        raise SourceError(f"sources.{source.name}.{exc}") from exc
    name, version = engine_versions(source.engine["kind"])
    ignored = EXECUTION_ONLY_KEYS | {"model", "revision"} | ({"batch_size"} if sampling.greedy else set())
    config = {
        "format": FORMAT_VERSION,
        "engine": {k: v for k, v in public_spec(source.engine).items() if k not in ignored},
        "teacher_model": model_id, "teacher_revision": revision,
        "template": {"name": template.name, "sha256": template.sha256},
        "sampling": {k: getattr(sampling, k) for k in SAMPLING_KEYS}, "n": sampling.n,
    }
    config_hash = hashlib.sha256(dumps(config).encode("utf-8")).hexdigest()[:16]
    provenance = {"teacher_model": model_id, "teacher_revision": revision, "engine": name,
                  "engine_version": version}
    return Plan(template, sampling, engine_spec, provenance, config, config_hash,
                root / source.name / config_hash)


@dataclass(frozen=True)
class Problem:
    problem_id: str
    problem: str
    reference_answer: str

    @property
    def key(self) -> tuple[str, str]:
        return self.problem_id, problem_sha(self.problem, self.reference_answer)


def problem_rows(problems: pl.DataFrame | None, exclude: set[str], max_problems: int | None,
                 where: str) -> list[Problem]:
    if problems is None:
        raise SourceError(f"{where}: a generate source needs the train problems (run the problems stage)")
    missing = [c for c in ("problem_id", "problem", "reference_answer") if c not in problems.columns]
    if missing:
        raise SourceError(f"{where}: problems frame has no column '{missing[0]}'")
    rows, seen = [], {}
    for i, r in enumerate(problems.select("problem_id", "problem", "reference_answer").iter_rows(named=True)):
        for field in ("problem_id", "problem", "reference_answer"):
            if r[field] is None or str(r[field]).strip() == "":
                raise SourceError(f"{where}: problems row {i}: field '{field}' is empty")
        pid = str(r["problem_id"])
        if pid in seen:
            raise SourceError(f"{where}: problems row {i}: field 'problem_id' repeats row {seen[pid]} ('{pid}')")
        seen[pid] = i
        if pid not in exclude:
            rows.append(Problem(pid, str(r["problem"]), str(r["reference_answer"])))
    return rows[:max_problems] if max_problems else rows


def _call_engine(engine, chunk: list[Problem], plan: Plan) -> tuple[list[list[Completion]], list[int]]:
    """Completions and the seed each problem's call got (see the module note on determinism)."""
    sampling, kind = plan.sampling, plan.engine_spec["kind"]
    convs = [plan.template.messages(p.problem) for p in chunk]
    if sampling.greedy or kind == "vllm":
        return engine.generate(convs, sampling), [sampling.seed] * len(chunk)
    seeds = [derive_seed(sampling.seed, p.problem_id) for p in chunk]

    def one(i: int) -> list[Completion]:
        return engine.generate([convs[i]], replace(sampling, seed=seeds[i]))[0]

    # An HTTP engine runs n requests per call; a few problems at once keep max_concurrency busy.
    workers = max(1, getattr(engine, "max_concurrency", 1) // sampling.n)
    if workers == 1:
        return [one(i) for i in range(len(chunk))], seeds
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(chunk)))), seeds


def _generate(engine, todo: list[Problem], store: ChunkStore, plan: Plan, chunk_size: int, total: int,
              label: str) -> dict[tuple[str, str], list[Sample]]:
    from tqdm import tqdm

    from evaluation.grading import Grader

    made: dict[tuple[str, str], list[Sample]] = {}
    accepted = 0
    bar = tqdm(total=total, initial=total - len(todo), unit="problem", desc=label, file=sys.stderr,
               mininterval=1.0, dynamic_ncols=True)
    try:
        with Grader(timeout_s=GRADE_TIMEOUT_S, workers=GRADE_WORKERS) as grader:
            for start in range(0, len(todo), chunk_size):
                chunk = todo[start:start + chunk_size]
                try:
                    outs, seeds = _call_engine(engine, chunk, plan)
                except EngineError as exc:
                    raise SourceError(f"{label}: generation failed on problems {chunk[0].problem_id}.."
                                      f"{chunk[-1].problem_id}: {exc}. Finished chunks are kept in "
                                      f"{store.dir}; rerun to continue") from exc
                if len(outs) != len(chunk) or any(len(o) != plan.sampling.n for o in outs):
                    raise SourceError(f"{label}: engine returned {[len(o) for o in outs]} samples for "
                                      f"{len(chunk)} problems x n={plan.sampling.n}")
                stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
                samples = [Sample(p.problem_id, p.key[1], i, c.text, c.finish_reason, c.prompt_tokens,
                                  c.completion_tokens, seed, stamp)
                           for p, seed, comps in zip(chunk, seeds, outs) for i, c in enumerate(comps)]
                refs = {p.problem_id: p.reference_answer for p in chunk}
                verdicts = grader.grade_many([s.response for s in samples], [refs[s.problem_id] for s in samples])
                for s, v in zip(samples, verdicts):
                    s.extracted, s.correct, s.grade_method = v.extracted, v.correct, v.method
                store.append(samples)
                for s in samples:
                    made.setdefault((s.problem_id, s.problem_sha), []).append(s)
                accepted += sum(s.accepted for s in samples)
                bar.update(len(chunk))
                bar.set_postfix(samples=len(made) * plan.sampling.n, correct=accepted, refresh=False)
    finally:
        bar.close()
    return made


def _trace_row(source, plan: Plan, problem: Problem, s: Sample, teacher: str, origin: str) -> dict:
    sampling = plan.sampling
    generation = {
        **plan.provenance, "template": plan.template.name, "template_sha256": plan.template.sha256,
        "sampling": {"temperature": sampling.temperature, "top_p": sampling.top_p,
                     "max_tokens": sampling.max_tokens, "n": sampling.n}, "seed": sampling.seed, "engine_seed": s.engine_seed, "sample_index": s.sample_index,
        "finish_reason": s.finish_reason, "prompt_tokens": s.prompt_tokens,
        "completion_tokens": s.completion_tokens, "timestamp": s.timestamp,
        "grade": {"correct": s.correct, "method": s.grade_method, "extracted": s.extracted},
        "select": source.select, "k": source.k, "config_hash": plan.config_hash,
    }
    return {
        "trace_id": trace_id(problem.problem, s.response, teacher), "source": source.name,
        "problem_id": problem.problem_id, "problem": problem.problem,
        "reference_answer": problem.reference_answer, "response": s.response,
        "prompt": plan.template.messages(problem.problem)[-1]["content"],   # the user turn
        "teacher": teacher, "style": source.style, "teacher_size": source.teacher_size,
        "finish_reason": s.finish_reason, "truncated": s.finish_reason == "length",
        "generation": dumps(generation), "origin": origin,
    }


def generate_traces(source, problems: pl.DataFrame | None, *, exclude_problem_ids=(),
                    engine=None, log: Callable[[str], None] = print) -> pl.DataFrame:
    """Generate (or resume generating) one source's samples and return the selected traces.

    ``engine`` overrides the configured one (tests); it is built only when samples are missing,
    so a finished run reselects without loading the model."""
    where, label = f"sources.{source.name}", f"generate@{source.name}"
    rows = problem_rows(problems, set(exclude_problem_ids), source.max_problems, where)
    if not rows:
        raise SourceError(f"{where}: no train problems to generate for")
    plan = plan_generation(source)
    with ChunkStore(plan.work_dir, plan.sampling.n) as store:
        if not (plan.work_dir / "config.json").exists():
            write_json(plan.work_dir / "config.json", {"config_hash": plan.config_hash, **plan.config})
        done = store.load()
        todo = [p for p in rows if p.key not in done]
        if todo:
            try:
                engine = engine if engine is not None else make_engine(plan.engine_spec)
            except EngineError as exc:
                raise SourceError(f"{where}.engine: {exc}") from exc
            done.update(_generate(engine, todo, store, plan, source.chunk_size, len(rows), label))
        out, report = _select(source, plan, rows, done)
        write_json(plan.work_dir / "report.json", report)
    no_correct = report["problems_without_correct"]
    log(f"{label}: {len(rows)} problems x {plan.sampling.n} samples, {report['correct_samples']} correct "
        f"({report['correct_samples'] / report['samples']:.1%}); {len(out)} traces kept ({source.select}); "
        f"samples in {plan.work_dir}")
    if no_correct:
        more = f", ... ({len(no_correct) - 20} more)" if len(no_correct) > 20 else ""
        log(f"{label}: {len(no_correct)} problem(s) without a correct sample: {', '.join(no_correct[:20])}{more} "
            f"(report: {plan.work_dir / 'report.json'})")
    if not out:
        raise SourceError(f"{where}: no trace selected ({source.select}); see {plan.work_dir / 'report.json'}. "
                          "The samples are kept: changing select or k reuses them")
    return conform(pl.DataFrame(out, infer_schema_length=None))


def _select(source, plan: Plan, rows: list[Problem], done: dict) -> tuple[list[dict], dict]:
    """Trace rows of the selected samples, and the run's report."""
    teacher = source.teacher or plan.provenance["teacher_model"]
    origin = dumps({"generated": True, "engine": public_spec(source.engine), "config_hash": plan.config_hash})
    out, no_correct, distinct = [], [], 0
    for p in rows:
        out.extend(_trace_row(source, plan, p, s, teacher, origin)
                   for s in select_samples(done[p.key], source.select, source.k))
        distinct += len(select_samples(done[p.key], "all"))
        if not any(s.accepted for s in done[p.key]):
            no_correct.append(p.problem_id)
    samples = [s for p in rows for s in done[p.key]]
    wanted = {p.key for p in rows}
    report = {
        "source": source.name, "config_hash": plan.config_hash, "work_dir": str(plan.work_dir),
        **plan.provenance, "template": plan.template.name, "template_sha256": plan.template.sha256,
        "select": source.select, "k": source.k, "n": plan.sampling.n,
        "problems": len(rows), "samples": len(samples), "duplicate_samples": len(samples) - distinct,
        "correct_samples": sum(s.accepted for s in samples),
        "truncated_samples": sum(s.finish_reason == "length" for s in samples),
        "grade_methods": dict(sorted(Counter(s.grade_method for s in samples).items())),
        "prompt_tokens": sum(s.prompt_tokens for s in samples),
        "completion_tokens": sum(s.completion_tokens for s in samples),
        "traces": len(out), "problems_with_correct": len(rows) - len(no_correct),
        "problems_without_correct": no_correct,
        # samples on disk for problems outside this run (max_problems lowered, a problem edited)
        "stale_samples_ignored": sum(len(v) for key, v in done.items() if key not in wanted),
    }
    return out, report
