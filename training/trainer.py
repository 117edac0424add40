"""Trainer setup and the SFT recipe: full fine-tuning or LoRA, DeepSpeed, packing, resume.

``train_sft`` is the recipe, top to bottom, on the Hugging Face ``Trainer`` (its own logging,
checkpointing and resume; the pipeline adds a callback that logs its metrics to MLflow).

Packing and attention. A packed row holds several examples; they must not attend to each other.
``transformers`` keeps them apart from ``position_ids`` alone only when no KV cache is built
(``use_cache=False``); with a cache, later examples silently see earlier ones. On CPU, the
block-diagonal mask it builds also sends sdpa to its masked kernel, which computes the masked-out
blocks too (a 2048-token pack of 4 examples: 26 s forward+backward here, against 18 s with the
causal kernel per example). So packed training registers its own
attention implementation, ``mixdistill_packed_sdpa``: it reads the example boundaries that
``DataCollatorWithFlattening`` provides (``cu_seq_lens_q``) and runs causal sdpa on each example
(the fast unmasked kernel), which is exact whatever the cache setting. On a GPU with flash-attn
installed, ``flash_attention_2`` reads the same boundaries natively and is used instead.

Multi-GPU: ``accelerate launch --num_processes N -m pipelines.train --mix NAME`` (or
``torchrun``; the stage also relaunches itself so on a multi-GPU machine) runs the same recipe on
every process; the ``Trainer`` shards the data, ``train.deepspeed`` (e.g.
``configs/deepspeed_zero3.json``) shards the model, and only the main process writes outputs.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.params import ParamsError
from common.progress import progress_enabled
from training.config import TrainParams
from training.data import ListDataset, PackedCollator, PaddedCollator, packed_dataset

log = logging.getLogger(__name__)

PACKED_ATTENTION = "mixdistill_packed_sdpa"
FINGERPRINT_FILE = "mixdistill_fingerprint.txt"
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


# --- packed attention --------------------------------------------------------------------------

def packed_sdpa_attention(module, query, key, value, attention_mask, cu_seq_lens_q=None,
                          cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **kwargs):
    """sdpa that honours example boundaries: causal attention inside each packed example only.

    Without boundaries (ordinary padded batches, generation) it is plain sdpa with its mask.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs.pop("is_causal", None)
    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if query.shape[0] != 1 or key.shape[2] != query.shape[2]:
        raise ValueError("packed attention expects one flattened row without a KV cache prefix")
    bounds = cu_seq_lens_q.tolist()
    outputs = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        out, _ = sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end],
                                        value[:, :, start:end], None, is_causal=True, **kwargs)
        outputs.append(out)
    return torch.cat(outputs, dim=1), None


def register_packed_attention() -> str:
    """Register ``mixdistill_packed_sdpa`` (idempotent); masks are built as for sdpa so that the
    implementation stays correct for padded batches too."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    return PACKED_ATTENTION


def packed_attention_for_device() -> str:
    from transformers.utils import is_flash_attn_2_available

    if torch.cuda.is_available() and is_flash_attn_2_available():
        return "flash_attention_2"
    return register_packed_attention()


def use_packed_attention(model) -> str:
    """Switch ``model`` to an attention implementation that isolates packed examples."""
    name = packed_attention_for_device()
    model.set_attn_implementation(name)
    # Nothing is generated during training; a cache would only cost memory (and, with stock sdpa,
    # let packed examples see each other).
    model.config.use_cache = False
    return name


# --- arguments ---------------------------------------------------------------------------------

def bf16_available() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_bf16(setting) -> bool:
    """``auto`` means bf16 exactly where a GPU supports it (CPU bf16 is emulated and slow here)."""
    if setting == "auto":
        return bf16_available()
    if setting and not bf16_available():
        raise ParamsError("train.bf16: true, but no GPU with bfloat16 support is visible; set it to auto "
                               "or false")
    return bool(setting)


def training_arguments_kwargs(cfg: TrainParams, output_dir: str | Path, *, report_to: str = "none",
                              run_name: str | None = None, bf16: bool | None = None) -> dict:
    """Everything ``TrainingArguments`` receives, as a plain dict (inspectable without building it:
    building with a DeepSpeed config needs the deepspeed package)."""
    return {
        "output_dir": str(output_dir),
        "num_train_epochs": float(cfg.epochs),
        "max_steps": cfg.max_steps if cfg.max_steps is not None else -1,
        "per_device_train_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": float(cfg.learning_rate),
        "lr_scheduler_type": cfg.lr_scheduler,
        "warmup_steps": float(cfg.warmup_ratio),      # a float in [0, 1) is a ratio of the total steps
        "weight_decay": float(cfg.weight_decay),
        "max_grad_norm": float(cfg.max_grad_norm),
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "bf16": resolve_bf16(cfg.bf16) if bf16 is None else bf16,
        "activation_checkpointing": cfg.gradient_checkpointing,
        # Non-reentrant checkpointing works with frozen inputs (LoRA) without extra hooks.
        "activation_checkpointing_kwargs": {"use_reentrant": False} if cfg.gradient_checkpointing else None,
        "deepspeed": str(Path(cfg.deepspeed).resolve()) if cfg.deepspeed else None,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        "logging_strategy": "steps",
        "logging_steps": cfg.logging_steps,
        "logging_first_step": True,
        "report_to": report_to,
        "run_name": run_name,
        # Packs and example boundaries are not forward() parameters; keep them.
        "remove_unused_columns": False,
        # Packed rows have no padding; padded batches count real tokens from the attention mask.
        "include_num_input_tokens_seen": "all" if cfg.packing else "non_padding",
        "dataloader_num_workers": 0,
        "dataloader_pin_memory": torch.cuda.is_available(),
        # The Trainer's own bar (steps, ETA; each log line with loss and tokens/s) on a terminal
        # only: in captured logs (dvc repro) its refreshes would be thousands of lines.
        "disable_tqdm": not progress_enabled(),
    }


def build_training_args(cfg: TrainParams, output_dir: str | Path, **kwargs):
    from transformers import TrainingArguments

    if cfg.deepspeed and importlib.util.find_spec("deepspeed") is None:
        raise ParamsError(f"train.deepspeed: {cfg.deepspeed} needs the deepspeed package, which is not "
                               "installed (pip install 'mixdistill[gpu]' on a GPU machine), or set it to null")
    return TrainingArguments(**training_arguments_kwargs(cfg, output_dir, **kwargs))


def apply_lora(model, cfg: TrainParams):
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as exc:
        raise ParamsError(f"train.lora.target_modules: {lora.target_modules} ({exc})") from exc


# --- resume ------------------------------------------------------------------------------------

def last_complete_checkpoint(work_dir: str | Path, remove_incomplete: bool = True) -> Path | None:
    """Newest ``checkpoint-N`` whose trainer state was written (the Trainer writes it last, so a
    kill mid-save leaves a checkpoint without it, which is removed)."""
    work_dir = Path(work_dir)
    if not work_dir.is_dir():
        return None
    found = sorted(((int(m.group(1)), p) for p in work_dir.iterdir()
                    if p.is_dir() and (m := _CHECKPOINT_RE.match(p.name))), reverse=True)
    for _step, path in found:
        try:
            json.loads((path / "trainer_state.json").read_text())
            return path
        except (OSError, ValueError):
            if remove_incomplete:
                log.warning("removing incomplete checkpoint %s (killed while saving)", path)
                shutil.rmtree(path, ignore_errors=True)
    return None


def prepare_work_dir(work_dir: str | Path, fingerprint: str | None) -> Path | None:
    """Return the checkpoint to resume from, if the work dir holds one for the same inputs.

    ``fingerprint`` identifies params, data and student; checkpoints left by a different run
    would resume the wrong training, so they are discarded.
    """
    work_dir = Path(work_dir)
    marker = work_dir / FINGERPRINT_FILE
    if work_dir.exists() and fingerprint is not None:
        previous = marker.read_text().strip() if marker.exists() else None
        if previous != fingerprint:
            if any(work_dir.iterdir()):
                log.warning("discarding %s: left by a run with other params/data/student", work_dir)
            shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if fingerprint is not None:
        marker.write_text(fingerprint + "\n")
    return last_complete_checkpoint(work_dir)


# --- throughput --------------------------------------------------------------------------------

def _callback_base():
    from transformers import TrainerCallback

    return TrainerCallback


class ThroughputCallback(_callback_base()):
    """Adds ``tokens_per_second`` (real tokens since the previous log / wall time) to each log."""

    def __init__(self):
        self._last_time = None
        self._last_tokens = 0
        self.start_tokens = 0              # tokens already seen when this session began (resume)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_time = time.perf_counter()
        self._last_tokens = self.start_tokens = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self._last_time is None or "loss" not in logs:
            return
        now = time.perf_counter()
        tokens = state.num_input_tokens_seen - self._last_tokens
        if now > self._last_time and tokens > 0:
            logs["tokens_per_second"] = tokens / (now - self._last_time)
        self._last_time, self._last_tokens = now, state.num_input_tokens_seen


# --- the recipe --------------------------------------------------------------------------------

@dataclass
class TrainResult:
    final_dir: Path
    global_step: int
    resumed_from_step: int
    final_loss: float | None          # last logged training loss
    mean_loss: float | None           # mean of the logged losses over the whole run
    tokens_per_second: float          # real tokens / wall time, this session
    tokens_seen: int                  # real tokens over the whole run
    padding_efficiency: float         # real tokens / processed tokens, this session
    runtime_s: float
    cpu_seconds: float                # CPU time of this process during training (less load-sensitive)
    n_train_items: int                # packs (packing) or examples
    trainable_parameters: int
    total_parameters: int
    attention: str
    log_history: list = field(default_factory=list)


def train_sft(model, tokenizer, examples: list[dict], cfg: TrainParams, work_dir: str | Path, *,
              fingerprint: str | None = None, report_to: str = "none", run_name: str | None = None,
              callbacks: list | None = None) -> TrainResult:
    """Fine-tune ``model`` on tokenized ``examples``; checkpoints go to ``work_dir`` every
    ``save_steps`` and a rerun resumes from the last one (``fingerprint`` guards against resuming
    another run's checkpoints; None skips that check). The final model (full weights, or the LoRA
    adapter, plus ``merged/`` when ``lora.merge``) and tokenizer go to ``work_dir/final``.
    ``callbacks`` are extra ``TrainerCallback``s."""
    from transformers import Trainer, set_seed

    work_dir = Path(work_dir)
    set_seed(cfg.seed)                     # LoRA weights are initialised before the Trainer seeds
    args = build_training_args(cfg, work_dir, report_to=report_to, run_name=run_name)
    # The main process cleans the work dir first; the others then find the same checkpoint.
    with args.main_process_first(local=False, desc="checkpoint lookup"):
        resume_from = (prepare_work_dir(work_dir, fingerprint) if args.process_index == 0
                       else last_complete_checkpoint(work_dir, remove_incomplete=False))

    # 1. Data: packs flattened padding-free, or padded batches.
    if cfg.packing:
        attention = use_packed_attention(model)
        dataset, collator = packed_dataset(examples, cfg.pack_tokens), PackedCollator()
    else:
        model.config.use_cache = False
        attention = model.config._attn_implementation
        dataset, collator = ListDataset(examples), PaddedCollator(tokenizer)

    # 2. Model: full fine-tuning, or LoRA adapters on a frozen base.
    if cfg.method == "lora":
        model = apply_lora(model, cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())

    # 3. Trainer: its own loop, logging (report_to, callbacks), checkpoints and resume.
    throughput = ThroughputCallback()
    trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                      processing_class=tokenizer, callbacks=[throughput, *(callbacks or [])])
    # Run first, so that reporters (MLflow) see tokens_per_second in the same logs dict.
    trainer.callback_handler.callbacks.remove(throughput)
    trainer.callback_handler.callbacks.insert(0, throughput)
    if resume_from is not None:
        log.info("resuming from %s", resume_from)
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    runtime, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started

    # 4. Save the final model as an ordinary checkpoint.
    final_dir = save_final(trainer, tokenizer, work_dir / "final", cfg)
    history = trainer.state.log_history
    losses = [h["loss"] for h in history if "loss" in h]
    session_tokens = trainer.state.num_input_tokens_seen - throughput.start_tokens
    return TrainResult(
        final_dir=final_dir,
        global_step=trainer.state.global_step,
        resumed_from_step=int(_CHECKPOINT_RE.match(resume_from.name).group(1)) if resume_from else 0,
        final_loss=losses[-1] if losses else None,
        mean_loss=sum(losses) / len(losses) if losses else None,
        tokens_per_second=session_tokens / runtime if runtime > 0 else 0.0,
        tokens_seen=trainer.state.num_input_tokens_seen,
        padding_efficiency=collator.padding_efficiency,
        runtime_s=runtime,
        cpu_seconds=cpu_seconds,
        n_train_items=len(dataset),
        trainable_parameters=trainable,
        total_parameters=total,
        attention=attention,
        log_history=history,
    )


def save_final(trainer, tokenizer, final_dir: Path, cfg: TrainParams) -> Path:
    """Weights (or adapter) as safetensors, tokenizer and a standard config (stock attention,
    cache on for generation), so that later stages load it like any hub model."""
    model = trainer.model
    base = model.get_base_model() if cfg.method == "lora" else model
    base.config.use_cache = True
    if base.config._attn_implementation == PACKED_ATTENTION:
        base.set_attn_implementation("sdpa")
    if final_dir.exists():
        shutil.rmtree(final_dir)
    trainer.save_model(str(final_dir))      # gathers ZeRO-3 shards; writes the tokenizer too
    # The pickled TrainingArguments are not needed (params go to train_metrics.json and MLflow).
    (final_dir / "training_args.bin").unlink(missing_ok=True)
    if cfg.method == "lora" and cfg.lora.merge and trainer.is_world_process_zero():
        merged = model.merge_and_unload()
        merged.save_pretrained(final_dir / "merged")
        tokenizer.save_pretrained(final_dir / "merged")
    return final_dir
