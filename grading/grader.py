"""Batch grading of model answers against references.

A fast path settles what strings settle exactly (equal or normalised-equal strings; two
different plain numerals; yes against no: see :func:`grading.equivalence.fast_verdict`). Every
other pair goes to math-verify (``parse`` + ``verify``, reference as gold), in worker *processes*:
math-verify's ``signal.alarm`` timeouts do not work in threads and some inputs hang past them in
C code (Math-Verify issue #65), so each pair has a soft deadline in the worker and a hard one
enforced by the parent, which kills and replaces an overrunning worker; that pair is graded
``timeout`` and the batch carries on (:mod:`grading.pool`). Verdicts are cached per Grader by
(answer, reference), the least recently used dropped past ``Grader.CACHE_LIMIT``.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from functools import partial
from typing import Callable

from common.errors import MixdistillError
from common.progress import Progress
from grading.answers import reference_variants
from grading.equivalence import fast_verdict, math_verify_check, to_latex  # noqa: F401 (re-exported)
from grading.extract import find_answer
from grading.pool import WorkerPool
from grading.rules import HouseRules, apply_decimal_comma

__all__ = ["Verdict", "Grader", "GradingInputError", "fast_verdict", "math_verify_check", "to_latex"]

METHODS = ("exact", "normalized", "tolerance", "math_verify", "no_answer", "timeout", "error", "mismatch", "unequal")
# The end of a response that math-verify's own extraction reads when the prose heuristics found
# the answer (or none): enough for a final displayed matrix or sentence, not a whole solution.
TAIL_CHARS = 600
# Chinese / Japanese / Korean prose: the sentence heuristics know English only, so what they
# return from it is no answer, and math-verify reads the response itself.
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


@dataclass(frozen=True)
class Verdict:
    extracted: str | None  # the extracted answer (None if none)
    correct: bool
    method: str  # one of METHODS


class GradingInputError(MixdistillError, ValueError):
    """Bad grading input; the message names the file, line and field."""


# ----------------------------------------------------------------------------- Grader

class Grader:
    """Grades answers against references; a context manager owning its worker processes.

    `timeout_s` is the budget of one (answer, reference) pair in math-verify. `rules` are the
    house rules (percent, list order, decimal comma, numeric tolerance: see
    :mod:`grading.rules`); the defaults are `HouseRules()`. `workers=0` runs math-verify inline
    with its own ``signal.alarm`` timeouts (tests, debugging). `checker` swaps the math-verify
    step for another picklable function with the signature of `math_verify_check` (used by the
    tests to simulate a hanging input); it then also owns the list and tolerance rules.
    """

    # A pair that times out is tried once more, after the batch, with this many times the budget:
    # how long sympy takes depends on the machine's load, and without a second try the kept set
    # would too (3 timeouts on a loaded machine where a quiet one had 2).
    RETRY_FACTOR = 2.0
    # A math-verify batch this large gets three progress lines (25/50/75 %) in captured logs too;
    # smaller ones (a minute or less on two cores) only a bar on a terminal, gone when it ends.
    QUIET_LINES_FROM_PAIRS = 5000
    BAR_DELAY_S = 2.0           # a batch done sooner draws no bar
    # Distinct (answer, reference, tail) verdicts remembered across calls, least recently used
    # dropped first: ~300 bytes each (~1 KB with a response tail), so ~100-300 MB at most
    # however many shards a source has.
    CACHE_LIMIT = 300_000

    def __init__(self, timeout_s: float = 5.0, workers: int = 2, *, checker: Callable | None = None,
                 rules: HouseRules | None = None, retry_timeouts: bool = True):
        self.rules = rules if rules is not None else HouseRules()
        if not isinstance(self.rules, HouseRules):
            raise TypeError(f"rules must be a HouseRules, got {type(rules).__name__}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not isinstance(workers, int) or workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {workers!r}")
        self.timeout_s, self.workers, self.retry_timeouts = float(timeout_s), workers, bool(retry_timeouts)
        self.checker = checker or partial(math_verify_check, ordered_lists=self.rules.lists == "ordered",
                                          rel_tolerance=self.rules.rel_tolerance)
        self._cache: OrderedDict[tuple, tuple] = OrderedDict()
        self._pool: WorkerPool | None = None
        self._retry_pool: WorkerPool | None = None
        # where the work went, for reports: pairs seen, answered from cache, settled cheaply, sent on
        # to math-verify; distinct pairs tried again after a timeout, and those still timed out; the
        # longest one math-verify attempt took (ms, from being sent to a worker to its verdict)
        self.stats = Counter(pairs=0, cached=0, cheap=0, math_verify=0, retried=0, timeout_after_retry=0,
                             slowest_pair_ms=0)

    def __enter__(self) -> Grader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for pool in (self._pool, self._retry_pool):
            if pool is not None:
                pool.close()
        self._pool = self._retry_pool = None

    def grade_many(self, responses: list[str], references: list) -> list[Verdict]:
        """Find each response's final answer, then grade it. Where nothing was found, or the
        prose heuristics found an answer beside a LaTeX environment they cannot read (a matrix)
        or in a language they do not read,
        math-verify also reads the response's end itself (only when the extracted answer was not
        shown equal). Not for plain prose: there it would read any number near the end."""
        if len(responses) != len(references):
            raise ValueError(f"{len(responses)} responses but {len(references)} references")
        found = [find_answer(r) for r in responses]
        tails = [r[-TAIL_CHARS:] if isinstance(r, str) and r.strip() and (
                     how is None or (how == "sentence" and ("\\begin{" in r[-TAIL_CHARS:] or _CJK_RE.search(a))))
                 else None for r, (a, how) in zip(responses, found)]
        return self._grade([a for a, _ in found], references, tails)

    def grade_answers(self, answers: list[str | None], references: list) -> list[Verdict]:
        """Grade already-extracted answers; order is kept, None answers are "no_answer"."""
        if len(answers) != len(references):
            raise ValueError(f"{len(answers)} answers but {len(references)} references")
        for i, answer in enumerate(answers):
            if answer is not None and not isinstance(answer, str):
                raise TypeError(f"answers[{i}] must be a string or None, got {type(answer).__name__}")
        return self._grade(answers, references, [None] * len(answers))

    def _grade(self, answers: list[str | None], references: list, tails: list[str | None]) -> list[Verdict]:
        keys = [None if a is None and t is None else (a, _ref_key(r), t)
                for a, r, t in zip(answers, references, tails)]
        undecided: dict[tuple, tuple] = {}   # key -> (answer as graded, reference variants)
        found: dict[tuple, tuple] = {}       # key -> verdict, for this call
        self.stats["pairs"] += len(keys)
        for key, reference in zip(keys, references):
            if key is None or key in found or key in undecided:
                self.stats["cached"] += key is not None
                continue
            if key in self._cache:
                self._cache.move_to_end(key)
                found[key] = self._cache[key]
                self.stats["cached"] += 1
                continue
            answer, variants = key[0], tuple(reference_variants(reference))
            if self.rules.decimal_comma:
                answer = None if answer is None else apply_decimal_comma(answer)
                variants = tuple(apply_decimal_comma(v) for v in variants)
            if self.rules.percent == "value_or_figure" and answer is not None:
                # the percent figure with or without its sign: "28" answers "28%" and back
                variants += (tuple(v + "\\%" for v in variants if "%" not in v) if "%" in answer else
                             tuple(v.replace("\\%", "").replace("%", "") for v in variants if "%" in v))
            settled = fast_verdict(answer, variants, self.rules.rel_tolerance) if answer is not None else None
            if settled is not None and (settled[0] or key[2] is None):
                found[key] = settled
                self.stats["cheap"] += 1
            else:
                undecided[key] = (answer, variants)
        self.stats["math_verify"] += len(undecided)
        if undecided:
            found.update(self._math_verify(undecided))
        verdicts = []
        for key in keys:
            if key is None:
                verdicts.append(Verdict(None, False, "no_answer"))
                continue
            correct, method, *read = found[key]
            if key[0] is None and not correct:
                method = "no_answer"          # math-verify found nothing in the tail either
            # shown equal from what math-verify itself read in the tail: that is the answer
            verdicts.append(Verdict(read[0] if read and read[0] else key[0], correct, method))
        self._remember(found)
        return verdicts

    def _remember(self, found: dict) -> None:
        self._cache.update(found)
        while len(self._cache) > self.CACHE_LIMIT:
            self._cache.popitem(last=False)

    def _math_verify(self, undecided: dict[tuple, tuple]) -> dict:
        items = [(key, answer, variants) for key, (answer, variants) in undecided.items()]
        out = self._run_checker(items, self.timeout_s)
        timed_out = [item for item in items if out[item[0]][1] == "timeout"]
        if self.retry_timeouts and timed_out:
            self.stats["retried"] += len(timed_out)
            out.update(self._run_checker(timed_out, self.timeout_s * self.RETRY_FACTOR))
            self.stats["timeout_after_retry"] += sum(out[key][1] == "timeout" for key, _, _ in timed_out)
        return out

    def _run_checker(self, items: list[tuple], timeout_s: float) -> dict:
        retry = timeout_s != self.timeout_s
        desc = "grading: math-verify" + (" (retry after timeout)" if retry else "")
        quiet_lines = 3 if len(items) >= self.QUIET_LINES_FROM_PAIRS else 0
        with Progress(len(items), desc, "pair", milestones=quiet_lines, summary=False, delay=self.BAR_DELAY_S,
                      leave=False) as progress:
            if self.workers == 0:
                return self._run_inline(items, timeout_s, progress)
            pool = self._retry_pool if retry else self._pool
            if pool is None:   # the workers hold their deadline from start-up: the retry has its own
                pool = WorkerPool(self.workers, self.checker, timeout_s)
                if retry:
                    self._retry_pool = pool
                else:
                    self._pool = pool
            jobs = [(i, answer, variants, key[2]) for i, (key, answer, variants) in enumerate(items)]
            results = pool.run(jobs, progress)
            self.stats["slowest_pair_ms"] = max(self.stats["slowest_pair_ms"], round(pool.slowest_s * 1000))
        return {key: results[i] for i, (key, _, _) in enumerate(items)}

    def _run_inline(self, items: list[tuple], timeout_s: float, progress: Progress) -> dict:
        # math-verify's own alarm needs the main thread; elsewhere it must run without one
        in_main = threading.current_thread() is threading.main_thread()
        limit = max(1, math.ceil(timeout_s)) if in_main else None
        out = {}
        for key, answer, variants in items:
            started = time.monotonic()
            try:
                out[key] = self.checker(answer, variants, limit, key[2])
            except Exception:  # noqa: BLE001
                out[key] = (False, "error")
            took_ms = round((time.monotonic() - started) * 1000)
            self.stats["slowest_pair_ms"] = max(self.stats["slowest_pair_ms"], took_ms)
            progress.update(1)
        return out


def _ref_key(reference) -> str:
    return reference if isinstance(reference, str) else json.dumps(reference)
