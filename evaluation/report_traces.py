"""The report's trace learnability section: the student's own loss on each curated source's kept
traces before any training (``student_nll``, nats per response token, written by the curate stage
when ``curate.score.enabled``), per source, CoT style and teacher.

This is the paper's question asked of the traces themselves: which teachers and styles sit
closest to what the student already says. Rows the curate stage did not score (``max_rows``
scores a seeded subset) are null and left out; the table says how many were scored of how many
kept. A plot (``plots/student_nll.png``) shows each source's distribution.
"""
from __future__ import annotations

from pathlib import Path

from common import layout as names
from common.io import read_parquet

_COLUMNS = ("student_nll", "style", "teacher", "teacher_size")


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on a sorted list."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _summary(values: list[float]) -> dict:
    v = sorted(values)
    return {"scored": len(v), "mean": sum(v) / len(v), "median": _quantile(v, 0.5),
            "p10": _quantile(v, 0.1), "p90": _quantile(v, 0.9)}


def collect(curated_root: Path, sources: list[str]) -> dict[str, dict]:
    """``{source: {style, teacher, teacher_size, kept, scored, mean, median, p10, p90, values}}``
    for each source whose kept set carries scores; sources without the column are left out."""
    out = {}
    for source in sources:
        path = Path(curated_root) / source / names.KEPT
        if not path.exists():
            continue
        frame = read_parquet(path)
        if "student_nll" not in frame.columns:
            continue
        frame = frame.select([c for c in _COLUMNS if c in frame.columns])
        scored = frame.filter(frame["student_nll"].is_not_null() & frame["student_nll"].is_finite())
        if scored.height == 0:
            continue
        first = scored.row(0, named=True)
        teachers = sorted(set(scored["teacher"].to_list())) if "teacher" in scored.columns else []
        values = scored["student_nll"].to_list()
        out[source] = {"style": first.get("style"), "teacher": ", ".join(teachers),
                       "teacher_size": first.get("teacher_size"), "kept": frame.height,
                       **_summary(values), "values": values}
    return out


def by_group(per_source: dict[str, dict], key: str) -> dict[str, dict]:
    """The scored values of every source pooled by ``key`` (style or teacher_size)."""
    pooled: dict[str, list[float]] = {}
    for row in per_source.values():
        pooled.setdefault(str(row[key]), []).extend(row["values"])
    return {group: _summary(values) for group, values in sorted(pooled.items())}


def section(per_source: dict[str, dict]) -> tuple[list[str], dict]:
    """Markdown lines and the ``trace_nll`` block of metrics.json (no per-row values)."""
    if not per_source:
        return (["", "## Trace learnability (student NLL before training)", "",
                 "No curated source carries `student_nll` (set `curate.score.enabled: true`)."], {})
    lines = ["", "## Trace learnability (student NLL before training)", "",
             "The untrained student's mean loss per response token on each source's kept traces, under "
             "the chat template and assistant-only mask the trainer uses (lower: closer to what the "
             "student already writes). Only the scored rows count (`curate.score.max_rows` scores a "
             "seeded subset of each source).", "",
             "| source | style | teacher | scored / kept | mean | median | p10 | p90 |",
             "|---|---|---|---|---|---|---|---|"]
    for source, r in per_source.items():
        lines.append(f"| {source} | {r['style']} | {r['teacher']} ({r['teacher_size']}) | {r['scored']} / {r['kept']} "
                     f"| {r['mean']:.3f} | {r['median']:.3f} | {r['p10']:.3f} | {r['p90']:.3f} |")
    metrics = {"by_source": {s: {k: v for k, v in r.items() if k != "values"} for s, r in per_source.items()}}
    for key, title in (("style", "style"), ("teacher_size", "teacher size")):
        groups = by_group(per_source, key)
        metrics[f"by_{key}"] = groups
        lines += ["", f"By {title} (sources pooled): " + "; ".join(
            f"{g} {s['mean']:.3f} (median {s['median']:.3f}, n={s['scored']})" for g, s in groups.items()) + "."]
    return lines, metrics


def plot(per_source: dict[str, dict], out: Path) -> None:
    """One box per source: the distribution of its traces' student NLL."""
    if not per_source:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(per_source)
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(labels)), 4))
    ax.boxplot([per_source[s]["values"] for s in labels], tick_labels=[f"{s}\n({per_source[s]['style']})"
                                                                     for s in labels])
    ax.set_ylabel("student NLL (nats per response token)")
    ax.set_title("trace learnability before training, by source")
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(Path(out) / "student_nll.png", dpi=100)
    plt.close(fig)
