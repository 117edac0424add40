"""The fast path in front of math-verify, and the math-verify call behind it.

The fast path settles only what it can settle exactly: equal strings or equal normalised
strings are the same answer; two plain numerals that differ, or a yes against a no, are not.
Everything else goes to math-verify (run in worker processes by :mod:`grading.grader`), whose
"equal" is then re-checked exactly where both sides are exact numbers (its float comparison
calls 1/2004! equal to 1/2006!).

Inside math-verify, steps whose outcome is already known are skipped (:mod:`grading.shortcuts`):
the verdict is math-verify's own on every pair.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict

from grading.answers import _expand_tuple_assignment, _replace_call, normalize_answer
from grading.rules import within_tolerance
from grading.shortcuts import math_verify_shortcuts

_NUMERAL_RE = re.compile(r"-?\d+(?:\.\d+)?")


def _strip_lhs(norm: str) -> str:
    """"f(11)=89" answers "89": drop a lone left-hand side when the reference has none."""
    parts = norm.split("=")
    if len(parts) == 2 and re.fullmatch(r"[A-Za-z]\w*(?:\([^()]*\))?|[A-Za-z]_?\(?\w+\)?", parts[0]):
        return parts[1]
    return norm


def fast_verdict(answer: str, variants: tuple[str, ...] | list[str],
                 rel_tolerance: float | None = None) -> tuple[bool, str] | None:
    """(correct, method) when strings settle the pair exactly, else None (ask math-verify).

    Accepts: the answer equals a variant as written ("exact") or after normalisation
    ("normalized"), or (with a ``rel_tolerance``) is a plain numeral within it of one ("tolerance").
    Rejects only when every variant is settled as different: two plain numerals of different
    value (beyond the tolerance, if any), or yes against no ("unequal")."""
    different = 0
    for variant in variants:
        if answer.strip() == variant.strip():
            return True, "exact"
        na, nv = normalize_answer(answer), normalize_answer(variant)
        if "=" not in nv:
            na = _strip_lhs(na)
        if na and na == nv:
            return True, "normalized"
        numerals = _NUMERAL_RE.fullmatch(na) and _NUMERAL_RE.fullmatch(nv)
        if numerals and rel_tolerance is not None and within_tolerance(float(na), float(nv), rel_tolerance):
            return True, "tolerance"
        if (numerals and float(na) != float(nv)) or {na, nv} == {"yes", "no"}:
            different += 1
    return (False, "unequal") if variants and different == len(variants) else None


# ----------------------------------------------------------------------------- math-verify

def to_latex(expr: str) -> str:
    """Rewrite CHAMP-style ASCII maths (``2^(n-1)``, ``sqrt(3)/3``, ``C(10, 5)``) as LaTeX in $...$:
    math-verify only parses those correctly as LaTeX (bare, "2^(n-1)" reads as 2)."""
    s = expr.strip()
    s = re.sub(r"(?<!\\)\$", "", s)
    for pat, rep in ((r"−|–", "-"), (r"×|·", r"\\cdot "), (r"∞|\binfinity\b", r"\\infty "),
                     (r"π", r"\\pi "), (r"±", r"\\pm "), (r"≤", r"\\le "), (r"≥", r"\\ge "),
                     (r"≠", r"\\ne "), (r"…", r"\\ldots ")):
        s = re.sub(pat, rep, s)
    s = _replace_call(s, "sqrt", lambda a: rf"\sqrt{{{a[0]}}}")
    s = _replace_call(s, "√", lambda a: rf"\sqrt{{{a[0]}}}")
    s = re.sub(r"√\[([^\[\]]*)\]", r"\\sqrt{\1}", s)
    s = re.sub(r"√(\w+)", r"\\sqrt{\1}", s)
    s = _replace_call(s, "C", lambda a: rf"\binom{{{a[0]}}}{{{a[1]}}}" if len(a) == 2 else f"C({','.join(a)})")
    s = _replace_call(s, "floor", lambda a: rf"{{\lfloor {a[0]} \rfloor}}")  # braces: 2^floor(..)
    s = _replace_call(s, "ceil", lambda a: rf"{{\lceil {a[0]} \rceil}}")
    s = re.sub(r"\(\s*([^()]+?)\s+choose\s+([^()]+?)\s*\)", r"\\binom{\1}{\2}", s)
    s = re.sub(r"(?<![\\\w])(sum|prod)_\(([^()]*)\)\^(\w+|\([^()]*\))",
               lambda m: rf"\{m.group(1).lower()}_{{{m.group(2)}}}^{{{m.group(3).strip('()')}}}", s, flags=re.I)
    s = re.sub(r"(?<![\\\w])(sum|prod)_\{", lambda m: rf"\{m.group(1).lower()}_{{", s, flags=re.I)
    s = re.sub(r"(?<![\\\w])(ln|log|sin|cos|tan|exp)(?=\s*\()", r"\\\1", s)
    s = _expand_tuple_assignment(s, ", ")
    # "6 \text{ and } 8", "p=5 \quad \text{and} \quad p=7", "19, 46, and 82": one list
    s = re.sub(r"(?:\s*\\q?quad)*\s*\\text\s*\{\s*(?:and|or)\s*\}(?:\s*\\q?quad)*\s*", ", ", s)
    s = re.sub(r",?\s+(?:and|or)\s+", ", ", s)
    s = re.sub(r"\s*;\s*", ", ", s)                              # "p=5,q=2; p=7,q=2": one list
    s = re.sub(r"(?:,\s*){2,}", ", ", s)                       # "7, -2, \text{ and } -5"
    s = s.replace("**", "^")                                      # Python's power
    s = re.sub(r"(?<![\d.])(\d+)\s+(\d+)/(\d+)(?![\d.])", r"\1\\frac{\2}{\3}", s)   # "1 1/2"
    s = re.sub(r"(\d+(?:\.\d+)?)\s*\\?%", r"\1/100", s)  # "%" starts a LaTeX comment
    return f"${s}$"



# Parsed expressions by LaTeX source, per process: a reference is parsed once, not once per answer
# (sympy objects are immutable, so sharing them is safe). Least recently used entries go first.
_PARSED: OrderedDict[str, list] = OrderedDict()


def _exactly_unequal(gold, target) -> bool:
    """True when both parsed values are exact rationals that differ: math-verify compares numbers
    with a float tolerance, so 1/2004! and 1/2006! look equal to it."""
    try:
        if not (getattr(gold, "is_number", False) and getattr(target, "is_number", False)):
            return False
        g, t = gold.doit(), target.doit()          # 1/factorial(2004) -> an exact Rational
        return bool(g.is_Rational and t.is_Rational and g != t)
    except Exception:  # noqa: BLE001 - no exact verdict: math-verify's stands
        return False


def math_verify_check(answer: str | None, variants: tuple[str, ...], timeout: int | None,
                      tail: str | None = None, *, ordered_lists: bool = False,
                      rel_tolerance: float | None = None) -> tuple[bool, str]:
    """math-verify on one answer against reference variants: (correct, "math_verify"|"mismatch"|"timeout"),
    plus, when the answer was found in ``tail``, the text math-verify read there.

    ``tail`` is the end of the response when the answer was found by the prose heuristics (or not
    at all): math-verify's own extraction reads it too (matrices, answers in $...$ the heuristics
    missed). `timeout` is math-verify's own per-call limit in whole seconds (``signal.alarm``);
    None turns it off, for workers whose deadline the caller enforces. ``ordered_lists`` and
    ``rel_tolerance`` are the house rules of :mod:`grading.rules`.
    """
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    timed_out = False

    def parsed(text: str, raw: bool = False) -> list:
        nonlocal timed_out
        latex = text if raw else to_latex(text)
        if latex not in _PARSED:
            try:
                _PARSED[latex] = parse(latex, parsing_timeout=timeout, raise_on_error=True)
            except TimeoutException:
                timed_out = True
                return []
            except Exception:  # noqa: BLE001 - unparsable: nothing to compare
                _PARSED[latex] = []
            if len(_PARSED) > 4096:
                _PARSED.popitem(last=False)
        _PARSED.move_to_end(latex)
        return _PARSED[latex]

    def shown_equal(gold: list, targets: list) -> bool:
        nonlocal timed_out
        for g in gold:
            for t in targets:
                if rel_tolerance is not None:
                    close = _numerically_close(g, t, rel_tolerance)
                    if close is not None:       # two numbers, one of them a decimal: the rule decides
                        if close:
                            return True
                        continue
                try:
                    if verify(g, t, timeout_seconds=timeout, raise_on_error=True) and not _exactly_unequal(g, t):
                        return True
                except TimeoutException:
                    timed_out = True
                except Exception:  # noqa: BLE001 - a failed comparison is "not shown equal"
                    pass
        return False

    with math_verify_shortcuts():
        unnamed = _NAMES_RE.sub("", answer) if answer is not None else None
        golds = [parsed(variant) for variant in variants]
        if answer is not None:
            for variant, gold in zip(variants, golds):
                # "L = 4" answers "4", "(a, b) = (1, 2) and (a, b) = (2, 1)" answers "(1, 2), (2, 1)"
                text = answer if "=" in variant else unnamed
                pairs = _ordered_items(text, variant) if ordered_lists else None
                if pairs is not None:           # two bare lists, compared item by item in order
                    if pairs and all(shown_equal(parsed(f"${v}$", raw=True), parsed(f"${a}$", raw=True))
                                     for a, v in pairs):
                        return True, "math_verify"
                    continue
                if shown_equal(gold, parsed(text)):
                    return True, "math_verify"
        if tail:                           # math-verify's own reading of the response's end
            targets = parsed(tail, raw=True)
            if any(shown_equal(gold, targets) for gold in golds):
                # what it read there is the answer (its string form comes last in a parse result)
                return True, "math_verify", str(targets[-1]) if targets else None
        return False, "timeout" if timed_out else "mismatch"


def _numerically_close(gold, target, rel: float) -> bool | None:
    """Whether two parsed numbers are within ``rel``; None unless both are numbers (no free
    symbols) and at least one side holds a decimal (two exact values stay exact)."""
    from sympy import Basic, Float

    if not (isinstance(gold, Basic) and isinstance(target, Basic)):
        return None
    if not (getattr(gold, "is_number", False) and getattr(target, "is_number", False)):
        return None
    if not (gold.has(Float) or target.has(Float)):
        return None
    try:
        g, t = complex(gold.evalf(30)), complex(target.evalf(30))
    except (TypeError, ValueError):
        return None
    if g.imag or t.imag or not all(map(math.isfinite, (g.real, t.real))):
        return None
    return within_tolerance(g.real, t.real, rel)


def _top_level_items(latex: str) -> list[str] | None:
    """The items of a bare comma list ("1, 3, 2": no enclosing brackets), else None."""
    s = latex.strip()
    s = s[1:-1].strip() if s.startswith("$") and s.endswith("$") and len(s) > 1 else s
    items, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0 and i == len(s) - 1 and not items:
                return None                 # the whole string is one bracketed group
        elif ch == "," and depth == 0:
            items.append(s[start:i].strip())
            start = i + 1
    items.append(s[start:].strip())
    return items if len(items) >= 2 and all(items) else None


def _ordered_items(answer: str | None, variant: str) -> list[tuple[str, str]] | None:
    """Item pairs of two bare lists in order ([] when their lengths differ); None unless both
    are bare lists."""
    if answer is None:
        return None
    a, v = _top_level_items(to_latex(answer)), _top_level_items(to_latex(variant))
    if a is None or v is None:
        return None
    return list(zip(a, v)) if len(a) == len(v) else []


# Left-hand sides naming the answer: "x =", "f(n) =", "a_{10} =", "(x, y) =" (not "<=", ">=", "==").
_NAMES_RE = re.compile(r"(?:(?<![\w)\]}])[A-Za-z]\w*(?:_\{?\w+\}?)?(?:\([^()=]*\))?|"
                       r"\(\s*[A-Za-z]\w*(?:\s*,\s*[A-Za-z]\w*)+\s*\))\s*=(?!=)\s*")
