"""`mixdistill` command line: the DVC stages by name, plus tools (grade, ...).

    mixdistill grade responses.jsonl graded.jsonl     # same grading code the curation check uses
    mixdistill curate --source champ_gpt4              # one stage by hand (dvc repro runs them all)
    mixdistill eval --calibrate                        # grader vs CHAMP's human labels
    mixdistill recipe --preset paper --json            # each arm's training recipe and their parity
    mixdistill lineage models/checkpoints/mix_long     # what a checkpoint was trained on, verified
    mixdistill ui --open                               # the MLflow UI, opened on the experiment's runs
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

STAGES = {
    "problems": "pipelines.problems",
    "traces": "pipelines.traces",
    "curate": "pipelines.curate",
    "mix": "pipelines.mix",
    "student": "pipelines.student",
    "train": "pipelines.train",
    "eval": "pipelines.eval",
    "heldout": "pipelines.heldout",
    "heldout_score": "pipelines.heldout_score",
    "report": "pipelines.report",
}


def _grade(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="mixdistill grade",
                                 description="Grade a JSONL of responses against references; write each line "
                                             "back with extracted_answer, correct and grade_method.")
    ap.add_argument("input")
    ap.add_argument("output")
    ap.add_argument("--response-field", default="response")
    ap.add_argument("--reference-field", default="reference")
    ap.add_argument("--timeout", type=float, default=5.0, help="hard per-pair deadline (s) for math-verify")
    ap.add_argument("--workers", type=int, default=2)
    # checked by grade_file, so a wrong name is one "error:" line like every other input error
    ap.add_argument("--protocol", metavar="{mixdistill,paper}", default="mixdistill",
                    help="mixdistill: our grader (default); paper: the published rule of Li et al. 2025 "
                         "(last \\boxed{}, hendrycks MATH string normalisation, no judge; grading/paper.py)")
    rules = ap.add_argument_group("house rules (grading/rules.py)")
    rules.add_argument("--percent", choices=("value_or_figure", "value"), default="value_or_figure",
                       help="may 35.7%% answer 35.7 as well as 0.357 (default) or only 0.357")
    rules.add_argument("--lists", choices=("unordered", "ordered"), default="unordered",
                       help="bare comma lists compared as sets (default) or in order")
    rules.add_argument("--decimal-comma", action="store_true", help='read "2,74" as 2.74')
    rules.add_argument("--rel-tolerance", type=float, default=None,
                       help="numbers within this relative tolerance are equal (default: exact)")
    args = ap.parse_args(argv)
    from grading.files import grade_file
    from grading.grader import GradingInputError
    from grading.rules import HouseRules

    try:
        house = HouseRules(percent=args.percent, lists=args.lists, decimal_comma=args.decimal_comma,
                           rel_tolerance=args.rel_tolerance)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = grade_file(args.input, args.output, timeout_s=args.timeout, workers=args.workers,
                             response_field=args.response_field, reference_field=args.reference_field,
                             rules=house, protocol=args.protocol)
    except GradingInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    return 0


def _lineage(argv: list[str]) -> int:
    from pipelines.lineage import main as lineage_main

    return lineage_main(argv)


def _ui(argv: list[str]) -> int:
    from pipelines.ui import main as ui_main

    return ui_main(argv)


def _recipe(argv: list[str]) -> int:
    from pipelines.recipe import main as recipe_main

    return recipe_main(argv)


TOOLS = {"grade": _grade, "lineage": _lineage, "recipe": _recipe, "ui": _ui}


def _tool_help() -> str:
    return ("stages: " + ", ".join(STAGES) + "\ntools: " + ", ".join(TOOLS) +
            "\nRun `mixdistill COMMAND --help` for a command's options.")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\n" + _tool_help())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd in TOOLS:
        return TOOLS[cmd](rest)
    if cmd in STAGES:
        return importlib.import_module(STAGES[cmd]).main(rest) or 0
    print(f"error: unknown command '{cmd}'\n{_tool_help()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
