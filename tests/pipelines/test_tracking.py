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
