"""Typed params of the evaluation package: ``eval:`` and ``report:``. Built by the params root
(``pipelines/params.py``) with :func:`common.params.build`; errors name the key path.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from common.params import ParamsError, build, is_int, is_number, section
from generation.engines import ENGINE_KINDS, SamplingConfig
from grading.rules import HouseRules

BENCHMARK_KINDS = ("champ_heldout", "hf", "file")
# mixdistill: our prompt and grader. paper: the evaluation of Li et al. 2025 (its prompt, decoding, stop
# strings and scoring rule; evaluation/paper_protocol.py), with our grader scored beside it.
PROTOCOLS = ("mixdistill", "paper")
# The paper's decoding (grading/paper.py PAPER_PROTOCOL["decoding"]: greedy, max_gen_toks 16000; a
# test keeps the two in step). Under protocol paper these are the defaults of eval.sampling: a key
# written there explicitly wins (e.g. max_tokens: 192 for a CPU smoke run).
PAPER_SAMPLING = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 16000, "n": 1, "seed": 0}


@dataclass
class GradingParams:
    timeout_s: float = 5.0            # hard per-pair deadline for math-verify (it can hang)
    workers: int = 2
    max_answer_chars: int = 200       # extracted answer shown to the judge, at most
    rules: HouseRules = field(default_factory=HouseRules)   # house rules (grading/rules.py)


@dataclass
class EvalParams:
    benchmarks: dict
    # 24 problems x 192 new tokens keeps 7 models (6 mixes + base) within ~5 minutes on 2 CPU cores.
    max_problems: int | None = 24
    batch_size: int = 24              # one batch for the 24 default problems (~20 tok/s one at a time)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(max_tokens=192))
    ks: list = field(default_factory=lambda: [1])
    engine: dict = field(default_factory=lambda: {"kind": "transformers"})
    judge: dict | None = None         # None: rule only; else an engine spec (+ optional "id")
    grading: GradingParams = field(default_factory=GradingParams)
    protocol: str = "mixdistill"      # mixdistill | paper (see PROTOCOLS)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ParamsError(f"eval.protocol: {self.protocol!r} must be one of {', '.join(PROTOCOLS)}")
        if not self.benchmarks:
            raise ParamsError("eval.benchmarks: at least one benchmark is needed")
        for name, spec in self.benchmarks.items():
            if not isinstance(spec, dict) or spec.get("kind") not in BENCHMARK_KINDS:
                raise ParamsError(f"eval.benchmarks.{name}.kind: must be one of {', '.join(BENCHMARK_KINDS)}")
        if self.max_problems is not None and (not isinstance(self.max_problems, int) or self.max_problems <= 0):
            raise ParamsError(f"eval.max_problems: {self.max_problems!r} must be a positive integer or null")
        if not isinstance(self.batch_size, int) or self.batch_size <= 0:
            raise ParamsError(f"eval.batch_size: {self.batch_size!r} must be a positive integer")
        if not all(isinstance(k, int) and k >= 1 for k in self.ks):
            raise ParamsError(f"eval.ks: {self.ks!r} must be positive integers")
        too_big = [k for k in self.ks if k > self.sampling.n]
        if too_big:
            raise ParamsError(f"eval.ks: {too_big} exceed eval.sampling.n = {self.sampling.n}")
        if self.engine.get("kind") not in ENGINE_KINDS:
            raise ParamsError(f"eval.engine.kind: '{self.engine.get('kind')}' must be one of "
                                  f"{', '.join(ENGINE_KINDS)}")
        if self.judge is not None and self.judge.get("kind") not in ENGINE_KINDS:
            raise ParamsError(f"eval.judge.kind: '{self.judge.get('kind')}' must be one of "
                                  f"{', '.join(ENGINE_KINDS)} (or judge: null for rule-only grading)")


@dataclass
class BootstrapParams:
    """The report's intervals (evaluation/stats.py): percentile intervals of a paired bootstrap."""
    # On 24 problems the endpoints sit on the 1/24 grid; over 20 seeds (a 10-vs-4 difference) 10k
    # replicates moved one endpoint by one problem and the other not at all; 1k moved both.
    resamples: int = 10_000
    seed: int = 0                     # every interval draws from a Generator seeded with this
    confidence: float = 0.95

    def __post_init__(self):
        if not is_int(self.resamples) or self.resamples < 100:
            raise ParamsError(f"report.bootstrap.resamples: {self.resamples!r} must be an integer >= 100")
        if not is_int(self.seed) or self.seed < 0:
            raise ParamsError(f"report.bootstrap.seed: {self.seed!r} must be a non-negative integer")
        if not is_number(self.confidence) or not 0.5 <= self.confidence < 1:
            raise ParamsError(f"report.bootstrap.confidence: {self.confidence!r} must be in [0.5, 1)")


@dataclass
class ReportParams:
    # ΔLong = P(long) - P(short); ΔLarge = P(large) - P(small): mix names, not teacher names.
    long: str = "long"
    short: str = "short"
    large: str = "short"              # GPT-4 short CoT is the large teacher's data
    small: str = "small"
    mix_long: str = "mix_long"        # compared with long and short
    mix_large: str = "mix_large"      # compared with large and small
    metric: str = "accuracy"          # which scores.json metric the tables and deltas use
    baseline: str = "base"
    bootstrap: BootstrapParams = field(default_factory=BootstrapParams)


def parse_eval(params: dict) -> EvalParams:
    """``eval:`` typed. Under ``protocol: paper`` the paper's decoding fills every eval.sampling key
    the section does not write itself (explicit keys win, so a CPU run can still cap max_tokens)."""
    raw = section(params, "eval")
    if raw.get("protocol") == "paper" and isinstance(raw.get("sampling") or {}, dict):
        raw = {**raw, "sampling": {**PAPER_SAMPLING, **(raw.get("sampling") or {})}}
    return build(EvalParams, raw, "eval")


def parse_report(params: dict) -> ReportParams:
    return build(ReportParams, section(params, "report", required=False), "report")


@dataclass
class HeldoutParams:
    """``heldout:``: the fixed held-out trace set (stage heldout) and its scoring (heldout_score@MIX)."""
    max_traces_per_style: int | None = 8    # per style; None keeps every trace that passes the checks
    seed: int = 0                     # ranks traces for the subset (a hash of seed and trace id)
    batch_size: int = 8               # sequences per forward pass when scoring

    def __post_init__(self):
        if self.max_traces_per_style is not None and (not is_int(self.max_traces_per_style)
                                                      or self.max_traces_per_style < 1):
            raise ParamsError(f"heldout.max_traces_per_style: {self.max_traces_per_style!r} must be a positive "
                              "integer or null")
        if not is_int(self.seed):
            raise ParamsError(f"heldout.seed: {self.seed!r} must be an integer")
        if not is_int(self.batch_size) or self.batch_size < 1:
            raise ParamsError(f"heldout.batch_size: {self.batch_size!r} must be a positive integer")


def parse_heldout(params: dict) -> HeldoutParams:
    return build(HeldoutParams, section(params, "heldout", required=False), "heldout")
