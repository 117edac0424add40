"""Curation throughput on >=100k traces: the whole check suite vs only tokenising the same texts.

    python benchmarks/bench_curation.py [--traces 100000] [--student models/student]

Traces are real CHAMP responses (all four models, all prompt settings) replicated with small
perturbations (numbers changed, sentences reordered) until the count is reached, so dedup,
decontamination and grading see realistic, mostly distinct text. The baseline is the time to
tokenise the same responses with the student tokenizer: the cheapest thing any length-aware
curation must do. Writes benchmarks/results/curation.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.runner import add_token_counts, count_tokens, run_curation  # noqa: E402
from common.digests import dumps  # noqa: E402
from curation.schema import conform, trace_id  # noqa: E402
from curation.sources import champ_problems, load_champ_raw, split_problems, _champ_solution  # noqa: E402
from pipelines.params import load_params  # noqa: E402


def perturb(text: str, rng: random.Random) -> str:
    """Change a few numbers and maybe swap two sentences: distinct text, same shape."""
    def bump(m):
        return str(int(m.group()) + rng.randint(1, 9)) if rng.random() < 0.3 else m.group()
    text = re.sub(r"\b\d{1,4}\b", bump, text)
    parts = text.split(". ")
    if len(parts) > 3 and rng.random() < 0.5:
        i = rng.randrange(len(parts) - 1)
        parts[i], parts[i + 1] = parts[i + 1], parts[i]
    return ". ".join(parts)


def trace_rows(n: int, seed: int = 0):
    """``n`` benchmark trace rows, lazily: CHAMP's responses, then perturbed replicas of them."""
    raw = load_champ_raw()
    base = []
    for pid, p in raw.items():
        for key, conv in p["conversations"].items():
            prompt, response, finish = _champ_solution(conv["messages"])
            base.append((pid, p["_text"], p["_answer"], prompt or p["_text"], response or "",
                         key.split("|")[0], finish))
    rng = random.Random(seed)
    for i in range(n):
        pid, prob, ans, prompt, resp, model, finish = base[i % len(base)]
        if i >= len(base):
            resp = perturb(resp, rng)
        yield {"trace_id": trace_id(prob, resp, model) + f"{i // len(base)}", "source": "bench",
               "problem_id": pid, "problem": prob, "reference_answer": ans, "prompt": prompt,
               "response": resp, "teacher": model, "style": "long", "teacher_size": "large",
               "finish_reason": finish, "truncated": finish == "length", "generation": "{}",
               "origin": dumps({"replica": i // len(base)})}


def build_traces(n: int, seed: int = 0) -> pl.DataFrame:
    return conform(pl.DataFrame(list(trace_rows(n, seed))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--traces", type=int, default=100_000)
    ap.add_argument("--student", default="models/student")
    ap.add_argument("--out", default="benchmarks/results/curation.json")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from common.prompt import build_prompt
    from curation.suite import build_components

    cur = load_params("params.yaml").curate
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    frame = build_traces(args.traces)
    texts = frame["response"].to_list()
    n_chars = sum(map(len, texts))

    t = time.perf_counter()
    count_tokens(texts, tokenizer)
    t_tok = time.perf_counter() - t

    # Benchmarks to decontaminate against: the real held-out CHAMP problems.
    _, heldout = split_problems(champ_problems(), 0.2, 13)
    bench_dir = Path("benchmarks/_work")
    bench_dir.mkdir(parents=True, exist_ok=True)
    heldout.select("problem_id", "problem", "reference_answer").write_parquet(bench_dir / "champ_test.parquet")

    t0 = time.perf_counter()
    counted = add_token_counts(frame, tokenizer, build_prompt, cutoff_len=cur.cutoff_len)
    t_counts = time.perf_counter() - t0
    row_checks, grader, decontaminator, dedup, flaggers = build_components(cur, bench_dir)
    try:
        result = run_curation(counted, row_checks=row_checks, grader=grader, decontaminator=decontaminator,
                              dedup=dedup, flaggers=flaggers)
    finally:
        if grader is not None:
            grader.close()
    t_total = time.perf_counter() - t0
    n = frame.height
    out = {
        "traces": n, "response_chars": n_chars, "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "baseline_tokenize_only_s": round(t_tok, 2),
        "baseline_tokenize_only_traces_per_s": round(n / t_tok, 1),
        "suite_total_s": round(t_total, 2), "suite_traces_per_s": round(n / t_total, 1),
        "suite_over_tokenize_ratio": round(t_total / t_tok, 2),
        "token_counts_s": round(t_counts, 2),
        "per_check_s": {k: round(v, 2) for k, v in result.timings.items()},
        "kept": result.report["kept"], "rejected_by_reason": result.report["rejected_by_reason"],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{'what':34} {'seconds':>9} {'traces/s':>10}")
    print(f"{'tokenise only (baseline)':34} {t_tok:9.1f} {n / t_tok:10.0f}")
    print(f"{'whole check suite (incl. tokenise)':34} {t_total:9.1f} {n / t_total:10.0f}")
    for k, v in result.timings.items():
        print(f"  {k:32} {v:9.1f}")
    print(json.dumps(out["rejected_by_reason"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
