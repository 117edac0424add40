"""`mixdistill lineage` on what a checkpoint folder no longer holds."""
import json

from pipelines import lineage
from pipelines.params import parse_params
from tests.project import project_params


def test_recorded_weights_missing_on_disk_are_each_a_problem(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    raw = project_params(tracking={"experiment": "t", "uri": f"sqlite:///{tmp_path}/m.db"})
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    (tmp_path / "params.yaml").write_text(json.dumps(raw))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    (ckpt / "model-00002-of-00002.safetensors").write_bytes(b"still here")
    recorded = {"model-00001-of-00002.safetensors": "a" * 64, "model-00002-of-00002.safetensors": "b" * 64,
                "adapter_model.safetensors": "c" * 64}
    (ckpt / "lineage.json").write_text(json.dumps({"mix": "m", "weights_sha256": recorded}))

    problems = lineage.build_lineage(str(ckpt), parse_params(raw))["problems"]
    missing = [p for p in problems if "recorded weights missing on disk" in p]
    assert missing == [f"{ckpt / name}: recorded weights missing on disk (`dvc pull {ckpt}` restores them)"
                       for name in ("adapter_model.safetensors", "model-00001-of-00002.safetensors")]
    assert f"{ckpt / 'model-00002-of-00002.safetensors'}: weights changed since training" in problems
    assert lineage.main([str(ckpt), "--params", str(tmp_path / "params.yaml")]) == 1
    out = capsys.readouterr().out
    assert "recorded weights missing on disk" in out and "verified:" not in out
