"""One model's evaluation: generate on every benchmark (resuming), grade (rule, then judge), score.

Generations go to ``<eval>/<model>/samples.jsonl`` through the shared resumable store
(:mod:`generation.store`), one chunk of ``eval.batch_size`` problems at a time (with
``eval.engine.kind: vllm``, one whole benchmark per call: vLLM schedules its own batches), so a
crash loses no chunk already written and a rerun generates only what is missing.
``samples.meta.json`` fingerprints what produced them (checkpoint content, engine, sampling,
prompt); another fingerprint starts afresh rather than mixing two models' outputs. Grading runs
over all samples at the end (rule grading is cheap; judge verdicts are cached), writing
``graded.jsonl``, ``scores.json`` and ``judge_audit.json``. The engine that generated is released before a judge loads (one GPU seldom
holds both). ``eval.protocol: paper`` swaps in the paper's prompt, decoding, stop strings and
scoring, and keeps our grader's scores beside it (:mod:`evaluation.paper_protocol`). Logging the
result is the caller's business (the eval stage's).
"""
from __future__ import annotations

import gc
import json
import sys
from dataclasses import asdict

import polars as pl

from common import layout as names
from common.digests import model_digest
from common.io import atomic_file, read_parquet, write_json
from common.layout import Layout
from common.progress import Progress
from common.prompt import build_prompt
import evaluation.paper_protocol as paper
from evaluation.config import PAPER_SAMPLING, EvalParams
from evaluation.metrics import summarize
from generation.engines import Engine, EngineError
from generation.factory import make_engine
from generation.store import SampleStore
from grading.answers import normalize_answer
from grading.grader import Grader
from grading.judge import JudgeGrader, VerdictCache, calibrate_on_champ, judge_from_spec


def load_benchmarks(cfg: EvalParams, layout: Layout) -> dict[str, pl.DataFrame]:
    frames = {}
    for name in cfg.benchmarks:
        path = layout.benchmark(name)
        if not path.exists():
            raise FileNotFoundError(f"{path}: benchmark '{name}' not prepared (run the problems stage)")
        frame = read_parquet(path)
        frames[name] = frame.head(cfg.max_problems) if cfg.max_problems else frame
    return frames


def open_samples(out_dir, fingerprint: dict) -> SampleStore:
    return SampleStore(out_dir / names.SAMPLES, fingerprint, group_fields=("benchmark", "problem_id"),
                       index_field="sample_idx", fields={"response": str}, meta_path=out_dir / names.SAMPLES_META,
                       log=lambda message: print(f"eval: {message}", file=sys.stderr))


def _messages(cfg: EvalParams, bench: str, problem: str) -> list[dict]:
    if cfg.protocol == "paper":
        return paper.task_for(cfg.benchmarks[bench]).messages(problem)
    return [{"role": "user", "content": build_prompt(problem)}]


def _record(cfg: EvalParams, bench: str, row: dict, index: int, c) -> dict:
    record = {"benchmark": bench, "problem_id": row["problem_id"], "sample_idx": index,
              "reference_answer": row["reference_answer"], "response": c.text,
              "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
              "completion_tokens": c.completion_tokens}
    if cfg.protocol == "paper":
        # the engines take no stop strings: cut where the paper's generation would have stopped
        text, stop = paper.cut_at_stop(c.text, paper.task_for(cfg.benchmarks[bench]).stop)
        record.update(response=text, stop_string=stop, finish_reason="stop" if stop else c.finish_reason)
    return record


def whole_benchmark(cfg: EvalParams) -> bool:
    """vLLM schedules its own batches: one call per benchmark keeps the GPU full; eval.batch_size
    is for the CPU engine, whose padded batches it sizes."""
    return cfg.engine.get("kind") == "vllm"


def generate_missing(engine: Engine, store: SampleStore, frames: dict[str, pl.DataFrame], cfg: EvalParams) -> int:
    """Generate samples for problems not yet in the store, one chunk of ``batch_size`` at a time
    (the whole benchmark at once for vLLM); every chunk is in the store before the next starts.
    Progress (problems, tokens/s) goes to stderr: a bar on a terminal, else a few lines."""
    made = 0
    todo = {bench: [r for r in frame.iter_rows(named=True) if not store.has((bench, r["problem_id"]), cfg.sampling.n)]
            for bench, frame in frames.items()}
    total = sum(f.height for f in frames.values())
    missing = sum(len(rows) for rows in todo.values())
    with Progress(total, "eval: generate", "problem", initial=total - missing, milestones=3) as bar:
        for bench, rows in todo.items():
            step = max(1, len(rows)) if whole_benchmark(cfg) else cfg.batch_size
            for start in range(0, len(rows), step):
                chunk = rows[start:start + step]
                bar.note(benchmark=bench)
                outs = engine.generate([_messages(cfg, bench, r["problem"]) for r in chunk], cfg.sampling)
                records = [_record(cfg, bench, r, i, c) for r, samples in zip(chunk, outs)
                           for i, c in enumerate(samples)]
                store.append(records)
                made += len(records)
                bar.update(len(chunk), tokens=sum(rec["completion_tokens"] or 0 for rec in records))
    return made


def release_engine(engine) -> None:
    """Let go of what an engine holds (VLLMEngine.close: replica processes, its in-process model);
    the caller then drops its own reference and calls :func:`free_accelerator_memory`."""
    close = getattr(engine, "close", None)
    if callable(close):
        close()


def free_accelerator_memory() -> None:
    """Collect released models and hand their CUDA memory back, so that the judge fits on the GPU."""
    gc.collect()
    if "vllm" in sys.modules:                    # vLLM keeps a distributed state after its LLM goes
        try:
            from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
            cleanup_dist_env_and_memory()
        except (ImportError, AttributeError, RuntimeError, AssertionError) as exc:
            print(f"eval: note: vLLM cleanup: {exc}", file=sys.stderr)
    torch = sys.modules.get("torch")             # only an engine that ran imported it
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _judge_batch(cfg: EvalParams, n: int) -> int:
    # a vLLM judge takes every prompt in one call; other judges get eval.batch_size at a time
    return max(1, n) if (cfg.judge or {}).get("kind") == "vllm" else cfg.batch_size


def judge_grader(grader: Grader, cfg: EvalParams, judge: Engine | None, judge_id: str, cache: VerdictCache,
                 judge_tokens: int, judge_batch: int | None = None) -> JudgeGrader:
    return JudgeGrader(grader, judge, judge_id, cache, max_answer_chars=cfg.grading.max_answer_chars,
                       judge_max_tokens=judge_tokens, judge_batch=judge_batch or cfg.batch_size)


def grade_samples(store: SampleStore, frames: dict[str, pl.DataFrame], cfg: EvalParams, judge: Engine | None,
                  judge_id: str, cache_path, judge_tokens: int = 256) -> tuple[list[dict], list[dict]]:
    problems = {(b, r["problem_id"]): r["problem"] for b, f in frames.items() for r in f.iter_rows(named=True)}
    wanted = [rec for key, rec in sorted(store.records.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2]))
              if (key[0], key[1]) in problems and key[2] < cfg.sampling.n]
    cache = VerdictCache(cache_path)
    try:
        with Grader(timeout_s=cfg.grading.timeout_s, workers=cfg.grading.workers, rules=cfg.grading.rules) as grader:
            report = judge_grader(grader, cfg, judge, judge_id, cache, judge_tokens,
                                  _judge_batch(cfg, len(wanted))).grade(
                [problems[(r["benchmark"], r["problem_id"])] for r in wanted],
                [r["response"] for r in wanted], [r["reference_answer"] for r in wanted],
                ids=[{"benchmark": r["benchmark"], "problem_id": r["problem_id"],
                      "sample_idx": r["sample_idx"]} for r in wanted])
    finally:
        cache.close()
    graded = [{**rec, "extracted": v.extracted, "rule_correct": v.rule_correct, "correct": v.correct,
               "method": v.method, "judge_output": v.judge_output} for rec, v in zip(wanted, report.verdicts)]
    return graded, report.audit


def grade_paper(graded: list[dict], frames: dict[str, pl.DataFrame], cfg: EvalParams, judge: Engine | None,
                judge_id: str, cache_path) -> tuple[list[dict], list[dict]]:
    """The paper's verdicts on samples our grader already graded: records with both, its audit."""
    refs = {b: paper.raw_references(f, cfg.benchmarks[b], b) for b, f in frames.items()}
    problems = {(b, r["problem_id"]): r["problem"] for b, f in frames.items() for r in f.iter_rows(named=True)}
    rows = [{"task": paper.task_for(cfg.benchmarks[g["benchmark"]]).kind,
             "problem": problems[(g["benchmark"], g["problem_id"])], "response": g["response"],
             "reference": refs[g["benchmark"]][g["problem_id"]],
             "ids": {"benchmark": g["benchmark"], "problem_id": g["problem_id"], "sample_idx": g["sample_idx"]}}
            for g in graded]
    cache = VerdictCache(cache_path)
    try:
        batch = _judge_batch(cfg, len(rows)) if judge is not None else None
        verdicts, audit = paper.PaperGrader(judge, judge_id, cache, batch).grade(rows)
    finally:
        cache.close()
    return paper.merge_graded(graded, verdicts), audit


def protocol_deviations(cfg: EvalParams) -> list[str]:
    """Where eval.sampling departs from the paper's decoding (explicit keys win over the protocol)."""
    if cfg.protocol != "paper":
        return []
    return [f"{k}={getattr(cfg.sampling, k)} (paper: {PAPER_SAMPLING[k]})" for k in ("temperature", "max_tokens", "n")
            if getattr(cfg.sampling, k) != PAPER_SAMPLING[k]]


def _engine_for(cfg: EvalParams, mdir) -> Engine:
    spec = dict(cfg.engine)
    if spec["kind"] == "vllm" and (mdir / "adapter_config.json").exists():
        raise EngineError(f"{mdir}: a LoRA adapter; the vllm engine needs merged weights "
                          f"(merge the adapter into its base, or use engine kind transformers)")
    if spec["kind"] in ("transformers", "vllm"):
        spec.setdefault("model", str(mdir))
    if spec["kind"] == "transformers":
        spec.setdefault("batch_size", cfg.batch_size)
    return make_engine(spec)


def evaluate(name: str, layout: Layout, cfg: EvalParams, engine: Engine | None = None, judge: Engine | None = None,
             judge_id: str | None = None) -> dict:
    """Generate (resuming), grade and score one model; write its outputs; return what to log.
    ``engine``/``judge`` override the configured ones (tests pass fakes)."""
    mdir = layout.model(name)
    if not mdir.is_dir():
        raise FileNotFoundError(f"{mdir}: no checkpoint for model '{name}' (run the train stage first)")
    out = layout.eval(name)
    frames = load_benchmarks(cfg, layout)
    # where the engine runs (its `ray` mapping) does not change the samples: moving eval onto a
    # cluster keeps the ones already made
    fingerprint = {"checkpoint": model_digest(mdir), "engine": {k: v for k, v in cfg.engine.items() if k != "ray"},
                   "sampling": asdict(cfg.sampling), "prompt": build_prompt("{problem}")}
    if cfg.protocol == "paper":
        fingerprint.update(paper.fingerprint())
    deviations = protocol_deviations(cfg)
    if deviations:
        print(f"eval: protocol paper, but eval.sampling sets {', '.join(deviations)}", file=sys.stderr)
    with open_samples(out, fingerprint) as store:
        missing = not all(store.has((b, pid), cfg.sampling.n) for b, f in frames.items() for pid in f["problem_id"])
        own_engine = engine is None and missing
        if own_engine:
            engine = _engine_for(cfg, mdir)
        made = generate_missing(engine, store, frames, cfg) if engine is not None else 0
        if own_engine:                           # before the judge loads: one GPU seldom holds both
            release_engine(engine)
            engine = None
            free_accelerator_memory()
        judge_tokens = 256
        if judge is None and cfg.judge is not None:
            judge, judge_id, judge_tokens = judge_from_spec(cfg.judge)
        judge_id = judge_id or ("none" if judge is None else type(judge).__name__)
        graded, audit = grade_samples(store, frames, cfg, judge, judge_id, out / names.JUDGE_CACHE, judge_tokens)
    if cfg.protocol == "paper":
        graded, paper_audit = grade_paper(graded, frames, cfg, judge, judge_id, out / names.JUDGE_CACHE)
        audit = audit + paper_audit
        scores = paper.side_by_side_scores(graded, cfg.ks)
    else:
        scores = summarize(graded, cfg.ks, normalize=normalize_answer)
    with atomic_file(out / names.GRADED, encoding="utf-8") as f:
        for rec in graded:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    write_json(out / names.SCORES, scores)
    write_json(out / names.JUDGE_AUDIT, audit)
    return {"model": name, "scores": scores, "audit": audit, "generated": made, "reused": len(graded) - made,
            "out": out, "model_dir": mdir, "judge_id": judge_id, "protocol": cfg.protocol,
            "protocol_deviations": deviations}


def calibrate(cfg: EvalParams, judge_spec: dict | None, out_path, limit: int | None) -> dict:
    """Rule grading (and the judge, if given) against CHAMP's human labels."""
    judge, judge_id, judge_tokens = judge_from_spec(judge_spec)
    cache = VerdictCache(out_path.with_suffix(".sqlite"))
    try:
        with Grader(timeout_s=cfg.grading.timeout_s, workers=cfg.grading.workers, rules=cfg.grading.rules) as grader:
            result = calibrate_on_champ(judge_grader(grader, cfg, judge, judge_id, cache, judge_tokens), limit=limit)
    finally:
        cache.close()
    write_json(out_path, result)
    return result
