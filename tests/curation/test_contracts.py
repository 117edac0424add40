"""Contracts: a good curated source passes, and each violation fails with a message that names
the expectation and the offending rows. GX runs for real (ephemeral context, pandas)."""
from __future__ import annotations

import json
import socket
from dataclasses import replace
from pathlib import Path

import polars as pl
import pytest

from curation import contracts
from curation.contracts import format_failures, validate_curated
from curation.schema import TRACE_SCHEMA
from curation.config import ContractParams, CorrectnessParams, CurateParams

PARAMS = CurateParams(min_tokens=8, max_tokens=4096, cutoff_len=1024)
FLAG = replace(PARAMS, over_cutoff="flag")
NO_GRADING = replace(PARAMS, correctness=CorrectnessParams(enabled=False))
# Row-suite expectations with correctness on: column set, 19 column types, 13 non-null, unique,
# source/style/teacher_size/correct sets, token bounds, cutoff pair, truncated, finish_reason.
ROW_EXPECTATIONS = 1 + 19 + 13 + 1 + 4 + 1 + 2 + 2
BATCH_EXPECTATIONS = 4
CURATED_SCHEMA = {**TRACE_SCHEMA, "response_tokens": pl.Int64, "sequence_tokens": pl.Int64,
                  "extracted_answer": pl.Utf8, "correct": pl.Boolean, "over_cutoff": pl.Boolean}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Fail loudly if GX tries the network (the pipeline runs offline and must never wait on it)."""
    attempts = []

    def refuse(sock, address):
        attempts.append(address)
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    yield
    assert attempts == []


def trace(i: int, **overrides) -> dict:
    row = dict(trace_id=f"t{i}", source="champ_gpt4", problem_id=f"P_{i}", problem=f"Compute {i} + 1.",
               reference_answer=str(i + 1), prompt=f"Compute {i} + 1.",
               response=f"We add one to {i}. The answer is {i + 1}.", teacher="GPT-4", style="long",
               teacher_size="large", finish_reason="stop", truncated=False, generation="{}",
               origin="{}", response_tokens=40, sequence_tokens=120, extracted_answer=str(i + 1),
               correct=True, over_cutoff=False)
    row.update(overrides)
    return row


def frame(*rows: dict) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=CURATED_SCHEMA)


def report(kept: int, input: int | None = None, rejected: int | None = None, reasons=None) -> dict:
    input = 20 if input is None else input
    rejected = input - kept if rejected is None else rejected
    reasons = {"answer_mismatch": 4, "too_short": 3} if reasons is None else reasons
    return {"input": input, "kept": kept, "rejected": rejected, "rejected_by_reason": reasons}


def good_rows() -> list[dict]:
    # Token counts sit on every boundary the contract allows.
    return [trace(0), trace(1, response_tokens=8, sequence_tokens=1024),
            trace(2, response_tokens=4096, teacher_size="human", style="short")]


def check(kept, tmp_path, params=PARAMS, rep=None, **kw):
    return validate_curated(kept, rep or report(kept.height), params, "champ_gpt4", tmp_path, **kw)


def test_good_frame_passes_and_writes_results_and_docs(tmp_path):
    result = check(frame(*good_rows()), tmp_path, data_docs=True)
    assert result.success and result.failures == []
    assert result.statistics["evaluated_expectations"] == ROW_EXPECTATIONS + BATCH_EXPECTATIONS
    assert result.statistics["unsuccessful_expectations"] == 0
    assert result.statistics["by_suite"]["batch"]["evaluated_expectations"] == BATCH_EXPECTATIONS
    saved = json.loads(Path(result.results_path).read_text())
    assert Path(result.results_path) == tmp_path / "contract.json"
    assert saved["success"] is True and saved["docs_error"] is None
    assert saved["validations"]["rows"]["suite_name"] == "curated_champ_gpt4"
    assert saved["validations"]["batch"]["suite_name"] == "curated_champ_gpt4_batch"
    assert len(saved["validations"]["rows"]["results"]) == ROW_EXPECTATIONS
    assert result.docs_path == str(tmp_path / "contract_docs" / "index.html")
    index = Path(result.docs_path).read_text()
    assert "curated_champ_gpt4_batch" in index
    pages = sorted(p.name for p in (tmp_path / "contract_docs" / "validations").rglob("*.html"))
    assert pages == ["curated-champ_gpt4_kept.html", "curated-champ_gpt4_summary.html"]
    assert format_failures(result) == "contract passed"


def test_incorrect_trace_kept(tmp_path):
    result = check(frame(trace(0), trace(1, correct=False), trace(2)), tmp_path)
    assert not result.success
    assert result.failures == [
        "[rows] expect_column_values_to_be_in_set('correct'): every kept trace is graded correct "
        "(curate.correctness.enabled) — 1 of 3 rows unexpected: row 1: trace_id='t1', correct=False"]


def test_over_cutoff_rejected_mode(tmp_path):
    result = check(frame(trace(0), trace(1, sequence_tokens=1025), trace(2, over_cutoff=True)), tmp_path)
    assert result.failures == [
        "[rows] expect_column_values_to_be_between('sequence_tokens'): sequence_tokens <= "
        "curate.cutoff_len=1024 (curate.over_cutoff=reject) — 1 of 3 rows unexpected: "
        "row 1: trace_id='t1', sequence_tokens=1025",
        "[rows] expect_column_values_to_be_in_set('over_cutoff'): no row is flagged over_cutoff when "
        "curate.over_cutoff=reject — 1 of 3 rows unexpected: row 2: trace_id='t2', over_cutoff=True"]


def test_flag_mode_accepts_flagged_over_cutoff_rows(tmp_path):
    kept = frame(trace(0), trace(1, sequence_tokens=1025, over_cutoff=True),
                 trace(2, sequence_tokens=3000, over_cutoff=True), trace(3, sequence_tokens=1024))
    result = check(kept, tmp_path, params=FLAG)
    assert result.success, result.failures
    # The same rows break the reject-mode contract.
    assert not check(kept, tmp_path, params=PARAMS).success


def test_flag_mode_needs_the_flag_and_a_truthful_flag(tmp_path):
    kept = frame(trace(0), trace(1, sequence_tokens=1500), trace(2, sequence_tokens=1024, over_cutoff=True))
    result = check(kept, tmp_path, params=FLAG)
    assert result.failures == [
        "[rows] expect_column_values_to_be_between('sequence_tokens'): a row longer than "
        "curate.cutoff_len=1024 carries the over_cutoff flag (curate.over_cutoff=flag) — "
        "1 of 2 rows unexpected: row 1: trace_id='t1', sequence_tokens=1500",
        "[rows] expect_column_values_to_be_between('sequence_tokens'): a row flagged over_cutoff is "
        "longer than curate.cutoff_len=1024 — 1 of 1 rows unexpected: row 2: trace_id='t2', "
        "sequence_tokens=1024"]


def test_duplicate_trace_id(tmp_path):
    result = check(frame(trace(0), trace(1), trace(2, trace_id="t0")), tmp_path)
    assert result.failures == [
        "[rows] expect_column_values_to_be_unique('trace_id'): trace_id is unique (a repeated trace "
        "would be trained on twice) — 2 of 3 rows unexpected: row 0: trace_id='t0'; row 2: trace_id='t0'"]


def test_truncated_generation_kept(tmp_path):
    result = check(frame(trace(0), trace(1, truncated=True, finish_reason="length")), tmp_path)
    assert result.failures == [
        "[rows] expect_column_values_to_be_in_set('truncated'): no kept generation is truncated — "
        "1 of 2 rows unexpected: row 1: trace_id='t1', truncated=True",
        "[rows] expect_column_values_to_not_be_in_set('finish_reason'): no kept generation stopped on "
        "its length limit — 1 of 2 rows unexpected: row 1: trace_id='t1', finish_reason='length'"]


def test_null_response_and_null_trace_id_are_located_by_row(tmp_path):
    result = check(frame(trace(0), trace(1, response=None), trace(2, trace_id=None)), tmp_path)
    assert result.failures == [
        "[rows] expect_column_values_to_not_be_null('trace_id'): 'trace_id' is never null — "
        "1 of 3 rows unexpected: row 2: trace_id=None",
        "[rows] expect_column_values_to_not_be_null('response'): 'response' is never null — "
        "1 of 3 rows unexpected: row 1: trace_id='t1', response=None"]


def test_token_bounds_labels_and_source(tmp_path):
    kept = frame(trace(0, response_tokens=7), trace(1, response_tokens=4097), trace(2, style="medium"),
                 trace(3, teacher_size="tiny"), trace(4, source="other"))
    lines = check(kept, tmp_path).failures
    assert [line.split(":")[0] for line in lines] == [
        "[rows] expect_column_values_to_be_in_set('source')",
        "[rows] expect_column_values_to_be_in_set('style')",
        "[rows] expect_column_values_to_be_in_set('teacher_size')",
        "[rows] expect_column_values_to_be_between('response_tokens')"]
    assert lines[3].endswith("2 of 5 rows unexpected: row 0: trace_id='t0', response_tokens=7; "
                             "row 1: trace_id='t1', response_tokens=4097")
    assert lines[2].endswith("row 3: trace_id='t3', teacher_size='tiny'")


def test_offending_rows_are_capped_at_five(tmp_path):
    kept = frame(*[trace(i, correct=False) for i in range(8)])
    (line,) = check(kept, tmp_path).failures
    assert line.endswith("8 of 8 rows unexpected: row 0: trace_id='t0', correct=False; "
                         "row 1: trace_id='t1', correct=False; row 2: trace_id='t2', correct=False; "
                         "row 3: trace_id='t3', correct=False; row 4: trace_id='t4', correct=False; "
                         "... 3 more")


def test_schema_missing_column_and_wrong_type(tmp_path):
    kept = frame(*good_rows()).drop("teacher").with_columns(pl.col("response_tokens").cast(pl.Float64))
    result = check(kept, tmp_path)
    # Expectations on the missing column fail too, but only its existence check is reported.
    assert result.failures == [
        "[rows] expect_table_columns_to_match_set(): every contract column is present (extra "
        "columns are allowed) — missing ['teacher']",
        "[rows] expect_column_values_to_be_in_type_list('response_tokens'): 'response_tokens' holds "
        "integers — observed 'float64'"]
    assert result.statistics["unsuccessful_expectations"] == 4


def test_correctness_disabled_needs_no_grading_columns(tmp_path):
    kept = frame(*good_rows()).drop("extracted_answer", "correct")
    assert check(kept, tmp_path, params=NO_GRADING).success
    result = check(kept, tmp_path)
    assert result.failures == [
        "[rows] expect_table_columns_to_match_set(): every contract column is present (extra "
        "columns are allowed) — missing ['correct', 'extracted_answer']"]


def test_low_kept_fraction(tmp_path):
    kept = frame(*good_rows())
    rep = report(3, input=100, reasons={"answer_mismatch": 50, "too_short": 47})
    assert check(kept, tmp_path, rep=rep).failures == [
        "[batch] expect_column_values_to_be_between('kept_fraction'): at least "
        "curate.contract.min_kept_fraction=0.05 of the input is kept — observed input=100, kept=3, "
        "rejected=97, top_reject_reason='answer_mismatch', kept_fraction=0.03"]


def test_dominant_reject_reason(tmp_path):
    params = replace(PARAMS, contract=ContractParams(min_kept_fraction=0.05, max_reason_share=0.5))
    rep = report(3, input=10, reasons={"too_short": 1, "answer_mismatch": 6})
    assert check(frame(*good_rows()), tmp_path, params=params, rep=rep).failures == [
        "[batch] expect_column_values_to_be_between('top_reason_share'): no single reject reason "
        "explains more than curate.contract.max_reason_share=0.5 of the input — observed input=10, "
        "kept=3, rejected=7, top_reject_reason='answer_mismatch', top_reason_share=0.6"]


def test_conservation_broken_and_kept_count_mismatch(tmp_path):
    rep = report(4, input=20, rejected=15)
    assert check(frame(*good_rows()), tmp_path, rep=rep).failures == [
        "[batch] expect_column_pair_values_to_be_equal('input', 'kept_plus_rejected'): conservation: "
        "kept + rejected == input — observed input=20, kept=4, rejected=15, "
        "top_reject_reason='answer_mismatch', kept_plus_rejected=19",
        "[batch] expect_column_pair_values_to_be_equal('kept', 'kept_rows'): the report's kept count "
        "equals the rows of the kept frame — observed input=20, kept=4, rejected=15, "
        "top_reject_reason='answer_mismatch', kept_rows=3"]


def test_empty_kept_frame_fails_on_kept_fraction_only(tmp_path):
    rep = report(0, input=20, reasons={"answer_mismatch": 12, "too_short": 8})
    result = check(frame(), tmp_path, rep=rep, data_docs=True)
    assert result.failures == [
        "[batch] expect_column_values_to_be_between('kept_fraction'): at least "
        "curate.contract.min_kept_fraction=0.05 of the input is kept — observed input=20, kept=0, "
        "rejected=20, top_reject_reason='answer_mismatch', kept_fraction=0.0"]
    assert Path(result.docs_path).exists()


def test_report_without_counts_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"lacks \['rejected'\]"):
        check(frame(*good_rows()), tmp_path, rep={"input": 3, "kept": 3})


def test_violation_text_and_docs_fallback(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("renderer exploded")

    monkeypatch.setattr(contracts, "_build_docs", broken)
    result = check(frame(trace(0), trace(1, correct=False)), tmp_path, data_docs=True)
    page = Path(result.docs_path).read_text()
    assert "FAILED" in page and "renderer exploded" in page and "correct=False" in page
    assert json.loads(Path(result.results_path).read_text())["docs_error"] == "RuntimeError: renderer exploded"
    assert format_failures(result) == f"- {result.failures[0]}"
