"""Write configs/paper.params.yaml: params.yaml with the paper's data, mixes and benchmarks.

    python configs/make_paper_params.py            # rewrite configs/paper.params.yaml
    cp configs/paper.params.yaml params.yaml && dvc repro   # on a GPU machine with hub access

DVC fans stages out over the ``sources:`` written in params.yaml itself, so the paper's sources
cannot come from a preset; they live in this second params file, kept in step with params.yaml by
this script (tests/pipelines/test_paper_params.py fails when the two drift apart). Everything
not set here is params.yaml's.

The data as published (Small-Model-Learnability-Gap, its README and the UWNSL dataset
collection): problems are the MATH training set (7,500, all seven subject configs, the reference
being the last box of each solution), no held-out split (evaluation is on external benchmarks,
and decontamination then covers every one of them); long CoT from QwQ-32B-Preview and short
CoT from Qwen2.5-32B-Instruct (5,383 problems each), large- and small-teacher short CoT from
Qwen2.5-72B-Instruct and Qwen2.5-3B-Instruct (4,539 each); the published Mix-Long (0.2 long :
0.8 short) and Mix-Large (0.2 large : 0.8 small) sets as sources too, trained as they are, beside
mixdistill's own one-trace-per-problem mixes of the same shares.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "configs" / "paper.params.yaml"

MATH_SUBJECTS = ["algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus"]


def _hub(dataset: str, style: str, size: str, teacher: str) -> dict:
    # revision: pin a commit sha here once downloaded (the trace origin records the fingerprint)
    return {"kind": "hf", "id": f"UWNSL/{dataset}", "revision": "main", "split": "train", "style": style,
            "teacher_size": size, "teacher": teacher, "columns": {"problem": "problem", "response": "solution"}}


PAPER = {
    "preset": "paper",
    "problems": {"set": {"kind": "hf", "id": "EleutherAI/hendrycks_math", "configs": MATH_SUBJECTS,
                         "split": "train", "format": "math"},
                 "test_fraction": 0, "seed": 13},
    "sources": {
        "uwnsl_long": _hub("MATH_training_split_long_cot", "long", "large", "QwQ-32B-Preview"),
        "uwnsl_short": _hub("MATH_training_split_short_cot", "short", "large", "Qwen2.5-32B-Instruct"),
        "uwnsl_large": _hub("MATH_training_split_distill_large_teacher", "short", "large", "Qwen2.5-72B-Instruct"),
        "uwnsl_small": _hub("MATH_training_split_distill_small_teacher", "short", "small", "Qwen2.5-3B-Instruct"),
        "uwnsl_mix_long": {**_hub("Mix-Long_long_0.2_short_0.8", "long", "large", "QwQ-32B-Preview+Qwen2.5-32B-Instruct")},
        "uwnsl_mix_large": {**_hub("Mix-Large_large_0.2_small_0.8", "short", "large",
                                   "Qwen2.5-72B-Instruct+Qwen2.5-3B-Instruct")},
    },
    "groups": {},
    "mix": {"seed": 0, "mixes": {
        "long": {"size": 5383, "components": {"uwnsl_long": 1.0}},
        "short": {"size": 5383, "components": {"uwnsl_short": 1.0}},
        "large": {"size": 4539, "components": {"uwnsl_large": 1.0}},
        "small": {"size": 4539, "components": {"uwnsl_small": 1.0}},
        "mix_long": {"size": 5383, "one_per_problem": True, "components": {"uwnsl_long": 0.2, "uwnsl_short": 0.8}},
        "mix_large": {"size": 4539, "one_per_problem": True, "components": {"uwnsl_large": 0.2, "uwnsl_small": 0.8}},
        "published_mix_long": {"size": 5383, "components": {"uwnsl_mix_long": 1.0}},
        "published_mix_large": {"size": 4539, "components": {"uwnsl_mix_large": 1.0}},
    }},
    "report": {"long": "long", "short": "short", "large": "large", "small": "small",
               "mix_long": "mix_long", "mix_large": "mix_large"},
    "eval_benchmarks": {
        "math500": {"kind": "hf", "format": "math500"}, "aime24": {"kind": "hf", "format": "aime24"},
        "amc23": {"kind": "hf", "format": "amc23"}, "olympiadbench": {"kind": "hf", "format": "olympiadbench"},
        "gsm8k": {"kind": "hf", "format": "gsm8k"}},
}
# Keys of params.yaml this file replaces; everything else is copied unchanged.
REPLACED = ("preset", "problems", "sources", "groups", "mix", "report", "train.mixes", "train.arms",
            "eval.benchmarks", "eval.max_problems", "curate.decontam", "presets.paper")


def paper_params(base: dict) -> dict:
    p = copy.deepcopy(base)
    for key in ("preset", "problems", "sources", "groups", "mix"):
        p[key] = copy.deepcopy(PAPER[key])
    p["report"] = {**p["report"], **PAPER["report"]}
    p["train"]["mixes"] = list(PAPER["mix"]["mixes"])
    p["train"]["arms"] = {}
    p["eval"]["benchmarks"] = copy.deepcopy(PAPER["eval_benchmarks"])
    p["eval"]["max_problems"] = None
    p["curate"]["decontam"]["benchmarks"] = []      # test_fraction 0: every eval benchmark, automatically
    # the paper's per-arm recipes name its mix arms; the published mixes train with the Mix recipe
    arms = copy.deepcopy(p["presets"]["paper"]["train"].get("arms", {}))
    for mix in ("published_mix_long", "published_mix_large"):
        arms[mix] = copy.deepcopy(arms.get("mix_long", {}))
    p["presets"]["paper"]["train"]["arms"] = arms
    return p


def render(base: dict) -> str:
    header = ("# Generated by configs/make_paper_params.py from params.yaml: the paper's data, mixes and\n"
              "# benchmarks (see that script's docstring). Use: cp configs/paper.params.yaml params.yaml\n")
    return header + yaml.safe_dump(paper_params(base), sort_keys=False, width=110)


def main() -> int:
    OUT.write_text(render(yaml.safe_load((ROOT / "params.yaml").read_text())))
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
