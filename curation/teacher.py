"""Teacher generation: a trace source that asks a teacher model instead of importing its answers.

A ``kind: generate`` source renders each train problem with a prompt template, samples ``n``
completions from a generation engine (``generation.engines``: transformers, vLLM, any
OpenAI-compatible endpoint), grades every sample with the curation :class:`Grader` and keeps up
to ``k`` correct ones per problem (rejection sampling). The result is a trace set in the common
schema, written by the ``traces@SOURCE`` stage and curated like any imported source.

Crash safety. Samples go through the shared store (:mod:`generation.store`):
``<work_dir>/<source>/<config hash>/samples.jsonl``, one durable chunk of problems at a time, so
a kill at any point loses at most the chunk in flight and a rerun generates only the problems
whose samples are not all there. The directory is keyed by a hash of all that
shapes a sample (engine, model revision, template, sampling, n, seed), so a changed config never
mixes old samples in; what only shapes the selection (select, k, max_problems, chunk_size) is left
out of the hash, so changing it reuses every sample already paid for.

Determinism. A problem's samples never depend on which problems share its engine call: greedy
decoding ignores the seed; vLLM seeds a generator per request; every other engine, when sampling,
gets one call per problem seeded from (seed, problem_id) (OpenAI-compatible requests then send
that seed + sample index). So chunk boundaries, and therefore kills, do not change the output.
"""
from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import polars as pl

from common.io import write_json
from common.progress import Progress
from common.digests import dumps
from curation.schema import conform, trace_id
from curation.templates import Template, resolve_template
from curation.config import SAMPLING_KEYS, SELECT_MODES
from curation.errors import SourceError
from generation.engines import Completion, EngineError, SamplingConfig
from generation.factory import make_engine
from generation.spec import EXECUTION_ONLY_KEYS, engine_versions, public_spec, resolve_model
from generation.store import SampleStore, SampleStoreError

FORMAT_VERSION = 2                      # bump when the sample record layout changes
# Grading as curate.correctness does by default: a hard 5 s per pair (math-verify can hang).
GRADE_TIMEOUT_S = 5.0
GRADE_WORKERS = 2
# --------------------------------------------------------------------------- seeds and secrets

def derive_seed(seed: int, problem_id: str) -> int:
    """A problem's own seed: a function of (seed, problem_id) only, never of batch position. 31 bits
    because some servers reject larger seeds."""
    return int(hashlib.sha256(f"{seed}:{problem_id}".encode("utf-8")).hexdigest()[:8], 16) & 0x7FFFFFFF


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


SAMPLE_TYPES = {"problem_id": str, "problem_sha": str, "sample_index": int, "response": str,
                **{f: object for f in SAMPLE_FIELDS}}


def open_store(plan: Plan) -> SampleStore:
    """The source's sample store: ``samples.jsonl`` in the config-hash work dir, whose
    ``config.json`` is the fingerprint (see :mod:`generation.store`)."""
    return SampleStore(plan.work_dir / "samples.jsonl", {"config_hash": plan.config_hash, **plan.config},
                       group_fields=("problem_id", "problem_sha"), index_field="sample_index",
                       fields=SAMPLE_TYPES, meta_path=plan.work_dir / "config.json")


def stored_samples(store: SampleStore, n: int) -> dict[tuple[str, str], list[Sample]]:
    """Samples by (problem_id, problem_sha), for each problem that holds all ``n``."""
    groups = {key[:2] for key in store.records}
    return {g: [Sample(**{k: r[k] for k in SAMPLE_FIELDS}) for r in store.group(g, n)]
            for g in sorted(groups) if store.has(g, n)}


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
    except EngineError as exc:
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
    # Ray replicas (generation.ray_engine) take one call each, whatever n.
    workers = getattr(engine, "parallel_calls", None) or max(1, getattr(engine, "max_concurrency", 1) // sampling.n)
    if workers == 1:
        return [one(i) for i in range(len(chunk))], seeds
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(chunk)))), seeds


def _generate(engine, todo: list[Problem], store: SampleStore, plan: Plan, chunk_size: int, total: int,
              label: str) -> dict[tuple[str, str], list[Sample]]:
    from grading.grader import Grader

    made: dict[tuple[str, str], list[Sample]] = {}
    accepted = 0
    bar = Progress(total, label, "problem", initial=total - len(todo), milestones=3)
    try:
        with Grader(timeout_s=GRADE_TIMEOUT_S, workers=GRADE_WORKERS) as grader:
            for start in range(0, len(todo), chunk_size):
                chunk = todo[start:start + chunk_size]
                try:
                    outs, seeds = _call_engine(engine, chunk, plan)
                except EngineError as exc:
                    raise SourceError(f"{label}: generation failed on problems {chunk[0].problem_id}.."
                                      f"{chunk[-1].problem_id}: {exc}. Finished chunks are kept in "
                                      f"{store.path}; rerun to continue") from exc
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
                store.append([asdict(s) for s in samples])
                for s in samples:
                    made.setdefault((s.problem_id, s.problem_sha), []).append(s)
                accepted += sum(s.accepted for s in samples)
                bar.note(samples=len(made) * plan.sampling.n, correct=accepted)
                bar.update(len(chunk), tokens=sum(s.completion_tokens or 0 for s in samples))
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
    where = f"sources.{source.name}"
    rows = problem_rows(problems, set(exclude_problem_ids), source.max_problems, where)
    if not rows:
        raise SourceError(f"{where}: no train problems to generate for")
    plan = plan_generation(source)
    try:
        return _generate_with_store(source, plan, rows, engine, log)
    except SampleStoreError as exc:
        raise SourceError(f"{where}: {exc}") from exc


def _generate_with_store(source, plan: Plan, rows: list[Problem], engine, log) -> pl.DataFrame:
    where, label = f"sources.{source.name}", f"generate@{source.name}"
    with open_store(plan) as store:
        done = stored_samples(store, plan.sampling.n)
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
