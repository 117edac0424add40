"""Grading throughput: `Grader.grade_many` (cheap path + math-verify workers) vs plain math-verify.

    python benchmarks/bench_grading.py [--pairs 5000] [--plain-limit 400] [--workers 2]

Pairs are real CHAMP solutions (all four models, all 18 prompt settings) with their reference
answers, shuffled with a fixed seed. Past the ~19k real traces, copies are perturbed (numbers in
the response changed) so a long run is not all cache hits. Three ways to grade, same pairs:

* grader        - `Grader(workers=2).grade_many`, end to end: extraction, cheap path, worker
                  start-up and math-verify for the pairs the cheap path cannot settle;
* plain         - what most pipelines do: ``verify(parse(reference), parse(response))`` on every
                  pair, one process, math-verify's own extraction and timeouts;
* extract+mv    - our extraction, then math-verify on every pair without the cheap path
                  (isolates what the cheap path saves).

The two sequential baselines run on the first `--plain-limit` pairs only and are extrapolated
linearly to all pairs (marked "extrapolated"). Agreement is measured on that subset. Also
reports the per-pair cost of the cheap path vs math-verify on pairs whose answer and reference are
plain numbers (the common case), and, on CHAMP GPT-4 0-shot, the share of solutions with an
extracted answer and graded correct. Writes benchmarks/results/grading.json.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grading.answers import extract_answer, reference_variants  # noqa: E402
from grading.grader import Grader, cheap_compare, to_latex  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "grading.json"


def champ_pairs() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(solution, reference) for every CHAMP conversation, and the GPT-4 0-shot subset."""
    import champ_dataset

    raw = json.loads((Path(champ_dataset.__file__).parent / "dataset_files" / "v0.json").read_text())
    pairs, gpt4 = [], []
    for problem in raw["problems"].values():
        for setting, conv in problem["conversations"].items():
            msgs = conv["messages"]
            # the solution is the model turn before the "Now, summarize the answer..." request
            last_user = max(i for i, m in enumerate(msgs) if m["role"] == "User")
            solution = [m for m in msgs[:last_user] if m["role"].startswith("Model")]
            if solution and solution[-1]["text"]:
                pairs.append((solution[-1]["text"], problem["_answer"]))
                if setting == "GPT-4|0-Shot":
                    gpt4.append(pairs[-1])
    return pairs, gpt4


def build_pairs(pool: list[tuple[str, str]], n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pool = pool[:]
    rng.shuffle(pool)
    out = pool[:n]
    while len(out) < n:  # replicate with changed numbers so the copies are distinct pairs
        text, ref = pool[len(out) % len(pool)]
        out.append((re.sub(r"\b\d{1,4}\b", lambda m: str(int(m.group()) + rng.randint(1, 9))
                           if rng.random() < 0.3 else m.group(), text), ref))
    return out


def time_grader(pairs, workers: int, timeout_s: float) -> dict:
    responses, refs = [p[0] for p in pairs], [p[1] for p in pairs]
    start = time.perf_counter()
    answers = [extract_answer(r) for r in responses]
    extracted_s = time.perf_counter() - start
    with Grader(timeout_s=timeout_s, workers=workers) as grader:
        verdicts = grader.grade_answers(answers, refs)
        stats = dict(grader.stats)
    seconds = time.perf_counter() - start
    methods = Counter(v.method for v in verdicts)
    keys = {(a, r) for a, r in zip(answers, refs) if a is not None}
    return {"seconds": seconds, "pairs_per_s": len(pairs) / seconds, "extraction_seconds": extracted_s,
            "unique_answer_reference_pairs": len(keys), "by_method": dict(methods),
            "work": stats, "correct": sum(v.correct for v in verdicts), "verdicts": [v.correct for v in verdicts]}


def time_plain(pairs) -> dict:
    """math-verify as usually called: parse the whole response, reference as gold."""
    from math_verify import parse, verify

    start, out = time.perf_counter(), []
    for response, ref in pairs:
        out.append(bool(verify(parse(ref), parse(response))))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "pairs_per_s": len(pairs) / seconds, "verdicts": out}


def time_extract_then_mv(pairs) -> dict:
    """Our extraction and reference variants, then math-verify on every pair (no cheap path)."""
    from math_verify import parse, verify

    start, out = time.perf_counter(), []
    for response, ref in pairs:
        answer = extract_answer(response)
        ok = answer is not None and any(
            verify(parse(to_latex(v)), parse(to_latex(answer))) for v in reference_variants(ref))
        out.append(bool(ok))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "pairs_per_s": len(pairs) / seconds, "verdicts": out}


def time_numeric_common_case(pairs, limit: int) -> dict:
    """The common case the cheap path exists for: answer and reference are both plain numbers.
    Per-pair cost of `cheap_compare` vs math-verify (parse both + verify) on the same strings."""
    from math_verify import parse, verify

    numeric = []
    for response, ref in pairs:
        answer, variants = extract_answer(response), reference_variants(ref)
        if answer and variants and all(re.fullmatch(r"-?[\d,]+(?:\.\d+)?", x) for x in (answer, variants[0])):
            numeric.append((answer, variants[0]))
    numeric = numeric[:limit]
    # both sides start cold: our normalisation cache and math-verify's parse caches are emptied
    from math_verify import parser as mv_parser

    from grading.answers import normalize_answer
    normalize_answer.cache_clear()
    mv_parser.parse_latex_cached.cache_clear()
    mv_parser.parse_expr_cached.cache_clear()
    start = time.perf_counter()
    cheap = [cheap_compare(a, v) in ("exact", "normalized") for a, v in numeric]
    cheap_s = time.perf_counter() - start
    start = time.perf_counter()
    mv = [bool(verify(parse(to_latex(v)), parse(to_latex(a)))) for a, v in numeric]
    mv_s = time.perf_counter() - start
    return {"pairs": len(numeric), "cheap_us_per_pair": 1e6 * cheap_s / len(numeric),
            "math_verify_us_per_pair": 1e6 * mv_s / len(numeric), "speedup": mv_s / cheap_s,
            "agree": sum(x == y for x, y in zip(cheap, mv))}


def agreement(a: list[bool], b: list[bool]) -> dict:
    both = sum(x == y for x, y in zip(a, b))
    return {"n": len(a), "agree": both, "rate": both / len(a),
            "only_first_correct": sum(x and not y for x, y in zip(a, b)),
            "only_second_correct": sum(y and not x for x, y in zip(a, b))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--plain-limit", type=int, default=400, help="pairs for the sequential baselines")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # its per-timeout warnings

    pool, gpt4 = champ_pairs()
    pairs = build_pairs(pool, args.pairs, args.seed)
    subset = pairs[:min(args.plain_limit, len(pairs))]

    grader = time_grader(pairs, args.workers, args.timeout)
    plain = time_plain(subset)
    ours_mv = time_extract_then_mv(subset)
    champ = time_grader(gpt4, args.workers, args.timeout)
    numeric = time_numeric_common_case(pairs, args.plain_limit)

    n, k = len(pairs), len(subset)
    rows = [
        ("grader (cheap path + %d workers)" % args.workers, n, grader["seconds"], grader["pairs_per_s"], False),
        ("plain math-verify, sequential", k, plain["seconds"], plain["pairs_per_s"], k < n),
        ("extract + math-verify, no cheap path", k, ours_mv["seconds"], ours_mv["pairs_per_s"], k < n),
    ]
    print(f"\n{n} CHAMP (response, reference) pairs, {os.cpu_count()} CPU cores\n")
    print(f"{'method':40} {'pairs':>6} {'seconds':>9} {'pairs/s':>9} {'est. s for all':>15}")
    for name, count, secs, rate, extrapolated in rows:
        est = f"{n / rate:.1f}" + (" (extrap.)" if extrapolated else "")
        print(f"{name:40} {count:6d} {secs:9.2f} {rate:9.1f} {est:>15}")
    grader_subset = grader["verdicts"][:k]
    agree_plain = agreement(grader_subset, plain["verdicts"])
    agree_mv = agreement(grader_subset, ours_mv["verdicts"])
    print(f"\nagreement with grader on the first {k} pairs: plain math-verify {agree_plain['rate']:.1%} "
          f"(grader-only correct {agree_plain['only_first_correct']}, "
          f"plain-only {agree_plain['only_second_correct']}); "
          f"extract + math-verify {agree_mv['rate']:.1%}")
    print(f"speed-up vs plain: {grader['pairs_per_s'] / plain['pairs_per_s']:.0f}x; "
          f"vs extract + math-verify: {grader['pairs_per_s'] / ours_mv['pairs_per_s']:.0f}x")
    print(f"numeric answers (common case), {numeric['pairs']} pairs: "
          f"cheap path {numeric['cheap_us_per_pair']:.0f} us/pair, "
          f"math-verify {numeric['math_verify_us_per_pair']:.0f} us/pair ({numeric['speedup']:.0f}x), "
          f"agreeing on {numeric['agree']}/{numeric['pairs']}")
    print(f"grader methods: {grader['by_method']}; work: {grader['work']} "
          f"(cached = duplicate pairs, cheap = settled without math-verify)")
    g4 = len(gpt4)
    extracted = g4 - champ["by_method"].get("no_answer", 0)
    print(f"CHAMP GPT-4 0-shot: {extracted}/{g4} answers extracted ({extracted / g4:.1%}), "
          f"{champ['correct']}/{g4} graded correct ({champ['correct'] / g4:.1%})")

    for d in (grader, plain, ours_mv, champ):
        d.pop("verdicts")
    result = {
        "pairs": n, "baseline_pairs": k, "seed": args.seed, "workers": args.workers, "timeout_s": args.timeout,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "grader": grader,
        "plain_math_verify": {**plain, "extrapolated_seconds_all_pairs": n / plain["pairs_per_s"]},
        "extract_then_math_verify": {**ours_mv, "extrapolated_seconds_all_pairs": n / ours_mv["pairs_per_s"]},
        "speedup_vs_plain": grader["pairs_per_s"] / plain["pairs_per_s"],
        "speedup_vs_extract_then_math_verify": grader["pairs_per_s"] / ours_mv["pairs_per_s"],
        "numeric_common_case": numeric, "agreement_with_plain": agree_plain,
        "agreement_with_extract_then_math_verify": agree_mv,
        "champ_gpt4_0shot": {"n": g4, "extracted": extracted, "extraction_rate": extracted / g4,
                             "correct": champ["correct"], "accuracy": champ["correct"] / g4,
                             "by_method": champ["by_method"]},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return result


if __name__ == "__main__":
    main()
