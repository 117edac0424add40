"""The error every expected failure derives from.

A :class:`MixdistillError` is a problem with the user's input, params or files that the message
explains in one line (file, row, field or params key path); the stage wrapper prints it without a
traceback and exits with ``exit_code``. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for one-line
    errors that quote a library's failure."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class MixdistillError(Exception):
    """An expected failure with a one-line, self-explaining message."""

    exit_code = 2


class GateFailed(MixdistillError):
    """A quality gate (a data contract) refused the data; the outputs were written for inspection."""

    exit_code = 3
