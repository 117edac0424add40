"""Held-out loss per style: a model's scores on the held-out trace set, summarised.

The set (``data/heldout/traces.parquet``, stage ``heldout``) holds teacher traces of the held-out
problems, per style. Scoring them is teacher-forced (no generation), so it stays informative where
generation is cut at a small token budget: on CPU most eval responses hit the limit, while the loss
on a whole long or short trace shows which style a checkpoint has moved towards.

The scores file of one model (read by the report)::

    {"model": "<name>", "styles": {"long": {"mean_nll": float, "n_traces": int, "n_tokens": int,
                                            "per_trace": {"<trace_id>": float}}, "short": {...}}}

``mean_nll`` is the mean over traces of each trace's mean NLL per response token (nats), so every
trace weighs the same whatever its length. A style with no held-out trace has no entry; with no
held-out problems at all, ``styles`` is empty and ``note`` says so. Scores are duck-typed
(``mean_nll``, ``n_tokens``), so this module needs nothing from the training package.
"""
from __future__ import annotations

import math
from pathlib import Path

import polars as pl

from common.errors import MixdistillError
from common.io import read_parquet
from common.layout import HELDOUT_COLUMNS, NO_HELDOUT


class HeldoutError(MixdistillError):
    """The held-out set or its scores cannot be used as they are; the message says where."""


def read_heldout(path: str | Path) -> pl.DataFrame:
    """The held-out traces, with every column the scoring needs and unique trace ids."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found; run the heldout stage first")
    frame = read_parquet(path)
    missing = [c for c in HELDOUT_COLUMNS if c not in frame.columns]
    if missing:
        raise HeldoutError(f"{path}: missing column(s) {missing}; rebuild it with the heldout stage")
    dup = frame.filter(pl.col("trace_id").is_duplicated())
    if dup.height:
        raise HeldoutError(f"{path}: trace_id '{dup['trace_id'][0]}' appears {dup.height} times; "
                           "scores are keyed by trace id")
    for col in ("trace_id", "style", "problem", "response"):
        rows = frame.with_row_index("_row", offset=1).filter(pl.col(col).is_null())["_row"]
        if rows.len():
            raise HeldoutError(f"{path}: row {rows[0]}: field '{col}' is null")
    return frame


def no_heldout_scores(model: str) -> dict:
    return {"model": model, "styles": {}, "note": NO_HELDOUT}


def summarise_scores(model: str, traces: pl.DataFrame, scores: list) -> dict:
    """The scores file of ``model`` (module doc) from one score per row of ``traces``."""
    if len(scores) != traces.height:
        raise HeldoutError(f"model '{model}': {len(scores)} scores for {traces.height} held-out traces")
    if traces.height == 0:
        return no_heldout_scores(model)
    styles: dict[str, dict] = {}
    for trace_id, style, score in zip(traces["trace_id"].to_list(), traces["style"].to_list(), scores):
        if score.n_tokens <= 0 or not math.isfinite(score.mean_nll):
            raise HeldoutError(f"model '{model}': held-out trace '{trace_id}' scored no response token "
                               f"(mean_nll {score.mean_nll}); rebuild the held-out set")
        entry = styles.setdefault(style, {"per_trace": {}, "n_tokens": 0})
        entry["per_trace"][trace_id] = float(score.mean_nll)
        entry["n_tokens"] += int(score.n_tokens)
    out = {}
    for style in sorted(styles):
        per_trace = styles[style]["per_trace"]
        out[style] = {"mean_nll": math.fsum(per_trace.values()) / len(per_trace), "n_traces": len(per_trace),
                      "n_tokens": styles[style]["n_tokens"], "per_trace": per_trace}
    return {"model": model, "styles": out}


def nll_metrics(summary: dict) -> dict[str, float]:
    """``heldout/<style>/nll`` for the model's MLflow run."""
    return {f"heldout/{style}/nll": s["mean_nll"] for style, s in summary["styles"].items()}
