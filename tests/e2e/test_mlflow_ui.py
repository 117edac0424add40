"""End to end: the tiny pipeline logs to a real ``mlflow server`` over HTTP, and the MLflow UI,
rendered by headless Chromium, shows one run per mix with its benchmark metrics, the judge-audit
table of its evaluation, the experiment landing on its runs, each checkpoint's registered model
version and its per-sample evaluation results.

The REST checks pin down what the server holds; the UI checks read the same values back from the
rendered page (run names, metric cells of the runs table, the audit table's columns), so a run
that is stored but not shown, or shown with other numbers, fails. Screenshots go to
``$MIXDISTILL_TEST_ARTIFACTS`` (default ``tests/e2e/artifacts/``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.e2e import browser
from tests.e2e.conftest import BENCHMARK, EXPERIMENT, MIXES, QUIET_ENV, REPO, SOURCES

pytestmark = pytest.mark.skipif(browser.unavailable_reason() is not None,
                                reason=f"no headless browser: {browser.unavailable_reason()}")

# Columns the test turns on in the runs table: two benchmark metrics, and the final training loss,
# which differs between mixes and so shows that each row carries its own run's numbers.
SHOWN_METRICS = (f"eval/{BENCHMARK}/accuracy", f"eval/{BENCHMARK}/mean_response_tokens", "summary.final_loss")
AUDIT_COLUMNS = ["kind", "benchmark", "problem_id", "sample_idx", "problem", "extracted_answer", "reference",
                 "judge_output", "judge"]
RESULT_COLUMNS = ["problem", "response", "extracted_answer", "reference", "verdict", "rule_verdict", "judge_verdict",
                  "judge_reason", "method", "benchmark", "problem_id", "sample_idx"]
COLUMN_PICKER = "//*[@role='dialog']"


def artifacts_dir() -> Path:
    default = Path(__file__).resolve().parent / "artifacts"
    return Path(os.environ.get("MIXDISTILL_TEST_ARTIFACTS") or default)


def read_json(path: Path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def check_server_side(pipeline, client) -> tuple[str, dict]:
    """What the server holds, over its REST API: the experiment id and the run of each mix."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"experiment '{EXPERIMENT}' is not on the server"
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    names = Counter(r.info.run_name for r in runs)
    # One run per checkpoint (each mix, and the untrained base); curate@SOURCE runs come besides.
    assert {name: names[name] for name in (*MIXES, "base")} == {name: 1 for name in (*MIXES, "base")}, names
    assert set(names) - {*MIXES, "base"} == {f"curate@{s}" for s in SOURCES}
    # MLFLOW_TRACKING_URI won: the local store named in params.yaml was never created.
    assert not Path(pipeline.params.tracking.uri[len("sqlite:///"):]).exists()

    paths = pipeline.params.paths
    mix_runs = {}
    for mix in MIXES:
        run = next(r for r in runs if r.info.run_name == mix)
        # One run per checkpoint: eval logged into the run train opened, not a new one.
        assert run.info.run_id == (Path(paths.checkpoints) / mix / "mlflow_run_id.txt").read_text().strip()
        assert run.info.status == "FINISHED"
        metrics = run.data.metrics
        assert metrics["summary.steps"] == 2.0
        scores = read_json(Path(paths.eval) / mix / "scores.json")[BENCHMARK]
        assert scores["n_problems"] == 2
        for key, value in scores.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                assert metrics[f"eval/{BENCHMARK}/{key.replace('@', '_at_')}"] == pytest.approx(value), key

        listed = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
        assert {"eval/judge_audit.json", "eval/graded.jsonl", "eval/scores.json"} <= listed
        download = Path(client.download_artifacts(run.info.run_id, "eval/judge_audit.json",
                                                  str(pipeline.root / "downloads" / mix)))
        table = read_json(download)
        assert table["columns"] == AUDIT_COLUMNS
        assert len(table["data"]) == len(read_json(Path(paths.eval) / mix / "judge_audit.json"))
        check_model_and_results(pipeline, client, run, mix, scores)
        mix_runs[mix] = run
    return experiment.experiment_id, mix_runs


def check_model_and_results(pipeline, client, run, mix: str, scores: dict) -> None:
    """The checkpoint as a registered logged model (weights by reference), its scores linked to it
    and to the benchmark dataset, one results row per graded sample, and the run's description."""
    paths = pipeline.params.paths
    checkpoint = Path(paths.checkpoints) / mix
    tags = run.data.tags
    assert tags["mixdistill.registered_model"] == f"models:/{EXPERIMENT}-{mix}/1"
    version = client.get_model_version(f"{EXPERIMENT}-{mix}", "1")
    lineage = read_json(checkpoint / "lineage.json")
    assert version.run_id == run.info.run_id and version.source == f"models:/{tags['mixdistill.model_id']}"
    assert version.tags["mixdistill.rows_digest"] == lineage["rows_digest"]
    assert version.tags["mixdistill.weights_sha256.model.safetensors"] == lineage["weights_sha256"]["model.safetensors"]
    model = client.get_logged_model(tags["mixdistill.model_id"])
    assert model.tags["mixdistill.weights"] == f"reference to {checkpoint.resolve()}"
    linked = {(m.key, m.dataset_name): m.value for m in model.metrics}
    assert linked[(f"eval/{BENCHMARK}/accuracy", BENCHMARK)] == pytest.approx(scores["accuracy"])
    assert ("train/final_loss", mix) in linked
    reference = Path(client.download_artifacts(run.info.run_id, "eval_results_table.json",
                                               str(pipeline.root / "downloads" / f"{mix}_results")))
    results = read_json(reference)
    graded = (Path(paths.eval) / mix / "graded.jsonl").read_text().splitlines()
    assert results["columns"] == RESULT_COLUMNS and len(results["data"]) == len(graded)
    note = tags["mlflow.note.content"]
    assert note.startswith(f"**Mix**: {mix}: shares ") and f"**Model**: models:/{EXPERIMENT}-{mix}/1" in note
    assert f"**Evaluation**: {BENCHMARK} accuracy {scores['accuracy']:.3f}" in note


def show_metric_columns(page: browser.Browser, metrics) -> None:
    """Tick metric columns in the runs table's column picker (the table shows none by default)."""
    page.click("//button[normalize-space(.)='Columns']", "the Columns button")
    for metric in metrics:
        page.click_text(metric, f"column '{metric}' in the column picker", within=COLUMN_PICKER)
    page.press_escape()
    page.wait(lambda: page.visible(COLUMN_PICKER) is None, "the column picker to close", timeout_s=10)


def runs_table(page: browser.Browser, metrics) -> dict[str, dict[str, str]]:
    """Rendered runs table: run id -> {"name": ..., metric: cell text}. The grid splits a row into
    pinned and scrolled parts that share a ``row-id``; cells carry a ``col-id``."""
    from selenium.webdriver.common.by import By

    table: dict[str, dict[str, str]] = {}
    for row in page.driver.find_elements(By.CSS_SELECTOR, "[role=row][row-id]"):
        cells = table.setdefault(row.get_attribute("row-id"), {})
        for cell in row.find_elements(By.CSS_SELECTOR, "[col-id]"):
            col = cell.get_attribute("col-id")
            if col == "attributes.`Run Name`":
                cells["name"] = cell.text.strip().splitlines()[-1]      # after the colour tag line
            elif col.startswith("metrics.`") and col[len("metrics.`"):-1] in metrics:
                cells[col[len("metrics.`"):-1]] = cell.text.strip()
    return table


def check_runs_page(page: browser.Browser, url: str, experiment_id: str, mix_runs: dict, n_runs: int,
                    shots: Path) -> None:
    page.open(f"{url}/#/experiments/{experiment_id}/runs")
    page.wait_for_text(f"{n_runs} matching runs", *MIXES, timeout_s=60)
    assistant_close = page.visible("//button[@aria-label='Close']")
    if assistant_close is not None:        # the assistant side panel would hide half the table
        assistant_close.click()
    show_metric_columns(page, SHOWN_METRICS)

    def rows_with_values():
        table = runs_table(page, SHOWN_METRICS)
        ready = all(all(table.get(r.info.run_id, {}).get(m) not in (None, "") for m in SHOWN_METRICS)
                    for r in mix_runs.values())
        return table if ready else None

    table = page.wait(rows_with_values, "metric cells of every mix run", timeout_s=30)
    for mix, run in mix_runs.items():
        row = table[run.info.run_id]
        assert row["name"] == mix
        for metric in SHOWN_METRICS:
            shown = row[metric]
            assert shown != "-", f"run '{mix}': the UI shows no value for {metric}"
            assert float(shown) == pytest.approx(run.data.metrics[metric], rel=1e-6), (mix, metric, shown)
    from selenium.webdriver.common.by import By

    last_metric = page.driver.find_element(By.CSS_SELECTOR, f"[col-id='metrics.`{SHOWN_METRICS[-1]}`']")
    page.scroll_into_view(last_metric)
    page.screenshot(shots / "mlflow_runs.png")


def check_audit_artifact(page: browser.Browser, url: str, experiment_id: str, run, shots: Path) -> None:
    page.open(f"{url}/#/experiments/{experiment_id}/runs/{run.info.run_id}/artifacts")
    page.click_text("eval", "the eval folder in the artifact tree", timeout_s=60)
    page.click_text("judge_audit.json", "judge_audit.json in the artifact tree")
    # The UI recognises a logged table and renders it as one, with the audit's columns as headers.
    page.wait_for_text("eval/judge_audit.json", "View as table", *AUDIT_COLUMNS)
    page.screenshot(shots / "mlflow_judge_audit.png")


def landing_link(pipeline) -> str:
    """The link `mixdistill ui` prints for the project (its store is the server, so it starts none)."""
    env = {**os.environ, **QUIET_ENV, "MLFLOW_TRACKING_URI": pipeline.server.url,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "ui", "--params", str(pipeline.root / "params.yaml")],
                          cwd=pipeline.root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().rsplit(": ", 1)[-1]


def check_landing_page(page: browser.Browser, link: str, experiment_id: str, mix_runs: dict, n_runs: int,
                       shots: Path) -> None:
    """The link `mixdistill ui` prints opens the experiment on its runs table, in a browser that never
    chose between GenAI and Model training. (MLflow 3.17's UI picks the landing page with that switch,
    which the link sets; the experimentKind tag is read only by UI builds without the switch.)"""
    assert link.endswith(f"/#/experiments/{experiment_id}?workflowType=machine_learning"), link
    page.open(link)
    page.wait(lambda: f"/experiments/{experiment_id}/runs" in page.driver.current_url,
              "the experiment link to land on its runs", timeout_s=60)
    page.wait_for_text(f"{n_runs} matching runs", "Run Name", *MIXES, timeout_s=60)
    # Each checkpoint's run shows its registered model version in the runs table.
    page.wait_for_text(*(f"{EXPERIMENT}-{mix}" for mix in mix_runs))
    page.screenshot(shots / "mlflow_landing.png")


def check_model_version_page(page: browser.Browser, url: str, client, mix: str, run, shots: Path) -> None:
    """The registered version: its source run, description and the lineage digests as tags."""
    version = client.get_model_version(f"{EXPERIMENT}-{mix}", "1")
    page.open(f"{url}/#/models/{EXPERIMENT}-{mix}/versions/1")
    page.wait_for_text("Version 1", "Source Run", run.info.run_name, version.description,
                       "mixdistill.rows_digest", version.tags["mixdistill.rows_digest"],
                       "mixdistill.weights_sha256.model.safetensors", timeout_s=60)
    page.screenshot(shots / "mlflow_model_version.png")


def check_results_table(page: browser.Browser, url: str, experiment_id: str, run, results: dict,
                        shots: Path) -> None:
    """One checkpoint's per-sample results render as a table: every column, every problem."""
    page.open(f"{url}/#/experiments/{experiment_id}/runs/{run.info.run_id}/artifacts")
    page.click_text("eval_results_table.json", "eval_results_table.json in the artifact tree", timeout_s=60)
    first = dict(zip(results["columns"], results["data"][0]))
    page.wait_for_text("View as table", *RESULT_COLUMNS, first["problem_id"], first["reference"], first["verdict"])
    page.screenshot(shots / "mlflow_eval_results.png")


def test_mlflow_ui_lists_one_run_per_mix_with_metrics_and_judge_audit(pipeline):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=pipeline.server.url)
    experiment_id, mix_runs = check_server_side(pipeline, client)
    n_runs = len(client.search_runs([experiment_id]))

    shots = artifacts_dir()
    with browser.Browser() as page:
        try:
            check_runs_page(page, pipeline.server.url, experiment_id, mix_runs, n_runs, shots)
            check_audit_artifact(page, pipeline.server.url, experiment_id, mix_runs[MIXES[0]], shots)
            check_landing_page(page, landing_link(pipeline), experiment_id, mix_runs, n_runs, shots)
            check_model_version_page(page, pipeline.server.url, client, MIXES[0], mix_runs[MIXES[0]], shots)
            results = read_json(client.download_artifacts(mix_runs[MIXES[0]].info.run_id, "eval_results_table.json",
                                                          str(pipeline.root / "downloads" / "ui_results")))
            check_results_table(page, pipeline.server.url, experiment_id, mix_runs[MIXES[0]], results, shots)
        except Exception:
            page.screenshot(shots / "mlflow_failure.png")         # what the page showed when it failed
            raise
    print(f"pipeline {pipeline.seconds:.0f} s: {pipeline.timings}; screenshots in {shots}")


# ----------------------------------------------------------------------------- lineage audit
# Same module, so the same tiny pipeline (and server) serves both checks.

def test_lineage_of_a_checkpoint_verifies_and_reports_drift(pipeline, monkeypatch):
    import polars as pl

    from pipelines.lineage import build_lineage, render
    from tests.e2e.conftest import MIX_SIZE

    monkeypatch.setenv("MLFLOW_TRACKING_URI", pipeline.server.url)
    paths = pipeline.params.paths
    ckpt = Path(paths.checkpoints) / "long"
    lin = build_lineage(str(ckpt), pipeline.params)
    assert lin["problems"] == [], render(lin)
    assert lin["mix"]["name"] == "long" and lin["mix"]["n_rows"] == MIX_SIZE
    assert lin["mlflow"]["name"] == "long" and lin["mlflow"]["status"] == "FINISHED"
    assert lin["checkpoint"]["recorded"]["rows_digest"] == lin["mix"]["rows_digest"]
    assert lin["checkpoint"]["recorded"]["weights_sha256"]          # weights are re-hashed on every audit
    (source,) = lin["sources"]                                       # mix 'long' draws on one source
    assert source == "champ_gpt4_turbo"
    assert lin["sources"][source]["curated"]["contract"] is True
    assert lin["sources"][source]["raw"]["origin"]["package"] == "champ-dataset"

    # The MLflow run id leads to the same checkpoint.
    run_id = (ckpt / "mlflow_run_id.txt").read_text().strip()
    by_run = build_lineage(run_id, pipeline.params)
    assert by_run["checkpoint"]["path"] == str(ckpt) and by_run["problems"] == []
    # Asked by run id, lineage checks that the directory still holds *that* run's checkpoint (after
    # a DVC experiment it may hold another run's), against the lineage the run logged to MLflow.
    lin_file = ckpt / "lineage.json"
    own = lin_file.read_text()
    try:
        lin_file.write_text(json.dumps({**json.loads(own), "mlflow_run_id": "0" * 32}))
        assert build_lineage(str(ckpt), pipeline.params)["problems"] == []
        swapped = build_lineage(run_id, pipeline.params)["problems"]
        assert any(f"holds the checkpoint of run {'0' * 32}, not of run {run_id}" in p for p in swapped), swapped
    finally:
        lin_file.write_text(own)

    # One training row's history: the checks it passed and where it came from.
    tid = pl.read_parquet(Path(paths.mixes) / "long" / "rows.parquet")["trace_id"][0]
    one = build_lineage(str(ckpt), pipeline.params, trace=tid)["trace"]
    assert one["found"] and one["source"] == source and one["curation"]["correct"] is True
    assert {"correctness", "dedup", "length"} <= set(one["curation"]["checks_passed"])

    # Drift: a curated source edited after training is reported (and the CLI would exit 1).
    kept = Path(paths.curated) / source / "kept.parquet"
    original = kept.read_bytes()
    try:
        pl.read_parquet(kept).head(1).write_parquet(kept)
        drifted = build_lineage(str(ckpt), pipeline.params)
        assert any("changed since mix 'long'" in p for p in drifted["problems"]), drifted["problems"]
    finally:
        kept.write_bytes(original)
    weights = sorted(ckpt.glob("*.safetensors"))[0]
    saved = weights.read_bytes()
    try:
        weights.write_bytes(saved[:-8] + b"\0" * 8)
        assert any("weights changed since training" in p
                   for p in build_lineage(str(ckpt), pipeline.params)["problems"])
    finally:
        weights.write_bytes(saved)
