"""Equivalence decisions and batch grading of model answers against references.

Order of work, cheapest first:

1. exact string match, then `normalize_answer` match, then an exact rational comparison of plain
   numbers, yes/no and textual answers. This settles most pairs (identical numbers, "No" vs "No",
   "12" vs "13") in microseconds;
2. only pairs the cheap path cannot settle go to math-verify (``parse`` + ``verify``, with the
   reference as gold). math-verify times itself out with ``signal.alarm`` (no use inside threads)
   and some inputs hang past that inside C code (Math-Verify issue #65), so its calls run in worker
   *processes*: each item gets a soft deadline in the worker (``setitimer``) and a hard deadline
   enforced by the parent, which kills and replaces a worker that overruns. That pair is graded
   ``timeout``; the rest of the batch carries on.

Verdicts are cached per Grader by (answer, reference), so duplicates cost one grading.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Callable

from evaluation.answers import (_expand_tuple_assignment, _replace_call, extract_answer, normalize_answer,
                                reference_variants)

__all__ = ["Verdict", "Grader", "GradingInputError", "grade_file", "math_verify_check", "to_latex"]

METHODS = ("exact", "normalized", "math_verify", "no_answer", "timeout", "error", "mismatch")


@dataclass(frozen=True)
class Verdict:
    extracted: str | None  # the extracted answer (None if none)
    correct: bool
    method: str  # one of METHODS


class GradingInputError(ValueError):
    """Bad grading input; the message names the file, line and field."""


# ----------------------------------------------------------------------------- cheap path

_INT_RE = re.compile(r"-?\d+")
_DEC_RE = re.compile(r"-?\d*\.\d+")
_FRAC_RE = re.compile(r"(-?\d+)/(\d+)")
_FACT_RE = re.compile(r"(\d{1,2})!")
_PCT_RE = re.compile(r"(-?\d+(?:\.\d+)?)%")
# Words that are maths in a normalised answer; any other run of 3+ letters makes it "text".
_MATH_NAMES = re.compile(r"sqrt|binom|frac|pi|inf|infty|sum|prod|ln|log|sin|cos|tan|exp|floor|ceil|"
                         r"lfloor|rfloor|lceil|rceil|choose|mod|bmod|pmod|cdot|ldots|cdots|dots|max|min|gcd|lcm")


def _number(norm: str) -> tuple[tuple[Fraction, ...], bool] | None:
    """Candidate values of a plain number and whether it is exact (no decimal approximation)."""
    if _INT_RE.fullmatch(norm):
        return (Fraction(int(norm)),), True
    if m := _FRAC_RE.fullmatch(norm):
        return ((Fraction(int(m.group(1)), int(m.group(2))),), True) if int(m.group(2)) else None
    if m := _FACT_RE.fullmatch(norm):  # "5!" is 120, never 5 (a math-verify false positive)
        return (Fraction(math.factorial(int(m.group(1)))),), True
    if _DEC_RE.fullmatch(norm):
        return (Fraction(norm),), False
    if m := _PCT_RE.fullmatch(norm):  # "35.7%" may answer either 0.357 or "35.7 percent"
        value = Fraction(m.group(1))
        return (value / 100, value), False
    return None


def _numbers(norm: str) -> list[tuple[tuple[Fraction, ...], bool]] | None:
    norm = norm[1:-1] if norm.startswith("{") and norm.endswith("}") else norm  # a set of numbers
    items = [_number(part) for part in norm.split(",")] if norm else []
    return items if items and all(items) else None


def _is_text(norm: str) -> bool:
    return bool(re.search(r"[a-z]{3,}", _MATH_NAMES.sub("", norm.lower())))


_KNOWN_COMMANDS = re.compile(r"\\(?:frac|sqrt|binom|cdot|times|lfloor|rfloor|lceil|rceil|log|ln|sin|cos|tan|exp|"
                             r"infty|pi|ldots|cdots|dots)\b")


def _free_letters(norm: str) -> frozenset[str] | None:
    """Single-letter variables of a normalised expression, or None where that is unclear
    (relations, unknown LaTeX commands, non-ASCII symbols, or e / i which may be constants)."""
    bare = _MATH_NAMES.sub("", _KNOWN_COMMANDS.sub("", norm))
    bare = re.sub(r"(?<![A-Za-z])C(?=\()", "", bare)  # C(n, k) is the binomial, not a variable
    if re.search(r"[=<>\\!]|[^\x00-\x7f]", bare.replace("!", "")) or re.search(r"(?<![A-Za-z])[ei](?![A-Za-z])", bare):
        return None
    return frozenset(re.findall(r"[A-Za-z]", bare))


def _strip_lhs(norm: str) -> str:
    """"f(11)=89" answers "89": drop a lone left-hand side when the reference has none."""
    parts = norm.split("=")
    if len(parts) == 2 and re.fullmatch(r"[A-Za-z]\w*(?:\([^()]*\))?|[A-Za-z]_?\(?\w+\)?", parts[0]):
        return parts[1]
    return norm


def _compare_numbers(answer: str, variant: str) -> str | None:
    """"normalized" / "mismatch" when both sides are plain numbers (or lists of them), else None."""
    a, v = _numbers(answer), _numbers(variant)
    if a is None or v is None:
        return None
    if len(a) == 1 and len(v) == 1:
        (a_vals, a_exact), (v_vals, v_exact) = a[0], v[0]
        if set(a_vals) & set(v_vals):
            return "normalized"
        if a_exact and v_exact:
            return "mismatch"
        # A decimal may be a rounding of the reference (math-verify rounds to 6 places): only a
        # clear miss is settled here, near misses go on to math-verify.
        gap = min(abs(x - y) for x in a_vals for y in v_vals)
        return "mismatch" if gap > Fraction(1, 1000) * max(1, abs(v_vals[0])) else None
    if all(e for _, e in a) and all(e for _, e in v):  # lists of exact numbers: order-free compare
        same = sorted(x[0][0] for x in a) == sorted(x[0][0] for x in v)
        return "normalized" if same else "mismatch"
    return None


# ---- numeric probing: two expressions that differ at a point where both are defined are not equal
# (the randomised identity test). Variables are integers in these problems, so probe at integers,
# with n large and the others small so binomials like C(n+1, 2m+1) stay in their natural range.
_TOKEN_RE = re.compile(r"\s*(sqrt|floor|ceil|pi|C(?=\()|\d+(?:\.\d+)?|[A-Za-z]|[-+*/^(),!])")
_FUNCS = {"sqrt", "floor", "ceil", "C"}
_PROBES = ({"n": 29, "N": 31}, {"n": 37, "N": 41})
_SMALL = ((3, 5, 7, 11, 13, 17, 19), (4, 6, 9, 10, 14, 15, 21))


def _tokens(norm: str) -> list[str] | None:
    s = norm
    while (t := re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"((\1)/(\2))", s)) != s:  # innermost first
        s = t
    s = re.sub(r"\\binom\{([^{}]*)\}\{([^{}]*)\}", r"C(\1,\2)", s)
    s = re.sub(r"\\lfloor(.*?)\\rfloor", r"floor(\1)", re.sub(r"\\sqrt\{([^{}]*)\}", r"sqrt(\1)", s))
    s = s.replace("{", "(").replace("}", ")").replace("\\cdot", "*").replace("\\pi", "pi")
    found = _TOKEN_RE.findall(s)
    return found if "".join(found) == re.sub(r"\s+", "", s) else None


def _evaluate(tokens: list[str], env: dict[str, int]):
    """Exact (Fraction) where possible, float otherwise; raises on anything undefined or huge."""
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else ""

    def take(expected=None):
        nonlocal pos
        tok = peek()
        if not tok or (expected and tok != expected):
            raise ValueError(f"expected {expected or 'more'} at {pos}")
        pos += 1
        return tok

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

    def juxtaposed():  # "2n(n-1)" multiplies, binding tighter than "/" ("b/2a" is b/(2a), as in math-verify)
        value = unary()
        while peek() and (peek()[0].isalnum() or peek() == "("):
            value = value * power()
        return value

    def unary():
        return -unary() if peek() == "-" and take() else power()

    def power():
        base = postfix()
        if peek() != "^":
            return base
        take()
        exp = unary()
        if isinstance(base, Fraction) and isinstance(exp, Fraction) and exp.denominator == 1 and abs(exp) <= 400:
            return base ** int(exp)
        return float(base) ** float(exp)  # complex or overflow raise below

    def postfix():
        value = atom()
        while peek() == "!":
            take()
            if not (isinstance(value, Fraction) and value.denominator == 1 and 0 <= value <= 300):
                raise ValueError("factorial of a non-integer")
            value = Fraction(math.factorial(int(value)))
        return value

    def atom():
        tok = take()
        if tok == "(":
            value = expr()
            take(")")
            return value
        if tok in _FUNCS:
            take("(")
            args = [expr()]
            while peek() == ",":
                take()
                args.append(expr())
            take(")")
            return _call(tok, args)
        if tok == "pi":
            return math.pi
        if tok[0].isdigit():
            return Fraction(tok)
        return Fraction(env[tok])

    value = expr()
    if pos != len(tokens) or isinstance(value, complex) or abs(value) > 1e300:
        raise ValueError("not a finite real value")
    return value


def _call(name: str, args: list):
    if name == "C":
        n, k = args
        if not all(isinstance(a, Fraction) and a.denominator == 1 for a in args) or n < 0 or n > 1000:
            raise ValueError("binomial outside the integers")
        return Fraction(math.comb(int(n), int(k)) if k >= 0 else 0)
    (x,) = args
    if name == "sqrt":
        root = math.isqrt(x.numerator) if isinstance(x, Fraction) and x >= 0 else -1
        if root >= 0 and root * root == x.numerator and math.isqrt(x.denominator) ** 2 == x.denominator:
            return Fraction(root, math.isqrt(x.denominator))
        return math.sqrt(x)
    return Fraction(math.floor(x) if name == "floor" else math.ceil(x))


def _probe(na: str, nv: str, letters: frozenset[str]) -> str | None:
    """"mismatch" if the two differ at an integer point; "normalized" if two constants are exactly
    equal; None when undecided (equal everywhere probed, or not evaluable here)."""
    ta, tv = _tokens(na), _tokens(nv)
    if ta is None or tv is None:
        return None
    decimal = "." in na or "." in nv  # a rounded decimal may stand for an exact value
    for probe, small in zip(_PROBES, _SMALL):
        others = iter(small)
        env = {v: probe.get(v) or next(others) for v in sorted(letters)}
        try:
            a, v = _evaluate(ta, env), _evaluate(tv, env)
        except (ArithmeticError, ValueError, TypeError, KeyError, RecursionError, StopIteration):
            continue
        exact = isinstance(a, Fraction) and isinstance(v, Fraction) and not decimal
        gap = abs(a - v) / max(1, abs(a), abs(v))
        if (exact and a != v) or gap > (1e-3 if decimal else 1e-9):
            return "mismatch"
        if exact and not letters:
            return "normalized"  # "C(10,5)" and "252": the same constant, computed exactly
    return None


def cheap_compare(answer: str, variant: str) -> str | None:
    """"exact", "normalized" or "mismatch" when settled without math-verify, else None."""
    if answer.strip() == variant.strip():
        return "exact"
    na, nv = normalize_answer(answer), normalize_answer(variant)
    if "=" not in nv:
        na = _strip_lhs(na)
    if na == nv and na:
        return "normalized"
    if na in ("yes", "no") or nv in ("yes", "no"):
        return "mismatch"  # yes/no only ever matches itself
    settled = _compare_numbers(na, nv)
    if settled:
        return settled
    if _is_text(na) or _is_text(nv):
        return "mismatch"  # math-verify would read English words as products of symbols
    letters_a, letters_v = _free_letters(na), _free_letters(nv)
    if letters_a is None or letters_v is None:
        return None
    if letters_a != letters_v:
        return "mismatch"  # "n + s" is never "n^2/(n-1)"; strict math-verify agrees (variables matter)
    return _probe(na, nv, letters_a)


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


class _ItemDeadline(BaseException):
    """Raised by the worker's alarm; BaseException so math-verify's `except Exception` lets it by."""


def _worker_main(read_fd: int, write_fd: int) -> None:
    """Entry point of a grading worker process (see `_WorkerPool._spawn`)."""
    conn_in, conn_out = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    checker, timeout_s = conn_in.recv()
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.CRITICAL)
    math_verify_check("1", ("1",), None)  # import and warm up before reporting ready

    def on_alarm(signum, frame):
        raise _ItemDeadline()

    signal.signal(signal.SIGALRM, on_alarm)
    conn_out.send(("ready",))
    while True:
        try:
            chunk = conn_in.recv()
        except EOFError:  # the parent went away
            return
        if chunk is None:
            return
        for job_id, answer, variants in chunk:
            try:
                try:
                    signal.setitimer(signal.ITIMER_REAL, timeout_s)
                    result = checker(answer, variants, None)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
            except _ItemDeadline:
                result = (False, "timeout")
            except Exception:  # noqa: BLE001 - one bad pair must not stop the batch
                result = (False, "error")
            conn_out.send((job_id, bool(result[0]), str(result[1])))


# Workers are plain `python -c` processes talking pickles over two pipes. multiprocessing's spawn
# would re-import the caller's __main__ (breaking unguarded scripts and notebooks), and fork is
# unsafe once torch or polars have started threads.
_WORKER_CODE = ("import sys; from evaluation.grading import _worker_main; "
                "_worker_main(int(sys.argv[1]), int(sys.argv[2]))")


class _Slot:
    def __init__(self, proc: subprocess.Popen, send: Connection, recv: Connection):
        self.proc, self.send, self.recv = proc, send, recv
        self.ready = False
        self.started = time.monotonic()
        self.chunk: list = []
        self.pos = 0
        self.item_started = 0.0

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self.send.close()
        self.recv.close()


class _WorkerPool:
    """Worker processes running `checker` with a hard per-item deadline enforced from here."""

    # Starting Python and importing sympy/math-verify takes a few seconds; longer means trouble.
    STARTUP_LIMIT_S = 120.0

    def __init__(self, workers: int, checker: Callable, timeout_s: float):
        self.workers, self.checker, self.timeout_s = workers, checker, timeout_s
        # The soft deadline in the worker fires at timeout_s; the hard one only catches workers
        # stuck where a signal cannot reach (C code), so give the soft one room to act first.
        self.hard_limit_s = timeout_s * 1.5 + 1.0
        self.slots: list[_Slot] = []
        self._finalizer = weakref.finalize(self, _WorkerPool._shutdown, self.slots)

    def _spawn(self) -> _Slot:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        # the child must import what we imported (evaluation, and the checker's module)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p or os.getcwd() for p in sys.path))
        try:
            proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE, str(to_child_r), str(from_child_w)],
                                    pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        slot = _Slot(proc, Connection(to_child_w, readable=False), Connection(from_child_r, writable=False))
        slot.send.send((self.checker, self.timeout_s))
        return slot

    def _replace(self, slot: _Slot) -> None:
        slot.kill()
        self.slots[self.slots.index(slot)] = self._spawn()

    def run(self, jobs: list[tuple[int, str, tuple[str, ...]]]) -> dict[int, tuple[bool, str]]:
        results: dict[int, tuple[bool, str]] = {}
        pending = deque(jobs)
        while len(self.slots) < min(self.workers, len(jobs)):
            self.slots.append(self._spawn())
        startup_failures = 0
        while len(results) < len(jobs):
            now = time.monotonic()
            for slot in self.slots:
                if slot.ready and not slot.chunk and pending:
                    # chunks amortise IPC; small enough to keep both workers busy to the end
                    size = max(1, min(32, math.ceil(len(pending) / (4 * len(self.slots)))))
                    slot.chunk = [pending.popleft() for _ in range(min(size, len(pending)))]
                    slot.pos, slot.item_started = 0, now
                    try:
                        slot.send.send(slot.chunk)
                    except OSError:  # died while idle; the failed recv below requeues the chunk
                        pass
            ready = wait([s.recv for s in self.slots], timeout=0.05)
            for slot in list(self.slots):
                if slot.recv not in ready:
                    continue
                try:
                    msg = slot.recv.recv()
                except (EOFError, OSError):  # the worker died (segfault, OOM kill)
                    if not slot.ready:
                        startup_failures += 1
                        if startup_failures >= 3:
                            raise RuntimeError("grading workers keep dying during start-up "
                                               "(is math-verify importable?)") from None
                    elif slot.chunk:  # the item it was on gets "error", the rest go back
                        job = slot.chunk[slot.pos]
                        results[job[0]] = (False, "error")
                        pending.extendleft(reversed(slot.chunk[slot.pos + 1:]))
                    self._replace(slot)
                    continue
                if msg == ("ready",):
                    slot.ready = True
                    continue
                results[msg[0]] = (msg[1], msg[2])
                slot.pos += 1
                slot.item_started = time.monotonic()
                if slot.pos >= len(slot.chunk):
                    slot.chunk = []
            now = time.monotonic()
            for slot in list(self.slots):
                if slot.chunk and now - slot.item_started > self.hard_limit_s:
                    job = slot.chunk[slot.pos]  # hung past every soft limit: kill it, move on
                    results[job[0]] = (False, "timeout")
                    pending.extendleft(reversed(slot.chunk[slot.pos + 1:]))
                    self._replace(slot)
                elif not slot.ready and now - slot.started > self.STARTUP_LIMIT_S:
                    raise RuntimeError(f"grading worker not ready after {self.STARTUP_LIMIT_S:.0f} s")
        return results

    @staticmethod
    def _shutdown(slots: list[_Slot]) -> None:
        for slot in slots:
            try:
                slot.send.send(None)
            except (OSError, ValueError):
                pass
        for slot in slots:
            try:
                slot.proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
            slot.kill()
        slots.clear()

    def close(self) -> None:
        self._finalizer()


# ----------------------------------------------------------------------------- Grader

class Grader:
    """Grades answers against references; a context manager owning its worker processes.

    `timeout_s` is the budget of one (answer, reference) pair in math-verify. `workers=0` runs
    math-verify inline with its own ``signal.alarm`` timeouts (tests, debugging). `checker` swaps
    the math-verify step for another picklable function with the signature of
    `math_verify_check` (used by the tests to simulate a hanging input).
    """

    def __init__(self, timeout_s: float = 5.0, workers: int = 2, *, checker: Callable | None = None):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        self.timeout_s, self.workers = float(timeout_s), workers
        self.checker = checker or math_verify_check
        self._cache: dict[tuple[str, str], tuple[bool, str]] = {}
        self._pool: _WorkerPool | None = None
        # where the work went, for reports: pairs seen, answered from cache, settled cheaply, sent on
        self.stats = Counter(pairs=0, cached=0, cheap=0, math_verify=0)

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def grade_many(self, responses: list[str], references: list) -> list[Verdict]:
        """Extract each response's final answer, then grade it (see `grade_answers`)."""
        if len(responses) != len(references):
            raise ValueError(f"{len(responses)} responses but {len(references)} references")
        return self.grade_answers([extract_answer(r) for r in responses], references)

    def grade_answers(self, answers: list[str | None], references: list) -> list[Verdict]:
        """Grade already-extracted answers; order is kept, None answers are "no_answer"."""
        if len(answers) != len(references):
            raise ValueError(f"{len(answers)} answers but {len(references)} references")
        for i, answer in enumerate(answers):
            if answer is not None and not isinstance(answer, str):
                raise TypeError(f"answers[{i}] must be a string or None, got {type(answer).__name__}")
        keys = [None if a is None else (a, _ref_key(r)) for a, r in zip(answers, references)]
        undecided: dict[tuple[str, str], tuple[str, ...]] = {}
        self.stats["pairs"] += len(keys)
        for key, reference in zip(keys, references):
            if key is None or key in self._cache or key in undecided:
                self.stats["cached"] += key is not None
                continue
            variants, settled = reference_variants(reference), None
            open_variants = []
            for variant in variants:
                outcome = cheap_compare(key[0], variant)
                if outcome in ("exact", "normalized"):
                    settled = (True, outcome)
                    break
                if outcome is None:
                    open_variants.append(variant)
            if settled is None and not open_variants:
                settled = (False, "mismatch")
            if settled is not None:
                self._cache[key] = settled
                self.stats["cheap"] += 1
            else:
                undecided[key] = tuple(open_variants)
        self.stats["math_verify"] += len(undecided)
        if undecided:
            self._cache.update(self._math_verify(undecided))
        return [Verdict(None, False, "no_answer") if key is None else Verdict(key[0], *self._cache[key])
                for key in keys]

    def _math_verify(self, undecided: dict[tuple[str, str], tuple[str, ...]]) -> dict:
        items = list(undecided.items())
        if self.workers == 0:
            # math-verify's own alarm needs the main thread; elsewhere it must run without one
            in_main = threading.current_thread() is threading.main_thread()
            limit = max(1, math.ceil(self.timeout_s)) if in_main else None
            out = {}
            for key, variants in items:
                try:
                    out[key] = self.checker(key[0], variants, limit)
                except Exception:  # noqa: BLE001
                    out[key] = (False, "error")
            return out
        if self._pool is None:
            self._pool = _WorkerPool(self.workers, self.checker, self.timeout_s)
        results = self._pool.run([(i, key[0], variants) for i, (key, variants) in enumerate(items)])
        return {key: results[i] for i, (key, _) in enumerate(items)}


def _ref_key(reference) -> str:
    return reference if isinstance(reference, str) else json.dumps(reference)


# ----------------------------------------------------------------------------- files

def _read_rows(path: Path, response_field: str, reference_field: str) -> list[dict]:
    try:
        raw_lines = path.read_bytes().splitlines()
    except OSError as exc:
        raise GradingInputError(f"{path}: cannot read: {exc}") from exc
    rows = []
    for lineno, raw in enumerate(raw_lines, 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise GradingInputError(f"{path}, line {lineno}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GradingInputError(f"{path}, line {lineno}: invalid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(row, dict):
            raise GradingInputError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
        for field, ok, expected in (
            (response_field, lambda v: isinstance(v, str), "a string"),
            (reference_field, lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool)
             or (isinstance(v, list) and bool(v) and all(isinstance(x, str) for x in v)),
             "a string, a number or a list of strings"),
        ):
            if field not in row:
                raise GradingInputError(f"{path}, line {lineno}: field '{field}' is missing")
            if not ok(row[field]):
                raise GradingInputError(f"{path}, line {lineno}: field '{field}' must be {expected}, "
                                        f"got {type(row[field]).__name__}")
        rows.append(row)
    if not rows:
        raise GradingInputError(f"{path}: empty file, no JSON lines to grade")
    return rows


def grade_file(in_path, out_path, *, timeout_s: float = 5.0, workers: int = 2,
               response_field: str = "response", reference_field: str = "reference") -> dict:
    """Grade a JSONL file of responses; write each row plus extracted_answer/correct/grade_method.

    All input is validated before anything is written, and the output appears (atomically, by
    rename) only when grading succeeded. Returns {n, correct, accuracy, by_method}.
    """
    in_path, out_path = Path(in_path), Path(out_path)
    rows = _read_rows(in_path, response_field, reference_field)
    with Grader(timeout_s=timeout_s, workers=workers) as grader:
        verdicts = grader.grade_many([r[response_field] for r in rows], [r[reference_field] for r in rows])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_path.parent, prefix=f".{out_path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for row, verdict in zip(rows, verdicts):
                row = {**row, "extracted_answer": verdict.extracted, "correct": verdict.correct,
                       "grade_method": verdict.method}
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    correct = sum(v.correct for v in verdicts)
    return {"n": len(verdicts), "correct": correct, "accuracy": correct / len(verdicts),
            "by_method": dict(Counter(v.method for v in verdicts))}
