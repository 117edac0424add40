"""House rules: the grading choices that are conventions, not mathematics.

Public grader suites disagree on these (Math-Verify accepts "1,22" for 1.22 in some locales,
hendrycks' MATH check drops a trailing "%", one suite wants "10, 4, -2" in the reference's order
and another does not). mixdistill makes each one an option with a stated default, tested both ways:

* ``percent``: "value_or_figure" (default) lets "35.7%" answer both 0.357 and 35.7 (a reference
  that gives the percent figure without its sign), and "28" answer "28%"; "value" accepts only
  the value (35.7% = 0.357).
* ``lists``: how a bare comma list ("1, 3, 2", no brackets) is compared. "unordered" (default):
  as a set of answers ("find all x"); "ordered": item by item, in the reference's order.
  Parenthesised tuples are ordered in both (mathematics: (3, 1) is not (1, 3)).
* ``decimal_comma``: False (default): a comma between digits groups thousands ("1,000") or
  separates a list; True: it is the decimal separator ("2,74" = 2.74), so lists must be written
  with ", " or ";".
* ``rel_tolerance``: None (default): two written decimals are equal only when equal in value,
  and a decimal against an exact value is math-verify's call (it rounds to 6 places: 0.0833333 =
  1/12). A number r: two numeric values are equal exactly when they are within r of each other,
  relative to the larger; two exact values (no decimal on either side) stay exact.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass

__all__ = ["HouseRules", "PERCENT_RULES", "LIST_RULES", "apply_decimal_comma", "within_tolerance"]

PERCENT_RULES = ("value_or_figure", "value")
LIST_RULES = ("unordered", "ordered")

_DECIMAL_COMMA_RE = re.compile(r"(?<=\d),(?=\d)")


@dataclass(frozen=True)
class HouseRules:
    percent: str = "value_or_figure"
    lists: str = "unordered"
    decimal_comma: bool = False
    rel_tolerance: float | None = None

    def __post_init__(self):
        if self.percent not in PERCENT_RULES:
            raise ValueError(f"percent must be one of {', '.join(PERCENT_RULES)}, got {self.percent!r}")
        if self.lists not in LIST_RULES:
            raise ValueError(f"lists must be one of {', '.join(LIST_RULES)}, got {self.lists!r}")
        if not isinstance(self.decimal_comma, bool):
            raise ValueError(f"decimal_comma must be true or false, got {self.decimal_comma!r}")
        tol = self.rel_tolerance
        if tol is not None and (isinstance(tol, bool) or not isinstance(tol, (int, float))
                                or not math.isfinite(tol) or not 0 <= tol < 1):
            raise ValueError(f"rel_tolerance must be null or a number in [0, 1), got {tol!r}")

    def as_dict(self) -> dict:
        return asdict(self)


def apply_decimal_comma(text: str) -> str:
    """"2,74" -> "2.74": a comma between two digits read as the decimal separator."""
    return _DECIMAL_COMMA_RE.sub(".", text)


def within_tolerance(a: float, b: float, rel: float) -> bool:
    """|a - b| <= rel * max(|a|, |b|); equal values always (also 0 against 0)."""
    return a == b or abs(a - b) <= rel * max(abs(a), abs(b))
