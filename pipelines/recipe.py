"""``mixdistill recipe``: the effective training recipe of every arm, and how the arms differ.

    mixdistill recipe                       # the params' own preset
    mixdistill recipe --preset paper --json # as `dvc exp run -S preset=paper` would train

Each mix in ``train.mixes`` is an arm; its recipe is ``train:`` with ``train.arms.<mix>`` merged
over it (after the preset). Where the mixes are already built (``dvc repro`` up to ``mix``), the
table also gives what the recipe does to that data: examples over the cutoff (truncated, dropped
or an error, as ``train.over_cutoff`` says), tokens seen and optimizer steps per device count.
``parity`` lists, in words, every way two arms differ other than their data; an empty list means
only the data differs, which is what a comparison of mixes needs.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from common import layout as names
from common.errors import MixdistillError
from common.params import load_yaml
from common.io import read_parquet
from pipelines.params import Params, parse_params
from training.config import TrainParams, recipe_for

# The recipe keys compared across arms, with the names the table prints them under.
COMPARED = (("cutoff_len", "cutoff_len"), ("batch_size", "per_device_batch_size"), ("grad_accum", "grad_accum"),
            ("packing", "packing"), ("learning_rate", "learning_rate"), ("epochs", "epochs"),
            ("max_steps", "max_steps"), ("lr_scheduler", "lr_scheduler"), ("warmup_ratio", "warmup_ratio"),
            ("weight_decay", "weight_decay"), ("bf16", "bf16"), ("deepspeed", "deepspeed"),
            ("over_cutoff", "over_cutoff"), ("method", "method"), ("seed", "seed"))


def arm_recipe(train: TrainParams, mix: str) -> dict:
    r = recipe_for(train, mix)
    out = {name: getattr(r, key) for key, name in COMPARED}
    out["packing"] = "neat" if r.packing else "none"    # neat: packed, each sequence attends to itself
    out["pack_tokens"] = r.pack_tokens if r.packing else None
    return out


def data_effect(recipe: dict, mix_dir: Path, devices: int) -> dict | None:
    """What the recipe does to a built mix: over-cutoff rows, tokens seen, optimizer steps."""
    rows_path = mix_dir / names.MIX_ROWS
    if not rows_path.exists():
        return None
    lengths = read_parquet(rows_path, columns=["sequence_tokens"])["sequence_tokens"].to_list()
    cutoff = recipe["cutoff_len"]
    over = sum(n > cutoff for n in lengths)
    policy = recipe["over_cutoff"]
    kept = [min(n, cutoff) for n in lengths] if policy == "truncate" else [n for n in lengths if n <= cutoff]
    if recipe["packing"] == "neat":
        from training.data import pack_by_length

        items = len(pack_by_length(kept, recipe["pack_tokens"]))
    else:
        items = len(kept)
    per_step = recipe["per_device_batch_size"] * recipe["grad_accum"] * devices
    steps_per_epoch = math.ceil(items / per_step) if items else 0
    steps = recipe["max_steps"] or math.ceil(steps_per_epoch * recipe["epochs"])
    return {"rows": len(lengths), "over_cutoff": over,
            "truncated": over if policy == "truncate" else 0, "dropped": over if policy == "drop" else 0,
            "error": bool(over) and policy == "error",
            "train_items": items, "items_per_step": per_step, "optimizer_steps": steps,
            "tokens_seen": int(sum(kept) * min(recipe["epochs"], steps / steps_per_epoch if steps_per_epoch else 0))}


def parity(arms: dict[str, dict]) -> list[str]:
    """Every recipe key on which the arms disagree, in words, plus what that does to long traces."""
    notes = []
    names = sorted(arms)
    for _, key in COMPARED + (("pack_tokens", "pack_tokens"),):
        values: dict[str, list[str]] = {}
        for name in names:
            values.setdefault(json.dumps(arms[name]["recipe"][key]), []).append(name)
        if len(values) > 1:
            parts = "; ".join(f"{json.loads(v)} for {', '.join(ms)}" for v, ms in values.items())
            notes.append(f"{key} differs between arms: {parts}")
    cut = {n: arms[n]["data"]["truncated"] for n in names if arms[n].get("data") and arms[n]["data"]["truncated"]}
    if cut:
        notes.append("traces are truncated at the cutoff in " + ", ".join(f"{n} ({k})" for n, k in cut.items())
                     + ": those arms train on cut-off solutions the others see whole")
    steps = {n: arms[n]["data"]["items_per_step"] for n in names if arms[n].get("data")}
    if len(set(steps.values())) > 1:
        notes.append("effective batch (train items per optimizer step) differs: "
                     + ", ".join(f"{n} {s}" for n, s in steps.items()))
    return notes


def describe(params: Params, devices: int = 1, with_data: bool = True) -> dict:
    """Every arm's recipe and the parity list; ``with_data`` adds what each recipe does to its
    built mix (read from the mixes' rows: the train stage leaves it out, as it depends on its own
    mix only)."""
    arms = {}
    for mix in params.train.mixes:
        recipe = arm_recipe(params.train, mix)
        data = data_effect(recipe, params.layout.mix(mix), devices) if with_data else None
        arms[mix] = {"recipe": recipe, "data": data}
    return {"preset": params.preset, "devices": devices, "curate_cutoff_len": params.curate.cutoff_len,
            "arms": arms, "parity": parity(arms)}


def _table(desc: dict) -> str:
    keys = [name for _, name in COMPARED if name not in ("seed", "method")] + ["pack_tokens"]
    lines = [f"preset {desc['preset']}: {len(desc['arms'])} arm(s); curation cutoff {desc['curate_cutoff_len']}"]
    width = max(len(m) for m in desc["arms"]) + 2
    for mix, arm in desc["arms"].items():
        r = arm["recipe"]
        lines.append(f"{mix:<{width}}" + "  ".join(f"{k}={r[k]}" for k in keys if r[k] is not None))
        if arm["data"]:
            d = arm["data"]
            lines.append(" " * width + f"rows {d['rows']}, over cutoff {d['over_cutoff']} (truncated "
                         f"{d['truncated']}, dropped {d['dropped']}), {d['optimizer_steps']} steps of "
                         f"{d['items_per_step']} items, {d['tokens_seen']} tokens seen")
    lines.append("parity: " + ("only the data differs between arms" if not desc["parity"] else ""))
    lines.extend(f"  - {note}" for note in desc["parity"])
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mixdistill recipe", description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--preset", help="the preset to resolve (default: the params' own preset:)")
    ap.add_argument("--devices", type=int, default=1, help="GPUs the run uses, for the effective batch")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    try:
        raw = load_yaml(args.params)
        if args.preset is not None:
            raw = {**raw, "preset": args.preset}
        if args.devices < 1:
            raise MixdistillError(f"--devices: {args.devices} must be at least 1")
        desc = describe(parse_params(raw), args.devices)
    except MixdistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(desc, indent=2) if args.json else _table(desc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
