"""The report's held-out loss table: each model's mean NLL per response token on held-out traces
of each CoT style, and its change from the base model with a paired bootstrap interval over
trace ids (:mod:`evaluation.stats`).

Reads ``<paths.heldout>/scores/<model>.json`` (``Layout.heldout_scores``), written by the
held-out scoring stage (:mod:`evaluation.heldout`)::

    {"model": "<name>", "styles": {"long": {"mean_nll": float, "n_traces": int, "n_tokens": int,
                                            "per_trace": {"<trace_id>": float, ...}}, "short": {...}}}

``mean_nll`` is the mean over traces of each trace's mean NLL per response token, so it must equal
the mean of ``per_trace``; a file where it does not is refused (its interval would be about a
different number than the one printed). A file with no styles (no held-out problems) carries a
``note``. No held-out path in the layout, no scores, or only empty ones: the report says so in
one line and carries on.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from common.params import is_int, is_number
from evaluation.config import BootstrapParams
from evaluation.report_stats import ReportError, fmt_interval
from evaluation.stats import pair_by_id, paired_difference


def score_files(layout, models: list[str]) -> dict[str, Path] | None:
    """Each model's held-out scores path, or None for a layout without held-out paths."""
    locate = getattr(layout, "heldout_scores", None)
    return None if locate is None else {m: Path(locate(m)) for m in models}


def _style(data, path: Path, style: str) -> dict:
    where = f"{path}: styles.{style}"
    if not isinstance(data, dict):
        raise ReportError(f"{where}: expected a mapping")
    per = data.get("per_trace")
    if not isinstance(per, dict) or not per:
        raise ReportError(f"{where}.per_trace: missing, empty or not a mapping of trace id to loss")
    bad = next((t for t, v in per.items() if not is_number(v)), None)
    if bad is not None:
        raise ReportError(f"{where}.per_trace.{bad}: {per[bad]!r} is not a finite number")
    for key in ("n_traces", "n_tokens"):
        if not is_int(data.get(key)) or data[key] < 0:
            raise ReportError(f"{where}.{key}: {data.get(key)!r} is not a non-negative integer")
    if data["n_traces"] != len(per):
        raise ReportError(f"{where}.n_traces: {data['n_traces']} but per_trace holds {len(per)} traces")
    mean = data.get("mean_nll")
    if not is_number(mean):
        raise ReportError(f"{where}.mean_nll: {mean!r} is not a finite number")
    if not math.isclose(mean, sum(per.values()) / len(per), rel_tol=1e-6, abs_tol=1e-9):
        raise ReportError(f"{where}.mean_nll: {mean} is not the mean of per_trace "
                          f"({sum(per.values()) / len(per)}); expected the mean over traces")
    return {"mean_nll": float(mean), "per_trace": per}


def read_scores(files: dict[str, Path]) -> tuple[dict, list[str]]:
    """({model: {style: {"mean_nll", "per_trace"}}} for the models whose file has styles, the notes
    of files without any)."""
    out, notes = {}, []
    for model, path in files.items():
        if not path.exists():
            continue
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}: not valid JSON ({exc.msg})") from exc
        if not isinstance(doc, dict) or doc.get("model") != model:
            raise ReportError(f"{path}: field 'model' is {doc.get('model') if isinstance(doc, dict) else None!r}, "
                              f"expected '{model}' (the file's name)")
        styles = doc.get("styles")
        if not isinstance(styles, dict):
            raise ReportError(f"{path}: field 'styles' missing or not a mapping")
        if not styles:
            notes.append(str(doc.get("note") or "no styles scored"))
            continue
        out[model] = {style: _style(data, path, style) for style, data in styles.items()}
    return out, notes


def section(files: dict[str, Path] | None, baseline: str, boot: BootstrapParams) -> tuple[list, dict, dict]:
    """(markdown lines, ``heldout_loss`` for metrics.json or {}, intervals ``heldout/<style>/<model>``)
    for the models of ``files`` (:func:`score_files`)."""
    if files is None:
        return ["", "Held-out loss: not computed (the project layout has no held-out path)."], {}, {}
    models = list(files)
    found, notes = read_scores(files)
    if not found:
        where = files[baseline].parent if baseline in files else "the held-out scores folder"
        why = f"the scores say: {'; '.join(sorted(set(notes)))}" if notes else \
            f"no `<model>.json` under `{where}`; the held-out scoring stages write them"
        return ["", f"Held-out loss: not computed ({why})."], {}, {}
    styles = sorted({s for per in found.values() for s in per})
    base = found.get(baseline, {})
    table = {model: {s: per[s]["mean_nll"] if s in per else None for s in styles} for model, per in found.items()}
    intervals = {}
    for model, per in found.items():
        for style in styles if model != baseline else ():
            iv = None
            if style in per and style in base:
                _, x, y = pair_by_id(per[style]["per_trace"], base[style]["per_trace"])
                iv = paired_difference(x, y, boot.resamples, boot.seed, boot.confidence, mcnemar=False)
            intervals[f"heldout/{style}/{model}"] = {"heldout": iv}
    lines = ["", "## Held-out loss by style", "",
             "Mean NLL per response token on held-out traces (mean over traces), lower is better. "
             f"Change from `{baseline}`: paired over trace ids, {boot.confidence:.0%} bootstrap interval "
             "(intervals over the traces both models scored; † where that is fewer than the model's own).", "",
             "| model | " + " | ".join(styles) + " | " + " | ".join(f"{s} − {baseline}" for s in styles) + " |",
             "|---|" + "---|" * (2 * len(styles))]
    for model, row in table.items():
        changes = []
        for s in styles:
            if model == baseline:
                changes.append("—")
                continue
            iv = intervals[f"heldout/{s}/{model}"]["heldout"]
            own = len(found[model][s]["per_trace"]) if s in found[model] else None
            changes.append(fmt_interval(None if iv is None else iv.estimate, iv, True, boot.confidence, own))
        lines.append(f"| {model} | " + " | ".join("n/a" if row[s] is None else f"{row[s]:.3f}" for s in styles)
                     + " | " + " | ".join(changes) + " |")
    counts = {s: sorted({len(p[s]["per_trace"]) for p in found.values() if s in p}) for s in styles}
    lines += ["", "Traces per style: " + ", ".join(f"{s}: {'/'.join(map(str, n))}" for s, n in counts.items())
              + ". " + ("" if baseline in found else f"No scores for `{baseline}`: no changes. ")
              + "Not scored: " + (", ".join(m for m in models if m not in found) or "none") + "."]
    return lines, table, intervals
