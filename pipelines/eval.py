"""Stage `eval`: generate on every configured benchmark, grade (rule, then judge), score, log.

    python -m pipelines.eval --model mix_long      # models/checkpoints/mix_long
    python -m pipelines.eval --model base          # the untrained student, models/student
    python -m pipelines.eval --calibrate           # rule (+ judge) vs CHAMP human labels

Generations are appended to ``<eval>/<model>/samples.jsonl`` one chunk at a time, so a crash
loses no finished sample and a rerun generates only what is missing. ``samples.meta.json``
fingerprints what produced them (checkpoint content, engine, sampling, prompt); a different
fingerprint starts afresh rather than mixing two models' outputs. Grading runs over all samples
at the end (rule grading is cheap; judge verdicts are cached), writing ``graded.jsonl``,
``scores.json`` and ``judge_audit.json``. Metrics go into the checkpoint's own MLflow run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import polars as pl

from curation.io import JsonlError, atomic_file, iter_jsonl, write_json
from evaluation.answers import normalize_answer
from evaluation.config import EvalParams, EvalParamsError, parse_eval
from evaluation.engines import Engine, EngineError, make_engine
from evaluation.judge import JudgeGrader, VerdictCache, calibrate_on_champ
from evaluation.metrics import summarize
from pipelines.params import ParamsError, load_params, parse_paths

BASE = "base"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja")
# Records about a training run that sit in its checkpoint directory but do not change the model.
RUN_RECORDS = {"mlflow_run_id.txt", "lineage.json", "train_metrics.json"}


def model_dir(name: str, paths) -> Path:
    return Path(paths.student) if name == BASE else Path(paths.checkpoints) / name


def checkpoint_digest(path: Path) -> str:
    """Content hash of a model directory (weights, configs, tokenizer, chat template): what the
    model generates depends on these, not on the run records kept beside them."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                   and p.name not in RUN_RECORDS)
    if not files:
        raise FileNotFoundError(f"{path}: no model files (expected config.json and weights)")
    for p in files:
        h.update(str(p.relative_to(path)).encode())
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:20]


class SampleStore:
    """Append-only JSONL of generations keyed by (benchmark, problem_id, sample_idx)."""

    def __init__(self, path: Path, fingerprint: dict):
        self.path = path
        self.meta_path = path.with_name("samples.meta.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        old = json.loads(self.meta_path.read_text()) if self.meta_path.exists() else None
        if old != fingerprint and path.exists():
            print(f"eval: {path} was produced by another model or config; starting afresh", file=sys.stderr)
            path.unlink()
        write_json(self.meta_path, fingerprint)
        self.records: dict[tuple, dict] = {}
        if path.exists():
            self._load()

    def _load(self) -> None:
        last_line = 0
        try:
            for n, rec in iter_jsonl(self.path, tolerate_torn_tail=True):
                for key in ("benchmark", "problem_id", "sample_idx", "response"):
                    if key not in rec:
                        raise ValueError(f"{self.path}: line {n}: field '{key}' is missing")
                self.records[(rec["benchmark"], rec["problem_id"], rec["sample_idx"])] = rec
                last_line = n
        except JsonlError as exc:
            raise ValueError(f"{exc} (delete the file to regenerate)") from exc
        # A crash can leave the last line unterminated: drop it when it is cut short, and finish it
        # when only its newline is missing, so that the next append starts on a line of its own.
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):
            cut = raw.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                if last_line == raw.count(b"\n") + 1:
                    f.seek(0, os.SEEK_END)
                    f.write(b"\n")
                else:
                    f.truncate(cut)

    def has(self, benchmark: str, problem_id: str, n: int) -> bool:
        return all((benchmark, problem_id, i) in self.records for i in range(n))

    def append(self, records: list[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())        # the chunk is on disk before we generate the next one
        for rec in records:
            self.records[(rec["benchmark"], rec["problem_id"], rec["sample_idx"])] = rec


def load_benchmarks(cfg: EvalParams, problems_dir: Path) -> dict[str, pl.DataFrame]:
    frames = {}
    for name in cfg.benchmarks:
        path = problems_dir / "benchmarks" / f"{name}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: benchmark '{name}' not prepared (run the problems stage)")
        frame = pl.read_parquet(path)
        frames[name] = frame.head(cfg.max_problems) if cfg.max_problems else frame
    return frames


def generate_missing(engine: Engine, store: SampleStore, frames: dict[str, pl.DataFrame],
                     cfg: EvalParams, build_prompt) -> int:
    """Generate samples for problems not yet in the store, one chunk of ``batch_size`` at a time."""
    made = 0
    for bench, frame in frames.items():
        todo = [r for r in frame.iter_rows(named=True) if not store.has(bench, r["problem_id"], cfg.sampling.n)]
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


def grade_samples(store: SampleStore, frames: dict[str, pl.DataFrame], cfg: EvalParams, judge: Engine | None,
                  judge_id: str, cache_path: Path, judge_tokens: int = 256) -> tuple[list[dict], list[dict]]:
    from evaluation.grading import Grader

    problems = {(b, r["problem_id"]): r["problem"] for b, f in frames.items() for r in f.iter_rows(named=True)}
    wanted = [rec for key, rec in sorted(store.records.items(), key=lambda kv: (kv[0][0], str(kv[0][1]), kv[0][2]))
              if (key[0], key[1]) in problems and key[2] < cfg.sampling.n]
    cache = VerdictCache(cache_path)
    try:
        with Grader(timeout_s=cfg.grading.timeout_s, workers=cfg.grading.workers) as grader:
            jg = JudgeGrader(grader, judge, judge_id, cache, max_answer_chars=cfg.grading.max_answer_chars,
                             judge_max_tokens=judge_tokens, judge_batch=cfg.batch_size)
            report = jg.grade([problems[(r["benchmark"], r["problem_id"])] for r in wanted],
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


def evaluate(name: str, params: dict, engine: Engine | None = None, judge: Engine | None = None,
             judge_id: str | None = None) -> dict:
    """Generate (resuming), grade and score one model; write its outputs; return what to log.
    ``engine``/``judge`` override the configured ones (tests pass fakes)."""
    from training.data import build_prompt

    paths, cfg = parse_paths(params), parse_eval(params)
    mdir = model_dir(name, paths)
    if not mdir.is_dir():
        raise FileNotFoundError(f"{mdir}: no checkpoint for model '{name}' (run the train stage first)")
    out = Path(paths.eval) / name
    frames = load_benchmarks(cfg, Path(paths.problems))
    engine_spec = dict(cfg.engine)
    fingerprint = {"checkpoint": checkpoint_digest(mdir), "engine": engine_spec,
                   "sampling": asdict(cfg.sampling), "prompt": build_prompt("{problem}")}
    store = SampleStore(out / "samples.jsonl", fingerprint)
    if engine is None and not all(store.has(b, pid, cfg.sampling.n) for b, f in frames.items()
                                  for pid in f["problem_id"]):
        if engine_spec["kind"] == "vllm" and (mdir / "adapter_config.json").exists():
            raise EngineError(f"{mdir}: a LoRA adapter; the vllm engine needs merged weights "
                              f"(merge the adapter into its base, or use engine kind transformers)")
        if engine_spec["kind"] in ("transformers", "vllm"):
            engine_spec.setdefault("model", str(mdir))
        if engine_spec["kind"] == "transformers":
            engine_spec.setdefault("batch_size", cfg.batch_size)
        engine = make_engine(engine_spec)
    made = generate_missing(engine, store, frames, cfg, build_prompt) if engine is not None else 0
    judge_tokens = 256
    if judge is None and cfg.judge is not None:
        judge, judge_id, judge_tokens = judge_from_spec(cfg.judge)
    judge_id = judge_id or ("none" if judge is None else type(judge).__name__)
    graded, audit = grade_samples(store, frames, cfg, judge, judge_id, out / "judge_cache.sqlite", judge_tokens)
    scores = summarize(graded, cfg.ks, normalize=normalize_answer)
    with atomic_file(out / "graded.jsonl", encoding="utf-8") as f:
        for rec in graded:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    write_json(out / "scores.json", scores)
    write_json(out / "judge_audit.json", audit)
    return {"model": name, "scores": scores, "audit": audit, "generated": made, "reused": len(graded) - made,
            "out": out, "model_dir": mdir, "judge_id": judge_id}


def mlflow_metrics(scores: dict) -> dict[str, float]:
    # MLflow metric names may not contain '@'.
    return {f"eval/{bench}/{k.replace('@', '_at_')}": float(v) for bench, m in scores.items()
            for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def log_to_mlflow(result: dict, params: dict) -> str:
    from pipelines import tracking

    name, out = result["model"], result["out"]
    run_file = result["model_dir"] / "mlflow_run_id.txt"
    base_file = out / "mlflow_run_id.txt"
    run_id = None
    if name == BASE:
        run_id = base_file.read_text().strip() if base_file.exists() else None
    elif run_file.exists():
        run_id = run_file.read_text().strip()
    else:
        print(f"eval: warning: {run_file} missing; logging to a new run named '{name}'", file=sys.stderr)
    if run_id and not tracking.run_exists(params, run_id):
        print(f"eval: warning: MLflow run {run_id} (from {base_file if name == BASE else run_file}) is not in "
              f"the store {tracking.tracking_uri(params)}; logging to a new run named '{name}'", file=sys.stderr)
        run_id = None
    tags = {"mixdistill.model": name, "mixdistill.eval.judge": result["judge_id"]}
    with tracking.run(params, name=name, tags=tags, run_id=run_id) as active:
        import mlflow

        mlflow.log_metrics(mlflow_metrics(result["scores"]))
        columns = ["kind", "benchmark", "problem_id", "sample_idx", "problem", "extracted_answer",
                   "reference", "judge_output", "judge"]
        table = {c: [str(a.get(c, "")) for a in result["audit"]] for c in columns}
        mlflow.log_table(data=table, artifact_file="eval/judge_audit.json")
        mlflow.log_artifact(str(out / "graded.jsonl"), artifact_path="eval")
        mlflow.log_artifact(str(out / "scores.json"), artifact_path="eval")
        run_id = active.info.run_id
    if name == BASE:
        base_file.write_text(run_id + "\n")
    return run_id


def calibrate(params: dict, judge_spec: dict | None, out_path: Path, limit: int | None) -> dict:
    from evaluation.grading import Grader

    cfg = parse_eval(params)
    judge, judge_id, judge_tokens = judge_from_spec(judge_spec)
    cache = VerdictCache(out_path.with_suffix(".sqlite"))
    try:
        with Grader(timeout_s=cfg.grading.timeout_s, workers=cfg.grading.workers) as grader:
            jg = JudgeGrader(grader, judge, judge_id, cache, max_answer_chars=cfg.grading.max_answer_chars,
                             judge_max_tokens=judge_tokens, judge_batch=cfg.batch_size)
            result = calibrate_on_champ(jg, limit=limit)
    finally:
        cache.close()
    write_json(out_path, result)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--model", help="a mix name, or 'base' for the untrained student")
    ap.add_argument("--calibrate", action="store_true", help="grader vs CHAMP human labels")
    ap.add_argument("--judge", help="calibration judge: an engine spec as JSON (default: eval.judge)")
    ap.add_argument("--limit", type=int, help="calibration: first N labelled responses")
    ap.add_argument("--no-mlflow", action="store_true", help="write outputs but do not log to MLflow")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
        if args.calibrate:
            spec = json.loads(args.judge) if args.judge else parse_eval(params).judge
            out_path = Path(parse_paths(params).eval) / f"calibration_{'rule' if spec is None else 'judge'}.json"
            res = calibrate(params, spec, out_path, args.limit)
            brief = {k: res[k] for k in ("judge", "n", "extracted_rate", "methods")}
            brief.update({k: {m: res[k][m] for m in ("accuracy", "cohen_kappa", "confusion")}
                          for k in ("rule", "rule_plus_judge")})
            print(json.dumps(brief, indent=2))
            print(f"calibration written to {out_path}")
            return 0
        if not args.model:
            ap.error("--model NAME (or --calibrate) is required")
        result = evaluate(args.model, params)
        if not args.no_mlflow:
            log_to_mlflow(result, params)
    except (ParamsError, EvalParamsError, EngineError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for bench, m in result["scores"].items():
        print(f"{args.model} / {bench}: accuracy {m['accuracy']:.3f} (rule {m['accuracy_rule']:.3f}), "
              f"boxed {m['boxed_rate']:.2f}, {m['mean_response_tokens']:.0f} tokens, "
              f"truncated {m['truncation_rate']:.2f}")
    print(f"eval: {result['generated']} samples generated, {result['reused']} reused; outputs in {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
