"""What every stage script shares: its command line and how a failure ends it.

:func:`parser` gives each stage ``--params`` and ``--no-mlflow``; :func:`run` calls the stage's
body and turns an expected failure (:class:`common.errors.MixdistillError`, a missing input
file) into one ``error: <stage>: <message>`` line on stderr and the error's exit code (2 for bad
input, params or an unreachable tracking server, 3 for a failed data contract, 4 when the outputs
are complete but logging them to MLflow failed part-way), with no traceback. Anything else is a bug and
keeps its traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from common.errors import MixdistillError
from common.params import ParamsError


def parser(doc: str | None, prog: str | None = None, mlflow: bool = True,
           fan: str | None = None) -> argparse.ArgumentParser:
    """``--params`` and ``--no-mlflow``, plus the required ``--source``/``--mix`` of a fanned stage."""
    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    if mlflow:
        ap.add_argument("--no-mlflow", action="store_true", help="write the outputs but log nothing to MLflow")
    if fan:
        ap.add_argument(f"--{fan}", required=True, help=f"the {fan} this run of the stage is for")
    return ap


def pick(name: str, known: dict, fan: str):
    """``known[name]``, or a ParamsError naming the flag and the choices."""
    if name not in known:
        raise ParamsError(f"--{fan}: unknown {fan} '{name}' (known: {sorted(known)})")
    return known[name]


def run(stage: str, body: Callable[[], int | None]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Great Expectations logs ~200 INFO lines of its own set-up per contract: noise in dvc's logs
    logging.getLogger("great_expectations").setLevel(logging.WARNING)
    try:
        return body() or 0
    except MixdistillError as exc:
        print(f"error: {stage}: {exc}", file=sys.stderr)
        return exc.exit_code
    except FileNotFoundError as exc:
        print(f"error: {stage}: {exc}", file=sys.stderr)
        return 2
