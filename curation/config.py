"""Typed params of the curation package: ``problems:``, ``sources:``, ``curate:``, ``groups:``
and ``mix:``. Built by the params root (``pipelines/params.py``) with :func:`common.params.build`;
errors name the key path, e.g. ``mix 'mix_long': shares sum to 1.2, expected 1.0``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from common.params import ParamsError, build, is_int, is_number, section
from curation.schema import STYLES, TEACHER_SIZES
from curation.selection import Selection, parse_selection
from curation.templates import TEMPLATES
from generation.engines import ENGINE_KINDS
from grading.rules import HouseRules

SOURCE_KINDS = ("champ", "champ_human", "hf", "file", "generate")
# Teacher generation (curation/teacher.py) knobs, validated here so parsing params never loads it.
SELECT_MODES = ("shortest_correct", "first_correct", "all_correct", "all")
SAMPLING_KEYS = ("temperature", "top_p", "max_tokens", "seed")


# problems.set.format: None = an answer column; "math" = MATH-format rows (problem, solution), the
# reference being the solution's last \boxed{}; jsonl/json/parquet name a file's format.
PROBLEM_FORMATS = (None, "math", "jsonl", "json", "parquet")


@dataclass
class ProblemsParams:
    set: dict
    test_fraction: float = 0.2
    seed: int = 13

    def __post_init__(self):
        if isinstance(self.test_fraction, bool) or not isinstance(self.test_fraction, (int, float)) \
                or not 0.0 <= self.test_fraction < 1.0:
            raise ParamsError(f"problems.test_fraction: {self.test_fraction!r} must be in [0, 1) "
                              "(0: no held-out split; evaluate on external benchmarks)")
        if not isinstance(self.set, dict):
            raise ParamsError(f"problems.set: expected a mapping, got {type(self.set).__name__}")
        kind = self.set.get("kind")
        if kind not in ("champ", "hf", "file"):
            raise ParamsError(f"problems.set.kind: '{kind}' must be one of champ, hf, file")
        fmt = self.set.get("format")
        if fmt not in PROBLEM_FORMATS:
            raise ParamsError(f"problems.set.format: {fmt!r} must be one of "
                              f"{', '.join(str(f) for f in PROBLEM_FORMATS)} (math: the reference is "
                              "the last \\boxed{} of the solution column)")
        configs = self.set.get("configs")
        if configs is not None and (kind != "hf" or not isinstance(configs, list) or not configs
                                    or not all(isinstance(c, str) for c in configs)):
            raise ParamsError("problems.set.configs: a non-empty list of dataset config names (kind: hf only)")


@dataclass
class SourceParams:
    name: str
    kind: str
    style: str
    teacher_size: str
    model: str | None = None           # champ: which CHAMP model
    teacher: str | None = None         # hf/file: teacher name recorded on each trace
    id: str | None = None              # hf dataset id
    revision: str | None = None
    split: str = "train"
    path: str | None = None            # file source
    format: str | None = None          # jsonl | json | parquet (default: from the suffix)
    columns: dict = field(default_factory=dict)  # schema column -> input column
    limit: int | None = None
    # kind: generate (curation/teacher.py): a teacher engine answers the train problems
    engine: dict | None = None         # make_engine spec: {kind: transformers|vllm|openai, model: ...}
    template: str = "long_cot"         # long_cot | short_cot | custom text containing {problem}
    sampling: dict = field(default_factory=dict)  # temperature, top_p, max_tokens, seed
    n: int = 1                         # samples per problem
    problem_split: str = "train"       # only train: the test split is held out for evaluation
    select: str = "shortest_correct"   # shortest_correct | first_correct | all_correct | all
    k: int | None = None               # kept per problem by shortest/first_correct (default 1)
    max_problems: int | None = None    # first N train problems (null: all)
    chunk_size: int = 16               # problems per crash-safe chunk file
    work_dir: str = "data/generation"  # resumable samples, outside DVC outputs

    def __post_init__(self):
        where = f"sources.{self.name}"
        if self.kind not in SOURCE_KINDS:
            raise ParamsError(f"{where}.kind: '{self.kind}' must be one of {', '.join(SOURCE_KINDS)}")
        if self.style not in STYLES:
            raise ParamsError(f"{where}.style: '{self.style}' must be one of {', '.join(STYLES)}")
        if self.teacher_size not in TEACHER_SIZES:
            raise ParamsError(
                f"{where}.teacher_size: '{self.teacher_size}' must be one of {', '.join(TEACHER_SIZES)}")
        if self.kind == "champ" and not self.model:
            raise ParamsError(f"{where}.model: a champ source needs the CHAMP model name (e.g. 'GPT-4')")
        if self.kind == "hf" and not self.id:
            raise ParamsError(f"{where}.id: an hf source needs a dataset id")
        if self.kind == "file" and not self.path:
            raise ParamsError(f"{where}.path: a file source needs a path")
        if self.kind in ("hf", "file"):
            for needed in ("problem", "response"):
                if needed not in self.columns:
                    raise ParamsError(
                        f"{where}.columns: map '{needed}' to an input column (e.g. {{{needed}: ...}})")
        if self.kind == "generate":
            self._check_generate(where)

    def _check_generate(self, where: str) -> None:
        from generation.engines import ENGINE_KINDS, SamplingConfig

        kind = self.engine.get("kind") if isinstance(self.engine, dict) else None
        if kind not in ENGINE_KINDS:
            raise ParamsError(f"{where}.engine: a generate source needs an engine mapping with kind one of "
                              f"{', '.join(ENGINE_KINDS)} (e.g. {{kind: transformers, model: models/student}})")
        if kind in ("transformers", "vllm", "openai") and not self.engine.get("model"):
            raise ParamsError(f"{where}.engine.model: name the teacher (hub id or local directory; for "
                              "openai the served model name)")
        if kind == "openai" and not self.engine.get("base_url"):
            raise ParamsError(f"{where}.engine.base_url: an openai engine needs the endpoint (http://host:8000/v1)")
        if not isinstance(self.template, str) or (self.template not in TEMPLATES and "{problem}" not in self.template):
            raise ParamsError(f"{where}.template: {self.template!r} must be one of {', '.join(TEMPLATES)} "
                              "or a custom text containing {problem}")
        if not isinstance(self.sampling, dict):
            raise ParamsError(f"{where}.sampling: expected a mapping of {', '.join(SAMPLING_KEYS)}")
        if "n" in self.sampling:
            raise ParamsError(f"{where}.sampling.n: set samples per problem with {where}.n")
        unknown = sorted(set(self.sampling) - set(SAMPLING_KEYS))
        if unknown:
            raise ParamsError(f"{where}.sampling: unknown key(s) {unknown}; expected some of {list(SAMPLING_KEYS)}")
        if not isinstance(self.n, int) or isinstance(self.n, bool) or self.n < 1:
            raise ParamsError(f"{where}.n: {self.n!r} must be a positive integer")
        if self.n > 1 and self.sampling.get("temperature", 0.0) == 0:
            raise ParamsError(f"{where}.n: {self.n} samples per problem need sampling.temperature > 0 "
                              f"(greedy decoding gives {self.n} identical samples)")
        try:
            SamplingConfig(**self.sampling, n=self.n)
        except (TypeError, ValueError) as exc:
            raise ParamsError(f"{where}.{exc}") from exc
        if self.problem_split != "train":
            raise ParamsError(f"{where}.problem_split: '{self.problem_split}' must be train "
                              "(the test split is held out for evaluation)")
        if self.select not in SELECT_MODES:
            raise ParamsError(f"{where}.select: '{self.select}' must be one of {', '.join(SELECT_MODES)}")
        if self.k is not None:
            if self.select not in ("shortest_correct", "first_correct"):
                raise ParamsError(f"{where}.k: applies to shortest_correct and first_correct only "
                                  f"({self.select} keeps every such sample)")
            if not isinstance(self.k, int) or isinstance(self.k, bool) or not 1 <= self.k <= self.n:
                raise ParamsError(f"{where}.k: {self.k!r} must be an integer from 1 to n = {self.n}")
        for key in ("max_problems", "chunk_size"):
            value = getattr(self, key)
            if (value is not None or key == "chunk_size") and (
                    not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ParamsError(f"{where}.{key}: {value!r} must be a positive integer")


@dataclass
class CorrectnessParams:
    enabled: bool = True
    timeout_s: float = 5.0
    workers: int = 2
    rules: HouseRules = field(default_factory=HouseRules)   # house rules (grading/rules.py)
    # LLM judge for rule misses (same engines, cache, strict verdict and audit as eval.judge):
    # None = rule only (offline default); else an engine spec + optional id / max_tokens.
    judge: dict | None = None
    max_answer_chars: int = 200       # extracted answer shown to the judge, at most

    def __post_init__(self):
        if self.judge is not None and (not isinstance(self.judge, dict) or self.judge.get("kind") not in ENGINE_KINDS):
            kind = self.judge.get("kind") if isinstance(self.judge, dict) else self.judge
            raise ParamsError(f"curate.correctness.judge.kind: {kind!r} must be one of "
                              f"{', '.join(ENGINE_KINDS)} (or judge: null for rule-only grading)")


@dataclass
class QualityParams:
    max_ngram_repeat_fraction: float = 0.3
    min_distinct_token_fraction: float = 0.1
    min_english_fraction: float = 0.6


@dataclass
class DedupParams:
    near_threshold: float = 0.85
    num_perm: int = 128
    shingle: int = 5


@dataclass
class DecontamParams:
    ngram: int = 13
    benchmarks: list = field(default_factory=list)


@dataclass
class ContractParams:
    min_kept_fraction: float = 0.05
    max_reason_share: float = 0.95


@dataclass
class ScoreParams:
    """``curate.score``: the student's NLL on kept traces (``student_nll`` column)."""
    enabled: bool = False
    max_rows: int | None = 16          # a seeded subset per source; None scores every kept row
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.enabled, bool):
            raise ParamsError(f"curate.score.enabled: {self.enabled!r} must be true or false")
        if self.max_rows is not None and (not is_int(self.max_rows) or self.max_rows <= 0):
            raise ParamsError(f"curate.score.max_rows: {self.max_rows!r} must be a positive integer or null (all)")
        if not is_int(self.batch_size) or self.batch_size <= 0:
            raise ParamsError(f"curate.score.batch_size: {self.batch_size!r} must be a positive integer")
        if not is_int(self.seed):
            raise ParamsError(f"curate.score.seed: {self.seed!r} must be an integer")


@dataclass
class RayCurateParams:
    """``curate.ray`` (``executor: ray``): checker actors, each with its own grading processes."""
    workers: int = 2
    num_cpus_per_worker: float = 1.0
    grading_workers: int = 1

    def __post_init__(self):
        for key, low in (("workers", 1), ("grading_workers", 0)):
            if not is_int(getattr(self, key)) or getattr(self, key) < low:
                raise ParamsError(f"curate.ray.{key}: {getattr(self, key)!r} must be an integer >= {low}")
        if not is_number(self.num_cpus_per_worker) or self.num_cpus_per_worker <= 0:
            raise ParamsError(f"curate.ray.num_cpus_per_worker: {self.num_cpus_per_worker!r} must be a positive number")


@dataclass
class CurateParams:
    min_tokens: int
    max_tokens: int
    cutoff_len: int
    over_cutoff: str = "reject"
    correctness: CorrectnessParams = field(default_factory=CorrectnessParams)
    quality: QualityParams = field(default_factory=QualityParams)
    dedup: DedupParams = field(default_factory=DedupParams)
    decontam: DecontamParams = field(default_factory=DecontamParams)
    contract: ContractParams = field(default_factory=ContractParams)
    score: ScoreParams = field(default_factory=ScoreParams)
    shard_rows: int = 50_000         # rows read, checked and written at a time (curation/sharded.py)
    executor: str = "local"          # local | ray (curate.ray; RAY_ADDRESS picks the cluster)
    ray: RayCurateParams = field(default_factory=RayCurateParams)

    def __post_init__(self):
        if not is_int(self.shard_rows) or self.shard_rows <= 0:
            raise ParamsError(f"curate.shard_rows: {self.shard_rows!r} must be a positive integer")
        if self.executor not in ("local", "ray"):
            raise ParamsError(f"curate.executor: {self.executor!r} must be local or ray")
        for key in ("min_tokens", "max_tokens", "cutoff_len"):
            if not is_int(getattr(self, key)):
                raise ParamsError(f"curate.{key}: {getattr(self, key)!r} must be an integer")
        for sub, keys in (("correctness", ("timeout_s",)),
                          ("quality", ("max_ngram_repeat_fraction", "min_distinct_token_fraction",
                                       "min_english_fraction")),
                          ("dedup", ("near_threshold",)), ("contract", ("min_kept_fraction", "max_reason_share"))):
            for key in keys:
                value = getattr(getattr(self, sub), key)
                if not is_number(value):
                    raise ParamsError(f"curate.{sub}.{key}: {value!r} must be a number")
        if not is_int(self.correctness.workers) or self.correctness.workers < 0:
            raise ParamsError(f"curate.correctness.workers: {self.correctness.workers!r} must be an integer >= 0")
        if not self.correctness.timeout_s > 0:
            raise ParamsError(f"curate.correctness.timeout_s: {self.correctness.timeout_s!r} must be > 0")
        if self.over_cutoff not in ("reject", "flag"):
            raise ParamsError(f"curate.over_cutoff: '{self.over_cutoff}' must be reject or flag")
        if self.cutoff_len < self.min_tokens:
            raise ParamsError(f"curate.cutoff_len: {self.cutoff_len} is below curate.min_tokens {self.min_tokens}; "
                              "no trace could be kept")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ParamsError(
                f"curate: min_tokens {self.min_tokens} must be <= max_tokens {self.max_tokens}")
        if self.cutoff_len <= 0:
            raise ParamsError(f"curate.cutoff_len: {self.cutoff_len} must be positive")
        if not 0.0 < self.dedup.near_threshold <= 1.0:
            raise ParamsError(f"curate.dedup.near_threshold: {self.dedup.near_threshold} must be in (0, 1]")


@dataclass
class MixParams:
    name: str
    # source or group name -> share of the final mix, or {share: S, select: ...} (parse_selection)
    components: dict[str, float]
    size: int | None = None            # examples in the mix
    token_budget: int | None = None    # or: student tokens in the mix
    oversample: bool = False
    # each problem at most once in the mix (the published Mix-Long construction): components
    # supply distinct problems, shares exact (size mode only, no oversampling)
    one_per_problem: bool = False
    # components that select by score (from their {share, select} form); others draw at random
    selections: dict[str, Selection] = field(default_factory=dict, init=False)

    def __post_init__(self):
        shares = {}
        for comp, value in (self.components or {}).items():
            if isinstance(value, dict):
                where = f"mix.mixes.{self.name}.components.{comp}"
                unknown = sorted(set(value) - {"share", "select"})
                if unknown or "share" not in value:
                    raise ParamsError(f"{where}: expected {{share: S, select: ...}}, got keys {sorted(value)}")
                chosen = parse_selection(value.get("select"), f"{where}.select")
                if chosen is not None:
                    self.selections[comp] = chosen
                value = value["share"]
            shares[comp] = value
        self.components = shares
        if self.selections and self.one_per_problem:
            raise ParamsError(f"mix.mixes.{self.name}: select by score and one_per_problem cannot be combined "
                              "(one_per_problem chooses the problems itself)")
        if not isinstance(self.one_per_problem, bool):
            raise ParamsError(f"mix.mixes.{self.name}.one_per_problem: must be true or false")
        if self.one_per_problem and (self.size is None or self.oversample):
            raise ParamsError(f"mix.mixes.{self.name}.one_per_problem: needs a size (not a token_budget) "
                              "and oversample: false")


@dataclass
class MixSection:
    seed: int
    mixes: dict[str, MixParams]


def parse_problems(params: dict) -> ProblemsParams:
    return build(ProblemsParams, section(params, "problems"), "problems")


def parse_sources(params: dict) -> dict[str, SourceParams]:
    raw = section(params, "sources")
    if not raw:
        raise ParamsError("sources: at least one source is needed")
    out = {}
    for name, spec in raw.items():
        if not isinstance(spec, dict):
            raise ParamsError(f"sources.{name}: expected a mapping")
        out[name] = build(SourceParams, {"name": name, **spec}, f"sources.{name}")
    return out


def parse_curate(params: dict, benchmarks: dict) -> CurateParams:
    cur = build(CurateParams, section(params, "curate"), "curate")
    for b in cur.decontam.benchmarks:
        if b not in benchmarks:
            raise ParamsError(f"curate.decontam.benchmarks: '{b}' is not a benchmark under eval.benchmarks "
                              f"(known: {sorted(benchmarks)})")
    return cur


def parse_groups(params: dict, sources: dict[str, SourceParams]) -> dict[str, list[str]]:
    groups = params.get("groups") or {}
    for name, members in groups.items():
        if name in sources:
            raise ParamsError(f"groups.{name}: a group may not share its name with a source")
        if not isinstance(members, list) or not members:
            raise ParamsError(f"groups.{name}: expected a non-empty list of source names")
        for m in members:
            if m not in sources:
                raise ParamsError(f"groups.{name}: unknown source '{m}' (known: {sorted(sources)})")
    return groups


def parse_mix(params: dict, sources: dict[str, SourceParams], groups: dict[str, list[str]]) -> MixSection:
    raw = section(params, "mix")
    mixes = {}
    for name, spec in (raw.get("mixes") or {}).items():
        if not isinstance(spec, dict):
            raise ParamsError(f"mix '{name}': expected a mapping")
        m = build(MixParams, {"name": name, **spec}, f"mix '{name}'")
        if not m.components:
            raise ParamsError(f"mix '{name}': no components")
        for comp, share in m.components.items():
            if comp not in sources and comp not in groups:
                raise ParamsError(f"mix '{name}': unknown source or group '{comp}' "
                                  f"(sources: {sorted(sources)}; groups: {sorted(groups)})")
            if not isinstance(share, (int, float)) or isinstance(share, bool) or share <= 0:
                raise ParamsError(f"mix '{name}': share of '{comp}' is {share!r}, expected a number > 0")
        total = sum(m.components.values())
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ParamsError(f"mix '{name}': shares sum to {total:g}, expected 1.0")
        if (m.size is None) == (m.token_budget is None):
            raise ParamsError(f"mix '{name}': set exactly one of size (examples) or token_budget (tokens)")
        for key, value in (("size", m.size), ("token_budget", m.token_budget)):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ParamsError(f"mix '{name}': {key} {value!r} must be a positive integer")
        score_on = ((params.get("curate") or {}).get("score") or {}).get("enabled") is True
        if m.selections and not score_on:
            raise ParamsError(f"mix.mixes.{name}.components.{next(iter(m.selections))}.select: selecting by student_nll needs "
                              "the scores: set curate.score.enabled: true (and curate.score.max_rows: null "
                              "to score every kept row)")
        mixes[name] = m
    if not mixes:
        raise ParamsError("mix.mixes: at least one mix is needed")
    return MixSection(seed=int(raw.get("seed", 0)), mixes=mixes)


def members(component: str, groups: dict[str, list[str]]) -> list[str]:
    """Sources behind a mix component (a group name or a single source name)."""
    return list(groups.get(component, [component]))
