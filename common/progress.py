"""Progress for the loops a user waits for: a live bar on a terminal, a few lines elsewhere.

Every long loop (teacher and eval generation, curation checks, mixing, the Trainer's steps) asks
:func:`progress_enabled` whether to draw. On a terminal it draws a tqdm bar with the rate of what
the loop processes (problems/s, rows/s, tokens/s). Anywhere else - ``dvc repro`` captures stage
output into its logs, CI keeps it - a bar's carriage-return refreshes would become thousands of
lines, so a loop stays quiet but for a handful of summary lines (a few milestones and one line
at the end, each with the same rates).

``MIXDISTILL_PROGRESS=1`` forces the bar (e.g. under a pager or ``tee``), ``MIXDISTILL_PROGRESS=0``
forces the quiet mode on a terminal.
"""
from __future__ import annotations

import os
import sys
import time
from typing import IO

from common.errors import MixdistillError

PROGRESS_ENV = "MIXDISTILL_PROGRESS"
_ON, _OFF = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


class ProgressSettingError(MixdistillError, ValueError):
    """``MIXDISTILL_PROGRESS`` holds something other than an on/off value."""


def progress_enabled(stream: IO | None = None) -> bool:
    """Whether loops draw a bar: ``MIXDISTILL_PROGRESS`` if set, else whether ``stream`` (stderr
    by default) is a terminal."""
    value = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    if value:
        raise ProgressSettingError(f"environment variable {PROGRESS_ENV}={os.environ[PROGRESS_ENV]!r}: "
                                   "expected 1 or 0 (unset: a bar when stderr is a terminal)")
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:               # a closed stream
        return False


def quiet_library_bars() -> None:
    """Off a terminal, also silence the bars Hugging Face ``datasets`` draws on its own (saving a
    dataset), so that captured logs keep only our summary lines."""
    if not progress_enabled():
        from datasets import disable_progress_bars

        disable_progress_bars()


def format_rate(count: float, seconds: float, unit: str) -> str:
    rate = count / seconds if seconds > 0 else float("inf")
    if rate == float("inf"):
        return f"- {unit}/s"
    return f"{rate:,.0f} {unit}/s" if rate >= 100 else f"{rate:.3g} {unit}/s"


class Progress:
    """A counted loop: ``update(n, tokens=...)`` after each chunk, ``close()`` (or ``with``) at the end.

    With a bar, tqdm shows done/total, elapsed, ETA and ``unit``/s; every extra count passed to
    :meth:`update` (``tokens=``) is shown as its own rate and :meth:`note` adds free text. Without
    one, nothing is printed but ``milestones`` lines on the way (at even fractions of the total)
    and one summary line at the end. ``initial`` counts work done by an earlier run (resume): it is
    shown but kept out of the rates. ``delay`` hides the bar of a loop that ends sooner; ``leave=False``
    removes the bar when it closes (a loop inside another's step)."""

    def __init__(self, total: int, desc: str, unit: str = "item", *, initial: int = 0, milestones: int = 0,
                 summary: bool = True, delay: float = 0.0, mininterval: float = 0.5, enabled: bool | None = None,
                 stream: IO | None = None, bar_format: str | None = None, leave: bool = True):
        self.stream = sys.stderr if stream is None else stream
        self.enabled = progress_enabled(self.stream) if enabled is None else enabled
        self.total, self.desc, self.unit = total, desc, unit
        self.initial, self.done = initial, initial
        self.counts: dict[str, int] = {}
        self.notes: dict[str, object] = {}
        self.summary = summary
        self.lines = 0
        self._milestones = [total * k / (milestones + 1) for k in range(1, milestones + 1)] if total else []
        self._started = time.perf_counter()
        self._bar = None
        if self.enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream,
                             mininterval=mininterval, dynamic_ncols=True, delay=delay, bar_format=bar_format,
                             leave=leave)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self._started

    def rates(self) -> str:
        parts = [format_rate(self.done - self.initial, self.elapsed, self.unit)]
        parts += [format_rate(v, self.elapsed, k) for k, v in self.counts.items()]
        return ", ".join(parts)

    def _postfix(self) -> str:
        parts = [format_rate(v, self.elapsed, k) for k, v in self.counts.items()]
        parts += [f"{k}={v}" for k, v in self.notes.items()]
        return ", ".join(parts)

    def note(self, **notes) -> None:
        self.notes.update(notes)
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=False)

    def update(self, n: int = 1, **counts: int) -> None:
        self.done += n
        for key, value in counts.items():
            self.counts[key] = self.counts.get(key, 0) + int(value)
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.update(n)
            return
        while self._milestones and self.done >= self._milestones[0] and self.done < self.total:
            self._milestones.pop(0)
            self.print_line(f"{self.desc}: {self.done}/{self.total} {self.unit}s ({self.rates()})")

    def grow(self, n: int) -> None:
        """Raise the total by ``n`` (work found on the way)."""
        self.total += n
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def print_line(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
        self.lines += 1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.summary:
            notes = "".join(f", {k}={v}" for k, v in self.notes.items())
            self.print_line(f"{self.desc}: {self.done}/{self.total} {self.unit}s in {self.elapsed:.1f}s "
                        f"({self.rates()}{notes})")
            self.summary = False     # once, even if closed twice


class StepProgress:
    """Named steps that each pass over the same rows (curation's checks): one bar step per finished
    step, showing that step's rows/s; the quiet summary names the slowest steps.

    :meth:`timings` returns a dict to time into: every ``timings[name] = seconds`` counts as
    one finished step, so a loop that already records its timings gains progress without another
    line in its body."""

    # steps/s says nothing here: the bar shows done/total, elapsed and the last step's rows/s
    BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps [{elapsed}{postfix}]"

    def __init__(self, desc: str, rows: int, steps: int = 0, *, unit: str = "rows", summary: bool = True,
                 delay: float = 0.0, enabled: bool | None = None, stream: IO | None = None):
        self.desc, self.rows, self.unit = desc, rows, unit
        self.steps: dict[str, tuple[float, int]] = {}     # name -> (seconds, rows)
        # a handful of steps: draw each one (no refresh throttling)
        self._progress = Progress(steps, desc, "step", summary=False, delay=delay, mininterval=0, enabled=enabled,
                                  stream=stream, bar_format=self.BAR_FORMAT)
        self.summary = summary

    @property
    def enabled(self) -> bool:
        return self._progress.enabled

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_steps(self, n: int) -> None:
        self._progress.grow(n)

    def record(self, name: str, seconds: float, rows: int | None = None) -> None:
        rows = self.rows if rows is None else rows
        self.steps[name] = (seconds, rows)
        self._progress.note(last=f"{name} {format_rate(rows, seconds, self.unit)}")
        self._progress.update(1)

    def timings(self) -> dict:
        return _RecordingTimings(self)

    def close(self) -> None:
        self._progress.close()
        if not self.enabled and self.summary:
            slowest = sorted(self.steps.items(), key=lambda kv: -kv[1][0])[:3]
            detail = ", ".join(f"{name} {format_rate(rows, s, self.unit)}" for name, (s, rows) in slowest)
            total = sum(s for s, _ in self.steps.values())
            self._progress.print_line(f"{self.desc}: {self.rows} {self.unit} through {len(self.steps)} steps in "
                                      f"{total:.1f}s (slowest: {detail or 'none'})")
            self.summary = False


class _RecordingTimings(dict):
    def __init__(self, steps: StepProgress):
        super().__init__()
        self._steps = steps

    def __setitem__(self, name, seconds) -> None:
        super().__setitem__(name, seconds)
        self._steps.record(name, seconds)
