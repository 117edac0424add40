"""Where every artefact lives: the ``paths:`` section and the file names inside each folder.

Stages, lineage and tests ask a :class:`Layout` for a path instead of spelling file names, so a
name is written once. ``dvc.yaml`` templates the same ``paths:`` values into its deps and outs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# problems/
TRAIN_PROBLEMS = "train.parquet"
TEST_PROBLEMS = "test.parquet"
SPLIT = "split.json"
BENCHMARKS = "benchmarks"
# curated/<source>/
KEPT = "kept.parquet"
REJECTED = "rejected.parquet"
CURATE_REPORT = "report.json"
LENGTHS_PLOT = "lengths.png"
CONTRACT = "contract.json"
# mixes/<mix>/
MIX_ROWS = "rows.parquet"
MANIFEST = "manifest.json"
# checkpoints/<mix>/ (and eval/base/ for the untrained student's run id)
RUN_ID = "mlflow_run_id.txt"
LINEAGE = "lineage.json"
TRAIN_METRICS = "train_metrics.json"
# eval/<model>/
SAMPLES = "samples.jsonl"
SAMPLES_META = "samples.meta.json"
GRADED = "graded.jsonl"
SCORES = "scores.json"
JUDGE_AUDIT = "judge_audit.json"
JUDGE_CACHE = "judge_cache.sqlite"
# heldout/
HELDOUT_TRACES = "traces.parquet"
HELDOUT_SUMMARY = "summary.json"
HELDOUT_SCORES = "scores"
HELDOUT_COLUMNS = ("trace_id", "problem_id", "problem", "response", "style", "source", "teacher")
NO_HELDOUT = "no held-out problems"   # what the held-out outputs say when the test split is empty
# The untrained student, evaluated beside the checkpoints.
BASE_MODEL = "base"


@dataclass(frozen=True)
class Paths:
    """The ``paths:`` section of params.yaml."""
    problems: str
    traces: str
    curated: str
    mixes: str
    student: str
    checkpoints: str
    eval: str
    reports: str
    heldout: str = "data/heldout"      # held-out traces + per-model held-out loss


class Layout:
    """Artefact paths of one project, from its ``paths:``."""

    def __init__(self, paths: Paths):
        self.paths = paths

    # problems
    @property
    def problems(self) -> Path:
        return Path(self.paths.problems)

    def problem_split(self, split: str) -> Path:
        return self.problems / (TRAIN_PROBLEMS if split == "train" else TEST_PROBLEMS)

    def benchmark(self, name: str) -> Path:
        return self.problems / BENCHMARKS / f"{name}.parquet"

    # traces and curation
    def traces(self, source: str) -> Path:
        return Path(self.paths.traces) / f"{source}.parquet"

    @property
    def curated_root(self) -> Path:
        return Path(self.paths.curated)

    def curated(self, source: str) -> Path:
        return self.curated_root / source

    @property
    def curate_judge_cache(self) -> Path:
        """The curation judge's verdict cache: beside, not inside, the curated outputs (a mix
        depends on the whole curated folder)."""
        return self.curated_root.parent / "judge_cache" / "curate.sqlite"

    def curate_score_work(self, source: str) -> Path:
        """Resume file of curate.score's student NLLs for one source, outside the curated outputs."""
        return self.curated_root.parent / "score_work" / f"curate_{source}.jsonl"

    # mixes
    def mix(self, name: str) -> Path:
        return Path(self.paths.mixes) / name

    def mix_metrics(self, name: str) -> Path:
        return Path(self.paths.mixes) / f"{name}.metrics.json"

    # models
    @property
    def student(self) -> Path:
        return Path(self.paths.student)

    def checkpoint(self, mix: str) -> Path:
        return Path(self.paths.checkpoints) / mix

    def train_work(self, mix: str) -> Path:
        """Trainer checkpoints of an unfinished run, outside every DVC output."""
        return Path(self.paths.checkpoints) / ".work" / mix

    def train_metrics(self, mix: str) -> Path:
        return Path(self.paths.checkpoints) / f"{mix}.{TRAIN_METRICS}"

    def model(self, name: str) -> Path:
        """The model evaluated as ``name``: the student for ``base``, else the mix's checkpoint."""
        return self.student if name == BASE_MODEL else self.checkpoint(name)

    def run_id_file(self, name: str) -> Path:
        """Where a model's MLflow run id is kept: in its checkpoint (written by train), or beside
        the base model's eval outputs (the student stage opens no run)."""
        return self.eval(name) / RUN_ID if name == BASE_MODEL else self.checkpoint(name) / RUN_ID

    # evaluation and report
    @property
    def eval_root(self) -> Path:
        return Path(self.paths.eval)

    def eval(self, model: str) -> Path:
        return self.eval_root / model

    @property
    def reports(self) -> Path:
        return Path(self.paths.reports)

    # held-out loss
    @property
    def heldout_traces(self) -> Path:
        return Path(self.paths.heldout) / HELDOUT_TRACES

    @property
    def heldout_summary(self) -> Path:
        return Path(self.paths.heldout) / HELDOUT_SUMMARY

    def heldout_scores(self, model: str) -> Path:
        return Path(self.paths.heldout) / HELDOUT_SCORES / f"{model}.json"

    def heldout_work(self, model: str) -> Path:
        """Resume file of an unfinished scoring run, outside every DVC output."""
        return Path(self.paths.heldout) / ".work" / f"{model}.jsonl"
