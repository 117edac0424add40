"""The report's intervals: per-problem values from graded samples, and an interval for every
accuracy, ΔLong, ΔLarge and mix gain the report prints (:mod:`evaluation.stats`).

A model's per-problem value is what its ``scores.json`` metric averages over problems: the share
of its samples judged correct for ``accuracy`` (``correct``; ``rule_correct`` for
``accuracy_rule``), the unbiased pass@k for ``pass@k``, and the same under ``mixdistill_`` from
the ``mixdistill_*`` verdicts a protocol run keeps. Their mean must equal the scores.json value:
a graded.jsonl and scores.json that disagree come from different runs, and intervals on one
beside numbers from the other would be wrong. Models are paired by (benchmark, problem id).
"""
from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path

from common.errors import MixdistillError
from evaluation.config import BootstrapParams, ReportParams
from evaluation.metrics import pass_at_k
from evaluation.stats import Interval, bootstrap_mean, pair_by_id, paired_difference

MIXDISTILL_PREFIX = "mixdistill_"   # evaluation/paper_protocol.py PREFIX: our grader beside a protocol's
VERDICT_FIELDS = ("correct", "rule_correct", MIXDISTILL_PREFIX + "correct", MIXDISTILL_PREFIX + "rule_correct")


class ReportError(MixdistillError, ValueError):
    """An eval output the report reads is damaged; the message names the file (and line)."""


def comparisons(cfg: ReportParams) -> dict[str, tuple[str, str]]:
    """Every difference the report prints: quantity name -> (model, model it is compared with)."""
    return {"delta_long": (cfg.long, cfg.short), "delta_large": (cfg.large, cfg.small),
            **{f"gain/{mix}_vs_{other}": (mix, other)
               for mix, other in ((cfg.mix_long, cfg.long), (cfg.mix_long, cfg.short),
                                  (cfg.mix_large, cfg.large), (cfg.mix_large, cfg.small))}}


def slim_sample(rec: dict, path: Path, line: int) -> dict | None:
    """What the intervals need of one graded record; None for a record without per-problem ids
    (graded before they were written): such a file gives no intervals, it is not damaged."""
    if "problem_id" not in rec and "correct" not in rec:
        return None
    for key, kind, name in (("benchmark", str, "string"), ("problem_id", (str, int), "string or integer"),
                            ("sample_idx", int, "integer"), ("correct", bool, "bool")):
        value = rec.get(key)
        if not isinstance(value, kind) or (key != "correct" and isinstance(value, bool)):
            raise ReportError(f"{path}: line {line}: field '{key}' missing or not a {name}")
    return {"benchmark": rec["benchmark"], "problem_id": rec["problem_id"], "sample_idx": rec["sample_idx"],
            **{k: bool(rec[k]) for k in VERDICT_FIELDS if isinstance(rec.get(k), bool)}}


def _problem_value(metric: str):
    """(verdict field, per-problem function of that field's verdicts) for ``metric``; None where a
    metric has no per-problem form here (maj@k needs answer normalisation; rates are not verdicts)."""
    prefix = MIXDISTILL_PREFIX if metric.startswith(MIXDISTILL_PREFIX) else ""
    base = metric[len(prefix):]
    if base in ("accuracy", "accuracy_rule"):
        return prefix + ("correct" if base == "accuracy" else "rule_correct"), lambda v: sum(v) / len(v)
    k = re.fullmatch(r"pass@(\d+)", base)
    if k:
        return prefix + "correct", lambda v: pass_at_k(len(v), sum(v), int(k.group(1)))
    return None


def per_problem(samples: list[dict] | None, metric: str, scores: dict, path: Path) -> dict | None:
    """{benchmark: {problem id: value}} for ``metric``, checked against ``scores`` (scores.json);
    None where the samples or the metric give no per-problem values."""
    how = _problem_value(metric)
    if not samples or how is None:
        return None
    field, value = how
    groups: dict = defaultdict(lambda: defaultdict(list))
    for s in samples:
        if field not in s:
            return None          # a protocol's mixdistill_* verdicts absent: no per-problem form
        groups[s["benchmark"]][s["problem_id"]].append((s["sample_idx"], s[field]))
    out = {}
    for bench, problems in groups.items():
        out[bench] = {pid: value([ok for _, ok in sorted(v)]) for pid, v in problems.items()}
        expected = scores.get(bench, {}).get(metric)
        got = sum(out[bench].values()) / len(out[bench])
        if expected is not None and not math.isclose(got, expected, rel_tol=1e-9, abs_tol=1e-9):
            raise ReportError(f"{path}: '{bench}': per-problem {metric} averages {got:.6f} but scores.json says "
                              f"{expected:.6f}; the two files are from different eval runs (rerun the eval stage)")
    return out


def _difference(a: dict | None, b: dict | None, boot: BootstrapParams) -> Interval | None:
    if a is None or b is None:
        return None
    _, x, y = pair_by_id(a, b)
    return paired_difference(x, y, boot.resamples, boot.seed, boot.confidence)


def _single(a: dict | None, boot: BootstrapParams) -> Interval | None:
    return None if a is None else bootstrap_mean(list(a.values()), boot.resamples, boot.seed, boot.confidence)


def intervals(values: dict, models: list[str], benches: list[str], cfg: ReportParams, prefix: str = "") -> dict:
    """{quantity: {benchmark: Interval | None}} from ``values[model][benchmark][problem id]``:
    ``<metric>/<model>`` for every model, then every comparison (None where values are missing)."""
    boot = cfg.bootstrap

    def cell(model: str, bench: str) -> dict | None:
        return (values.get(model) or {}).get(bench)

    out = {f"{prefix}{cfg.metric}/{m}": {b: _single(cell(m, b), boot) for b in benches} for m in models}
    for name, (a, b) in comparisons(cfg).items():
        out[prefix + name] = {bench: _difference(cell(a, bench), cell(b, bench), boot) for bench in benches}
    return out


def grader_intervals(protocol: dict, ours: dict, models: list[str], benches: list[str], boot: BootstrapParams) -> dict:
    """``grader/<model>``: the protocol's score minus mixdistill's grader on the same samples."""
    return {f"grader/{m}": {b: _difference((protocol.get(m) or {}).get(b), (ours.get(m) or {}).get(b), boot)
                            for b in benches} for m in models}


def as_json(table: dict) -> dict:
    """{quantity: {benchmark: {"low", "high", "p"}}}, nulls where no interval could be computed."""
    empty = {"low": None, "high": None, "p": None}
    return {q: {b: (iv.as_json() if iv is not None else dict(empty)) for b, iv in per.items()}
            for q, per in table.items()}


def fmt_interval(value: float | None, iv: Interval | None, signed: bool, confidence: float,
                 n_expected: int | None = None) -> str:
    """``+0.200 [-0.050, +0.450] p=0.13 (noise)``; a delta is marked noise when its interval holds 0
    or McNemar does not reject (:meth:`Interval.is_noise`); † marks an interval over fewer problems
    than were evaluated (only those both models answered)."""
    if value is None:
        return "n/a"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    if iv is None:
        return text
    spec = "+.3f" if signed else ".3f"
    text += f" [{iv.low:{spec}}, {iv.high:{spec}}]"
    if iv.p is not None:
        text += f" p={iv.p:.2g}"
    if signed and iv.is_noise(confidence):
        text += " (noise)"
    if n_expected is not None and iv.n < n_expected:
        text += " †"
    return text
