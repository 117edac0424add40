"""The layers hold and dvc.yaml's dependencies are exactly right.

A stage whose ``deps`` miss a file its command imports is served stale by DVC (its outputs look
up to date after that file changed), so the import closure of every stage command, lazy imports
included, must be covered by its deps. The packages form layers: common < generation < grading <
curation | training | evaluation < pipelines; a package imports only packages below it, and no
file-level import cycle exists anywhere.
"""
from __future__ import annotations

import ast
import dataclasses
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"common": 0, "generation": 1, "grading": 2, "curation": 3, "training": 3, "evaluation": 3, "pipelines": 4}
LOWER_LAYER = ("common", "generation", "grading")


def project_files() -> list[Path]:
    return sorted(p for pkg in LAYERS for p in (ROOT / pkg).rglob("*.py"))


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=None)
def imports_of(path: Path) -> frozenset[Path]:
    """Project files a file imports, anywhere in it (function-level imports count), plus the
    ``__init__`` of every package on the way (importing ``a.b`` runs ``a/__init__.py``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]
    found = set()
    for name in names:
        if name.split(".")[0] not in LAYERS:
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            f = module_file(".".join(parts[:i]))
            if f is not None and f != path:
                found.add(f)
    return frozenset(found)


def closure(module: str) -> set[Path]:
    start = module_file(module)
    seen, todo = {start}, [start]
    while todo:
        for f in imports_of(todo.pop()):
            if f not in seen:
                seen.add(f)
                todo.append(f)
    return seen


def dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def stage_body(stage: dict) -> dict:
    return stage.get("do", stage)


def docstring_only(path: Path) -> bool:
    """A package ``__init__`` that holds only its docstring changes no stage's behaviour."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def covered(path: Path, deps: list[str]) -> bool:
    if path.name == "__init__.py" and docstring_only(path):
        return True
    rel = path.relative_to(ROOT).as_posix()
    return any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_stage_deps_cover_every_imported_project_file(name):
    body = stage_body(dvc_stages()[name])
    module = body["cmd"].split("python -m ", 1)[1].split()[0]
    deps = [d for d in body["deps"] if "${" not in d]
    missing = sorted(p.relative_to(ROOT).as_posix() for p in closure(module) if not covered(p, deps))
    assert not missing, f"dvc.yaml stage '{name}' imports files its deps do not cover: {missing}"


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_stage_deps_name_nothing_it_does_not_import(name):
    """An over-wide dependency re-runs a stage for nothing (a trainer edit would re-mix)."""
    body = stage_body(dvc_stages()[name])
    module = body["cmd"].split("python -m ", 1)[1].split()[0]
    imported = {p.relative_to(ROOT).as_posix() for p in closure(module)}
    for dep in (d for d in body["deps"] if "${" not in d):
        assert dep in LOWER_LAYER or dep in imported, f"stage '{name}': dep '{dep}' is not imported by {module}"


def _strongly_connected(graph: dict) -> list[list]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(str(c) for c in comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_between_files():
    graph = {f: set(imports_of(f)) - {f} for f in project_files()}
    # A package's __init__ is imported on the way to its modules; it imports none of them.
    assert _strongly_connected(graph) == []


def test_packages_import_only_packages_below_them():
    wrong = []
    for f in project_files():
        pkg = f.relative_to(ROOT).parts[0]
        for g in imports_of(f):
            other = g.relative_to(ROOT).parts[0]
            if other != pkg and LAYERS[other] >= LAYERS[pkg]:
                wrong.append(f"{f.relative_to(ROOT)} imports {g.relative_to(ROOT)}")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(wrong)


def test_every_package_says_what_it_owns():
    for pkg in LAYERS:
        doc = ast.get_docstring(ast.parse((ROOT / pkg / "__init__.py").read_text()))
        assert doc and ("Owns" in doc or "own" in doc), f"{pkg}/__init__.py: no docstring saying what it owns"


def test_no_source_file_over_400_lines():
    long = {str(f.relative_to(ROOT)): n for f in project_files()
            if (n := len(f.read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, f"files over 400 lines: {long}"


# --------------------------------------------------------------------------- params dependencies

def stage_params(name: str) -> list[str]:
    return [p for p in stage_body(dvc_stages()[name]).get("params", []) if isinstance(p, str)]


def test_train_depends_on_every_recipe_key_but_not_on_the_mix_list():
    from training.config import TrainParams

    keys = set(stage_params("train"))
    recipe = {f"train.{f.name}" for f in dataclasses.fields(TrainParams) if f.name != "mixes"}
    assert "train" not in keys and "train.mixes" not in keys
    assert recipe <= keys, f"train@MIX misses params {sorted(recipe - keys)}"


def test_adding_a_mix_to_train_mixes_leaves_every_trained_stage_unchanged():
    """DVC re-runs a stage when a params value it depends on changes; adding a mix to
    train.mixes must change none of the values train@MIX reads."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    after = yaml.safe_load((ROOT / "params.yaml").read_text())
    after["mix"]["mixes"]["extra"] = {"size": 8, "components": {"long": 1.0}}
    after["train"]["mixes"] = raw["train"]["mixes"] + ["extra"]

    def value(params, dotted):
        for part in dotted.split("."):
            params = params[part]
        return params

    for key in stage_params("train"):
        if key.startswith("mix.mixes."):
            continue                     # ${item}-templated: the stage's own mix
        assert value(raw, key) == value(after, key), f"train@MIX depends on '{key}', which adding a mix changes"


@pytest.mark.parametrize("name", sorted(dvc_stages()))
def test_stages_depend_on_the_preset_overrides_of_the_sections_they_read(name):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    keys = stage_params(name)
    sections = {k.split(".")[0] for k in keys} - {"preset", "presets"}
    wanted = [f"presets.{p}.{s}" for p, over in (raw.get("presets") or {}).items() for s in over if s in sections]
    if wanted:
        assert "preset" in keys, f"stage '{name}' reads {sorted(sections)} but not 'preset'"
        assert set(wanted) <= set(keys), f"stage '{name}' misses {sorted(set(wanted) - set(keys))}"
