"""House rules (grading/rules.py): each convention is an option, and both settings are tested.

The pairs include cases from the public suites' house-rule entries (tests/grading/data, by id),
so the choice each suite makes is reproducible with the matching setting.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.params import ParamsError, build
from grading.equivalence import fast_verdict
from grading.grader import Grader
from grading.rules import HouseRules, apply_decimal_comma, within_tolerance
from grading.shortcuts import differs_at_a_point

CASES = {c["id"]: c for c in map(json.loads, (Path(__file__).parent / "data" / "public_cases.jsonl")
                                  .read_text().splitlines()) if c}


def grade(rules: HouseRules, pairs: list[tuple[str, str]]) -> list[bool]:
    with Grader(workers=0, rules=rules) as grader:
        return [v.correct for v in grader.grade_many([a for a, _ in pairs], [r for _, r in pairs])]


def suite_pairs(rule: str, expected: bool) -> list[tuple[str, str]]:
    return [(c["answer"], c["reference"]) for c in CASES.values() if c["house_rule"] == rule and c["expected"] is expected]


LISTS = [("1, 3, 2", "1, 2, 3"), ("10, 4, -2", "4, 10, -2"), ("-5,-2,7", r"7, -2, \text{ and } -5")]


def test_bare_lists_are_sets_by_default_and_sequences_when_ordered():
    assert grade(HouseRules(), LISTS) == [True, True, True]
    assert grade(HouseRules(lists="ordered"), LISTS) == [False, False, False]
    in_order = [("1, 2, 3", "1, 2, 3"), (r"\frac{1}{2}, 3", "0.5, 3"), ("x = 2, 5", "2, 5")]
    assert grade(HouseRules(lists="ordered"), in_order) == [True, True, True]
    assert grade(HouseRules(lists="ordered"), [("1, 2", "1, 2, 3")]) == [False]
    # tuples are ordered under both settings: that is mathematics, not a convention
    for rules in (HouseRules(), HouseRules(lists="ordered")):
        assert grade(rules, [("(3, 1)", "(1, 3)"), ("(1, 3)", "(1, 3)")]) == [False, True]


def test_decimal_comma_is_off_by_default():
    pairs = [("1000,99", "1000.99"), ("1.22", "1,22"), ("Soucis : 2,74 $ a..", "2.74"), ("1,000", "1000")]
    assert grade(HouseRules(), pairs) == [False, False, False, True]            # "1,000" groups thousands
    assert grade(HouseRules(decimal_comma=True), pairs) == [True, True, True, False]   # 1,000 = 1.000
    assert grade(HouseRules(decimal_comma=True), suite_pairs("decimal_comma", True)) == [True] * 4
    assert apply_decimal_comma("x = 2,5; 3,25") == "x = 2.5; 3.25"


def test_numbers_are_exact_by_default_and_within_a_tolerance_when_set():
    pairs = [("5.001", "5"), (r"\boxed{2.232}", r"\boxed{2.23}"), ("99999999999", "100000000000"),
             ("0.0666668", "0.066666793"), ("125.663", r"40\pi"), (r"\boxed{0.067}", r"\boxed{0.066793}")]
    assert grade(HouseRules(), pairs) == [False] * 6
    assert grade(HouseRules(rel_tolerance=1e-3), pairs) == [True, True, True, True, True, False]
    assert grade(HouseRules(rel_tolerance=0.01), pairs)[-1] is True
    # a decimal further than the tolerance is wrong even where math-verify's rounding accepts it
    assert grade(HouseRules(), [("0.0833333333333333", r"\frac{1}{12}")]) == [True]
    assert grade(HouseRules(rel_tolerance=1e-20), [("0.0833333333333333", r"\frac{1}{12}")]) == [False]
    # two exact values stay exact under any tolerance
    assert grade(HouseRules(rel_tolerance=0.5), [(r"\frac{1}{3}", r"\frac{1}{2}")]) == [False]
    assert fast_verdict("5.001", ["5"], 1e-3) == (True, "tolerance")
    assert fast_verdict("5.1", ["5"], 1e-3) == (False, "unequal")
    assert within_tolerance(0.0, 0.0, 0.0) and not within_tolerance(1.0, 1.1, 0.05)


@pytest.mark.parametrize("bad, key", [({"percent": "lenient"}, "percent"), ({"lists": "sorted"}, "lists"),
                                      ({"decimal_comma": "yes"}, "decimal_comma"),
                                      ({"rel_tolerance": -0.1}, "rel_tolerance"),
                                      ({"rel_tolerance": "1e-3"}, "rel_tolerance")])
def test_bad_rules_name_their_key(bad, key):
    with pytest.raises(ParamsError, match=rf"curate\.correctness\.rules: {key} must be"):
        build(HouseRules, bad, "curate.correctness.rules")


def test_the_simplify_shortcut_proves_only_inequality():
    from sympy import Symbol, floor, sqrt, symbols

    x, n = symbols("x n", real=True)
    assert differs_at_a_point(x ** 2 + 1, x ** 2)                  # differs by 1 everywhere
    assert differs_at_a_point((3 + x) ** 1959, x + 1)              # exact, and fast even so
    assert not differs_at_a_point((x + 1) ** 2, x ** 2 + 2 * x + 1)   # equal: no proof, math-verify decides
    assert not differs_at_a_point(sqrt(x ** 2), x)                 # zero at every point tried: undecided
    k = Symbol("k", integer=True)
    assert not differs_at_a_point(floor(k), k)                     # integer symbol: rationals not tried
    assert grade(HouseRules(), [("4^1959 - 2(3 + w)^1959", "1")]) == [False]
    # where exact evaluation would explode (factorial(factorial(14)) has ~10^12 digits) no proof is
    # tried, and math-verify decides as before, within its deadline
    from sympy import factorial

    assert not differs_at_a_point(factorial(factorial(2 * x)), 2 ** floor(n / 2) * factorial(floor(n / 2)))
    assert grade(HouseRules(), [(r"The answer is $\boxed{(2k)!!}$", "2^floor(n/2)*floor(n/2)!")]) == [False]
