"""The report's trace learnability table (student_nll of curated traces) and the ratio-sweep
points (achieved shares beside accuracy and held-out loss)."""
from __future__ import annotations

import polars as pl
import pytest

from evaluation import report_sweep, report_traces
from evaluation.stats import Interval


def write_kept(root, source, nll, style="short", teacher="T", size="small"):
    (root / source).mkdir(parents=True)
    pl.DataFrame({"student_nll": nll, "style": [style] * len(nll), "teacher": [teacher] * len(nll),
                  "teacher_size": [size] * len(nll)}, schema_overrides={"student_nll": pl.Float64}
                 ).write_parquet(root / source / "kept.parquet")


def test_scored_rows_are_summarised_per_source_and_pooled_by_style(tmp_path):
    write_kept(tmp_path, "a", [1.0, 2.0, 3.0, None, 4.0], style="long", size="large")
    write_kept(tmp_path, "b", [0.5, 1.5])
    (tmp_path / "c").mkdir()
    pl.DataFrame({"style": ["short"]}).write_parquet(tmp_path / "c" / "kept.parquet")   # never scored
    per = report_traces.collect(tmp_path, ["a", "b", "c", "missing"])
    assert list(per) == ["a", "b"]
    a = per["a"]
    assert (a["kept"], a["scored"], a["mean"], a["median"]) == (5, 4, 2.5, 2.5)
    assert a["p10"] == pytest.approx(1.3) and a["p90"] == pytest.approx(3.7)   # numpy's linear rule
    lines, metrics = report_traces.section(per)
    assert "| a | long | T (large) | 4 / 5 | 2.500 | 2.500 | 1.300 | 3.700 |" in lines
    assert metrics["by_style"]["short"]["mean"] == 1.0 and metrics["by_style"]["long"]["scored"] == 4
    assert "values" not in metrics["by_source"]["a"]
    report_traces.plot(per, tmp_path)
    assert (tmp_path / "student_nll.png").stat().st_size > 0


def test_no_scores_say_how_to_get_them(tmp_path):
    lines, metrics = report_traces.section(report_traces.collect(tmp_path, ["a"]))
    assert metrics == {} and any("curate.score.enabled: true" in line for line in lines)


def test_sweep_points_use_the_achieved_shares_of_the_rows(tmp_path):
    (tmp_path / "mix_long").mkdir()
    pl.DataFrame({"style": ["long"] + ["short"] * 4, "teacher_size": ["large"] * 2 + ["small"] * 3}
                 ).write_parquet(tmp_path / "mix_long" / "rows.parquet")
    result = {"metric": "accuracy", "accuracy": {"mix_long": {"b1": 0.5}, "base": {"b1": 0.25}},
              "intervals": {"accuracy/mix_long": {"b1": Interval(0.5, 0.25, 0.75, 8)}}}
    accuracy, heldout = report_sweep.points(tmp_path, ["mix_long", "absent"], result,
                                            {"mix_long": {"short": 1.2, "long": 0.9}})
    assert accuracy == [{"mix": "mix_long", "benchmark": "b1", "long_share": 0.2, "large_share": 0.4, "rows": 5,
                         "accuracy": 0.5, "accuracy_low": 0.25, "accuracy_high": 0.75}]
    assert heldout == [{"mix": "mix_long", "long_share": 0.2, "large_share": 0.4, "rows": 5,
                        "heldout_long": 0.9, "heldout_short": 1.2}]
