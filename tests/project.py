"""The repository's params.yaml with a test's sections swapped in, made consistent.

The params root checks rules that span sections (every mix component is a source or group,
train.mixes and report roles name mixes), so a test project starts from the real params and keeps
those links valid when it replaces sources or mixes.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
_BASE = yaml.safe_load((REPO / "params.yaml").read_text())
ROLES = ("long", "short", "large", "small", "mix_long", "mix_large")


def project_params(**sections) -> dict:
    params = copy.deepcopy(_BASE)
    params.update(copy.deepcopy(sections))
    sources = params["sources"]
    if "groups" not in sections:
        params["groups"] = {g: m for g, m in params["groups"].items() if all(s in sources for s in m)}
    if "mix" not in sections:
        known = set(sources) | set(params["groups"])
        mixes = {n: m for n, m in params["mix"]["mixes"].items() if set(m["components"]) <= known}
        params["mix"]["mixes"] = mixes or {"only": {"size": 1, "components": {next(iter(sources)): 1.0}}}
    mixes = list(params["mix"]["mixes"])
    if "train" not in sections or params["train"].get("mixes") is not None:
        params["train"]["mixes"] = [m for m in (params["train"].get("mixes") or mixes) if m in mixes] or mixes
    if "report" not in sections:
        params["report"] = {**params["report"], **{r: params["report"][r] if params["report"][r] in mixes
                                                   else mixes[0] for r in ROLES}}
    if "curate" not in sections:
        params["curate"]["decontam"]["benchmarks"] = [b for b in params["curate"]["decontam"]["benchmarks"]
                                                      if b in params["eval"]["benchmarks"]]
    return params


def eval_project(root: Path, eval_section: dict, decontam: list[str]) -> dict:
    """Params of a temp project rooted at ``root`` (relative default paths) with a placeholder
    checkpoint ``mix_a``, the given ``eval:`` section and decontamination benchmarks."""
    ckpt = root / "models/checkpoints/mix_a"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text('{"model_type": "placeholder"}')
    params = project_params(**{
        "paths": {"problems": "data/problems", "traces": "data/traces", "curated": "data/curated",
                  "mixes": "data/mixes", "student": "models/student", "checkpoints": "models/checkpoints",
                  "eval": "data/eval", "reports": "reports"},
        "eval": eval_section,
        "tracking": {"experiment": "test", "uri": f"sqlite:///{root}/mlflow.db"},
    })
    params["curate"]["decontam"]["benchmarks"] = decontam
    return params
