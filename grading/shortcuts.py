"""Exact shortcuts inside math-verify: steps whose outcome is already known are skipped, and
nothing else changes. Each is scoped to our calls by `math_verify_shortcuts` (math-verify and
latex2sympy look the patched names up at call time), so other users of either library in the same
process see them unchanged.

* ``simplify(gold - pred)`` (math-verify's symbolic comparison) is skipped when ``gold - pred``
  takes an exact non-zero rational value at one point (each free symbol given a value its
  assumptions allow): it is not identically zero, so simplify cannot show it zero.
* math-verify's set comparison is skipped when the two finite sets differ in size and the larger
  holds more provably distinct values (exact rationals, tuples of them) than the smaller has
  elements: the sets cannot be equal, and every step of that comparison would answer "not equal".
  Its symmetric difference is the costly part (seconds on a 100-number list against a singleton).
* latex2sympy parses with ANTLR's SLL prediction first, full LL on failure (:mod:`grading.two_stage`).
"""
from __future__ import annotations

import math
from contextlib import contextmanager

from grading.two_stage import two_stage_parsing

# Points at which `gold - pred` is evaluated exactly: small primes, then the same over 3 (for
# symbols a prime would not tell apart, and for symbols an integer value does not fit).
_POINT_SETS = ((7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47),
               tuple(f"{p}/3" for p in (7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47)))


def _fits(symbol, value) -> bool:
    """The value satisfies every assumption the symbol carries (real, integer, positive, ...)."""
    return all(getattr(value, f"is_{key}", None) is flag for key, flag in symbol.assumptions0.items())


def differs_at_a_point(a, b) -> bool:
    """True when ``a - b`` is shown not identically zero by one exact evaluation: at some point
    (each free symbol a value its assumptions allow) it is a non-zero rational. False means no
    such proof, not equality. Expressions with integrals, limits or derivatives are not tried."""
    from sympy import Derivative, Expr, Integral, Limit, Rational, Symbol

    if not (isinstance(a, Expr) and isinstance(b, Expr)) or isinstance(a, Symbol) or isinstance(b, Symbol):
        return False
    diff = a - b
    if diff.has(Integral, Limit, Derivative):
        return False
    symbols = sorted(diff.free_symbols, key=str)
    if len(symbols) > len(_POINT_SETS[0]):
        return False
    for points in _POINT_SETS:
        values = [Rational(p) for p in points[:len(symbols)]]
        if not all(_fits(sym, val) for sym, val in zip(symbols, values)):
            continue
        point = dict(zip(symbols, values))
        if not _cheap_at(diff, point):
            return False                    # exact evaluation could take longer than simplify: leave it
        try:
            value = (diff.subs(point) if symbols else diff).doit()
        except Exception:  # noqa: BLE001 - no proof at this point
            continue
        if value.is_Rational and value != 0:
            return True
        if not symbols:
            break
    return False


# Beyond these, exact evaluation at a point can run for minutes (factorial(factorial(14)) has 10^12
# digits): the argument of a factorial-like function, and a power's exponent, checked numerically.
_MAX_FACTORIAL_ARG = 10_000
_MAX_EXPONENT = 100_000


def _cheap_at(expr, point: dict) -> bool:
    """Whether evaluating ``expr`` exactly at ``point`` stays small: every factorial-like argument
    and every exponent, evaluated in floating point there, is finite and below the limits."""
    from sympy import Pow, binomial, factorial, factorial2, gamma, preorder_traversal, subfactorial
    from sympy.functions.combinatorial.factorials import FallingFactorial, RisingFactorial

    def size(e) -> float:
        v = complex(e.evalf(15, subs=point)) if point else complex(e.evalf(15))
        return abs(v) if math.isfinite(abs(v)) else math.inf

    try:
        for node in preorder_traversal(expr):
            if isinstance(node, (factorial, factorial2, gamma, subfactorial, binomial, RisingFactorial,
                                 FallingFactorial)):
                if any(size(arg) > _MAX_FACTORIAL_ARG for arg in node.args):
                    return False
            elif isinstance(node, Pow) and size(node.exp) > _MAX_EXPONENT:
                return False
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _distinct_values(elements) -> int:
    """How many of ``elements`` (a FiniteSet's args, so pairwise different as expressions) are
    exact rationals or tuples of them: different ones of those are different values."""
    from sympy import Tuple

    return sum(1 for e in elements
               if getattr(e, "is_Rational", False)
               or (isinstance(e, Tuple) and all(getattr(x, "is_Rational", False) for x in e.args)))


def sets_cannot_be_equal(gold, pred) -> bool:
    """True when math-verify's set comparison of ``gold`` and ``pred`` must answer "not equal":
    both are finite sets (a non-set counts as the singleton math-verify makes of it) of different
    sizes, and the larger has more distinct values than the smaller has elements."""
    from sympy import FiniteSet, Set, Tuple

    def as_set(x):
        return x if isinstance(x, (Set, Tuple)) else FiniteSet(x)

    try:
        a, b = as_set(gold), as_set(pred)
    except Exception:  # noqa: BLE001 - math-verify's own comparison will see the same failure
        return False
    if not (isinstance(a, FiniteSet) and isinstance(b, FiniteSet)) or len(a) == len(b):
        return False
    small, large = sorted((a, b), key=len)
    return _distinct_values(large.args) > len(small)


@contextmanager
def math_verify_shortcuts():
    """math-verify with the shortcuts above, inside this block."""
    import math_verify.grader as mv

    symbolic_eq, compare_sets = mv.sympy_symbolic_eq, mv.sympy_compare_sets

    def fast_symbolic_eq(a, b):
        return False if differs_at_a_point(a, b) else symbolic_eq(a, b)

    def fast_compare_sets(gold, pred, *args, **kwargs):
        return False if sets_cannot_be_equal(gold, pred) else compare_sets(gold, pred, *args, **kwargs)

    mv.sympy_symbolic_eq, mv.sympy_compare_sets = fast_symbolic_eq, fast_compare_sets
    try:
        with two_stage_parsing():
            yield
    finally:
        mv.sympy_symbolic_eq, mv.sympy_compare_sets = symbolic_eq, compare_sets
