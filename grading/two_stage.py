"""Two-stage ANTLR parsing for math-verify's LaTeX parser (latex2sympy2_extended).

ANTLR's default prediction mode (full LL) re-runs a full-context simulation, never cached, at every
decision whose cheap (SLL) prediction conflicts; on CHAMP answers that is a quarter of a warm
worker's time. ANTLR documents the standard remedy, two-stage parsing: parse with SLL prediction
and an error strategy that stops at the first error; if that parse succeeds, its tree is the one
LL would have built; if it fails (a real syntax error, or a decision only full context settles),
parse again from scratch exactly as latex2sympy does. latex2sympy's ``math`` rule ends in EOF and
its error listener raises on any error, so "succeeds" means the whole input was read with no error.

Both stages share latex2sympy's prediction cache (its DFA holds SLL results only, the same in
either mode). `tests/grading/test_shortcuts.py` checks the parse of every corpus and CHAMP string
is the same with and without it.
"""
from __future__ import annotations

from contextlib import contextmanager


class _TwoStageParser:
    """Stands in for the ``PSParser`` that ``_Latex2Sympy.create_parser`` returns; ``parse`` only
    calls its ``math()``."""

    def __init__(self, parser, full_parser):
        self._parser, self._full_parser = parser, full_parser

    def math(self):
        from antlr4.atn.PredictionMode import PredictionMode
        from antlr4.error.ErrorStrategy import BailErrorStrategy

        parser = self._parser
        parser._interp.predictionMode = PredictionMode.SLL
        parser._errHandler = BailErrorStrategy()
        try:
            return parser.math()
        except Exception:  # noqa: BLE001 - any failure: latex2sympy's own parser decides, errors included
            return self._full_parser().math()

    def __getattr__(self, name):
        return getattr(self._parser, name)


@contextmanager
def two_stage_parsing():
    """latex2sympy parses with SLL first, full LL on failure, inside this block (the method is
    looked up at call time, so other users of latex2sympy outside the block see it unchanged)."""
    from latex2sympy2_extended.latex2sympy2 import _Latex2Sympy

    original = _Latex2Sympy.create_parser

    def create_parser(self, latex_str):
        return _TwoStageParser(original(self, latex_str), lambda: original(self, latex_str))

    _Latex2Sympy.create_parser = create_parser
    try:
        yield
    finally:
        _Latex2Sympy.create_parser = original
