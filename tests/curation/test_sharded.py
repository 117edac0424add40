"""Sharded curation (curation/sharded.py): the same rows, reasons and report as the in-memory
suite, with dedup across shards, written as Parquet parts every reader takes as one table."""
from __future__ import annotations

import json

import polars as pl
import pytest

from common.io import ParquetError
from common.prompt import build_prompt
from curation.errors import SourceError
from curation.runner import add_token_counts, run_curation
from curation.shard_check import iter_shards, read_shard, shard_spans
from curation.sharded import curate_source
from curation.suite import build_components
from tests.curation.helpers import TOKEN_COLUMNS, make_traces
from tests.curation.sharded_helpers import (benchmark_dir, champ_traces, comparable, curate_params, read_all,
                                            student_tokenizer)


@pytest.fixture(scope="module")
def tokenizer():
    return student_tokenizer()


@pytest.fixture(scope="module")
def champ(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    return champ_traces(root / "traces.parquet", 1500), benchmark_dir(root)


def in_memory(path, cur, tokenizer, bench):
    frame = add_token_counts(pl.read_parquet(path), tokenizer, build_prompt, cutoff_len=cur.cutoff_len)
    row_checks, grader, decontaminator, dedup, flaggers = build_components(cur, bench)
    try:
        return run_curation(frame, row_checks=row_checks, grader=grader, decontaminator=decontaminator,
                            dedup=dedup, flaggers=flaggers)
    finally:
        grader.close()


def test_four_shards_give_the_in_memory_rows_reasons_and_report(champ, tokenizer, tmp_path):
    path, bench = champ
    cur = curate_params(shard_rows=400)
    sharded = curate_source(path, cur, tokenizer, bench, tmp_path)
    whole = in_memory(path, cur, tokenizer, bench)

    assert sharded.report["shards"] == 4
    assert [p.relative_to(tmp_path).as_posix() for p in sharded.kept] == [
        f"kept.parquet/part-0000{k}.parquet" for k in range(4)]
    assert read_all(sharded.kept).equals(whole.kept)
    assert read_all(sharded.rejected).equals(whole.rejected)        # reasons lists included, in order
    assert comparable(sharded.report) == comparable(whole.report)
    assert sharded.report["rejected_by_reason"]["exact_duplicate"] > 100   # CHAMP's copies span shards
    # a folder of parts reads as one table, so mix, lineage and report read it unchanged
    assert pl.read_parquet(tmp_path / "kept.parquet").equals(whole.kept)


def test_one_shard_writes_plain_files(champ, tokenizer, tmp_path):
    path, bench = champ
    result = curate_source(path, curate_params(correctness={"enabled": False}), tokenizer, bench, tmp_path)
    assert result.report["shards"] == 1
    assert (tmp_path / "kept.parquet").is_file() and (tmp_path / "rejected.parquet").is_file()
    assert result.report["kept"] + result.report["rejected"] == result.report["input"] == 1500


def write_source(path, rows):
    make_traces(rows).drop(list(TOKEN_COLUMNS)).write_parquet(path)
    return path


BASE = " ".join(f"step{i} we add {i} and carry." for i in range(60)) + " The answer is 1."


def test_duplicates_across_shards_keep_the_copy_that_passed(tokenizer, tmp_path):
    near = BASE.replace("step30 we", "step30 so we")
    rows = [{"response": BASE, "truncated": True},           # shard 0: a copy that fails a check
            {"response": "Short but fine: the answer is 1."},
            {"response": BASE},                                # shard 1: the copy that passed: kept
            {"response": "Another one, the answer is 1."},
            {"response": near},                                # shard 2: near the kept copy
            {"response": BASE}]                                # shard 2: exact copy of the kept one
    source = write_source(tmp_path / "t.parquet", rows)
    cur = curate_params(shard_rows=2, min_tokens=1, decontam={"benchmarks": []})
    out = tmp_path / "out"
    result = curate_source(source, cur, tokenizer, tmp_path, out)
    row = lambda origin: json.loads(origin)["row"]  # noqa: E731
    rejected = read_all(result.rejected)
    assert [row(o) for o in read_all(result.kept)["origin"]] == [1, 2, 3]
    assert dict(zip(map(row, rejected["origin"]), rejected["reasons"].to_list())) == {
        0: ["truncated_generation", "exact_duplicate"], 4: ["near_duplicate"], 5: ["exact_duplicate"]}


def test_a_source_missing_a_column_names_the_file_and_columns(tokenizer, tmp_path):
    source = tmp_path / "t.parquet"
    make_traces([{}]).drop(list(TOKEN_COLUMNS) + ["response"]).write_parquet(source)
    with pytest.raises(SourceError, match=r"t\.parquet: no column\(s\) \['response'\]"):
        curate_source(source, curate_params(), tokenizer, tmp_path, tmp_path / "out")


def test_a_source_column_of_the_wrong_type_names_the_file_and_field(tokenizer, tmp_path):
    source = tmp_path / "t.parquet"
    frame = make_traces([{}, {}]).drop(list(TOKEN_COLUMNS))
    frame.with_columns(pl.Series("response", [1, 2])).write_parquet(source)
    with pytest.raises(SourceError, match=r"t\.parquet: field 'response' holds Int64 values \(every row\); "
                                          r"a trace stores it as String"):
        curate_source(source, curate_params(), tokenizer, tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    frame.with_columns(pl.lit(None).alias("prompt")).write_parquet(source)   # all null: casts to text
    ok = curate_source(source, curate_params(), tokenizer, benchmark_dir(tmp_path), tmp_path / "ok")
    assert ok.report["input"] == 2


def test_an_unreadable_source_names_the_file(tokenizer, tmp_path):
    source = tmp_path / "t.parquet"
    source.write_bytes(b"PAR1 not really")
    with pytest.raises(ParquetError, match=r"t\.parquet: not a readable Parquet file"):
        curate_source(source, curate_params(), tokenizer, tmp_path, tmp_path / "out")


def test_an_empty_source_writes_empty_outputs_with_columns(tokenizer, tmp_path):
    source = write_source(tmp_path / "t.parquet", [])
    result = curate_source(source, curate_params(decontam={"benchmarks": []}), tokenizer, tmp_path, tmp_path / "o")
    kept = pl.read_parquet(tmp_path / "o" / "kept.parquet")
    assert kept.height == 0 and "response_tokens" in kept.columns and result.report["input"] == 0


@pytest.mark.parametrize("row_group_size,shard_rows", [(7, 5), (5, 5), (3, 11), (40, 9), (40, 40)])
def test_a_shard_read_by_its_span_is_the_shard_iter_shards_yields(tmp_path, row_group_size, shard_rows):
    """What a Ray worker reads for its shard (``read_shard``, row groups only) is the frame the
    local executor gets from the batch reader, across row-group and shard boundaries."""
    frame = make_traces([{"response": f"Response {i}, the answer is {i}."} for i in range(23)])
    path = tmp_path / "t.parquet"
    frame.write_parquet(path, row_group_size=row_group_size)
    spans = shard_spans(frame.height, shard_rows)
    shards = list(iter_shards(path, shard_rows))
    assert len(spans) == len(shards) and sum(n for _, n in spans) == 23
    for (start, rows), shard in zip(spans, shards):
        assert read_shard(path, start, rows).equals(shard)
        assert shard.schema == read_shard(path, start, rows).schema


def test_an_empty_source_is_one_empty_shard_either_way(tmp_path):
    path = tmp_path / "t.parquet"
    make_traces([{}]).head(0).write_parquet(path)
    assert shard_spans(0, 10) == [(0, 0)]
    (only,) = list(iter_shards(path, 10))
    assert read_shard(path, 0, 0).equals(only) and only.height == 0
