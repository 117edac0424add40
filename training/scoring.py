"""Student-aware trace scores: the student's own per-token loss on a trace before any training.

A trace the student already finds likely (low NLL) is "learnable" in the sense of "Small Models
Struggle to Learn from Strong Reasoners"; a high-NLL trace is far from what the student would say.

The sequence and the loss mask are exactly the trainer's (``training.data.encode_examples``:
chat template, prompt positions labelled -100, the end-of-turn token included), and position t's
logits are scored against token t+1, as the causal-LM loss does. So ``mean_nll`` is the loss the
first training step would see on that example, in nats per response token.

Batched scoring sorts by length (padding then stays small; a batch also closes early rather than
pad a row by more than a quarter or pass ``MAX_BATCH_TOKENS`` padded tokens), right-pads, masks the padding out of
attention and runs without a KV cache (the cache path is where packed/padded forwards have been
seen to leak across examples). For the common architectures (``PLAIN_HEAD_CLASSES``) the
vocabulary projection runs only at the positions that predict a response token, not over prompts
and padding. Log-softmax is taken in float32 whatever the model's dtype, one row at a time so the
float32 copy of the logits never exists for the whole batch at once.

Length policy: with ``max_len`` a longer sequence is scored on its first ``max_len`` tokens and
its score says ``truncated=True``; its ``n_tokens`` counts only the tokens actually scored. A
sequence whose prompt alone fills ``max_len`` has ``n_tokens=0`` and ``mean_nll`` NaN.

Resume: given ``checkpoint`` (a JSONL file, kept by the caller outside any DVC output), each
finished batch is appended there, and a rerun with the same ``fingerprint`` (the caller's name for
the model, e.g. a digest of its files) scores only what is missing.
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from common.digests import dumps
from common.io import iter_jsonl
from training.data import IGNORE_INDEX, encode_examples

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TraceScore:
    mean_nll: float          # nats per scored response token (NaN when n_tokens is 0)
    total_nll: float         # nats summed over the scored response tokens
    n_tokens: int            # response tokens scored (end-of-turn token included)
    truncated: bool = False  # the sequence was longer than max_len and only its head was scored


def _score_of(total: float, n_tokens: int, truncated: bool) -> TraceScore:
    return TraceScore(mean_nll=total / n_tokens if n_tokens else math.nan, total_nll=total,
                      n_tokens=n_tokens, truncated=truncated)


def nll_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """``(summed NLL, tokens)`` of one unpadded sequence: ``logits`` (T, V) at positions 0..T-1
    predict ``labels`` 1..T; positions labelled -100 are not counted."""
    targets = labels[1:]
    losses = F.cross_entropy(logits[:-1].float(), targets, ignore_index=IGNORE_INDEX, reduction="none")
    mask = targets != IGNORE_INDEX
    return float(losses[mask].sum(dtype=torch.float64)), int(mask.sum())


def _encode(tokenizer, problems: list[str], responses: list[str], max_len: int | None) -> list[dict]:
    if len(problems) != len(responses):
        raise ValueError(f"score_examples: {len(problems)} problems but {len(responses)} responses")
    if max_len is not None and max_len < 2:
        raise ValueError(f"score_examples: max_len {max_len} must be at least 2")
    encoded = encode_examples(tokenizer, list(problems), list(responses)) if problems else []
    out = []
    for e in encoded:
        ids, labels = e["input_ids"], e["labels"]
        truncated = max_len is not None and len(ids) > max_len
        if truncated:
            ids, labels = ids[:max_len], labels[:max_len]
        out.append({"input_ids": ids, "labels": labels, "prompt_len": e["prompt_len"], "truncated": truncated})
    return out


def _example_key(example: dict) -> str:
    return hashlib.sha256(dumps([example["input_ids"], example["labels"]]).encode()).hexdigest()


class _Checkpoint:
    """Append-only JSONL of finished scores keyed by sequence digest; line 1 names the model."""

    def __init__(self, path: Path, fingerprint: str):
        self.path, self.fingerprint = Path(path), fingerprint
        self.done: dict[str, TraceScore] = {}
        if self.path.is_file():
            self._load()
        if not self.path.is_file():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(dumps({"fingerprint": fingerprint}) + "\n")

    def _load(self) -> None:
        raw = self.path.read_bytes()
        if raw and not raw.endswith(b"\n"):      # a write cut short by a kill: drop the torn line
            with open(self.path, "r+b") as f:
                f.truncate(raw.rfind(b"\n") + 1)
        lines = iter_jsonl(self.path)
        first = next(lines, (0, {}))[1]
        if first.get("fingerprint") != self.fingerprint:
            log.info("score checkpoint %s is for another model (%s); starting afresh", self.path,
                     first.get("fingerprint"))
            self.path.unlink()
            return
        for _, rec in lines:
            self.done[rec["key"]] = TraceScore(**{k: rec[k] for k in ("mean_nll", "total_nll", "n_tokens",
                                                                        "truncated")})

    def add(self, items: list[tuple[str, TraceScore]]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            for key, score in items:
                f.write(dumps({"key": key, **asdict(score)}) + "\n")
            f.flush()
            os.fsync(f.fileno())


def _progress(total: int, initial: int, progress: bool | None):
    """A bar on stderr when asked (True) or, with None, when ``common.progress`` says so (a
    terminal, or MIXDISTILL_PROGRESS); with None off a terminal, a few lines for the stage log."""
    from common.progress import Progress

    return Progress(total, "scoring", unit="seq", initial=initial, enabled=progress,
                    summary=progress is None, milestones=4 if progress is None and total >= 256 else 0)


# Causal LMs whose logits are exactly ``lm_head(decoder(...).last_hidden_state)``: no logit
# scaling or soft-capping (Gemma, Cohere) in between. For these the vocabulary projection is run
# on the scored positions only; any other model (a PEFT wrapper included) takes its own forward.
PLAIN_HEAD_CLASSES = frozenset({"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM",
                                "Qwen3ForCausalLM"})


def _plain_head(model):
    """``(decoder, lm_head)`` when `model` is one of PLAIN_HEAD_CLASSES, else None."""
    if type(model).__name__ not in PLAIN_HEAD_CLASSES:
        return None
    decoder, head = getattr(model, "model", None), getattr(model, "lm_head", None)
    return (decoder, head) if decoder is not None and isinstance(head, torch.nn.Linear) else None


def _batch_nll(model, input_ids, attention_mask, labels, first_scored: int) -> list[tuple[float, int]]:
    """``(summed NLL, tokens)`` of each row of a right-padded batch.

    With a plain head (see PLAIN_HEAD_CLASSES) the decoder runs once over the batch and the
    vocabulary projection only over each row's scored positions (those whose next token is
    labelled): prompt and padding positions cost no tokens x vocabulary work. Otherwise the
    model's own forward gives the logits, from the shortest prompt's last token on."""
    plain = _plain_head(model)
    if plain is not None:
        decoder, head = plain
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        out = []
        for row in range(input_ids.shape[0]):
            targets = labels[row, 1:]
            where = (targets != IGNORE_INDEX).nonzero(as_tuple=True)[0]
            if where.numel() == 0:
                out.append((0.0, 0))
                continue
            logits = head(hidden[row, where]).float()
            losses = F.cross_entropy(logits, targets[where], reduction="none")
            out.append((float(losses.sum(dtype=torch.float64)), int(where.numel())))
        return out
    kwargs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    # Positions before the shortest prompt's last token predict no labelled token in any row:
    # skipping their vocabulary projection saves memory and time on long prompts.
    offset = 0
    if first_scored > 0 and "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"], offset = input_ids.shape[1] - first_scored, first_scored
    logits = model(**kwargs).logits
    return [nll_from_logits(logits[row], labels[row, offset:]) for row in range(input_ids.shape[0])]


# A batch closes early when the next (shorter) sequence would be padded by more than this share
# of the batch width: with few rows of spread-out lengths, a full batch of 16 padded to its
# longest row wasted half the compute here (16 CHAMP traces of 200-900 tokens); with many rows,
# neighbours in length order are close and batches stay full.
MIN_BATCH_FILL = 0.75
# Padded tokens per forward pass, at most: the logits alone are tokens x vocabulary (16 x 1024
# tokens x 49k for the default student = 3 GB in float32; a 152k-vocabulary student at the paper's
# 8192 cutoff would need 40 GB for 16 rows), so long sequences go fewer to a batch.
MAX_BATCH_TOKENS = 16384


def _batches(order: list[int], lengths: list[int], batch_size: int,
             max_tokens: int = MAX_BATCH_TOKENS) -> list[list[int]]:
    """``order`` (longest first) cut into batches of at most ``batch_size`` rows and
    ``max_tokens`` padded tokens (a longer row goes alone), whose rows each fill at least
    MIN_BATCH_FILL of the batch's width."""
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        width = lengths[current[0]] if current else 0
        if current and len(current) < batch_size and (len(current) + 1) * width <= max_tokens \
                and lengths[i] >= MIN_BATCH_FILL * width:
            current.append(i)
        else:
            batches.append([i])
    return batches


def score_examples(model, tokenizer, problems: list[str], responses: list[str], *, batch_size: int = 16,
                   progress: bool | None = None, max_len: int | None = None,
                   checkpoint: str | Path | None = None, fingerprint: str = "") -> list[TraceScore]:
    """One :class:`TraceScore` per (problem, response), in input order.

    ``progress``: a tqdm bar on stderr (None: only when stderr is a terminal). ``max_len``: score
    at most that many tokens of each sequence (flagged ``truncated``). ``checkpoint`` /
    ``fingerprint``: resume file and the model identity it is valid for (see the module doc).
    """
    if batch_size < 1:
        raise ValueError(f"score_examples: batch_size {batch_size} must be positive")
    examples = _encode(tokenizer, problems, responses, max_len)
    keys = [_example_key(e) for e in examples]
    store = _Checkpoint(Path(checkpoint), fingerprint) if checkpoint is not None else None
    scores: list[TraceScore | None] = [store.done.get(k) if store else None for k in keys]
    todo = sorted((i for i, s in enumerate(scores) if s is None), key=lambda i: (-len(examples[i]["input_ids"]), i))
    if store and len(todo) < len(examples):
        log.info("resuming scores from %s: %d of %d already scored", store.path, len(examples) - len(todo),
                 len(examples))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    bar = _progress(len(examples), len(examples) - len(todo), progress)
    try:
        with torch.inference_mode():
            for batch in _batches(todo, [len(e["input_ids"]) for e in examples], batch_size):
                width = max(len(examples[i]["input_ids"]) for i in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    n = len(examples[i]["input_ids"])
                    input_ids[row, :n] = torch.tensor(examples[i]["input_ids"])
                    labels[row, :n] = torch.tensor(examples[i]["labels"])
                    attention[row, :n] = 1
                first = max(0, min(examples[i]["prompt_len"] for i in batch) - 1)
                nlls = _batch_nll(model, input_ids.to(device), attention.to(device), labels.to(device), first)
                finished = []
                for (total, n_tokens), i in zip(nlls, batch):
                    scores[i] = _score_of(total, n_tokens, examples[i]["truncated"])
                    finished.append((keys[i], scores[i]))
                if store:
                    store.add(finished)
                bar.update(len(batch), tokens=sum(score.n_tokens for _, score in finished))
    finally:
        bar.close()
        model.train(was_training)
    return scores


def score_examples_unbatched(model, tokenizer, problems: list[str], responses: list[str], *,
                             max_len: int | None = None) -> list[TraceScore]:
    """The reference: one sequence at a time, no padding and no attention mask, the loss taken
    from the model's own causal-LM loss (its mean times the token count), so it shares neither
    the batching nor the gathering code with :func:`score_examples`."""
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.inference_mode():
            for e in _encode(tokenizer, problems, responses, max_len):
                ids = torch.tensor([e["input_ids"]])
                labels = torch.tensor([e["labels"]])
                n_tokens = int((labels[0, 1:] != IGNORE_INDEX).sum())
                if n_tokens == 0:
                    out.append(_score_of(0.0, 0, e["truncated"]))
                    continue
                loss = model(input_ids=ids, labels=labels, use_cache=False).loss
                out.append(_score_of(float(loss) * n_tokens, n_tokens, e["truncated"]))
    finally:
        model.train(was_training)
    return out


def subset_for_scoring(trace_ids: list[str], max_rows: int | None, seed: int, salt: str = "") -> list[int]:
    """Indexes of the rows to score: all, or the ``max_rows`` ranked first by a hash of
    (seed, salt, trace_id), so the subset does not depend on row order and a grown source keeps
    most of its earlier subset."""
    if max_rows is None or max_rows >= len(trace_ids):
        return list(range(len(trace_ids)))
    rank = sorted(range(len(trace_ids)),
                  key=lambda i: hashlib.sha256(f"{seed}:{salt}:{trace_ids[i]}".encode()).hexdigest())
    return sorted(rank[:max_rows])


def score_frame(frame, model, tokenizer, *, max_rows: int | None, seed: int, salt: str = "",
                batch_size: int = 16, max_len: int | None = None, progress: bool | None = None,
                checkpoint: str | Path | None = None, fingerprint: str = ""):
    """``(frame + student_nll Float64 + student_nll_tokens Int64, summary)`` for a frame with
    ``trace_id``, ``problem`` and ``response``. Rows outside the scored subset, and rows with no
    response token within ``max_len``, hold nulls. The summary is what the curate report shows."""
    import polars as pl

    chosen = subset_for_scoring(frame["trace_id"].to_list(), max_rows, seed, salt)
    problems, responses = frame["problem"].to_list(), frame["response"].to_list()
    scores = score_examples(model, tokenizer, [problems[i] for i in chosen], [responses[i] for i in chosen],
                            batch_size=batch_size, progress=progress, max_len=max_len, checkpoint=checkpoint,
                            fingerprint=fingerprint)
    nll: list[float | None] = [None] * frame.height
    tokens: list[int | None] = [None] * frame.height
    for i, s in zip(chosen, scores):
        if s.n_tokens:
            nll[i], tokens[i] = s.mean_nll, s.n_tokens
    out = frame.with_columns(pl.Series("student_nll", nll, dtype=pl.Float64),
                             pl.Series("student_nll_tokens", tokens, dtype=pl.Int64))
    values = out["student_nll"].drop_nulls()
    summary = {
        "n_scored": values.len(), "n_rows": frame.height, "max_rows": max_rows, "seed": seed,
        "n_truncated": sum(s.truncated for s in scores), "max_len": max_len,
        "mean": values.mean(), "median": values.median(),
        "p10": values.quantile(0.1, "linear"), "p90": values.quantile(0.9, "linear"),
        # pooled over tokens: the loss a first training step on these rows would see
        "token_weighted_mean": (sum(s.total_nll for s in scores if s.n_tokens)
                                / max(1, sum(s.n_tokens for s in scores))) if values.len() else None,
        "unit": "nats per response token",
    }
    return out, summary
