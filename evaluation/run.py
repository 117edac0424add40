"""One model's evaluation: generate on every benchmark (resuming), grade (rule, then judge), score.

Generations go to ``<eval>/<model>/samples.jsonl`` through the shared resumable store
(:mod:`generation.store`), one chunk of ``eval.batch_size`` problems at a time, so a crash loses
no finished sample and a rerun generates only what is missing. ``samples.meta.json`` fingerprints
what produced them (checkpoint content, engine, sampling, prompt); another fingerprint starts
afresh rather than mixing two models' outputs. Grading runs over all samples at the end (rule
grading is cheap; judge verdicts are cached), writing ``graded.jsonl``, ``scores.json`` and
``judge_audit.json``. Logging the result is the caller's business (the eval stage's).
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

import polars as pl

from common import layout as names
from common.digests import model_digest
from common.io import atomic_file, write_json
from common.layout import Layout
from common.prompt import build_prompt
from evaluation.config import EvalParams
from evaluation.metrics import summarize
from generation.engines import Engine, EngineError
from generation.factory import make_engine
from generation.store import SampleStore
from grading.answers import normalize_answer
from grading.grader import Grader
from grading.judge import JudgeGrader, VerdictCache, calibrate_on_champ


def load_benchmarks(cfg: EvalParams, layout: Layout) -> dict[str, pl.DataFrame]:
    frames = {}
    for name in cfg.benchmarks:
        path = layout.benchmark(name)
        if not path.exists():
            raise FileNotFoundError(f"{path}: benchmark '{name}' not prepared (run the problems stage)")
        frame = pl.read_parquet(path)
        frames[name] = frame.head(cfg.max_problems) if cfg.max_problems else frame
    return frames


def open_samples(out_dir, fingerprint: dict) -> SampleStore:
    return SampleStore(out_dir / names.SAMPLES, fingerprint, group_fields=("benchmark", "problem_id"),
                       index_field="sample_idx", fields={"response": str}, meta_path=out_dir / names.SAMPLES_META,
                       log=lambda message: print(f"eval: {message}", file=sys.stderr))


def generate_missing(engine: Engine, store: SampleStore, frames: dict[str, pl.DataFrame], cfg: EvalParams) -> int:
    """Generate samples for problems not yet in the store, one chunk of ``batch_size`` at a time."""
    made = 0
    for bench, frame in frames.items():
        todo = [r for r in frame.iter_rows(named=True) if not store.has((bench, r["problem_id"]), cfg.sampling.n)]
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start:start + cfg.batch_size]
            convs = [[{"role": "user", "content": build_prompt(r["problem"])}] for r in chunk]
            outs = engine.generate(convs, cfg.sampling)
            records = [{"benchmark": bench, "problem_id": r["problem_id"], "sample_idx": i,
                        "reference_answer": r["reference_answer"], "response": c.text,
                        "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                        "completion_tokens": c.completion_tokens}
                       for r, samples in zip(chunk, outs) for i, c in enumerate(samples)]
            store.append(records)
            made += len(records)
            print(f"eval: {bench}: {start + len(chunk)}/{len(todo)} problems generated", file=sys.stderr)
    return made


def judge_grader(grader: Grader, cfg: EvalParams, judge: Engine | None, judge_id: str, cache: VerdictCache,
                 judge_tokens: int) -> JudgeGrader:
    return JudgeGrader(grader, judge, judge_id, cache, max_answer_chars=cfg.grading.max_answer_chars,
                       judge_max_tokens=judge_tokens, judge_batch=cfg.batch_size)


def grade_samples(store: SampleStore, frames: dict[str, pl.DataFrame], cfg: EvalParams, judge: Engine | None,
                  judge_id: str, cache_path, judge_tokens: int = 256) -> tuple[list[dict], list[dict]]:
    problems = {(b, r["problem_id"]): r["problem"] for b, f in frames.items() for r in f.iter_rows(named=True)}
    wanted = [rec for key, rec in sorted(store.records.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2]))
              if (key[0], key[1]) in problems and key[2] < cfg.sampling.n]
    cache = VerdictCache(cache_path)
    try:
        with Grader(timeout_s=cfg.grading.timeout_s, workers=cfg.grading.workers) as grader:
            report = judge_grader(grader, cfg, judge, judge_id, cache, judge_tokens).grade(
                [problems[(r["benchmark"], r["problem_id"])] for r in wanted],
                [r["response"] for r in wanted], [r["reference_answer"] for r in wanted],
                ids=[{"benchmark": r["benchmark"], "problem_id": r["problem_id"],
                      "sample_idx": r["sample_idx"]} for r in wanted])
    finally:
        cache.close()
    graded = [{**rec, "extracted": v.extracted, "rule_correct": v.rule_correct, "correct": v.correct,
               "method": v.method, "judge_output": v.judge_output} for rec, v in zip(wanted, report.verdicts)]
    return graded, report.audit


def judge_from_spec(spec: dict | None) -> tuple[Engine | None, str, int]:
    """``eval.judge``: an engine spec plus ``id`` (names the judge in cache keys and audits) and
    ``max_tokens`` (room for the judge's reasoning before its verdict line)."""
    if spec is None:
        return None, "none", 256
    spec = dict(spec)
    max_tokens = int(spec.pop("max_tokens", 256))
    judge_id = str(spec.pop("id", None) or json.dumps(spec, sort_keys=True))
    return make_engine(spec), judge_id, max_tokens


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
    fingerprint = {"checkpoint": model_digest(mdir), "engine": dict(cfg.engine),
                   "sampling": asdict(cfg.sampling), "prompt": build_prompt("{problem}")}
    with open_samples(out, fingerprint) as store:
        missing = not all(store.has((b, pid), cfg.sampling.n) for b, f in frames.items() for pid in f["problem_id"])
        if engine is None and missing:
            engine = _engine_for(cfg, mdir)
        made = generate_missing(engine, store, frames, cfg) if engine is not None else 0
        judge_tokens = 256
        if judge is None and cfg.judge is not None:
            judge, judge_id, judge_tokens = judge_from_spec(cfg.judge)
        judge_id = judge_id or ("none" if judge is None else type(judge).__name__)
        graded, audit = grade_samples(store, frames, cfg, judge, judge_id, out / names.JUDGE_CACHE, judge_tokens)
    scores = summarize(graded, cfg.ks, normalize=normalize_answer)
    with atomic_file(out / names.GRADED, encoding="utf-8") as f:
        for rec in graded:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    write_json(out / names.SCORES, scores)
    write_json(out / names.JUDGE_AUDIT, audit)
    return {"model": name, "scores": scores, "audit": audit, "generated": made, "reused": len(graded) - made,
            "out": out, "model_dir": mdir, "judge_id": judge_id}


def calibrate(cfg: EvalParams, judge_spec: dict | None, out_path, limit: int | None) -> dict:
    """Rule grading (and the judge, if given) against CHAMP's human labels."""
    judge, judge_id, judge_tokens = judge_from_spec(judge_spec)
    cache = VerdictCache(out_path.with_suffix(".sqlite"))
    try:
        with Grader(timeout_s=cfg.grading.timeout_s, workers=cfg.grading.workers) as grader:
            result = calibrate_on_champ(judge_grader(grader, cfg, judge, judge_id, cache, judge_tokens), limit=limit)
    finally:
        cache.close()
    write_json(out_path, result)
    return result
