"""Where MLflow runs go, inside and outside DVC experiments."""
from pathlib import Path

from pipelines import tracking


def test_relative_sqlite_store_is_anchored_at_dvc_root(monkeypatch, tmp_path):
    # `dvc exp run --queue` runs stages in a temporary copy but sets DVC_ROOT to the parent repo:
    # the run must land in the parent's store, not in the copy that is deleted afterwards.
    parent = tmp_path / "repo"
    copy = parent / ".dvc" / "tmp" / "exps" / "tmp1234"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(parent))
    assert tracking.tracking_uri({"tracking": {"uri": "sqlite:///mlflow.db"}}) == f"sqlite:///{parent / 'mlflow.db'}"


def test_without_dvc_root_the_working_directory_is_the_root(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    assert tracking.tracking_uri({}) == f"sqlite:///{Path(tmp_path).resolve() / 'mlflow.db'}"


def test_absolute_and_environment_uris_are_left_alone(monkeypatch):
    monkeypatch.setenv("DVC_ROOT", "/elsewhere")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.tracking_uri({"tracking": {"uri": "sqlite:////data/m.db"}}) == "sqlite:////data/m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://team:5000")
    assert tracking.tracking_uri({"tracking": {"uri": "sqlite:///mlflow.db"}}) == "http://team:5000"


def test_experiment_tags_name_the_dvc_experiment(monkeypatch):
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("DVC_EXP_BASELINE_REV", raising=False)
    assert tracking.experiment_tags() == {}
    monkeypatch.setenv("DVC_EXP_NAME", "long-0.3")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "abc123")
    assert tracking.experiment_tags() == {"mixdistill.dvc_exp": "long-0.3", "mixdistill.dvc_exp_baseline": "abc123"}


def test_a_resumed_run_keeps_the_experiment_it_was_created_in(monkeypatch, tmp_path):
    import mlflow

    params = {"tracking": {"uri": f"sqlite:///{tmp_path}/m.db", "experiment": "t"}}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_EXP_NAME", "long-0.1")
    with tracking.open_run(params, name="mix_long") as run:
        run_id = run.run_id
    monkeypatch.setenv("DVC_EXP_NAME", "eval-only-sweep")      # e.g. an eval re-run logging into it
    with tracking.open_run(params, name="mix_long", run_id=run_id, tags={"mixdistill.model": "mix_long"}):
        pass
    tags = mlflow.get_run(run_id).data.tags
    assert tags["mixdistill.dvc_exp"] == "long-0.1" and tags["mixdistill.model"] == "mix_long"
    assert tracking.run_exists(params, run_id) and not tracking.run_exists(params, "0" * 32)


# ----------------------------------------------------------------------------- what users see

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from common.params import ParamsError
from tests.e2e.conftest import free_port
from tests.generation.test_engines import save_tiny_model, student_tokenizer_dir  # noqa: F401 (fixture)


@pytest.fixture
def store(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return {"tracking": {"uri": f"sqlite:///{tmp_path}/m.db", "experiment": "proj"}}


def test_the_experiment_opens_on_its_runs_new_or_existing(store, tmp_path):
    import mlflow

    assert tracking.configure(store).get_experiment_by_name("proj").tags[tracking.KIND_TAG] == tracking.KIND
    untagged = mlflow.create_experiment("older", artifact_location=(tmp_path / "a").as_uri())
    chosen = mlflow.create_experiment("chosen", tags={tracking.KIND_TAG: "finetuning"})
    for name in ("older", "chosen"):
        tracking.configure({"tracking": {**store["tracking"], "experiment": name}})
    assert mlflow.get_experiment(untagged).tags[tracking.KIND_TAG] == tracking.KIND
    assert mlflow.get_experiment(chosen).tags[tracking.KIND_TAG] == "finetuning"      # a user's choice stays


def test_the_run_description_keeps_one_paragraph_per_section(store):
    import mlflow

    with tracking.open_run(store, name="mix_a") as run:
        run.update_note("Mix", "mix_a: 4 rows")
        run.update_note("Training", "final loss 2.1")
        run.update_note("Mix", "mix_a: 4 rows,\n shares {}")        # a stage re-run rewrites its own
    note = mlflow.get_run(run.run_id).data.tags[tracking.NOTE_TAG]
    assert note == "**Mix**: mix_a: 4 rows, shares {}\n\n**Training**: final loss 2.1"


def test_a_copied_checkpoint_is_a_registered_transformers_model(store, tmp_path, student_tokenizer_dir):  # noqa: F811
    import mlflow
    import polars as pl
    import torch
    from transformers import AutoModelForCausalLM

    ckpt = save_tiny_model(tmp_path / "ckpt", student_tokenizer_dir)
    with tracking.open_run(store, name="mix_a") as run:
        run.log_dataset(pl.DataFrame({"problem": ["1+1?"], "response": ["2"]}), source=str(tmp_path), name="mix_a",
                        digest="abc123", context="training")
        model_id = run.log_model(ckpt, reference_path=ckpt, name="checkpoint", mode="copy", weights_sha256={},
                                 params={"mix": "mix_a"})
        run.log_metrics({"train/final_loss": 2.5}, model_id=model_id, dataset="mix_a")
        version = run.register_model(model_id, "proj-mix_a", {"mixdistill.rows_digest": "abc123"}, "Mix mix_a")
    assert run.failure is None and version == "1"
    logged = mlflow.get_logged_model(model_id)
    assert logged.source_run_id == run.run_id and logged.params == {"mix": "mix_a"}
    (metric,) = logged.metrics
    assert (metric.key, metric.value, metric.dataset_name, metric.dataset_digest) == \
        ("train/final_loss", 2.5, "mix_a", "abc123")
    assert mlflow.get_run(run.run_id).data.tags[tracking.VERSION_TAG] == "models:/proj-mix_a/1"
    mv = mlflow.MlflowClient().get_model_version("proj-mix_a", "1")
    assert mv.tags == {"mixdistill.rows_digest": "abc123"} and mv.description == "Mix mix_a"

    pipe = mlflow.transformers.load_model("models:/proj-mix_a/1")
    original = AutoModelForCausalLM.from_pretrained(ckpt).state_dict()
    loaded = pipe.model.state_dict()
    assert loaded.keys() == original.keys()
    assert all(torch.equal(loaded[k], original[k]) for k in original)


def test_a_referenced_checkpoint_records_path_and_digests_without_weights(store, tmp_path,
                                                                         student_tokenizer_dir):  # noqa: F811
    import mlflow

    from common.digests import file_digest

    ckpt = save_tiny_model(tmp_path / "ckpt", student_tokenizer_dir)
    digests = {"model.safetensors": file_digest(ckpt / "model.safetensors")}
    with tracking.open_run(store, name="mix_a") as run:
        model_id = run.log_model(ckpt, reference_path=tmp_path / "final", name="checkpoint", mode="reference",
                                 weights_sha256=digests)
        run.register_model(model_id, "proj-mix_a",
                           {"mixdistill.weights_sha256.model.safetensors": digests["model.safetensors"]})
    files = Path(mlflow.artifacts.download_artifacts(f"models:/{model_id}", dst_path=str(tmp_path / "dl")))
    names = {p.name for p in files.iterdir()}
    assert "reference.json" in names and "config.json" in names and not any(n.endswith(".safetensors") for n in names)
    reference = json.loads((files / "reference.json").read_text())
    assert reference["path"] == str((tmp_path / "final").resolve()) and reference["weights_sha256"] == digests
    assert tracking.model_version_run(store, "models:/proj-mix_a/1") == run.run_id
    with pytest.raises(tracking.TrackingError, match=r"models:/proj-mix_a/7: not in the model registry"):
        tracking.model_version_run(store, "models:/proj-mix_a/7")


def test_the_null_logger_accepts_every_call_of_the_mlflow_logger():
    logger = tracking.NullLogger()
    public = {n for n, f in vars(tracking.MlflowLogger).items() if callable(f) and not n.startswith("_")}
    assert {"log_model", "register_model", "update_note", "get_tag", "raise_if_failed", "log_table"} <= public
    for name in public:
        assert getattr(logger, name)("x", step=1, model_id="m", dataset="d") is None, name
    assert logger.metrics_callback() is None and logger.run_id is None and logger.failure is None
    with pytest.raises(AttributeError):
        logger.log_metricz({})              # a misspelt call fails here too, not only against a real store


def test_log_weights_is_reference_or_copy():
    from pipelines.params import parse_params
    from tests.project import project_params

    assert parse_params(project_params()).tracking.log_weights == "reference"
    with pytest.raises(ParamsError, match=r"tracking.log_weights: 'weights' must be one of reference, copy"):
        parse_params(project_params(tracking={"log_weights": "weights"}))


class _Answer(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self):
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("status, reachable", [(200, True), (401, True), (403, True), (404, False), (502, False)])
def test_the_probe_wants_health_or_an_auth_wall(monkeypatch, store, status, reachable):
    tracking.probe(store)                                    # sqlite: nothing to probe
    handler = type("Handler", (_Answer,), {"status": status})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_port}")
        if reachable:
            tracking.probe(store)
        else:               # a proxy's 502 for a server that is down; a 404 where no MLflow listens
            with pytest.raises(tracking.TrackingError, match=rf"is unreachable \(HTTP {status} from /health\)"):
                tracking.probe(store)
    finally:
        server.shutdown()
        server.server_close()


def test_the_probe_reports_a_refused_connection(monkeypatch, store):
    port = free_port()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    with pytest.raises(tracking.TrackingError, match=rf"MLflow tracking server at http://127.0.0.1:{port} is "
                                                     r"unreachable \(.*refused.*\); start it"):
        tracking.probe(store)
    tracking.probe(store, enabled=False)                     # --no-mlflow


def test_a_store_that_stops_answering_ends_logging_in_seconds(monkeypatch, store):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    for key in tracking.HTTP_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    start = time.monotonic()
    with tracking.open_run(store, name="mix_a") as run:
        run.log_metrics({"loss": 1.0})
        run.log_params({"a": 1})
    seconds = time.monotonic() - start
    assert run.failure and "Connection refused" in run.failure
    assert seconds < 20, seconds                   # MLflow's own defaults retry for ~5 minutes
    with pytest.raises(tracking.LoggingIncomplete, match=r"^outputs are complete at out/dir; logging to MLflow "
                                                         r"failed: .*Connection refused") as info:
        run.raise_if_failed("out/dir")
    assert info.value.exit_code == 4


def test_a_table_logged_again_replaces_the_earlier_one(store):
    import mlflow

    with tracking.open_run(store, name="mix_a") as run:
        run.log_table({"problem": ["a", "b"], "verdict": ["wrong", "wrong"]}, "eval_results_table.json")
        run.log_table({"problem": ["a", "b"], "verdict": ["correct", "wrong"]}, "eval_results_table.json")
        run.log_table({"kind": ["x"]}, "eval/judge_audit.json")
        run.log_table({"kind": ["y"]}, "eval/judge_audit.json")
    table = mlflow.load_table("eval_results_table.json", run_ids=[run.run_id])
    assert table.to_dict("list") == {"problem": ["a", "b"], "verdict": ["correct", "wrong"]}
    assert mlflow.load_table("eval/judge_audit.json", run_ids=[run.run_id])["kind"].tolist() == ["y"]
    tagged = json.loads(mlflow.get_run(run.run_id).data.tags["mlflow.loggedArtifacts"])
    assert tagged == [{"path": "eval_results_table.json", "type": "table"},
                      {"path": "eval/judge_audit.json", "type": "table"}]


def test_a_lora_run_logs_its_adapter_and_the_merged_model(monkeypatch, tmp_path, student_tokenizer_dir):  # noqa: F811
    import mlflow
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.digests import file_digest
    from pipelines.params import parse_params
    from pipelines.train import log_checkpoint
    from tests.project import project_params
    from training.config import recipe_for

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    base = save_tiny_model(tmp_path / "base", student_tokenizer_dir)
    files = tmp_path / "final"
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                                LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    peft_model.save_pretrained(files)
    AutoTokenizer.from_pretrained(base).save_pretrained(files)
    peft_model.merge_and_unload().save_pretrained(files / "merged")
    raw = project_params(tracking={"experiment": "proj", "uri": f"sqlite:///{tmp_path}/m.db"})
    raw["train"]["method"] = "lora"
    params = parse_params(raw)
    mix = next(iter(params.mix.mixes))
    lineage = {"student": {"source": "tiny"}, "rows_digest": "r1", "n_rows": 4, "shares": {"long": 1.0},
               "manifest_sha256": "m1", "git_commit": None, "sources": {"src": "k1"},
               "weights_sha256": {"adapter_model.safetensors": file_digest(files / "adapter_model.safetensors")}}
    with tracking.open_run(params, name=mix) as run:
        log_checkpoint(run, params, recipe_for(params.train, mix), mix, files, tmp_path / "ckpt", lineage,
                       {"final_loss": 1.5, "mean_loss": 1.6, "tokens_seen": 100, "steps": 3})
    assert run.failure is None
    tags = mlflow.get_run(run.run_id).data.tags
    adapter, merged = (mlflow.get_logged_model(tags[k]) for k in (tracking.MODEL_ID_TAG, "mixdistill.merged_model_id"))
    assert adapter.model_type == "peft-adapter" and adapter.tags["mixdistill.weights"] == "copied adapter"
    adapter_files = {p.name for p in Path(mlflow.artifacts.download_artifacts(
        f"models:/{adapter.model_id}", dst_path=str(tmp_path / "a"))).iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "reference.json"} <= adapter_files
    assert merged.model_type == "reference" and merged.tags["mixdistill.adapter_model"] == adapter.model_id
    assert tags[tracking.VERSION_TAG] == f"models:/proj-{mix}/1"
    version = mlflow.MlflowClient().get_model_version(f"proj-{mix}", "1")
    assert version.source == f"models:/{adapter.model_id}" and version.tags["mixdistill.source_digest.src"] == "k1"
    assert version.tags["mixdistill.rows_digest"] == "r1" and version.tags["mixdistill.weights"] == "adapter copied"
    assert "**Model**: models:/proj-" in tags[tracking.NOTE_TAG]
