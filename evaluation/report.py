"""The report: every evaluated model on every benchmark, ΔLong / ΔLarge, mix gains, plots.

    ΔLong  = P(long)  - P(short)     (same teacher size, long vs short chain of thought)
    ΔLarge = P(large) - P(small)     (same CoT style, large vs small teacher)

and each mix against its parts (mix_long vs long and short; mix_large vs large and small). Which
mix plays which role is the ``report:`` section of params.yaml. Reads ``<eval>/<model>/scores.json``
and ``graded.jsonl``; writes ``<reports>/summary.md``, ``metrics.json``, ``plots/accuracy.json``
(for ``dvc plots``), ``accuracy.png`` and ``response_lengths.png``.

Models evaluated under ``eval.protocol: paper`` carry mixdistill's own grading of the same samples
as ``mixdistill_<metric>``: the report then shows it beside the protocol's (the metric, ΔLong and
ΔLarge both ways; ``metrics.json`` under ``mixdistill``), so that the effect of the scoring rule
is visible, and it warns when models were scored under different protocols.

Every accuracy, delta and gain carries a paired bootstrap interval over problems and, for deltas
and gains, the exact McNemar p (:mod:`evaluation.report_stats`, :mod:`evaluation.stats`), in the
tables and in ``metrics.json`` under ``intervals``; a delta whose interval contains 0 is marked
"(noise)". Where ``paths.heldout`` has scores, a held-out loss table follows
(:mod:`evaluation.report_heldout`).
"""
from __future__ import annotations

import json
from pathlib import Path

from common import layout as names
from common.io import JsonlError, atomic_file, iter_jsonl, write_json
from common.layout import Layout
from evaluation import report_heldout, report_sweep, report_traces
from evaluation.config import ReportParams
from evaluation.report_stats import (MIXDISTILL_PREFIX, ReportError, as_json, comparisons, fmt_interval,
                                     grader_intervals, intervals, per_problem, slim_sample)

__all__ = ["ReportError", "build_report", "collect", "compare", "summary_markdown"]


def collect(eval_dir: Path, models: list[str]) -> tuple[dict, dict, dict, list[str]]:
    """scores[model][benchmark], response token counts and per-sample verdicts (None where
    graded.jsonl has no per-problem ids) per model, for the models evaluated."""
    scores, lengths, samples, missing = {}, {}, {}, []
    for m in models:
        path = eval_dir / m / names.SCORES
        if not path.exists():
            missing.append(m)
            continue
        try:
            scores[m] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}: not valid JSON ({exc.msg}); rerun `python -m pipelines.eval --model {m}`")
        graded = eval_dir / m / names.GRADED
        lengths[m], kept, with_ids = [], [], None
        if graded.exists():
            try:
                for n, rec in iter_jsonl(graded):
                    if not isinstance(rec.get("completion_tokens"), int):
                        raise ReportError(f"{graded}: line {n}: field 'completion_tokens' missing or not an integer")
                    lengths[m].append(rec["completion_tokens"])
                    slim = slim_sample(rec, graded, n)
                    if with_ids is None:
                        with_ids = slim is not None
                    elif with_ids != (slim is not None):       # one run writes ids on every line or none
                        raise ReportError(f"{graded}: line {n}: field 'problem_id' "
                                          f"{'present' if with_ids is False else 'missing'}, unlike the first line")
                    if slim is not None:
                        kept.append(slim)
            except JsonlError as exc:
                raise ReportError(str(exc)) from exc
        samples[m] = kept or None
    return scores, lengths, samples, missing


def _value(scores: dict, model: str, bench: str, metric: str, required: bool = True) -> float | None:
    m = scores.get(model, {}).get(bench)
    if m is None:
        return None
    if metric not in m:
        if not required:
            return None
        raise ReportError(f"scores of '{model}' on '{bench}': no metric '{metric}' (have {sorted(m)})")
    return m[metric]


def _diff(a, b):
    return None if a is None or b is None else a - b


def _tables(scores: dict, cfg: ReportParams, benches: list[str], metric: str, required: bool) -> dict:
    def delta(x, y):
        return {b: _diff(_value(scores, x, b, metric, required), _value(scores, y, b, metric, required))
                for b in benches}

    diffs = {name: delta(a, b) for name, (a, b) in comparisons(cfg).items()}
    return {
        metric: {m: {b: _value(scores, m, b, metric, required) for b in benches} for m in scores},
        "delta_long": diffs.pop("delta_long"),
        "delta_large": diffs.pop("delta_large"),
        "gains": {name.removeprefix("gain/"): d for name, d in diffs.items()},
    }


def _per_problem(scores: dict, samples: dict, metric: str, eval_dir: Path) -> dict:
    values = {m: per_problem(samples.get(m), metric, scores[m], eval_dir / m / names.GRADED) for m in scores}
    return {m: v for m, v in values.items() if v is not None}


def compare(scores: dict, cfg: ReportParams, samples: dict | None = None, eval_dir: Path = Path(".")) -> dict:
    """Accuracies, deltas and gains from ``scores``; their intervals from ``samples`` (per-sample
    verdicts by model, as :func:`collect` reads them)."""
    benches = sorted({b for per_model in scores.values() for b in per_model})
    result = {"metric": cfg.metric, "benchmarks": benches, **_tables(scores, cfg, benches, cfg.metric, True),
              "roles": {"long": cfg.long, "short": cfg.short, "large": cfg.large, "small": cfg.small,
                        "mix_long": cfg.mix_long, "mix_large": cfg.mix_large},
              "protocols": {m: ", ".join(sorted({per.get("protocol", "mixdistill") for per in scores[m].values()}))
                            for m in scores}}
    values = _per_problem(scores, samples or {}, cfg.metric, eval_dir)
    result["intervals"] = intervals(values, list(scores), benches, cfg)
    result["confidence"] = cfg.bootstrap.confidence
    ours = MIXDISTILL_PREFIX + cfg.metric
    if any(ours in per for per_model in scores.values() for per in per_model.values()):
        result["mixdistill"] = {"metric": ours, **_tables(scores, cfg, benches, ours, False)}
        our_values = _per_problem(scores, samples or {}, ours, eval_dir)
        result["intervals"].update(intervals(our_values, list(scores), benches, cfg, prefix="mixdistill/"))
        result["intervals"].update(grader_intervals(values, our_values, list(scores), benches, cfg.bootstrap))
    return result


def _fmt(v, signed=False) -> str:
    if v is None:
        return "n/a"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def _cell(result: dict, scores: dict, quantity: str, bench: str, value, models: tuple[str, ...]) -> str:
    """A printed number with its interval; † where the interval covers fewer problems than the
    models were evaluated on (it pairs only problems both answered)."""
    evaluated = [scores[m][bench]["n_problems"] for m in models if bench in scores.get(m, {})]
    return fmt_interval(value, result["intervals"].get(quantity, {}).get(bench), len(models) > 1,
                        result["confidence"], max(evaluated, default=None))


def _noise_note(result: dict, n_problems: dict, boot) -> str:
    counted = [iv for per in result["intervals"].values() for iv in per.values() if iv is not None]
    text = ("Problems per benchmark: " + ", ".join(f"{b}: {n}" for b, n in n_problems.items())
            + " (one problem moves accuracy by " + ", ".join(f"{1 / n:.3f}" for n in n_problems.values() if n) + "). ")
    if not counted:
        return text + ("No intervals: no model's graded.jsonl has per-problem verdicts for this metric, so "
                       "no delta here can be told apart from noise.")
    return text + (f"Brackets: {boot.confidence:.0%} paired bootstrap interval over problems ({boot.resamples:,} "
                   f"resamples of the problems with replacement, the same draws for both models, seed {boot.seed}); "
                   "p: exact McNemar test on the problems the two models disagree on; **(noise)**: the interval "
                   f"contains 0 or p >= {1 - boot.confidence:.2g}, so that difference is not distinguishable from "
                   "noise. An accuracy of 0 or 1 gets a zero-width interval (no resample can differ), which is "
                   "no certainty. † pairs fewer problems than were evaluated. A number without brackets has no "
                   "per-problem verdicts behind it.")


def summary_markdown(result: dict, scores: dict, lengths: dict, missing: list[str], cfg: ReportParams,
                     heldout_lines: list[str] = ()) -> str:
    benches, metric = result["benchmarks"], result["metric"]
    lines = ["# mixdistill evaluation summary", "",
             f"Metric: `{metric}` (greedy unless eval.sampling says otherwise).", "",
             "| model | " + " | ".join(benches) + " | mean tokens | truncated |",
             "|---|" + "---|" * (len(benches) + 2)]
    for m, row in result[metric].items():
        toks = [scores[m][b]["mean_response_tokens"] for b in benches if b in scores[m]]
        trunc = [scores[m][b]["truncation_rate"] for b in benches if b in scores[m]]
        lines.append(f"| {m} | " + " | ".join(_cell(result, scores, f"{metric}/{m}", b, row[b], (m,)) for b in benches)
                     + f" | {sum(toks) / len(toks):.0f} | {sum(trunc) / len(trunc):.2f} |")
    r, pairs = result["roles"], comparisons(cfg)
    labels = {"delta_long": f"ΔLong = P(long: {r['long']}) − P(short: {r['short']})",
              "delta_large": f"ΔLarge = P(large: {r['large']}) − P(small: {r['small']})",
              **{f"gain/{name}": name.replace("_vs_", " − ") for name in result["gains"]}}
    lines += ["", "## Deltas", "", "| quantity | " + " | ".join(benches) + " |", "|---|" + "---|" * len(benches)]
    for quantity, label in labels.items():
        per = result["gains"][quantity[5:]] if quantity.startswith("gain/") else result[quantity]
        lines.append(f"| {label} | " + " | ".join(_cell(result, scores, quantity, b, per[b], pairs[quantity])
                                                 for b in benches) + " |")
    n_problems = {b: max((scores[m][b]["n_problems"] for m in scores if b in scores[m]), default=0) for b in benches}
    lines += ["", _noise_note(result, n_problems, cfg.bootstrap)]
    lines += _protocol_lines(result, scores, pairs)
    if missing:
        lines += ["", "Not evaluated (no scores.json): " + ", ".join(missing) + "."]
    lines += list(heldout_lines)
    lines += ["", "Plots: `accuracy.png`, `response_lengths.png`.", ""]
    return "\n".join(lines)


def _protocol_lines(result: dict, scores: dict, pairs: dict) -> list[str]:
    """The protocol's scores beside mixdistill's grader on the same samples, and a warning when
    models were scored under different protocols."""
    lines, protocols = [], result["protocols"]
    if len(set(protocols.values())) > 1:
        lines += ["", "**Warning:** models were scored under different eval protocols ("
                  + ", ".join(f"{m}: {p}" for m, p in protocols.items())
                  + f"); their `{result['metric']}` values are not comparable."]
    ours = result.get("mixdistill")
    if ours is None:
        return lines
    benches, metric, r = result["benchmarks"], result["metric"], result["roles"]
    lines += ["", "## Scoring rule: the eval protocol vs mixdistill's grader", "",
              f"The same samples scored twice: `{metric}` by the protocol each model was evaluated under, "
              f"`{ours['metric']}` by mixdistill's grader (rule + judge as configured).", "",
              "| model | benchmark | protocol | protocol score | mixdistill | protocol − mixdistill |",
              "|---|---|---|---|---|---|"]
    for m, row in result[metric].items():
        for b in benches:
            if row[b] is not None:
                theirs = ours[ours["metric"]][m][b]
                lines.append(f"| {m} | {b} | {protocols[m]} | {_fmt(row[b])} | "
                             f"{_cell(result, scores, f'mixdistill/{metric}/{m}', b, theirs, (m,))} | "
                             f"{_cell(result, scores, f'grader/{m}', b, _diff(row[b], theirs), (m, m))} |")
    lines += ["", "| quantity (grader) | " + " | ".join(benches) + " |", "|---|" + "---|" * len(benches)]
    for key, label in (("delta_long", f"ΔLong = P({r['long']}) − P({r['short']})"),
                       ("delta_large", f"ΔLarge = P({r['large']}) − P({r['small']})")):
        for grader, table, prefix in (("protocol", result, ""), ("mixdistill", ours, "mixdistill/")):
            lines.append(f"| {label} ({grader}) | " + " | ".join(
                _cell(result, scores, prefix + key, b, table[key][b], pairs[key]) for b in benches) + " |")
    return lines


def plot(result: dict, lengths: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")          # no display on servers and CI
    import matplotlib.pyplot as plt

    benches, metric = result["benchmarks"], result["metric"]
    models = list(result[metric])
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(models) * max(1, len(benches)) / 2), 4))
    width = 0.8 / max(1, len(benches))
    for j, b in enumerate(benches):
        vals = [result[metric][m][b] or 0.0 for m in models]
        ax.bar([i + j * width for i in range(len(models))], vals, width, label=b)
    ax.set_xticks([i + width * (len(benches) - 1) / 2 for i in range(len(models))], models, rotation=30)
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.set_title(f"{metric} by model")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=100)
    plt.close(fig)

    with_lengths = [m for m in models if lengths.get(m)]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(with_lengths)), 4))
    if with_lengths:
        ax.boxplot([lengths[m] for m in with_lengths], tick_labels=with_lengths)
    ax.set_ylabel("response tokens")
    ax.set_title("response length by model")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(out / "response_lengths.png", dpi=100)
    plt.close(fig)


def _arm_lines(arms: dict | None) -> list[str]:
    """The training recipe of each arm and the ways arms differ other than their data."""
    if not arms:
        return []
    lines = ["", "## Arms: training recipe and parity", "",
             "| arm | cutoff | packing | batch x accum (per device) | lr | epochs | max steps | over cutoff |",
             "|---|---|---|---|---|---|---|---|"]
    for mix, arm in arms["arms"].items():
        r = arm["recipe"]
        lines.append(f"| {mix} | {r['cutoff_len']} | {r['packing']} | {r['per_device_batch_size']} x {r['grad_accum']} "
                     f"| {r['learning_rate']:g} | {r['epochs']} | {r['max_steps'] or '-'} | {r['over_cutoff']} |")
    if arms["parity"]:
        lines += ["", "**The arms differ in more than their data**, so a difference in their scores is not the "
                  "data's alone:"] + [f"- {note}" for note in arms["parity"]]
    else:
        lines += ["", "Only the data differs between arms."]
    lines += ["", "Per arm, optimizer steps, tokens seen and rows truncated or dropped at the cutoff are in "
              "`<checkpoints>/<mix>.train_metrics.json` and its MLflow run; `mixdistill recipe` prints them "
              "for built mixes before training."]
    return lines


def build_report(layout: Layout, cfg: ReportParams, mixes: list[str], arms: dict | None = None,
                 sources: list[str] | None = None) -> dict:
    """The report; ``arms`` (``pipelines.recipe.describe``) adds each arm's recipe and parity,
    ``sources`` the student NLL of each curated source's traces (where curation scored them)."""
    models = [cfg.baseline] + [m for m in mixes if m != cfg.baseline]
    scores, lengths, samples, missing = collect(layout.eval_root, models)
    if not scores:
        raise FileNotFoundError(f"{layout.eval_root}: no model has scores.json yet (run the eval stage)")
    result = compare(scores, cfg, samples, layout.eval_root)
    heldout_lines, heldout_loss, heldout_intervals = report_heldout.section(
        report_heldout.score_files(layout, models), cfg.baseline, cfg.bootstrap)
    result["intervals"].update(heldout_intervals)
    out = layout.reports
    (out / "plots").mkdir(parents=True, exist_ok=True)
    metrics = {k: result[k] for k in (cfg.metric, "delta_long", "delta_large", "gains")}
    ours = result.get("mixdistill")
    if ours is not None:
        metrics["mixdistill"] = ours
    if arms:
        metrics["arms"] = {"recipes": {m: a["recipe"] for m, a in arms["arms"].items()}, "parity": arms["parity"]}
    if heldout_loss:
        metrics["heldout_loss"] = heldout_loss
    metrics["intervals"] = as_json(result["intervals"])
    metrics["bootstrap"] = {"resamples": cfg.bootstrap.resamples, "seed": cfg.bootstrap.seed,
                            "confidence": cfg.bootstrap.confidence}
    traces = report_traces.collect(layout.curated_root, sources or [])
    trace_lines, trace_metrics = report_traces.section(traces)
    if trace_metrics:
        metrics["trace_nll"] = trace_metrics
    write_json(out / "metrics.json", metrics)
    sweep_accuracy, sweep_heldout = report_sweep.points(Path(layout.paths.mixes), mixes, result, heldout_loss or {})
    write_json(out / "plots" / "shares.json", sweep_accuracy)
    write_json(out / "plots" / "heldout_shares.json", sweep_heldout)
    report_traces.plot(traces, out)
    write_json(out / "plots" / "accuracy.json",
               [{"model": m, "benchmark": b, cfg.metric: v,
                 **({ours["metric"]: ours[ours["metric"]][m][b]} if ours is not None else {})}
                for m, row in result[cfg.metric].items() for b, v in row.items() if v is not None])
    plot(result, lengths, out)
    with atomic_file(out / "summary.md", encoding="utf-8") as f:
        f.write(summary_markdown(result, scores, lengths, missing, cfg, heldout_lines + trace_lines)
                + "\n".join(_arm_lines(arms)) + ("\n" if arms else ""))
    return {**result, "missing": missing, "heldout_loss": heldout_loss}
