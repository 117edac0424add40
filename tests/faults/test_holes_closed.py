"""Holes a hostile run found (issue 13), each kept closed: clear errors naming the key / file /
row / field, no secret echoed or stored, nothing silently changed."""
import json
import os
import stat
import subprocess
import sys

import polars as pl
import pytest

from common.params import ParamsError
from curation.config import MixParams, SourceParams
from curation.mixing import build_mix, load_curated
from curation.sources import SourceError, read_table, rows_to_traces
from generation.engines import EngineError
from generation.factory import make_engine
from generation.spec import public_spec
from pipelines.params import parse_params
from tests.curation.test_mixing import _curate
from tests.project import REPO, project_params


def test_a_misspelt_top_level_section_is_an_error():
    raw = project_params()
    raw["curation"] = raw.pop("curate")
    with pytest.raises(ParamsError, match=r"params: unknown section\(s\) \['curation'\]"):
        parse_params(raw)


@pytest.mark.parametrize("key, value, message", [
    ("correctness.timeout_s", "5", r"curate.correctness.timeout_s: '5' must be a number"),
    ("quality.max_ngram_repeat_fraction", "0.3", r"curate.quality.max_ngram_repeat_fraction: '0.3' must be a number"),
    ("min_tokens", "8", r"curate.min_tokens: '8' must be an integer"),
    ("cutoff_len", 4, r"curate.cutoff_len: 4 is below curate.min_tokens 8"),
    ("correctness.workers", -1, r"curate.correctness.workers: -1 must be an integer >= 0"),
])
def test_curate_values_of_the_wrong_type_name_their_key(key, value, message):
    raw = project_params()
    target = raw["curate"]
    *path, last = key.split(".")
    for part in path:
        target = target[part]
    target[last] = value
    with pytest.raises(ParamsError, match=message):
        parse_params(raw)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_non_finite_reference_is_refused_with_its_row(tmp_path, value):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"problem": "p", "response": "r", "answer": 1}) + "\n"
                    + json.dumps({"problem": "q", "response": "s", "answer": value}) + "\n")
    rows, where = read_table(path)
    src = SourceParams(name="s", kind="file", style="long", teacher_size="large", path=str(path),
                       columns={"problem": "problem", "response": "response", "reference_answer": "answer"})
    with pytest.raises(SourceError, match=r"t.jsonl: row 2: field 'answer' is (nan|inf) .*not an answer"):
        rows_to_traces(rows, src, where, {})


def test_a_mix_may_use_exactly_every_kept_row(tmp_path):
    _curate(tmp_path, "a", 12)
    rows, _ = build_mix(MixParams(name="m", components={"a": 1.0}, size=12), {}, {"a": load_curated(tmp_path, "a")}, 0)
    assert rows.height == 12 and rows["trace_id"].n_unique() == 12


@pytest.mark.parametrize("spec_key, value", [("api_key_env", "sk-live-1234567890abcdef"),
                                             ("api_key", "sk-live-1234567890abcdef"),
                                             ("api_key_env", "q8Zr5Tn2Vb7Xc4Lm9Kp3Hs6Jd1Fg0AaBbCc")])
def test_a_credential_in_the_spec_is_refused_and_never_echoed_or_recorded(spec_key, value):
    spec = {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", spec_key: value}
    with pytest.raises(EngineError) as exc:
        make_engine(spec)
    assert value not in str(exc.value) and f"engine.{spec_key}" in str(exc.value)
    assert value not in json.dumps(public_spec(spec))


def test_grade_writes_an_ordinary_file(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"response": r"\boxed{2}", "reference": "2"}) + "\n")
    out = subprocess.run([sys.executable, "-m", "pipelines.cli", "grade", str(src), str(tmp_path / "out.jsonl"),
                          "--workers", "0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    mode = stat.S_IMODE(os.stat(tmp_path / "out.jsonl").st_mode)
    mask = os.umask(0)
    os.umask(mask)
    assert mode == 0o666 & ~mask


def test_curate_without_a_student_says_which_stage_to_run(tmp_path):
    import yaml

    raw = project_params()
    raw["paths"] = {k: str(tmp_path / v) for k, v in raw["paths"].items()}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    traces = tmp_path / raw["paths"]["traces"]
    traces.mkdir(parents=True)
    pl.DataFrame({"x": [1]}).write_parquet(traces / "champ_gpt4.parquet")
    out = subprocess.run([sys.executable, "-m", "pipelines.curate", "--params", str(tmp_path / "params.yaml"),
                          "--source", "champ_gpt4", "--no-mlflow"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "run the student stage first" in out.stderr and "Traceback" not in out.stderr
