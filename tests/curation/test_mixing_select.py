"""Mix components that select by student NLL: params form, lowest/highest/band picks, manifest, refusals."""
from __future__ import annotations

import json

import polars as pl
import pytest

from common.params import ParamsError
from curation.config import MixParams, parse_mix
from curation.mixing import MixError, build_mix, load_curated, verify_mix_dir, write_mix
from curation.selection import Selection
from tests.curation.test_mixing import _curate

GROUPS = {"short": ["b", "c"]}


def _score(root, name, nll):
    """Give source ``name``'s kept rows the student_nll column (a list, or a function of the row index)."""
    path = root / name / "kept.parquet"
    kept = pl.read_parquet(path)
    values = [nll(i) for i in range(kept.height)] if callable(nll) else nll
    kept.with_columns(pl.Series("student_nll", values, dtype=pl.Float64),
                      pl.Series("student_nll_tokens", [None if v is None else 20 for v in values],
                                dtype=pl.Int64)).write_parquet(path)


@pytest.fixture
def curated(tmp_path):
    root = tmp_path / "curated"
    _curate(root, "a", 20)
    _curate(root, "b", 15)
    _curate(root, "c", 15)
    # Distinct scores in an order unrelated to trace_id: a = 3.0 .. 0.15 falling, b/c interleaved.
    _score(root, "a", lambda i: round(3.0 - 0.15 * i, 4))
    _score(root, "b", lambda i: round(1.0 + 0.2 * ((7 * i) % 15), 4))
    _score(root, "c", lambda i: round(1.1 + 0.2 * ((4 * i) % 15), 4))
    return root


def _sources(root, names=("a", "b", "c")):
    return {n: load_curated(root, n) for n in names}


def _pool(root, names):
    return pl.concat([pl.read_parquet(root / n / "kept.parquet") for n in names])


def _mix(components, size=10, **kw):
    return MixParams(name="m", components=components, size=size, **kw)


def test_lowest_nll_picks_the_lowest_rows_and_records_them(curated, tmp_path):
    mix = _mix({"a": {"share": 0.4, "select": "lowest_nll"}, "short": 0.6})
    assert mix.components == {"a": 0.4, "short": 0.6}
    assert mix.selections == {"a": Selection(order="lowest")}
    rows, manifest = build_mix(mix, GROUPS, _sources(curated), seed=7)
    pool = _pool(curated, ["a"]).sort(["student_nll", "trace_id"])
    want = pool.head(4)["trace_id"].to_list()
    got = rows.filter(pl.col("component") == "a")["trace_id"].to_list()
    assert sorted(got) == sorted(want)
    sel = manifest["selection"]["a"]
    assert sel["rule"] == {"by": "student_nll", "order": "lowest"} and sel["pool_rows"] == 20
    assert sel["rows"] == [[t, "a", s] for t, s in zip(want, pool.head(4)["student_nll"].to_list())]
    assert sel["chosen"] == {"n": 4, "min": 0.15, "max": 0.6, "mean": pytest.approx(0.375)}
    assert manifest["requested"]["a"]["select"] == {"by": "student_nll", "order": "lowest"}
    assert "select" not in manifest["requested"]["short"] and "short" not in manifest["selection"]
    again, manifest2 = build_mix(mix, GROUPS, _sources(curated), seed=7)
    assert again["trace_id"].to_list() == rows["trace_id"].to_list() and manifest2 == manifest
    # The rank order does not depend on the seed; the uniform component's draw does.
    other, _ = build_mix(mix, GROUPS, _sources(curated), seed=8)
    assert sorted(other.filter(pl.col("component") == "a")["trace_id"]) == sorted(want)
    written = write_mix(rows, manifest, tmp_path / "m")
    assert verify_mix_dir(tmp_path / "m", curated)["selection"] == json.loads(json.dumps(written["selection"]))


def test_highest_nll_over_a_group_and_with_a_token_budget(curated):
    rows, manifest = build_mix(_mix({"short": {"share": 1.0, "select": {"by": "student_nll", "order": "highest"}}},
                                    size=5), GROUPS, _sources(curated), seed=1)
    pool = _pool(curated, ["b", "c"]).sort([pl.col("student_nll") * -1, "trace_id"])
    assert sorted(rows["trace_id"]) == sorted(pool.head(5)["trace_id"])
    assert [r[2] for r in manifest["selection"]["short"]["rows"]] == pool.head(5)["student_nll"].to_list()
    budget = MixParams(name="m", components={"a": {"share": 1.0, "select": "lowest_nll"}}, token_budget=500)
    rows, manifest = build_mix(budget, {}, _sources(curated, ["a"]), seed=1)
    assert rows.height == 4 and manifest["achieved"]["a"]["tokens"] == 480       # 4 x 120 <= 500
    assert sorted(rows["trace_id"]) == sorted(_pool(curated, ["a"]).sort("student_nll").head(4)["trace_id"])


def test_band_and_quantiles_draw_at_random_within_the_band(curated):
    band = _mix({"a": {"share": 1.0, "select": {"by": "student_nll", "band": [1.0, 2.0]}}}, size=5)
    rows, manifest = build_mix(band, {}, _sources(curated, ["a"]), seed=3)
    inside = _pool(curated, ["a"]).filter(pl.col("student_nll").is_between(1.0, 2.0))
    assert inside.height == 7 and set(rows["trace_id"]) < set(inside["trace_id"]) and rows.height == 5
    assert manifest["selection"]["a"]["eligible_rows"] == 7
    other, _ = build_mix(band, {}, _sources(curated, ["a"]), seed=4)
    assert set(other["trace_id"]) < set(inside["trace_id"]) and set(other["trace_id"]) != set(rows["trace_id"])
    with pytest.raises(MixError, match=r"needs 8 rows but its curated sources kept only 7 rows within its select rule"):
        build_mix(_mix({"a": {"share": 1.0, "select": {"band": [1.0, 2.0]}}}, size=8), {}, _sources(curated, ["a"]), 3)
    quant = _mix({"a": {"share": 1.0, "select": {"quantiles": [0.0, 0.25]}}}, size=5)
    rows, manifest = build_mix(quant, {}, _sources(curated, ["a"]), seed=3)
    sel = manifest["selection"]["a"]
    assert sel["band"] == [pytest.approx(0.15), pytest.approx(0.8625)] and sel["eligible_rows"] == 5
    assert sorted(rows["trace_id"]) == sorted(_pool(curated, ["a"]).sort("student_nll").head(5)["trace_id"])


def test_select_refuses_a_source_with_unscored_rows(curated):
    _score(curated, "c", [1.0] * 10 + [None] * 5)
    mix = _mix({"short": {"share": 1.0, "select": "lowest_nll"}}, size=4)
    with pytest.raises(MixError, match=r"mix.mixes.m.components.short.select: source 'c' has student_nll for only "
                                       r"10 of its 15 kept rows; .*curate.score.max_rows: null, re-run curate@c"):
        build_mix(mix, GROUPS, _sources(curated), seed=1)
    _curate(curated, "d", 5)                           # curated without scoring: no column at all
    with pytest.raises(MixError, match=r"source 'd' has student_nll for only 0 of its 5 kept rows"):
        build_mix(_mix({"d": {"share": 1.0, "select": "highest_nll"}}, size=2), {}, _sources(curated, ["d"]), 1)
    # A uniform component does not need scores.
    rows, _ = build_mix(_mix({"d": 1.0}, size=2), {}, _sources(curated, ["d"]), 1)
    assert rows.height == 2


def _params(components, score=True, **mix):
    return {"curate": {"score": {"enabled": score}},
            "mix": {"seed": 1, "mixes": {"m": {"size": 10, "components": components, **mix}}}}


SOURCES = {"a": object(), "b": object()}


def test_params_accept_both_forms():
    section = parse_mix(_params({"a": 0.5, "b": {"share": 0.5, "select": {"by": "student_nll", "band": [1, 2]}}}),
                        SOURCES, {})
    m = section.mixes["m"]
    assert m.components == {"a": 0.5, "b": 0.5} and m.selections == {"b": Selection(band=(1.0, 2.0))}
    plain = parse_mix(_params({"a": {"share": 1.0, "select": "random"}}, score=False), SOURCES, {})
    assert plain.mixes["m"].selections == {}


@pytest.mark.parametrize("components,extra,message", [
    ({"a": {"share": 1.0, "select": "lowest"}}, {},
     r"mix.mixes.m.components.a.select: 'lowest' must be random, lowest_nll, highest_nll, or a mapping"),
    ({"a": {"share": 1.0, "select": {"band": [2, 1]}}}, {},
     r"mix.mixes.m.components.a.select.band: \[2, 1\] must be a list \[low, high\]"),
    ({"a": {"share": 1.0, "select": {"quantiles": [0.5, 1.5]}}}, {},
     r"mix.mixes.m.components.a.select.quantiles: \[0.5, 1.5\] must lie within \[0, 1\]"),
    ({"a": {"share": 1.0, "select": {"order": "lowest", "band": [0, 1]}}}, {},
     r"mix.mixes.m.components.a.select: set exactly one of order, band, quantiles"),
    ({"a": {"share": 1.0, "select": {"by": "length", "order": "lowest"}}}, {},
     r"mix.mixes.m.components.a.select.by: 'length' must be one of student_nll"),
    ({"a": {"share": 1.0, "select": {"order": "lowest", "k": 3}}}, {},
     r"mix.mixes.m.components.a.select: unknown key\(s\) \['k'\]"),
    ({"a": {"select": "lowest_nll"}}, {}, r"mix.mixes.m.components.a: expected \{share: S, select: ...\}"),
    ({"a": {"share": 0.5, "select": "lowest_nll"}, "b": 0.6}, {}, r"mix 'm': shares sum to 1.1"),
    ({"a": {"share": 1.0, "select": "lowest_nll"}}, {"one_per_problem": True},
     r"mix.mixes.m: select by score and one_per_problem cannot be combined"),
])
def test_bad_select_params_name_their_key(components, extra, message):
    with pytest.raises(ParamsError, match=message):
        parse_mix(_params(components, **extra), SOURCES, {})


def test_select_without_curate_score_is_refused_at_params_load():
    with pytest.raises(ParamsError, match=r"mix.mixes.m.components.a.select: selecting by student_nll needs the "
                                          r"scores: set curate.score.enabled: true"):
        parse_mix(_params({"a": {"share": 1.0, "select": "lowest_nll"}}, score=False), SOURCES, {})
