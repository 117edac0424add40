"""The strict params builder (common/params.py) and the stage wrapper's exit codes."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from common.errors import GateFailed, MixdistillError
from common.params import ParamsError, build, deep_merge
from pipelines import stage


@dataclass
class Inner:
    k: int = 1


@dataclass
class Outer:
    name: str
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        if not self.name:
            raise ValueError("name must not be empty")


def test_build_nests_and_refuses_unknown_keys_with_their_path():
    assert build(Outer, {"name": "a", "inner": {"k": 3}}, "outer") == Outer("a", Inner(3))
    assert build(Outer, {"name": "a", "inner": None}, "outer").inner == Inner()
    with pytest.raises(ParamsError, match=r"outer.inner: unknown key\(s\) \['j'\]; expected some of \['k'\]"):
        build(Outer, {"name": "a", "inner": {"j": 3}}, "outer")
    with pytest.raises(ParamsError, match=r"outer: name must not be empty"):
        build(Outer, {"name": ""}, "outer")
    with pytest.raises(ParamsError, match=r"outer.inner: expected a mapping, got list"):
        build(Outer, {"name": "a", "inner": [1]}, "outer")


def test_deep_merge_changes_only_the_keys_it_names():
    base = {"a": 1, "lora": {"r": 16, "alpha": 32}}
    assert deep_merge(base, {"lora": {"r": 8}, "b": 2}) == {"a": 1, "lora": {"r": 8, "alpha": 32}, "b": 2}
    assert base == {"a": 1, "lora": {"r": 16, "alpha": 32}}


def test_stage_wrapper_maps_errors_to_exit_codes_and_one_line(capsys):
    def bad():
        raise ParamsError("curate.dedup.num_perm: 0 must be positive")

    assert stage.run("curate@x", bad) == 2
    assert capsys.readouterr().err == "error: curate@x: curate.dedup.num_perm: 0 must be positive\n"
    assert stage.run("curate@x", lambda: (_ for _ in ()).throw(GateFailed("contract failed"))) == 3
    assert stage.run("s", lambda: (_ for _ in ()).throw(FileNotFoundError("x.parquet: not found"))) == 2
    assert stage.run("s", lambda: None) == 0
    with pytest.raises(RuntimeError):              # a bug keeps its traceback
        stage.run("s", lambda: (_ for _ in ()).throw(RuntimeError("bug")))
    assert issubclass(ParamsError, MixdistillError)
