"""Great Expectations contracts that gate each curated source.

Two suites are validated per source, both built only from the ``curate`` params:

- the **row suite** (:func:`build_suite`) runs on the kept traces: schema, required text,
  unique ids, allowed labels, correctness, token bounds, the cutoff rule and no truncation;
- the **batch suite** (:func:`build_batch_suite`) runs on a one-row summary of the report
  (:func:`summary_frame`): kept fraction, dominant reject reason, conservation, and that the
  report's kept count is the frame we were given.

Keeping the batch gates as expectations too means one results file and one set of data docs
hold the whole verdict. Failures are turned into one line per failed expectation naming the
expectation, its column(s) and up to :data:`MAX_SHOWN` offending rows (row position, trace_id,
value), so a red ``dvc repro`` says what to look at without opening the JSON.

GX is imported lazily: it costs ~4 s to import, and modules that only need the names here (the
stage's argument parsing, other curation code and its tests) should not pay for it.
"""
from __future__ import annotations

import html
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from common import layout as names
from common.io import read_parquet
from curation.contract_parts import build_id_suite, merge_results, parquet_columns
from curation.schema import REQUIRED_TEXT, STYLES, TEACHER_SIZES, TRACE_SCHEMA

# Pipeline stages run offline and must never wait on a network call; GX's usage statistics are
# of no use to us. Set before GX is first imported (the variable is read at import/context time).
os.environ["GX_ANALYTICS_ENABLED"] = "false"

# Columns the curate stage adds to every kept trace.
ADDED_SCHEMA: dict[str, pl.DataType] = {
    "response_tokens": pl.Int64,
    "sequence_tokens": pl.Int64,
    "over_cutoff": pl.Boolean,
}
# Added only when answers are graded (curate.correctness.enabled).
CORRECTNESS_SCHEMA: dict[str, pl.DataType] = {"extracted_answer": pl.Utf8, "correct": pl.Boolean}
# Human-written solutions (CHAMP's step-by-step answers) may be labelled "human" rather than by a
# model size, so the contract accepts that label alongside the model sizes.
ALLOWED_TEACHER_SIZES = tuple(dict.fromkeys((*TEACHER_SIZES, "human")))
# Token counts may come out of polars as any integer width (e.g. UInt32 from len()); the contract
# cares that they are integers, not about their width.
INTEGER_DTYPES = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
# Position of each row in the kept frame, added to the validated copy only: failures can then
# name rows even where trace_id itself is null or duplicated.
ROW_ID = "_row"
# Offending rows quoted per failure message; GX keeps up to PARTIAL_COUNT in the results file.
MAX_SHOWN = 5
PARTIAL_COUNT = 20
SUMMARY_INDEX = ["input", "kept", "rejected", "top_reject_reason"]
DOCS_DIR = "contract_docs"


@dataclass
class ContractResult:
    success: bool
    failures: list[str]      # one message per failed expectation
    statistics: dict         # evaluated / successful / unsuccessful expectations (total and per suite)
    results_path: str        # contract.json: the GX validation results of both suites
    docs_path: str | None    # data docs index.html, or None when docs were not asked for


def format_failures(result: ContractResult) -> str:
    if result.success:
        return "contract passed"
    return "\n".join(f"- {line}" for line in result.failures)


def _gx():
    import great_expectations as gx

    return gx


def _kind(pl_dtype: pl.DataType) -> str:
    if pl_dtype == pl.Utf8:
        return "text"
    if pl_dtype == pl.Boolean:
        return "bool"
    if pl_dtype.is_integer():
        return "int"
    raise ValueError(f"no contract type for polars dtype {pl_dtype}")


def _pandas_dtype_name(pl_dtype: pl.DataType) -> str:
    # Ask the installed polars/pandas pair what a non-null column of this type becomes ("str" on
    # pandas 3, "object" on pandas 2), so the contract does not hard-code one pandas version.
    return str(pl.DataFrame(schema={"x": pl_dtype}).to_pandas().dtypes["x"])


def contract_schema(curate_params) -> dict[str, pl.DataType]:
    """Every column the contract requires of a kept frame, with its type."""
    schema = {**TRACE_SCHEMA, **ADDED_SCHEMA}
    if curate_params.correctness.enabled:
        schema.update(CORRECTNESS_SCHEMA)
    return schema


def build_suite(curate_params, source_name: str):
    """Row-level suite for the kept traces of ``source_name`` (a ``gx.ExpectationSuite``)."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    cp = curate_params
    exps = []

    def add(exp, why: str):
        exp.description = why
        exps.append(exp)

    schema = contract_schema(cp)
    # One table-level check rather than one per column: a single message lists what is missing,
    # and GX's per-expectation overhead (not the data) dominates validation time here.
    add(gxe.ExpectTableColumnsToMatchSet(column_set=list(schema), exact_match=False),
        "every contract column is present (extra columns are allowed)")
    for col, dtype in schema.items():
        kind = _kind(dtype)
        if kind == "int":
            add(gxe.ExpectColumnValuesToBeInTypeList(column=col, type_list=INTEGER_DTYPES),
                f"'{col}' holds integers")
        else:
            add(gxe.ExpectColumnValuesToBeOfType(column=col, type_=_pandas_dtype_name(dtype)),
                f"'{col}' holds {'text' if kind == 'text' else 'booleans'}")

    # Value checks below skip nulls, so every column they rely on must be non-null as well.
    non_null = ["trace_id", *REQUIRED_TEXT, "finish_reason", "truncated", "response_tokens",
                "sequence_tokens", "over_cutoff"]
    if cp.correctness.enabled:
        non_null += ["extracted_answer", "correct"]
    for col in dict.fromkeys(non_null):
        add(gxe.ExpectColumnValuesToNotBeNull(column=col), f"'{col}' is never null")

    add(gxe.ExpectColumnValuesToBeUnique(column="trace_id"),
        "trace_id is unique (a repeated trace would be trained on twice)")
    add(gxe.ExpectColumnValuesToBeInSet(column="source", value_set=[source_name]),
        f"every row belongs to source '{source_name}'")
    add(gxe.ExpectColumnValuesToBeInSet(column="style", value_set=list(STYLES)),
        f"style is one of {list(STYLES)}")
    add(gxe.ExpectColumnValuesToBeInSet(column="teacher_size", value_set=list(ALLOWED_TEACHER_SIZES)),
        f"teacher_size is one of {list(ALLOWED_TEACHER_SIZES)}")
    if cp.correctness.enabled:
        add(gxe.ExpectColumnValuesToBeInSet(column="correct", value_set=[True]),
            "every kept trace is graded correct (curate.correctness.enabled)")
    add(gxe.ExpectColumnValuesToBeBetween(column="response_tokens", min_value=cp.min_tokens,
                                          max_value=cp.max_tokens),
        f"response_tokens within [curate.min_tokens={cp.min_tokens}, curate.max_tokens={cp.max_tokens}]")
    # A sequence is over the cutoff when it has more than cutoff_len tokens (one of exactly
    # cutoff_len still fits whole), the same rule the length check applies.
    if cp.over_cutoff == "flag":
        add(gxe.ExpectColumnValuesToBeBetween(column="sequence_tokens", max_value=cp.cutoff_len,
                                              row_condition=Column("over_cutoff") == False),  # noqa: E712
            f"a row longer than curate.cutoff_len={cp.cutoff_len} carries the over_cutoff flag "
            "(curate.over_cutoff=flag)")
        add(gxe.ExpectColumnValuesToBeBetween(column="sequence_tokens", min_value=cp.cutoff_len + 1,
                                              row_condition=Column("over_cutoff") == True),  # noqa: E712
            f"a row flagged over_cutoff is longer than curate.cutoff_len={cp.cutoff_len}")
    else:
        add(gxe.ExpectColumnValuesToBeBetween(column="sequence_tokens", max_value=cp.cutoff_len),
            f"sequence_tokens <= curate.cutoff_len={cp.cutoff_len} (curate.over_cutoff=reject)")
        add(gxe.ExpectColumnValuesToBeInSet(column="over_cutoff", value_set=[False]),
            "no row is flagged over_cutoff when curate.over_cutoff=reject")
    add(gxe.ExpectColumnValuesToBeInSet(column="truncated", value_set=[False]),
        "no kept generation is truncated")
    add(gxe.ExpectColumnValuesToNotBeInSet(column="finish_reason", value_set=["length"]),
        "no kept generation stopped on its length limit")
    return _gx().ExpectationSuite(name=f"curated_{source_name}", expectations=exps)


def build_batch_suite(curate_params, source_name: str):
    """Batch-level suite, validated on :func:`summary_frame` (one row built from the report)."""
    import great_expectations.expectations as gxe

    c = curate_params.contract
    exps = [
        (gxe.ExpectColumnValuesToBeBetween(column="kept_fraction", min_value=c.min_kept_fraction),
         f"at least curate.contract.min_kept_fraction={c.min_kept_fraction} of the input is kept"),
        (gxe.ExpectColumnValuesToBeBetween(column="top_reason_share", max_value=c.max_reason_share),
         f"no single reject reason explains more than curate.contract.max_reason_share="
         f"{c.max_reason_share} of the input"),
        (gxe.ExpectColumnPairValuesToBeEqual(column_A="input", column_B="kept_plus_rejected"),
         "conservation: kept + rejected == input"),
        (gxe.ExpectColumnPairValuesToBeEqual(column_A="kept", column_B="kept_rows"),
         "the report's kept count equals the rows of the kept frame"),
    ]
    for exp, why in exps:
        exp.description = why
    return _gx().ExpectationSuite(name=f"curated_{source_name}_batch", expectations=[e for e, _ in exps])


def summary_frame(kept_rows: int, report: dict, source_name: str) -> pl.DataFrame:
    """The report's counts as one row, plus the derived shares the batch suite bounds."""
    missing = [k for k in ("input", "kept", "rejected") if k not in report]
    if missing:
        raise ValueError(f"curate report for '{source_name}' lacks {missing}; "
                         "expected input, kept, rejected and rejected_by_reason")
    n_in, n_kept, n_rej = (int(report[k]) for k in ("input", "kept", "rejected"))
    reasons = {str(r): int(n) for r, n in (report.get("rejected_by_reason") or {}).items()}
    # Ties go to the alphabetically first reason so the reported one is stable across runs.
    top = min(reasons.items(), key=lambda kv: (-kv[1], kv[0])) if reasons else (None, 0)
    return pl.DataFrame({
        "source": [source_name], "input": [n_in], "kept": [n_kept], "rejected": [n_rej],
        "kept_plus_rejected": [n_kept + n_rej], "kept_rows": [kept_rows],
        # An empty input keeps nothing: it fails any positive min_kept_fraction on purpose.
        "kept_fraction": [n_kept / n_in if n_in else 0.0],
        "top_reject_reason": [top[0]], "top_reason_share": [top[1] / n_in if n_in else 0.0],
    }, schema_overrides={"top_reject_reason": pl.Utf8})


def _context(docs_dir: Path | None):
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = _gx().get_context(mode="ephemeral")
    # Progress bars would flood the stage log once per suite; the verdict is printed by the stage.
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    # The ephemeral context's default site writes into a fresh temp dir; docs go to out_dir only.
    for site in list(ctx.config.data_docs_sites or {}):
        ctx.delete_data_docs_site(site)
    if docs_dir is not None:
        ctx.add_data_docs_site("contract", {
            "class_name": "SiteBuilder", "show_how_to_buttons": False,
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(docs_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        })
    ctx.data_sources.add_pandas("curated")
    return ctx


def _validate(ctx, asset: str, suite, frame: pl.DataFrame, index_columns: list[str]):
    gx = _gx()
    asset_obj = ctx.data_sources.get("curated").add_dataframe_asset(asset)
    batch = asset_obj.add_batch_definition_whole_dataframe("whole")
    suite = ctx.suites.add(suite)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=asset, data=batch, suite=suite))
    result = vd.run(batch_parameters={"dataframe": frame.to_pandas()},
                    result_format={"result_format": "SUMMARY",
                                   "unexpected_index_column_names": index_columns,
                                   "partial_unexpected_count": PARTIAL_COUNT})
    return suite, result


def _fmt(value) -> str:
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        value = None  # pandas turns nulls in text columns into NaN
    if isinstance(value, float):
        return repr(round(value, 4))
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe_row(entry: dict, index_columns: list[str]) -> str:
    """``row 3: trace_id='ab', sequence_tokens=5000``: identifiers first, then the checked values."""
    ids = [k for k in index_columns if k in entry and k != ROW_ID]
    values = [k for k in entry if k not in index_columns]
    text = ", ".join(f"{k}={_fmt(entry[k])}" for k in ids + values)
    return f"row {_fmt(entry[ROW_ID])}: {text}" if ROW_ID in entry else text


def _failure_lines(label: str, suite, result, columns: set[str], index_columns: list[str]) -> list[str]:
    order = {e.id: i for i, e in enumerate(suite.expectations)}
    descriptions = {e.id: e.description for e in suite.expectations}
    lines = []
    for er in sorted(result.results, key=lambda r: order.get(r.expectation_config.id, len(order))):
        if er.success:
            continue
        cfg = er.expectation_config
        cols = [cfg.kwargs[k] for k in ("column", "column_A", "column_B") if k in cfg.kwargs]
        if any(c not in columns for c in cols):
            continue  # a missing column is reported once, by expect_table_columns_to_match_set
        head = f"[{label}] {cfg.type}({', '.join(repr(c) for c in cols)}): {descriptions.get(cfg.id)}"
        res = er.result or {}
        if er.exception_info.get("raised_exception"):
            detail = f"could not be evaluated: {er.exception_info.get('exception_message')}"
        elif cfg.type == "expect_table_columns_to_match_set":
            detail = f"missing {res.get('details', {}).get('mismatched', {}).get('missing')}"
        elif "unexpected_count" in res:
            shown = res.get("partial_unexpected_index_list") or \
                [{"value": v} for v in res.get("partial_unexpected_list", [])]
            rows = "; ".join(_describe_row(e, index_columns) for e in shown[:MAX_SHOWN])
            more = res["unexpected_count"] - min(len(shown), MAX_SHOWN)
            if ROW_ID in index_columns:
                detail = (f"{res['unexpected_count']} of {res.get('element_count')} rows unexpected: "
                          f"{rows}" + (f"; ... {more} more" if more > 0 else ""))
            else:  # the one-row summary: its values are the whole story
                detail = f"observed {rows}"
        else:
            detail = f"observed {_fmt(res.get('observed_value'))}"
        lines.append(f"{head} — {detail}")
    return lines


def _write_summary_html(path: Path, source_name: str, success: bool, failures: list[str],
                        statistics: dict, reason: str) -> None:
    """Plain HTML verdict, used only when GX's data docs could not be rendered."""
    items = "".join(f"<li>{html.escape(f)}</li>" for f in failures) or "<li>none</li>"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"<!doctype html><meta charset='utf-8'><title>contract {html.escape(source_name)}</title>"
        f"<h1>Contract for curated source {html.escape(source_name)}: "
        f"{'passed' if success else 'FAILED'}</h1><p>{html.escape(json.dumps(statistics))}</p>"
        f"<h2>Failures</h2><ul>{items}</ul>"
        f"<p><small>GX data docs could not be built: {html.escape(reason)}</small></p>",
        encoding="utf-8")


def _build_docs(ctx) -> str:
    return ctx.build_data_docs(site_names=["contract"])["contract"]


def validate_curated(kept: pl.DataFrame, report: dict, curate_params, source_name: str,
                     out_dir: str | Path, *, data_docs: bool = True) -> ContractResult:
    """Validate one source's kept traces and report against its contract.

    Writes ``out_dir/contract.json`` and, with ``data_docs``, GX data docs under
    ``out_dir/contract_docs/``. Never raises on a violation: the caller decides (the curate
    stage writes everything, then fails with :func:`format_failures`' text)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    docs_dir = out_dir / DOCS_DIR if data_docs else None
    if docs_dir is not None and docs_dir.exists():
        shutil.rmtree(docs_dir)  # stale pages of an earlier run would stay in the index
    parts = kept if isinstance(kept, (list, tuple)) else [kept]
    schema = contract_schema(curate_params)

    def rows_of(part, offset: int) -> pl.DataFrame:
        # Only the contract's columns, read part by part: a sharded kept set is never whole in memory.
        if not isinstance(part, pl.DataFrame):
            present = parquet_columns(part)
            part = read_parquet(part, [c for c in schema if c in present])
        wanted = [c for c in schema if c in part.columns]
        return (part.select(wanted).with_row_index(ROW_ID, offset=offset)
                .with_columns(pl.col(ROW_ID).cast(pl.Int64)))

    ctx = _context(docs_dir)
    row_suite, row_results, failures, offset, ids = None, [], [], 0, []
    for k, part in enumerate(parts):
        rows = rows_of(part, offset)
        offset += rows.height
        row_index = [ROW_ID] + (["trace_id"] if "trace_id" in rows.columns else [])
        if "trace_id" in rows.columns and len(parts) > 1:
            ids.append(rows.select("trace_id"))
        label = "rows" if len(parts) == 1 else f"rows part {k}"
        row_suite, result = _validate(ctx, f"{source_name}_kept" + ("" if len(parts) == 1 else f"_part{k}"),
                                      build_suite(curate_params, source_name), rows, row_index)
        row_results.append(result)
        failures += _failure_lines(label, row_suite, result, set(rows.columns), row_index)
    if ids:     # per-part suites see uniqueness within a part only: once more over all parts' ids
        id_suite, result = _validate(ctx, f"{source_name}_kept_ids", build_id_suite(source_name),
                                     pl.concat(ids).with_row_index(ROW_ID).with_columns(pl.col(ROW_ID).cast(pl.Int64)),
                                     [ROW_ID, "trace_id"])
        row_results.append(result)
        failures += _failure_lines("rows, all parts", id_suite, result, {"trace_id", ROW_ID}, [ROW_ID, "trace_id"])
    summary = summary_frame(offset, report, source_name)
    batch_suite, batch_result = _validate(ctx, f"{source_name}_summary",
                                          build_batch_suite(curate_params, source_name),
                                          summary, SUMMARY_INDEX)
    failures += _failure_lines("batch", batch_suite, batch_result, set(summary.columns), SUMMARY_INDEX)
    row_result = merge_results(row_results)
    by_suite = {"rows": dict(row_result.statistics), "batch": dict(batch_result.statistics)}
    keys = ("evaluated_expectations", "successful_expectations", "unsuccessful_expectations")
    statistics = {k: sum(int(s[k]) for s in by_suite.values()) for k in keys}
    statistics["by_suite"] = by_suite
    success = bool(row_result.success and batch_result.success)

    docs_path = None
    docs_error = None
    if docs_dir is not None:
        try:
            docs_path = str(docs_dir / "index.html")
            _build_docs(ctx)
        except Exception as exc:  # noqa: BLE001 - rendering must never hide the verdict itself
            docs_error = f"{type(exc).__name__}: {exc}"
            _write_summary_html(docs_dir / "index.html", source_name, success, failures, statistics,
                                docs_error)

    results_path = out_dir / names.CONTRACT
    payload = {"source": source_name, "success": success, "failures": failures,
               "statistics": statistics, "docs_error": docs_error,
               "validations": {"rows": row_result.to_json_dict(), "batch": batch_result.to_json_dict()}}
    results_path.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    return ContractResult(success=success, failures=failures, statistics=statistics,
                          results_path=str(results_path), docs_path=docs_path)
