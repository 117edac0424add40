"""A sharded kept set validated part by part: the per-part results read as one, and the one
expectation no single part can check (``trace_id`` unique across all parts)."""
from __future__ import annotations


def build_id_suite(source_name: str):
    """``trace_id`` unique across every part of a sharded kept set."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    exp = gxe.ExpectColumnValuesToBeUnique(column="trace_id")
    exp.description = "trace_id is unique across all parts (each part's own suite sees only that part)"
    return gx.ExpectationSuite(name=f"curated_{source_name}_ids", expectations=[exp])


def parquet_columns(path) -> list[str]:
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


class _MergedResult:
    """Several row validations (one per kept part) read as one: statistics add up, success is all."""

    def __init__(self, results: list):
        self.results_list = results
        self.success = all(r.success for r in results)
        keys = ("evaluated_expectations", "successful_expectations", "unsuccessful_expectations")
        self.statistics = {k: sum(int(r.statistics[k]) for r in results) for k in keys}

    def to_json_dict(self) -> dict:
        return {"success": self.success, "statistics": self.statistics,
                "parts": [r.to_json_dict() for r in self.results_list]}


def merge_results(results: list):
    return results[0] if len(results) == 1 else _MergedResult(results)
