"""Cheap answer equivalence (strings, exact rationals, expressions probed at integer points) and the
math-verify call behind it. Split from grading.py, which runs these in worker processes."""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from fractions import Fraction

from grading.answers import _expand_tuple_assignment, _replace_call, _split_top, normalize_answer

# ----------------------------------------------------------------------------- cheap path

# Maths names in a normalised answer; any other run of 3+ letters makes it text.
_MATH_NAMES = re.compile(r"sqrt|binom|frac|pi|inf|infty|sum|prod|ln|log|sin|cos|tan|exp|floor|ceil|lfloor|"
                         r"rfloor|lceil|rceil|choose|mod|bmod|pmod|cdot|times|ldots|cdots|dots|max|min|gcd|lcm")
_TOKEN_RE = re.compile(r"\s*(sqrt|floor|ceil|pi|C(?=\()|\d+(?:\.\d+)?|[A-Za-z]|[-+*/^(),!])")
# Probe points. Variables are integers in these problems, so probe at integers, with n large and
# the others small so that binomials like C(n+1, 2m+1) stay in their natural range.
_PROBES = (({"n": 29, "N": 31}, (3, 5, 7, 11, 13, 17, 19)), ({"n": 37, "N": 41}, (4, 6, 9, 10, 14, 15, 21)))


def _free_letters(norm: str) -> frozenset[str] | None:
    """Single-letter variables of a normalised expression, or None where that is unclear
    (relations, unknown LaTeX commands, non-ASCII symbols, or e / i which may be constants)."""
    bare = _MATH_NAMES.sub("", norm)
    bare = re.sub(r"(?<![A-Za-z])C(?=\()", "", bare)  # C(n, k) is the binomial, not a variable
    if re.search(r"[=<>]|\\[A-Za-z]|[^\x00-\x7f]|(?<![A-Za-z])[ei](?![A-Za-z])", bare):
        return None
    return frozenset(re.findall(r"[A-Za-z]", bare))


def _tokens(norm: str) -> list[str] | None:
    s = norm
    while (t := re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)) != s:  # innermost first
        s = t
    s = re.sub(r"\\binom\{([^{}]*)\}\{([^{}]*)\}", r"C(\1,\2)", s)
    s = re.sub(r"\\lfloor(.*?)\\rfloor", r"floor(\1)", re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s))
    s = s.translate(str.maketrans("{}[]", "()()")).replace("\\cdot", "*").replace("\\pi", "pi")
    found = _TOKEN_RE.findall(s)
    return found if "".join(found) == re.sub(r"\s+", "", s) else None


def _evaluate(tokens: list[str], env: dict[str, int]):
    """Value of a tokenised expression: a Fraction where arithmetic is exact, else a float.
    Raises on anything undefined, non-real or huge. Juxtaposition binds tighter than "/"
    ("b/2a" is b/(2a)), as in math-verify's LaTeX parser."""
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else ""

    def take(expected=None):
        nonlocal pos
        if not peek() or (expected and peek() != expected):
            raise ValueError(f"expected {expected or 'more'} at token {pos}")
        pos += 1
        return tokens[pos - 1]

    def expr():
        value = term()
        while peek() in ("+", "-"):
            value = value + term() if take() == "+" else value - term()
        return value

    def term():
        value = juxtaposed()
        while peek() in ("*", "/"):
            value = value * juxtaposed() if take() == "*" else value / juxtaposed()
        return value

    def juxtaposed():
        value = unary()
        while peek() and (peek()[0].isalnum() or peek() == "("):
            value = value * power()
        return value

    def unary():
        return -unary() if peek() == "-" and take() else power()

    def power():
        base = postfix()
        if peek() != "^" or not take():
            return base
        exp = unary()
        if isinstance(base, Fraction) and isinstance(exp, Fraction) and exp.denominator == 1 and abs(exp) <= 400:
            return base ** int(exp)
        return float(base) ** float(exp)

    def postfix():
        value = atom()
        while peek() == "!" and take():
            if not (isinstance(value, Fraction) and value.denominator == 1 and 0 <= value <= 300):
                raise ValueError("factorial of a non-integer")
            value = Fraction(math.factorial(int(value)))
        return value

    def atom():
        tok = take()
        if tok in ("sqrt", "floor", "ceil", "C"):
            take("(")
        if tok == "(" or tok in ("sqrt", "floor", "ceil", "C"):
            args = [expr()]
            while peek() == "," and take():
                args.append(expr())
            take(")")
            return args[0] if tok == "(" and len(args) == 1 else _call(tok, args)  # "(1, 2)" raises
        if tok == "pi":
            return math.pi
        return Fraction(tok) if tok[0].isdigit() else Fraction(env[tok])

    value = expr()
    if pos != len(tokens) or isinstance(value, complex) or abs(value) > 1e300:
        raise ValueError("not a finite real value")
    return value


def _call(name: str, args: list):
    if name == "C" and len(args) == 2 and all(isinstance(a, Fraction) and a.denominator == 1 for a in args):
        n, k = (int(a) for a in args)
        if 0 <= n <= 1000:
            return Fraction(math.comb(n, k) if k >= 0 else 0)
    if name in ("sqrt", "floor", "ceil") and len(args) == 1:
        x = args[0]
        if name != "sqrt":
            return Fraction(math.floor(x) if name == "floor" else math.ceil(x))
        if isinstance(x, Fraction) and x >= 0 and all(math.isqrt(p) ** 2 == p for p in (x.numerator, x.denominator)):
            return Fraction(math.isqrt(x.numerator), math.isqrt(x.denominator))
        return math.sqrt(x)
    raise ValueError(f"cannot evaluate {name} of {len(args)} arguments")


def _probe(na: str, nv: str, letters: frozenset[str]) -> str | None:
    """Evaluate both at integer points: "unequal" if they differ somewhere both are defined (the
    randomised identity test); "normalized" for two constants that are exactly equal; else None
    (equal where probed, or not evaluable here: math-verify decides)."""
    ta, tv = _tokens(na), _tokens(nv)
    if ta is None or tv is None:
        return None
    decimal = "." in na or "." in nv  # a rounded decimal may stand for an exact value
    for fixed, small in _PROBES:
        others = iter(small)
        env = {v: fixed.get(v) or next(others) for v in sorted(letters)}
        try:
            a, v = _evaluate(ta, env), _evaluate(tv, env)
        except (ArithmeticError, ValueError, TypeError, KeyError, RecursionError, StopIteration):
            continue
        exact = isinstance(a, Fraction) and isinstance(v, Fraction)
        if exact and a == v and not letters:
            return "normalized"  # "C(10,5)" and "252", "0.5" and "1/2": the same constant, exactly
        gap = abs(a - v) / max(1, abs(a), abs(v))
        if (exact and a != v and not decimal) or gap > (1e-3 if decimal else 1e-9):
            return "unequal"
    return None


_PLAIN_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?(?:/\d+)?")


def _compare_values(na: str, nv: str) -> str | None:
    """Compare two normalised maths answers by value; lists of numbers compare as multisets."""
    if _PLAIN_NUMBER_RE.fullmatch(na) and _PLAIN_NUMBER_RE.fullmatch(nv):  # the common case, kept fast
        a, v = Fraction(na), Fraction(nv)
        if a == v:
            return "normalized"
        # a decimal may be a rounding of the reference (math-verify rounds to 6 places): only a
        # clear miss is settled here, a near miss goes on to math-verify
        return "unequal" if "." not in na + nv or abs(a - v) > max(1, abs(v)) / 1000 else None
    items_a, items_v = _split_top(na.strip("{}"), ","), _split_top(nv.strip("{}"), ",")
    if len(items_a) > 1 and len(items_a) == len(items_v):
        try:
            values = [sorted(_evaluate(_tokens(x) or [""], {}) for x in items) for items in (items_a, items_v)]
        except (ArithmeticError, ValueError, TypeError, KeyError, RecursionError):
            return None
        return "normalized" if values[0] == values[1] else "unequal"
    letters_a, letters_v = _free_letters(na), _free_letters(nv)
    if letters_a is None or letters_v is None:
        return None
    if letters_a != letters_v:
        return "unequal"  # "n + s" is never "n^2/(n-1)"; strict math-verify agrees (variables matter)
    return _probe(na, nv, letters_a)


def _strip_lhs(norm: str) -> str:
    """"f(11)=89" answers "89": drop a lone left-hand side when the reference has none."""
    parts = norm.split("=")
    if len(parts) == 2 and re.fullmatch(r"[A-Za-z]\w*(?:\([^()]*\))?|[A-Za-z]_?\(?\w+\)?", parts[0]):
        return parts[1]
    return norm


def cheap_compare(answer: str, variant: str) -> str | None:
    """Settle a pair without math-verify where possible: "exact" or "normalized" (equal),
    "unequal" (provably different values), "mismatch" (different, e.g. as text or yes/no), or None."""
    if answer.strip() == variant.strip():
        return "exact"
    na, nv = normalize_answer(answer), normalize_answer(variant)
    if "=" not in nv:
        na = _strip_lhs(na)
    if na == nv and na:
        return "normalized"
    if {na, nv} & {"yes", "no"}:
        return "mismatch"  # yes/no only ever matches itself
    if na.endswith("%") != nv.endswith("%"):  # "35.7%" answers 0.357, or "35.7" (a percentage)
        pct, other = (na, nv) if na.endswith("%") else (nv, na)
        outcomes = {_compare_values(pct[:-1], other), _compare_values(f"({pct[:-1]})/100", other)}
        return "normalized" if "normalized" in outcomes else "unequal" if outcomes == {"unequal"} else None
    if re.search(r"[a-z]{3,}", _MATH_NAMES.sub("", na.lower() + " " + nv.lower())):
        return "mismatch"  # text: math-verify would read English words as products of symbols
    return _compare_values(na, nv)


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
    s = re.sub(r"\s+(?:and|or)\s+", ", ", s)
    s = re.sub(r"(\d+(?:\.\d+)?)\s*\\?%", r"\1/100", s)  # "%" starts a LaTeX comment
    return f"${s}$"



# Parsed expressions by LaTeX source, per process: a reference is parsed once, not once per answer
# (sympy objects are immutable, so sharing them is safe). Least recently used entries go first.
_PARSED: OrderedDict[str, list] = OrderedDict()


def math_verify_check(answer: str, variants: tuple[str, ...], timeout: int | None) -> tuple[bool, str]:
    """math-verify on one answer against reference variants: (correct, "math_verify"|"mismatch"|"timeout").

    `timeout` is math-verify's own per-call limit in whole seconds (``signal.alarm``); None turns it
    off, for workers whose deadline the caller enforces.
    """
    from math_verify import parse, verify
    from math_verify.errors import TimeoutException

    timed_out = False

    def parsed(text: str) -> list:
        nonlocal timed_out
        latex = to_latex(text)
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

    unnamed = _NAMES_RE.sub("", answer)
    for variant in variants:
        # "L = 4" answers "4", "(a, b) = (1, 2) and (a, b) = (2, 1)" answers "(1, 2), (2, 1)"
        gold, target = parsed(variant), parsed(answer if "=" in variant else unnamed)
        for g in gold:
            for t in target:
                try:
                    if verify(g, t, timeout_seconds=timeout, raise_on_error=True):
                        return True, "math_verify"
                except TimeoutException:
                    timed_out = True
                except Exception:  # noqa: BLE001 - a failed comparison is "not shown equal"
                    pass
    return False, "timeout" if timed_out else "mismatch"


# Left-hand sides naming the answer: "x =", "f(n) =", "a_{10} =", "(x, y) =" (not "<=", ">=", "==").
_NAMES_RE = re.compile(r"(?:(?<![\w)\]}])[A-Za-z]\w*(?:_\{?\w+\}?)?(?:\([^()=]*\))?|"
                       r"\(\s*[A-Za-z]\w*(?:\s*,\s*[A-Za-z]\w*)+\s*\))\s*=(?!=)\s*")
