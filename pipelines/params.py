"""The params root: params.yaml loaded once per stage, the preset applied, every section typed
and the rules that span sections checked.

Each section's dataclass lives next to the package that reads it (``common.layout.Paths``,
``curation.config``, ``training.config``, ``evaluation.config``); this module only assembles them.
A preset is one overlay: ``preset: paper`` deep-merges ``presets.paper.<section>`` over each named
section before anything is parsed, so every stage sees the same effective values:

    dvc exp run -S preset=paper

Errors are :class:`common.params.ParamsError` and name the key path.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.layout import Layout, Paths
from common.params import ParamsError, build, deep_merge, load_yaml, section
from curation.config import (CurateParams, MixSection, ProblemsParams, SourceParams, parse_curate, parse_groups,
                             parse_mix, parse_problems, parse_sources)
from evaluation.config import EvalParams, HeldoutParams, ReportParams, parse_eval, parse_heldout, parse_report
from training.config import NOT_PRESETTABLE, StudentParams, TrainParams, parse_student, parse_train

__all__ = ["Params", "ParamsError", "apply_preset", "load_params", "parse_params"]

# Sections a preset may overlay (what to train and where files live are never a preset's to change).
PRESETTABLE = ("problems", "student", "curate", "mix", "train", "eval", "report")
# Every top-level section params.yaml may have (a misspelt one is an error, not ignored).
SECTIONS = ("preset", "presets", "paths", "problems", "student", "sources", "champ", "curate", "groups",
            "mix", "train", "eval", "report", "tracking", "heldout")


LOG_WEIGHTS = ("reference", "copy")


@dataclass
class TrackingParams:
    experiment: str = "mixdistill"
    uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI in the environment wins
    # How a checkpoint's logged model holds its weights: "reference" (path + sha256; the weights
    # are a DVC output already) or "copy" (a transformers-flavour model MLflow can load).
    log_weights: str = "reference"

    def __post_init__(self):
        if self.log_weights not in LOG_WEIGHTS:
            raise ParamsError(f"tracking.log_weights: {self.log_weights!r} must be one of {', '.join(LOG_WEIGHTS)}")


@dataclass
class Params:
    """Every section of one project's params, typed, with the preset applied."""
    raw: dict                          # the effective mapping (preset applied)
    preset: str
    paths: Paths
    problems: ProblemsParams
    student: StudentParams
    sources: dict[str, SourceParams]
    champ_settings: list[str]
    curate: CurateParams
    groups: dict[str, list[str]]
    mix: MixSection
    train: TrainParams
    eval: EvalParams
    report: ReportParams
    tracking: TrackingParams
    heldout: HeldoutParams

    @property
    def layout(self) -> Layout:
        return Layout(self.paths)


def apply_preset(raw: dict) -> dict:
    """``raw`` with ``presets.<preset>`` deep-merged over the sections it names."""
    name = raw.get("preset", "default")
    presets = raw.get("presets") or {}
    if not isinstance(presets, dict):
        raise ParamsError("presets: expected a mapping of preset name -> section overrides")
    if name == "default":
        return raw
    if name not in presets:
        raise ParamsError(f"preset: '{name}' is not defined under presets (known: default, "
                          f"{', '.join(sorted(presets))})")
    overlay = presets[name]
    if not isinstance(overlay, dict):
        raise ParamsError(f"presets.{name}: expected a mapping of section -> overrides")
    out = dict(raw)
    for sec, values in overlay.items():
        if sec not in PRESETTABLE:
            raise ParamsError(f"presets.{name}.{sec}: a preset may set only {', '.join(PRESETTABLE)}")
        if not isinstance(values, dict):
            raise ParamsError(f"presets.{name}.{sec}: expected a mapping of {sec}: keys")
        fixed = sorted(set(values) & set(NOT_PRESETTABLE)) if sec == "train" else []
        if fixed:
            raise ParamsError(f"presets.{name}.train: {fixed} cannot be set by a preset (they choose what "
                              "to train, not how); set them under train:")
        out[sec] = deep_merge(section(raw, sec, required=False), values)
    return out


def parse_params(raw: dict) -> Params:
    """Type and cross-check a params mapping (as read from params.yaml)."""
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ParamsError(f"params: unknown section(s) {unknown}; expected some of {sorted(SECTIONS)}")
    preset = raw.get("preset", "default")
    if not isinstance(preset, str):
        raise ParamsError(f"preset: {preset!r} must be a preset name")
    eff = apply_preset(raw)
    sources = parse_sources(eff)
    groups = parse_groups(eff, sources)
    mix = parse_mix(eff, sources, groups)
    evaluation = parse_eval(eff)
    champ = section(eff, "champ", required=False)
    settings = champ.get("settings") or []
    if not isinstance(settings, list) or not all(isinstance(x, str) for x in settings):
        raise ParamsError("champ.settings: expected a list of CHAMP prompt setting names")
    problems = parse_problems(eff)
    curate = parse_curate(eff, evaluation.benchmarks)
    if problems.test_fraction == 0:
        # no held-out split: the leak check is decontamination against every eval benchmark
        for name, spec in evaluation.benchmarks.items():
            if spec.get("kind") == "champ_heldout":
                raise ParamsError(f"eval.benchmarks.{name}: kind champ_heldout needs a held-out split, "
                                  "but problems.test_fraction is 0")
        curate.decontam.benchmarks = sorted(set(curate.decontam.benchmarks) | set(evaluation.benchmarks))
    return Params(
        raw=eff, preset=preset, paths=build(Paths, section(eff, "paths"), "paths"),
        problems=problems, student=parse_student(eff), sources=sources, champ_settings=settings,
        curate=curate, groups=groups, mix=mix,
        train=parse_train(eff, list(mix.mixes)), eval=evaluation, report=_report(eff, mix),
        tracking=build(TrackingParams, section(eff, "tracking", required=False), "tracking"),
        heldout=parse_heldout(eff))


def _report(eff: dict, mix: MixSection) -> ReportParams:
    report = parse_report(eff)
    for role in ("long", "short", "large", "small", "mix_long", "mix_large"):
        name = getattr(report, role)
        if name not in mix.mixes:
            raise ParamsError(f"report.{role}: '{name}' is not a mix under mix.mixes (known: {sorted(mix.mixes)})")
    return report


def load_params(path: str | Path = "params.yaml") -> Params:
    return parse_params(load_yaml(path))
