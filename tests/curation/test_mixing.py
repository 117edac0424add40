import json

import polars as pl
import pytest

from curation.mixing import (MixError, MixIntegrityError, apportion, build_mix, load_curated,
                             verify_mix_dir, write_mix)
from curation.schema import trace_id
from curation.config import MixParams

GROUPS = {"long": ["a"], "short": ["b", "c"]}


def _curate(root, name, n, tokens=100, contract=True):
    d = root / name
    d.mkdir(parents=True)
    rows = []
    for i in range(n):
        prob, resp = f"{name} problem {i}", f"{name} solution {i} \\boxed{{{i}}}"
        rows.append({"trace_id": trace_id(prob, resp, name), "source": name, "problem_id": f"{name}{i}",
                     "problem": prob, "reference_answer": str(i), "prompt": prob, "response": resp,
                     "teacher": name, "style": "long", "teacher_size": "large", "finish_reason": "stop",
                     "truncated": False, "generation": "{}", "origin": "{}",
                     "response_tokens": tokens, "sequence_tokens": tokens + 20})
    pl.DataFrame(rows).write_parquet(d / "kept.parquet")
    (d / "report.json").write_text(json.dumps({"contract": {"success": contract}, "rejected_by_reason": {}}))


@pytest.fixture
def curated(tmp_path):
    root = tmp_path / "curated"
    _curate(root, "a", 30, tokens=300)
    _curate(root, "b", 40)
    _curate(root, "c", 40)
    return root


def _sources(root, names=("a", "b", "c")):
    return {n: load_curated(root, n) for n in names}


def test_apportion_is_exact():
    assert apportion(48, {"long": 0.2, "short": 0.8}) == {"long": 10, "short": 38}
    assert sum(apportion(7, {"x": 1 / 3, "y": 1 / 3, "z": 1 / 3}).values()) == 7
    assert apportion(7, {"x": 1 / 3, "y": 1 / 3, "z": 1 / 3}) == {"x": 3, "y": 2, "z": 2}


def test_exact_counts_shares_and_determinism(curated):
    mix = MixParams(name="mix_long", components={"long": 0.2, "short": 0.8}, size=50)
    rows, manifest = build_mix(mix, GROUPS, _sources(curated), seed=7)
    assert rows.height == 50
    assert rows.filter(pl.col("component") == "long").height == 10
    assert rows.filter(pl.col("component") == "short").height == 40
    assert manifest["achieved"]["long"] == {"count": 10, "share": 0.2, "tokens": 3200,
                                            "token_share": round(3200 / (3200 + 40 * 120), 6),
                                            "repeated_rows": 0}
    assert rows["trace_id"].n_unique() == 50  # no oversampling
    assert set(rows.filter(pl.col("component") == "short")["source"]) <= {"b", "c"}
    again, _ = build_mix(mix, GROUPS, _sources(curated), seed=7)
    assert again["trace_id"].to_list() == rows["trace_id"].to_list()
    other, _ = build_mix(mix, GROUPS, _sources(curated), seed=8)
    assert other["trace_id"].to_list() != rows["trace_id"].to_list()


def test_changing_one_share_does_not_reshuffle_other_component(curated):
    a, _ = build_mix(MixParams(name="m", components={"long": 0.2, "short": 0.8}, size=50), GROUPS, _sources(curated), 7)
    b, _ = build_mix(MixParams(name="m", components={"long": 0.4, "short": 0.6}, size=50), GROUPS, _sources(curated), 7)
    longs_a = a.filter(pl.col("component") == "long")["trace_id"].to_list()
    longs_b = b.filter(pl.col("component") == "long")["trace_id"].to_list()
    assert set(longs_a) < set(longs_b)  # the larger draw extends the smaller one


def test_too_few_rows_without_oversample(curated):
    mix = MixParams(name="big", components={"long": 1.0}, size=31)
    with pytest.raises(MixError, match=r"mix 'big': component 'long' \(sources \['a'\]\): needs 31 rows but "
                                       r"its curated sources kept only 30 rows"):
        build_mix(mix, GROUPS, _sources(curated, ["a"]), 7)
    rows, manifest = build_mix(MixParams(name="big", components={"long": 1.0}, size=45, oversample=True),
                               GROUPS, _sources(curated, ["a"]), 7)
    assert rows.height == 45 and manifest["achieved"]["long"]["repeated_rows"] == 15


def test_token_budget(curated):
    mix = MixParams(name="tb", components={"long": 0.5, "short": 0.5}, token_budget=2000)
    rows, manifest = build_mix(mix, GROUPS, _sources(curated), 7)
    assert manifest["achieved"]["long"]["tokens"] == 960    # 3 x 320 <= 1000
    assert manifest["achieved"]["short"]["tokens"] == 960   # 8 x 120 <= 1000


def test_failed_contract_blocks_mix(tmp_path):
    root = tmp_path / "c"
    _curate(root, "a", 5, contract=False)
    with pytest.raises(MixError, match="curated source 'a' failed its contract"):
        build_mix(MixParams(name="m", components={"a": 1.0}, size=2), {}, _sources(root, ["a"]), 7)


def test_written_mix_verifies_and_detects_tampering(curated, tmp_path):
    mix = MixParams(name="mix_long", components={"long": 0.2, "short": 0.8}, size=20)
    rows, manifest = build_mix(mix, GROUPS, _sources(curated), seed=7)
    out = tmp_path / "mix_long"
    written = write_mix(rows, manifest, out)
    assert verify_mix_dir(out, curated)["rows_digest"] == written["rows_digest"]
    msgs = [json.loads(l) for l in (out / "messages.jsonl").read_text().splitlines()]
    assert [m["role"] for m in msgs[0]["messages"]] == ["user", "assistant"]
    info = json.loads((out / "llamafactory" / "dataset_info.json").read_text())
    assert info["mix_long"]["file_name"] == "mix_long.json"
    assert len(json.loads((out / "llamafactory" / "mix_long.json").read_text())) == 20
    import datasets
    assert len(datasets.load_from_disk(str(out / "hf_dataset"))) == 20
    # A curated source changed after mixing: drift is reported.
    _curate_changed = pl.read_parquet(curated / "b" / "kept.parquet").head(3)
    _curate_changed.write_parquet(curated / "b" / "kept.parquet")
    with pytest.raises(MixIntegrityError, match=r"b/kept.parquet: changed since mix 'mix_long'"):
        verify_mix_dir(out, curated)
    # Rows edited on disk: the manifest no longer matches.
    rows.head(19).write_parquet(out / "rows.parquet")
    with pytest.raises(MixIntegrityError, match="rows do not match the manifest"):
        verify_mix_dir(out)
