"""Mix components that select rows by a per-row score (``student_nll``, from ``curate.score``)
instead of uniformly at random: the params form, and the order in which a pool's rows are taken.

Kept pure Python (no polars) because ``curation.config`` imports it and every stage parses params.
"""
from __future__ import annotations

from dataclasses import dataclass

from common.params import ParamsError, is_number

SELECT_BY = ("student_nll",)          # per-row scores a component may select by (curate.score)
SELECT_ORDERS = ("lowest", "highest")


@dataclass(frozen=True)
class Selection:
    """A component that picks its rows by a per-row score instead of uniformly at random: the
    ``order`` (lowest / highest scores first), or a seeded uniform draw among the rows whose score
    lies in ``band`` (nats per token) or between the pool's ``quantiles``; ties go by trace_id."""
    by: str = "student_nll"
    order: str | None = None
    band: tuple[float, float] | None = None
    quantiles: tuple[float, float] | None = None

    def rule(self) -> dict:
        return {"by": self.by, **{k: list(v) if isinstance(v, tuple) else v for k, v in
                                  (("order", self.order), ("band", self.band), ("quantiles", self.quantiles)) if v}}


def parse_selection(value, where: str) -> Selection | None:
    """``select:`` of a mix component: ``random`` (the default), ``lowest_nll`` / ``highest_nll``,
    or ``{by: student_nll, order: lowest|highest}`` / ``{by: ..., band: [low, high]}`` /
    ``{by: ..., quantiles: [q_low, q_high]}``."""
    if value in (None, "random"):
        return None
    shorthand = {f"{o}_nll": {"by": "student_nll", "order": o} for o in SELECT_ORDERS}
    if isinstance(value, str) and value in shorthand:
        value = shorthand[value]
    if not isinstance(value, dict):
        raise ParamsError(f"{where}: {value!r} must be random, {', '.join(shorthand)}, or a mapping "
                          "{by: student_nll, order: lowest|highest | band: [low, high] | quantiles: [q_low, q_high]}")
    unknown = sorted(set(value) - {"by", "order", "band", "quantiles"})
    if unknown:
        raise ParamsError(f"{where}: unknown key(s) {unknown}; expected by and one of order, band, quantiles")
    if value.get("by", "student_nll") not in SELECT_BY:
        raise ParamsError(f"{where}.by: {value.get('by')!r} must be one of {', '.join(SELECT_BY)}")
    rules = [k for k in ("order", "band", "quantiles") if value.get(k) is not None]
    if len(rules) != 1:
        raise ParamsError(f"{where}: set exactly one of order, band, quantiles (got {rules or 'none'})")
    rule = rules[0]
    if rule == "order":
        if value["order"] not in SELECT_ORDERS:
            raise ParamsError(f"{where}.order: {value['order']!r} must be one of {', '.join(SELECT_ORDERS)}")
        return Selection(by=value.get("by", "student_nll"), order=value["order"])
    pair = value[rule]
    if not (isinstance(pair, list) and len(pair) == 2 and all(is_number(x) for x in pair) and pair[0] <= pair[1]):
        raise ParamsError(f"{where}.{rule}: {pair!r} must be a list [low, high] of two numbers with low <= high")
    if rule == "quantiles" and not 0 <= pair[0] <= pair[1] <= 1:
        raise ParamsError(f"{where}.quantiles: {pair!r} must lie within [0, 1]")
    return Selection(by=value.get("by", "student_nll"), **{rule: (float(pair[0]), float(pair[1]))})


def candidate_rows(selection: Selection, scores: list, trace_ids: list[str]) -> tuple[list[int], bool, dict]:
    """``(row indexes, shuffle, record)``: the rows a selection may take, in rank order (``order``)
    or to be drawn uniformly by the caller's seeded rng (``band`` / ``quantiles``: shuffle True),
    and what the manifest records about it. Every score must be present (the caller checks)."""
    record = {"rule": selection.rule(), "pool_rows": len(scores)}
    if selection.order is not None:
        sign = 1.0 if selection.order == "lowest" else -1.0
        return sorted(range(len(scores)), key=lambda i: (sign * scores[i], trace_ids[i])), False, record
    if selection.band is not None:
        low, high = selection.band
    else:
        import numpy as np

        low, high = (float(x) for x in np.quantile(np.asarray(scores, dtype=float), selection.quantiles)) \
            if scores else (0.0, 0.0)
        record["band"] = [low, high]             # the quantiles as nats/token on this pool
    rows = [i for i in range(len(scores)) if low <= scores[i] <= high]
    record["eligible_rows"] = len(rows)
    return rows, True, record
