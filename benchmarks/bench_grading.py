"""Grading accuracy and speed: mixdistill's Grader vs plain math-verify vs hendrycks-style is_equiv.

    python benchmarks/bench_grading.py [--champ-pairs 1500] [--workers 2] [--timeout 5]

Two sets of pairs, all three graders in one run:

* corpus - tests/grading/data/public_cases.jsonl: cases from other graders' public test suites,
  each with the verdict its suite expects. Accuracy is reported on the cases whose verdict is
  mathematics (``house_rule`` null), with false positives on their negatives, and per house rule.
* champ  - distinct (solution, reference) pairs of the CHAMP dataset (every model and prompt
  setting; exact repeats removed, so no grader gains from a cache), shuffled with a fixed seed.
  CHAMP carries no per-pair verdicts, so this set measures speed and how often graders agree.

The graders:

* mixdistill - ``Grader(workers=N).grade_many`` end to end: extraction, the fast path, worker
  start-up and math-verify in killable worker processes;
* plain      - ``verify(parse(reference), parse(response))``, one process, math-verify's own
  extraction and timeouts: what most pipelines do. It runs in the benchmark's process after the
  corpus, so its parser is warm; the CHAMP set is also graded by it in a fresh process
  (``plain_math_verify_fresh_process``), the cold start every worker of ours pays;
* is_equiv   - the last ``\\boxed{}`` of the response against the reference after the hendrycks
  MATH string normalisation (re-implemented here from its published description: units, spaces,
  ``\\left``/``\\right``, ``dfrac``, ``0.5`` as ``\\frac{1}{2}``, a short ``x =`` prefix, ...).

``where_time_goes`` then times, in fresh processes, the pairs the fast path and cache leave to
math-verify: as this grader calls it (cold, then warm), and plain math-verify on the same pairs.

Writes benchmarks/results/grading.json.
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
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from grading.boxes import last_boxed  # noqa: E402
from grading.grader import Grader  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "grading" / "data" / "public_cases.jsonl"
RESULTS = Path(__file__).resolve().parent / "results" / "grading.json"


# ----------------------------------------------------------------------------- pairs

def corpus_cases() -> list[dict]:
    return [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]


def champ_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Distinct (solution, reference) pairs of every CHAMP conversation."""
    import champ_dataset

    raw = json.loads((Path(champ_dataset.__file__).parent / "dataset_files" / "v0.json").read_text())
    seen: dict[tuple[str, str], None] = {}
    for problem in raw["problems"].values():
        for conv in problem["conversations"].values():
            msgs = conv["messages"]
            last_user = max(i for i, m in enumerate(msgs) if m["role"] == "User")
            solution = [m for m in msgs[:last_user] if m["role"].startswith("Model")]
            if solution and solution[-1]["text"]:
                seen[(solution[-1]["text"], problem["_answer"])] = None
    pairs = list(seen)
    random.Random(seed).shuffle(pairs)
    return pairs[:n]


# ----------------------------------------------------------------------------- baselines

def _strip_units(s: str) -> str:
    return s.split("\\text{ ")[0] if "\\text{ " in s else s


def _fix_fracs(s: str) -> str:
    # \frac12 -> \frac{1}{2}, \frac1{72} -> \frac{1}{72}
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    return re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)


def hendrycks_normalise(s: str) -> str:
    """The hendrycks MATH ``strip_string`` behaviour, written from its description."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    s = _strip_units(s).replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0]) <= 2:
        s = parts[1]
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    return f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else s


def is_equiv(response: str, reference: str) -> bool:
    answer = last_boxed(response)
    if answer is None:
        return False
    ref = last_boxed(reference) or reference
    return hendrycks_normalise(answer) == hendrycks_normalise(ref)


def plain_math_verify(response: str, reference: str, timeout: int) -> bool:
    from math_verify import parse, verify

    try:
        return bool(verify(parse(reference, parsing_timeout=timeout), parse(response, parsing_timeout=timeout),
                           timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - an error is "not shown equal", as in pipelines that use it
        return False


# A fresh Python that reads its input from the JSON file named by argv[1], with this folder and
# the project on its path, math-verify imported (not timed) and its logging quiet; it prints one
# JSON line.
_FRESH_PRELUDE = ("import json, logging, sys, time, math_verify; sys.path[:0] = [sys.argv[2], sys.argv[3]]; "
                  "logging.getLogger('math_verify').setLevel(logging.CRITICAL); "
                  "logging.getLogger('latex2sympy2_extended').setLevel(logging.CRITICAL); "
                  "d = json.load(open(sys.argv[1]))\n")


def in_fresh_process(code: str, data: dict) -> dict:
    """Run ``code`` (after ``_FRESH_PRELUDE``, ``data`` as ``d``) in a new Python; its JSON line."""
    import subprocess
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(data, f)
        f.flush()
        done = subprocess.run([sys.executable, "-c", _FRESH_PRELUDE + code, f.name,
                               str(Path(__file__).resolve().parent), str(ROOT)],
                              capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def plain_in_fresh_process(pairs: list[tuple[str, str]], timeout: int) -> dict:
    """`plain_math_verify` over ``pairs`` in a new Python process: no parse the benchmark made
    before has warmed its parser (math-verify's ANTLR parser learns its prediction tables as it
    goes, so a process that graded the corpus first reads the CHAMP pairs faster)."""
    code = ("from bench_grading import plain_math_verify; t = time.perf_counter(); "
            "v = [plain_math_verify(r, g, d['timeout']) for r, g in d['pairs']]; "
            "print(json.dumps({'seconds': time.perf_counter() - t, 'verdicts': v}))")
    out = in_fresh_process(code, {"pairs": pairs, "timeout": timeout})
    out["pairs_per_s"] = round(len(pairs) / out["seconds"], 1)
    out["seconds"] = round(out["seconds"], 2)
    return out


def where_time_goes(pairs: list[tuple[str, str]], timeout: int) -> dict:
    """The pairs this grader's fast path and cache leave to math-verify, timed three ways in fresh
    processes: as the grader calls math-verify (extracted answer, reference variants, response
    tail), cold, then again in the same process with the parse caches emptied (only ANTLR's
    learned prediction tables left warm); and plain math-verify on the same pairs' full
    responses, cold. The first against the third is what a worker does per pair against what plain
    does; the first against the second is what each worker pays to warm its parser."""
    sent: list[tuple] = []
    current: list[int] = [0]

    def record(answer, variants, limit, tail):
        sent.append((current[0], answer, list(variants), tail))
        return False, "mismatch"

    with Grader(workers=0, checker=record) as grader:
        for i, (response, reference) in enumerate(pairs):
            current[0] = i
            grader.grade_many([response], [reference])
    ours = ("import grading.equivalence as eq, math_verify.parser as mp; times = []\n"
            "for _ in range(2):\n"
            "    eq._PARSED.clear(); mp.parse_latex_cached.cache_clear(); t = time.perf_counter()\n"
            "    [eq.math_verify_check(a, tuple(v), None, tail) for _, a, v, tail in d['items']]\n"
            "    times.append(time.perf_counter() - t)\n"
            "print(json.dumps({'cold_s': times[0], 'warm_s': times[1]}))")
    plain = ("from bench_grading import plain_math_verify; t = time.perf_counter(); "
             "[plain_math_verify(r, g, d['timeout']) for r, g in d['pairs']]; "
             "print(json.dumps({'cold_s': time.perf_counter() - t}))")
    data = {"items": sent, "pairs": [pairs[i] for i, *_ in sent], "timeout": timeout}
    out = {name: {k: round(v, 2) for k, v in in_fresh_process(code, data).items()}
           for name, code in (("grader_math_verify", ours), ("plain_math_verify_same_pairs", plain))}
    out["pairs_to_math_verify"] = len(sent)
    return out


# ----------------------------------------------------------------------------- runs

def run_all(pairs: list[tuple[str, str]], workers: int, timeout: float) -> dict[str, dict]:
    responses, refs = [r for r, _ in pairs], [g for _, g in pairs]
    out = {}
    start = time.perf_counter()
    with Grader(timeout_s=timeout, workers=workers) as grader:
        verdicts = grader.grade_many(responses, refs)
        stats = dict(grader.stats)
    seconds = time.perf_counter() - start
    out["mixdistill"] = {"verdicts": [v.correct for v in verdicts], "seconds": seconds, "stats": stats,
                         "methods": dict(Counter(v.method for v in verdicts))}
    start = time.perf_counter()
    plain = [plain_math_verify(r, g, int(timeout)) for r, g in pairs]
    out["plain_math_verify"] = {"verdicts": plain, "seconds": time.perf_counter() - start}
    start = time.perf_counter()
    hend = [is_equiv(r, g) for r, g in pairs]
    out["is_equiv"] = {"verdicts": hend, "seconds": time.perf_counter() - start}
    for res in out.values():
        res["pairs_per_s"] = round(len(pairs) / res["seconds"], 1) if res["seconds"] else None
        res["seconds"] = round(res["seconds"], 2)
    return out


def score_corpus(cases: list[dict], runs: dict[str, dict]) -> dict:
    report = {}
    for name, res in runs.items():
        maths = [(c, v) for c, v in zip(cases, res["verdicts"]) if c["house_rule"] is None]
        right = sum(v == c["expected"] for c, v in maths)
        negatives = [v for c, v in maths if not c["expected"]]
        by_rule = defaultdict(lambda: [0, 0])
        for c, v in zip(cases, res["verdicts"]):
            if c["house_rule"]:
                by_rule[c["house_rule"]][0] += v == c["expected"]
                by_rule[c["house_rule"]][1] += 1
        report[name] = {"maths_cases": len(maths), "maths_right": right, "maths_accuracy": round(right / len(maths), 4),
                        "false_positives": sum(negatives), "negatives": len(negatives),
                        "house_rules_right": {k: f"{a}/{n}" for k, (a, n) in sorted(by_rule.items())},
                        "pairs_per_s": res["pairs_per_s"], "seconds": res["seconds"]}
    report["mixdistill"]["methods"] = runs["mixdistill"]["methods"]
    return report


# The corpus's house-rule categories that a grader option decides, and the settings to try.
RULE_OPTIONS = {"percent": ("percent", ["value_or_figure", "value"]),
                "unordered_tuple": ("lists", ["unordered", "ordered"]),
                "decimal_comma": ("decimal_comma", [False, True]),
                "numeric_tolerance": ("rel_tolerance", [None, 1e-4, 1e-2])}


def house_rule_settings(cases: list[dict], workers: int, timeout: float) -> dict:
    """Each option-backed house rule's cases graded under every setting of its option: the suites
    disagree with each other, so no one setting gets all of them, and each suite's choice is there."""
    from grading.rules import HouseRules

    out = {}
    for rule, (option, settings) in RULE_OPTIONS.items():
        sub = [c for c in cases if c["house_rule"] == rule]
        out[rule] = {}
        for setting in settings:
            with Grader(timeout_s=timeout, workers=workers, rules=HouseRules(**{option: setting})) as grader:
                got = grader.grade_many([c["answer"] for c in sub], [c["reference"] for c in sub])
            out[rule][f"{option}={setting}"] = f"{sum(v.correct == c['expected'] for v, c in zip(got, sub))}/{len(sub)}"
    return out


def agreement(runs: dict[str, dict]) -> dict:
    names = list(runs)
    return {f"{a}~{b}": round(sum(x == y for x, y in zip(runs[a]["verdicts"], runs[b]["verdicts"]))
                             / len(runs[a]["verdicts"]), 4)
            for i, a in enumerate(names) for b in names[i + 1:]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--champ-pairs", type=int, default=1500, help="distinct CHAMP pairs to grade")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)

    cases = corpus_cases()
    corpus_runs = run_all([(c["answer"], c["reference"]) for c in cases], args.workers, args.timeout)
    pairs = champ_pairs(args.champ_pairs, args.seed)
    champ_runs = run_all(pairs, args.workers, args.timeout)
    cold = plain_in_fresh_process(pairs, int(args.timeout))
    breakdown = where_time_goes(pairs, int(args.timeout))
    results = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg": os.getloadavg()},
        "settings": vars(args) | {"out": str(args.out)},
        "corpus": score_corpus(cases, corpus_runs),
        "house_rule_settings": house_rule_settings(cases, args.workers, args.timeout),
        "champ": {"pairs": len(pairs),
                  **{name: {"pairs_per_s": r["pairs_per_s"], "seconds": r["seconds"],
                            "correct_share": round(sum(r["verdicts"]) / len(pairs), 4)}
                     for name, r in champ_runs.items()},
                  "mixdistill_methods": champ_runs["mixdistill"]["methods"],
                  "mixdistill_stats": champ_runs["mixdistill"]["stats"],
                  "agreement": agreement(champ_runs),
                  "speedup_vs_plain": round(champ_runs["mixdistill"]["pairs_per_s"]
                                            / champ_runs["plain_math_verify"]["pairs_per_s"], 2),
                  # the same plain math-verify, in a process that graded nothing before (its
                  # verdicts must equal the in-process ones: only its speed may differ)
                  "plain_math_verify_fresh_process": {"pairs_per_s": cold["pairs_per_s"], "seconds": cold["seconds"],
                                                      "same_verdicts": cold["verdicts"] == champ_runs[
                                                          "plain_math_verify"]["verdicts"]},
                  "speedup_vs_plain_fresh_process": round(champ_runs["mixdistill"]["pairs_per_s"]
                                                          / cold["pairs_per_s"], 2),
                  "where_time_goes": breakdown},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
