"""Typed params of the training package: ``student:`` and ``train:``.

Built by the params root (``pipelines/params.py``) after the selected preset (``preset:``) has
been overlaid, so these dataclasses always see the effective values. Errors name the key path.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.params import ParamsError, build, section, is_int as _is_int, is_number as _is_number

METHODS = ("full", "lora")
OVER_CUTOFF = ("error", "drop", "truncate")
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_restarts")
# Keys of ``train:`` that describe *what* to train rather than *how*: a preset may not change them.
NOT_PRESETTABLE = ("mixes",)
# Keys an arm (``train.arms.<mix>``) may not override: which mixes train, and the arms themselves.
NOT_PER_ARM = ("mixes", "arms")


@dataclass
class StudentParams:
    model: str
    revision: str | None = None
    trust_remote_code: bool = False
    dtype: str = "float32"


@dataclass
class LoraParams:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    merge: bool = False                # also save the adapter merged into the base weights (merged/)


@dataclass
class TrainParams:
    mixes: list[str]
    method: str = "full"
    epochs: float = 1.0
    max_steps: int | None = None       # overrides epochs when set
    learning_rate: float = 5e-5
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    cutoff_len: int = 1024
    over_cutoff: str = "error"         # error | drop | truncate (each with a logged count)
    packing: bool = True
    pack_tokens: int = 2048            # token budget of one pack (packing on)
    batch_size: int = 1                # per device: packs (packing on) or examples (packing off)
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    bf16: bool | str = "auto"          # auto: only where the GPU supports it
    seed: int = 42
    save_steps: int = 5
    save_total_limit: int = 2
    logging_steps: int = 1
    deepspeed: str | None = None       # path to a DeepSpeed JSON config (GPU only)
    lora: LoraParams = field(default_factory=LoraParams)
    # per-mix overrides of the keys above: {mix_long: {batch_size: 5, cutoff_len: 4096}} (the
    # paper trained its arms with different recipes; `mixdistill recipe` prints the difference)
    arms: dict = field(default_factory=dict)

    def to_flat_dict(self) -> dict:
        """``{"lora.r": 16, "learning_rate": 5e-05, ...}``: for tracking and fingerprints (the
        recipe of one arm: build it with :func:`recipe_for`; ``arms`` is left out)."""
        flat = {}
        for key, value in asdict(self).items():
            if key == "arms":
                continue
            if isinstance(value, dict):
                flat.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        return flat


def _fail(key: str, message: str):
    raise ParamsError(f"train.{key}: {message}")


def _validate(p: TrainParams, mix_names: list[str]) -> None:
    if not isinstance(p.mixes, list) or not p.mixes:
        _fail("mixes", f"expected a non-empty list of mix names (known: {sorted(mix_names)})")
    for name in p.mixes:
        if name not in mix_names:
            _fail("mixes", f"unknown mix '{name}' (mixes under mix.mixes: {sorted(mix_names)})")
    if len(set(p.mixes)) != len(p.mixes):
        _fail("mixes", f"lists a mix twice: {p.mixes}")
    if p.method not in METHODS:
        _fail("method", f"'{p.method}' must be one of {', '.join(METHODS)}")
    if p.over_cutoff not in OVER_CUTOFF:
        _fail("over_cutoff", f"'{p.over_cutoff}' must be one of {', '.join(OVER_CUTOFF)}")
    if p.lr_scheduler not in SCHEDULERS:
        _fail("lr_scheduler", f"'{p.lr_scheduler}' must be one of {', '.join(SCHEDULERS)}")
    if not _is_number(p.learning_rate) or p.learning_rate <= 0:
        _fail("learning_rate", f"{p.learning_rate!r} must be a number > 0")
    if not _is_number(p.epochs) or p.epochs <= 0:
        _fail("epochs", f"{p.epochs!r} must be a number > 0")
    if p.max_steps is not None and (not _is_int(p.max_steps) or p.max_steps <= 0):
        _fail("max_steps", f"{p.max_steps!r} must be a positive integer or null")
    if not _is_number(p.warmup_ratio) or not 0 <= p.warmup_ratio < 1:
        _fail("warmup_ratio", f"{p.warmup_ratio!r} must be in [0, 1)")
    for key in ("weight_decay", "max_grad_norm"):
        value = getattr(p, key)
        if not _is_number(value) or value < 0:
            _fail(key, f"{value!r} must be a number >= 0")
    for key in ("cutoff_len", "pack_tokens", "batch_size", "grad_accum", "save_steps",
                "save_total_limit", "logging_steps"):
        value = getattr(p, key)
        if not _is_int(value) or value <= 0:
            _fail(key, f"{value!r} must be a positive integer")
    if not _is_int(p.seed):
        _fail("seed", f"{p.seed!r} must be an integer")
    for key in ("packing", "gradient_checkpointing"):
        if not isinstance(getattr(p, key), bool):
            _fail(key, f"{getattr(p, key)!r} must be true or false")
    if p.packing and p.pack_tokens < p.cutoff_len:
        # A pack must hold the longest allowed example, or that example could never be trained on.
        _fail("pack_tokens", f"{p.pack_tokens} is below cutoff_len {p.cutoff_len}; a pack must fit one "
                             "full-length example")
    if p.bf16 not in ("auto", True, False):
        _fail("bf16", f"{p.bf16!r} must be auto, true or false")
    if p.deepspeed is not None:
        if not isinstance(p.deepspeed, str) or not Path(p.deepspeed).is_file():
            _fail("deepspeed", f"{p.deepspeed!r} is not a file (expected null or a DeepSpeed JSON config "
                               "such as configs/deepspeed_zero3.json)")
    lora = p.lora
    if not _is_int(lora.r) or lora.r <= 0:
        _fail("lora.r", f"LoRA rank {lora.r!r} must be a positive integer")
    if not _is_number(lora.alpha) or lora.alpha <= 0:
        _fail("lora.alpha", f"{lora.alpha!r} must be a number > 0")
    if not _is_number(lora.dropout) or not 0 <= lora.dropout < 1:
        _fail("lora.dropout", f"{lora.dropout!r} must be in [0, 1)")
    if (not isinstance(lora.target_modules, (list, str)) or not lora.target_modules
            or (isinstance(lora.target_modules, list)
                and not all(isinstance(m, str) and m for m in lora.target_modules))):
        _fail("lora.target_modules", f"{lora.target_modules!r} must be a non-empty list of module names "
                                     "(or 'all-linear')")
    if not isinstance(lora.merge, bool):
        _fail("lora.merge", f"{lora.merge!r} must be true or false")


def parse_train(params: dict, mix_names) -> TrainParams:
    """Validate the (preset-applied) ``train:`` section against the mixes under ``mix.mixes``.

    ``train.mixes`` may be left out or null to mean every mix.
    """
    mix_names = list(mix_names)
    raw = dict(section(params, "train"))
    if raw.get("mixes") is None:
        raw["mixes"] = list(mix_names)
    # YAML reads 5e-5 (no dot) as a string; accept numeric strings rather than fail on notation.
    for key in ("learning_rate", "weight_decay", "warmup_ratio", "max_grad_norm", "epochs"):
        if isinstance(raw.get(key), str):
            try:
                raw[key] = float(raw[key])
            except ValueError:
                _fail(key, f"{raw[key]!r} is not a number")
    params_obj = build(TrainParams, raw, "train")
    _validate(params_obj, mix_names)
    arms = params_obj.arms
    if not isinstance(arms, dict):
        _fail("arms", f"expected a mapping of mix name -> train keys, got {type(arms).__name__}")
    for mix, overrides in arms.items():
        if mix not in mix_names:
            _fail(f"arms.{mix}", f"unknown mix '{mix}' (mixes under mix.mixes: {sorted(mix_names)})")
        if not isinstance(overrides, dict):
            _fail(f"arms.{mix}", "expected a mapping of train keys")
        fixed = sorted(set(overrides) & set(NOT_PER_ARM))
        if fixed:
            _fail(f"arms.{mix}", f"{fixed} cannot be set per arm")
        recipe_for(params_obj, mix, mix_names)      # validates the arm's effective recipe
    return params_obj


def recipe_for(train: TrainParams, mix: str, mix_names=None) -> TrainParams:
    """The effective recipe of one arm: ``train:`` with ``train.arms.<mix>`` merged over it."""
    overrides = (train.arms or {}).get(mix)
    if not overrides:
        return train
    base = asdict(train)
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    base["arms"] = {}
    arm = build(TrainParams, base, f"train.arms.{mix}")
    try:
        _validate(arm, list(mix_names) if mix_names is not None else arm.mixes)
    except ParamsError as exc:
        raise ParamsError(str(exc).replace("train.", f"train.arms.{mix}.", 1)) from None
    arm.arms = dict(train.arms)
    return arm


def parse_student(params: dict) -> StudentParams:
    return build(StudentParams, section(params, "student"), "student")
