"""The shortcuts inside math-verify change nothing it decides: two-stage parsing builds latex2sympy's
own parse trees, and the set shortcut answers only comparisons math-verify must call unequal."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from curation.sources import champ_path
from grading.equivalence import math_verify_check, to_latex
from grading.shortcuts import math_verify_shortcuts, sets_cannot_be_equal
from grading.two_stage import _TwoStageParser

CORPUS = Path(__file__).parent / "data" / "public_cases.jsonl"


def _latex_math_verify_parses(texts: list[str]) -> list[str]:
    """The strings math-verify hands to latex2sympy when it parses ``texts`` (its own extraction
    and normalisation first)."""
    from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy
    from math_verify import parse
    from math_verify.parser import parse_latex_cached

    seen: dict[str, None] = {}
    original = _Latex2Sympy.parse

    def record(self, latex_str):
        seen[latex_str] = None
        return original(self, latex_str)

    _Latex2Sympy.parse = record
    try:
        for text in texts:
            parse_latex_cached.cache_clear()
            parse(text)
    finally:
        _Latex2Sympy.parse = original
    return list(seen)


@pytest.fixture(scope="module")
def parsed_strings() -> list[str]:
    cases = [json.loads(line) for line in CORPUS.read_text(encoding="utf-8").splitlines() if line.strip()]
    texts = [to_latex(c[k]) for c in cases for k in ("answer", "reference")]
    raw = json.loads(champ_path().read_text(encoding="utf-8"))
    responses = [m["text"] for p in raw["problems"].values() for conv in p["conversations"].values()
                 for m in conv["messages"] if m["role"].startswith("Model") and m["text"]]
    texts += [r[-400:] for r in random.Random(0).sample(responses, 300)]
    texts += [to_latex(p["_answer"]) for p in raw["problems"].values()]
    return _latex_math_verify_parses(texts)


def test_two_stage_parsing_builds_latex2sympys_own_trees(parsed_strings):
    from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy

    converter = _Latex2Sympy()
    outcomes = {"sll": 0, "fallback": 0, "error": 0}
    for latex in parsed_strings:
        full = converter.create_parser(latex)      # latex2sympy's own parser (full LL)
        try:
            expected = ("tree", full.math().toStringTree(recog=full))
        except Exception as e:  # noqa: BLE001 - latex2sympy's error is part of what must match
            expected = ("error", str(e))
        fallbacks = []

        def full_parser(latex=latex):
            fallbacks.append(latex)
            return converter.create_parser(latex)

        try:
            # recog only names the rules in the printed tree: the same grammar either way
            got = ("tree", _TwoStageParser(converter.create_parser(latex), full_parser).math()
                   .toStringTree(recog=full))
        except Exception as e:  # noqa: BLE001
            got = ("error", str(e))
        assert got == expected, latex
        outcomes["error" if expected[0] == "error" else "fallback" if fallbacks else "sll"] += 1
    # both stages are exercised: most strings settle in SLL, some fail in both (and a few may need LL)
    assert outcomes["sll"] > 500 and outcomes["error"] > 10, outcomes


def test_two_stage_parsing_is_scoped_to_the_block():
    from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy

    original = _Latex2Sympy.create_parser
    with math_verify_shortcuts():
        assert isinstance(_Latex2Sympy().create_parser("1+1"), _TwoStageParser)
    assert _Latex2Sympy.create_parser is original


def test_the_set_shortcut_answers_only_sets_that_cannot_be_equal():
    from sympy import FiniteSet, Interval, Rational, Symbol, Tuple

    x, y = Symbol("x"), Symbol("y")
    numbers = FiniteSet(*range(100))
    assert sets_cannot_be_equal(x * y, numbers)                       # a singleton against 100 values
    assert sets_cannot_be_equal(FiniteSet(x, y), FiniteSet(1, 2, 3))   # 2 elements hold at most 2 values
    assert sets_cannot_be_equal(FiniteSet(Tuple(1, 2), Tuple(2, 1)), Rational(1, 2))
    assert not sets_cannot_be_equal(FiniteSet(x, 1, 2), FiniteSet(1, 2))   # x may be 1 or 2
    assert not sets_cannot_be_equal(FiniteSet(1, 2), FiniteSet(1, 3))      # same size: math-verify decides
    assert not sets_cannot_be_equal(Interval(0, 1), FiniteSet(0, 1, 2))
    assert not sets_cannot_be_equal(Tuple(1, 2, 3), FiniteSet(1, 2))


@pytest.mark.parametrize("answer, reference", [
    ("0, 5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60, 65, 70, 75, 80, 85, 90, 95", "No"),
    ("(1, 0), (3, 2), (7, 5), (17, 12)", "3"),
    ("1, 2, 3", "3, 2, 1"),
    ("x, 1", "1"),
    ("2, 2, 3", "2, 3"),
])
def test_verdicts_are_math_verifys_own_with_and_without_the_shortcuts(answer, reference, monkeypatch):
    import contextlib

    from math_verify.parser import parse_latex_cached

    import grading.equivalence as eq

    with_shortcuts = math_verify_check(answer, (reference,), None)
    eq._PARSED.clear()                  # both parse caches, so the second run parses without them too
    parse_latex_cached.cache_clear()
    monkeypatch.setattr(eq, "math_verify_shortcuts", contextlib.nullcontext)
    assert math_verify_check(answer, (reference,), None) == with_shortcuts
