"""References and normalisation, shared by curation, evaluation and `mixdistill grade`.

* `reference_variants` turns a free-form reference ("C(10, 5), or equivalently 252",
  "0 is the only possible value", GSM8K "... #### 18", AMC ``27.0``) into acceptable answers.
* `normalize_answer` gives the cheap canonical form compared before any symbolic check.

Answers are found in responses by :mod:`grading.extract`.
"""

from __future__ import annotations

import ast
import json
import re
from functools import lru_cache

from grading.extract import (_ALT_SPLIT_RE, _INFINITE_RE, _NEGATION_RE, _NUMBER_WORDS, _VAR_RE, _YES_NO_RE,
                             _math_run, _protect_math, _restore, _sentence_answer, _split_top, _tidy_run,
                             extract_answer)
from grading.boxes import last_boxed

__all__ = ["extract_answer", "reference_variants", "normalize_answer"]

_ALT_PREFIX_RE = re.compile(r"^(?:equivalently|an equivalent form(?: such as)?|in other words)\s*:?\s*", re.I)
_APPROX_RE = re.compile(r"^(?:approximately|about|roughly|≈)", re.I)
_QUANTIFIER_RE = re.compile(r"^(?:at least|at most|exactly|only)\s+", re.I)
_TRAILING_PAREN_RE = re.compile(r"\s*\(([^()]*(?:\([^()]*\)[^()]*)*)\)\s*$")


def _listish(reference: str) -> list[str] | None:
    """OlympiadBench stores answers as lists; accept the JSON or Python repr of a string list."""
    if reference.startswith("[") and reference.endswith("]") and ("'" in reference or '"' in reference):
        for loads in (json.loads, ast.literal_eval):
            try:
                value = loads(reference)
            except (ValueError, SyntaxError):
                continue
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return value
    return None


def _reference_core(part: str) -> list[str]:
    part = part.strip().rstrip(".")
    if not part:
        return []
    if "\\" in part or "$" in part or "{" in part:
        return [part]  # LaTeX references (MATH, OlympiadBench) are already answers
    out: list[str] = []
    m = _TRAILING_PAREN_RE.search(part)
    if m and re.search(r"[A-Za-z]{3,}", m.group(1)):  # "100 (i.e., all values)"
        part, note = part[:m.start()].strip(), m.group(1)
        if _NEGATION_RE.search(note):
            out.append("No")  # "0 (i.e., no real-valued zeros)": "there are none" is also right
    if re.fullmatch(r"-?\d+\.0+", part):
        return [part.split(".")[0]] + out  # AMC stores 27 as 27.0
    yes_no = _YES_NO_RE.match(part)
    if yes_no:
        return [yes_no.group(1).capitalize()] + out
    if _INFINITE_RE.search(part):
        return ["infinitely many"] + out
    part = _QUANTIFIER_RE.sub("", part)
    words = part.split()
    if words and words[0].lower() in _NUMBER_WORDS:
        words[0] = _NUMBER_WORDS[words[0].lower()]
        part = " ".join(words)
    protected, spans = _protect_math(part)
    tokens = protected.split()
    run, _ = _math_run(tokens, 0)
    if run and len(run) == len(tokens):
        return [_restore(protected, spans)] + out  # pure maths
    if run:  # "2 inequalities", "0 is the only possible value", "x(n)<y(n-1) for all n≥3"
        found = _tidy_run(run, spans)
        return ([found] if found else []) + out
    found = _sentence_answer(part, reference_mode=True)
    return ([found] if found else [part]) + out


@lru_cache(maxsize=65536)
def _variants_cached(reference: str) -> tuple[str, ...]:
    ref = reference.strip()
    items = _listish(ref)
    if items is not None:
        ref = ", ".join(i.strip() for i in items)  # several entries are parts of one answer
    if "####" in ref:
        ref = ref.rsplit("####", 1)[1].strip()
    variants: list[str] = []
    for i, part in enumerate(_ALT_SPLIT_RE.split(ref)):
        part = part.strip()
        if i > 0 and _APPROX_RE.match(part):
            continue  # an approximation is not the answer
        for v in _reference_core(_ALT_PREFIX_RE.sub("", part)):
            if v and v not in variants:
                variants.append(v)
    return tuple(variants)


def reference_variants(reference: str | list[str] | int | float) -> list[str]:
    """Acceptable answers for a reference, most canonical first.

    >>> reference_variants("C(10, 5), or equivalently 252")
    ['C(10, 5)', '252']
    """
    if isinstance(reference, (int, float)) and not isinstance(reference, bool):
        reference = repr(reference)
    elif isinstance(reference, list) and all(isinstance(r, str) for r in reference):
        reference = json.dumps(reference)
    if not isinstance(reference, str):
        raise TypeError(f"reference must be a string, number or list of strings, not {type(reference).__name__}")
    return list(_variants_cached(reference))


# ----------------------------------------------------------------------------- normalisation

_UNIT_WORDS = (r"dollars?|cents?|degrees?|units?|square units|sq units|cm|mm|km|meters?|metres?|"
               r"kilometers?|miles?|feet|foot|ft|inches|inch|hours?|hrs?|minutes?|mins?|seconds?|"
               r"secs?|days?|weeks?|months?|years?|mph|km/h|kg|grams?|pounds?|lbs?|liters?|"
               r"litres?|ml|people|students|points?|ways|strings|values|times|pairs|roots")
_UNIT_RE = re.compile(rf"^(-?[\d.,/]+)\s*(?:\\text\{{\s*)?(?:\\(?:mbox|mathrm)\{{\s*)?(?:{_UNIT_WORDS})\}}?$", re.I)
_LATEX_SIMPLE = [
    (r"\\[dt]frac", r"\\frac"), (r"\\left|\\right|\\big|\\Big|\\bigg|\\displaystyle", ""),
    (r"\\[,;:! ]|~", ""), (r"\^\{?\\circ\}?|°", ""), (r"\\%", "%"), (r"\\\$", ""),
    (r"\\(?:cdot|times)|×|·", "*"), (r"−|–", "-"), (r"\\infty|∞|\binfinity\b", "inf"),
    (r"\\pi\b|π", "pi"), (r"\\leq?\b|≤|<=", "<="), (r"\\geq?\b|≥|>=", ">="), (r"\\neq?\b|≠", "!="),
    (r"\\pm\b|±", "±"), (r"\\ldots|\\cdots|\\dots|…", "..."), (r"\{,\}", ""),
]
# One spelling per construct: \frac12 -> 1/2, \sqrt{3} and √3 -> sqrt(3), \binom / "choose" -> C(n,k)
_CANONICAL_FORMS = [
    (r"\\frac\s*(\d)\s*(\d)", r"\\frac{\1}{\2}"), (r"\\frac\{(-?[\w.]+)\}\{([\w.]+)\}", r"\1/\2"),
    (r"\\sqrt\s*\{([^{}]*)\}", r"sqrt(\1)"), (r"√\[([^\[\]]*)\]", r"sqrt(\1)"), (r"√(\w+)", r"sqrt(\1)"),
    (r"\\binom\s*\{([^{}]*)\}\s*\{([^{}]*)\}", r"C(\1,\2)"),
    (r"\(\s*([\w+\-*]+)\s+choose\s+([\w+\-*]+)\s*\)", r"C(\1,\2)"),
]


# name(...) with up to two levels of nested brackets inside: sqrt(1 + sqrt(2)), C(n-1, k-1)
_CALL_ARGS = r"\(((?:[^()]|\((?:[^()]|\([^()]*\))*\))*)\)"


def _replace_call(text: str, name: str, build) -> str:
    """Rewrite name(args) via build(list_of_args)."""
    return re.sub(rf"(?<![A-Za-z\\]){name}\s*{_CALL_ARGS}",
                  lambda m: build([a.strip() for a in _split_top(m.group(1), ",")]), text)


def _expand_tuple_assignment(s: str, sep: str) -> str:
    """"(x, y) = (2, 1)" reads as "x=2, y=1"."""
    m = re.fullmatch(r"\(\s*([A-Za-z](?:\s*,\s*[A-Za-z])+)\s*\)\s*=\s*\(([^()]*)\)", s)
    names, values = (m.group(1).split(","), m.group(2).split(",")) if m else ([], [None])
    return sep.join(f"{n.strip()}={v.strip()}" for n, v in zip(names, values)) if len(names) == len(values) else s


@lru_cache(maxsize=65536)
def normalize_answer(ans: str) -> str:
    """Cheap canonical form: equal strings here mean equal answers (the converse need not hold)."""
    s = ans.strip()
    inner = last_boxed(s) if s.startswith(("\\boxed", "\\fbox")) else None
    s = inner if inner is not None else s
    s = re.sub(r"(?<!\\)\$|^\\\(|\\\)$|^\\\[|\\\]$", "", s).strip()
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox|operatorname)\s*\{([^{}]*)\}", r"\1", s)
    for pat, rep in _LATEX_SIMPLE:
        s = re.sub(pat, rep, s)
    s = s.strip().rstrip(".").strip()
    yes_no = _YES_NO_RE.match(s)
    if yes_no:
        return yes_no.group(1).lower()
    if _INFINITE_RE.search(s):
        return "infinitely many"
    if re.fullmatch(r"(?:none|no solutions?|no (?:such|possible|real|integer|positive integer) \w+.*)", s, re.I):
        return "no"
    unit = _UNIT_RE.match(s)
    if unit:
        s = unit.group(1)
    s = re.sub(r",?\s+and\s+", ", ", s)  # keep the space: "376,625" would read as one number
    s = re.sub(r"(?<![\d.])(\d{1,3})((?:,\d{3})+)(?![\d])", lambda m: m.group(1) + m.group(2).replace(",", ""), s)
    for pat, rep in _CANONICAL_FORMS:
        s = re.sub(pat, rep, s)
    s = _replace_call(s, "√", lambda a: f"sqrt({a[0]})")
    s = re.sub(r"([\^_])\{([^{}]*)\}", lambda m: f"{m.group(1)}{m.group(2)}" if re.fullmatch(r"\w", m.group(2))
               else f"{m.group(1)}({m.group(2)})", s)
    if re.search(r"[A-Za-z]{2}", s) and not re.search(r"[\d^*/=+<>()\[\]|\\_]", s):
        return re.sub(r"\s+", " ", s).lower()  # plain words compare case- and spacing-insensitively
    s = re.sub(r"\s+", "", s)
    # 2*n == 2n and n*(n+1) == n(n+1), but "2^n*m" keeps its sign (2^nm would read as 2^(nm))
    s = re.sub(r"(?<![\w.^])([\w.]+)\*(?=[A-Za-z(])", r"\1", s)
    s = _expand_tuple_assignment(s, ",")
    chain = re.fullmatch(r"((?:[A-Za-z]=)+)([^=,<>]+)", s)
    if chain and chain.group(1).count("=") > 1:  # "x=y=0" is "x=0,y=0"
        s = ",".join(f"{n}={chain.group(2)}" for n in chain.group(1).split("=")[:-1])
    if re.fullmatch(rf"{_VAR_RE}=[^=,<>]+", s):
        s = s.split("=", 1)[1]  # "x=5" answers "5"
    return s
