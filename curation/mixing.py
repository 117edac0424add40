"""Exact-ratio mixes of curated sources, with a manifest recording where every row came from.

Shares are shares of the *final* mix (not "fraction of each source kept", open-r1's old
meaning of weight). With ``size`` the counts are apportioned by largest remainder, so they add
up to exactly ``size``; with ``token_budget`` shares are shares of student tokens. Sampling is
seeded and deterministic; a component never repeats a row unless the mix sets ``oversample``.

A component may instead select by the student's NLL (``{share: S, select: lowest_nll}``, see
``curation.selection``): every row of its pool must then carry a score, and the manifest records
the rule and each chosen row with its score (``selection``).
"""
from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from common import layout as names
from common.digests import file_digest, frame_digest
from common.errors import MixdistillError
from common.io import read_parquet
from common.prompt import build_messages
from curation.by_problem import assign_problems
from curation.schema import TRACE_COLUMNS, problem_key
from curation.selection import candidate_rows

MIX_ROW_COLUMNS = TRACE_COLUMNS + ["response_tokens", "sequence_tokens", "component", "draw"]


class MixError(MixdistillError, ValueError):
    """A mix cannot be built as configured (unknown source, too few rows, failed contract...)."""


class MixIntegrityError(MixdistillError, RuntimeError):
    """A mix on disk does not match its manifest, or was built from a source whose contract failed."""


@dataclass
class CuratedSource:
    name: str
    kept: pl.DataFrame
    kept_digest: str
    contract_success: bool
    report: dict


def load_curated(curated_root: str | Path, name: str) -> CuratedSource:
    d = Path(curated_root) / name
    kept, report = d / names.KEPT, d / names.CURATE_REPORT
    if not kept.exists() or not report.exists():
        raise MixError(f"{d}: curated source '{name}' not found (kept.parquet / report.json); "
                       "run its curate stage")
    rep = json.loads(report.read_text())
    return CuratedSource(name=name, kept=read_parquet(kept), kept_digest=file_digest(kept),
                         contract_success=bool(rep.get("contract", {}).get("success", False)), report=rep)


def apportion(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Integer counts summing to ``total`` with the smallest deviation from the shares
    (largest-remainder method; ties broken by name so the result is deterministic)."""
    raw = {k: total * s for k, s in shares.items()}
    counts = {k: math.floor(v) for k, v in raw.items()}
    left = total - sum(counts.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - counts[k]), k))[:left]:
        counts[k] += 1
    return counts


def _seed(*parts) -> int:
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:12], 16)


def _draw(pool: pl.DataFrame, rng: random.Random, n: int | None, token_budget: int | None,
          oversample: bool, where: str, candidates: list[int] | None = None,
          shuffle: bool = True) -> tuple[list[int], list[int]]:
    """Row indexes drawn from ``pool`` (and the pass number of each draw): a seeded permutation,
    cycled with a fresh permutation per pass only when oversampling is allowed. ``candidates``
    (a score selection) restricts the rows, and with ``shuffle`` False keeps their rank order."""
    size = pool.height
    if size == 0:
        raise MixError(f"{where}: its curated sources kept no rows")
    base = list(range(size)) if candidates is None else list(candidates)
    tokens = pool["sequence_tokens"].to_list()
    picked, passes = [], []
    used_tokens, pass_no = 0, 0
    while True:
        order = list(base)
        if shuffle:
            rng.shuffle(order)
        for i in order:
            if n is not None and len(picked) >= n:
                return picked, passes
            if token_budget is not None and used_tokens + tokens[i] > token_budget:
                return picked, passes
            picked.append(i)
            passes.append(pass_no)
            used_tokens += tokens[i]
        if n is not None and len(picked) >= n:     # exactly every row: enough without a second pass
            return picked, passes
        pass_no += 1
        if not oversample or not base:
            need = f"{n} rows" if n is not None else f"{token_budget} tokens"
            have = f"{len(base)} rows" if n is not None else f"{used_tokens} tokens"
            within = "" if candidates is None else " within its select rule"
            raise MixError(f"{where}: needs {need} but its curated sources kept only {have}{within}; "
                           "lower the mix size / token_budget, or set oversample: true")


def _scores_of(pool: pl.DataFrame, comp: str, members: list[str], mix_name: str, by: str) -> list[float]:
    """The pool's per-row scores, refusing a pool where any row has none (an unscored row would
    otherwise be silently excluded or ranked arbitrarily)."""
    column = pool[by] if by in pool.columns else pl.Series(by, [None] * pool.height, dtype=pl.Float64)
    missing = column.is_null() | column.is_nan() if column.dtype.is_float() else column.is_null()
    if missing.any():
        sources = pool["source"].to_list()
        worst = next(m for m in members if any(miss and s == m for miss, s in zip(missing.to_list(), sources)))
        n_src = sum(s == worst for s in sources)
        n_scored = sum(s == worst and not miss for miss, s in zip(missing.to_list(), sources))
        raise MixError(f"mix.mixes.{mix_name}.components.{comp}.select: source '{worst}' has {by} for only "
                       f"{n_scored} of its {n_src} kept rows; set curate.score.enabled: true and "
                       f"curate.score.max_rows: null, re-run curate@{worst}, then mix again")
    return column.cast(pl.Float64).to_list()


def build_mix(mix, groups: dict[str, list[str]], sources: dict[str, CuratedSource], seed: int) -> tuple[pl.DataFrame, dict]:
    """Rows of one mix and its manifest (without the rows digest, added when written)."""
    for name, src in sources.items():
        if not src.contract_success:
            raise MixError(f"mix '{mix.name}': curated source '{name}' failed its contract; "
                           "fix the source or its curate params before mixing")
    if mix.size is not None:
        targets = apportion(mix.size, mix.components)
    else:
        targets = apportion(mix.token_budget, mix.components)
    parts, requested, achieved, selected = [], {}, {}, {}
    pools = {comp: pl.concat([sources[m].kept for m in groups.get(comp, [comp])], how="diagonal_relaxed")
             .sort("trace_id") for comp in mix.components}
    by_problem = _one_per_problem(mix, pools, targets, seed) if getattr(mix, "one_per_problem", False) else None
    for comp in sorted(mix.components):
        members = groups.get(comp, [comp])
        pool = pools[comp]
        rng = random.Random(_seed(seed, mix.name, comp))
        where = f"mix '{mix.name}': component '{comp}' (sources {members})"
        candidates, shuffle, selection = None, True, getattr(mix, "selections", {}).get(comp)
        if selection is not None:
            scores = _scores_of(pool, comp, members, mix.name, selection.by)
            candidates, shuffle, selected[comp] = candidate_rows(selection, scores, pool["trace_id"].to_list())
        if by_problem is not None:
            idx, passes = by_problem[0][comp], [0] * len(by_problem[0][comp])
        elif mix.size is not None:
            idx, passes = _draw(pool, rng, targets[comp], None, mix.oversample, where, candidates, shuffle)
        else:
            idx, passes = _draw(pool, rng, None, targets[comp], mix.oversample, where, candidates, shuffle)
        if selection is not None:        # each chosen row with its score, in the order drawn
            tids, srcs = pool["trace_id"].to_list(), pool["source"].to_list()
            selected[comp]["rows"] = [[tids[i], srcs[i], scores[i]] for i in idx]
            chosen = [scores[i] for i in idx]
            selected[comp]["chosen"] = {"n": len(chosen), "min": min(chosen, default=None),
                                        "max": max(chosen, default=None),
                                        "mean": sum(chosen) / len(chosen) if chosen else None}
        part = pool[idx].with_columns(pl.lit(comp).alias("component"), pl.Series("draw", passes, dtype=pl.Int64))
        parts.append(part)
        requested[comp] = {"share": mix.components[comp], "sources": members,
                           ("count" if mix.size is not None else "tokens"): targets[comp],
                           **({"select": selection.rule()} if selection is not None else {})}
    rows = pl.concat(parts, how="diagonal_relaxed").select(MIX_ROW_COLUMNS)
    # Shuffle the whole mix so training batches interleave components.
    order = list(range(rows.height))
    random.Random(_seed(seed, mix.name, "order")).shuffle(order)
    rows = rows[order]
    total_tokens = int(rows["sequence_tokens"].sum()) if rows.height else 0
    for comp in sorted(mix.components):
        sub = rows.filter(pl.col("component") == comp)
        toks = int(sub["sequence_tokens"].sum()) if sub.height else 0
        achieved[comp] = {"count": sub.height, "share": round(sub.height / rows.height, 6),
                          "tokens": toks, "token_share": round(toks / total_tokens, 6) if total_tokens else 0.0,
                          "repeated_rows": int((sub["draw"] > 0).sum())}
    used = sorted({m for comp in mix.components for m in groups.get(comp, [comp])})
    manifest = {
        "mix": mix.name, "seed": seed, "mode": "size" if mix.size is not None else "token_budget",
        "size": mix.size, "token_budget": mix.token_budget, "oversample": mix.oversample,
        "shares": dict(mix.components), "requested": requested, "achieved": achieved,
        "n_rows": rows.height, "token_total": total_tokens,
        "sources": {m: {"kept_digest": sources[m].kept_digest, "kept_rows": sources[m].kept.height,
                        "contract_success": sources[m].contract_success,
                        "rejected_by_reason": sources[m].report.get("rejected_by_reason", {})}
                    for m in used},
        **({"one_per_problem": by_problem[1]} if by_problem is not None else {}),
        **({"selection": selected} if selected else {}),
        "rows": [[t, s, c] for t, s, c in zip(rows["trace_id"].to_list(), rows["source"].to_list(),
                                              rows["component"].to_list())],
    }
    return rows, manifest


def _one_per_problem(mix, pools: dict[str, pl.DataFrame], targets: dict[str, int], seed: int):
    """Row indexes per component giving each problem at most one trace, and the manifest's record
    of the choice (rule, problems available per component, problems moved by the repair pass)."""
    keys = {c: [problem_key(p) for p in pool["problem"].to_list()] for c, pool in pools.items()}
    try:
        chosen, moved = assign_problems(keys, targets, random.Random(_seed(seed, mix.name, "problems")))
    except ValueError as exc:
        raise MixError(f"mix '{mix.name}' (one_per_problem): {exc}; lower the mix size") from None
    out = {}
    for comp, problems in chosen.items():
        rows_of: dict[str, list[int]] = {}
        for i, k in enumerate(keys[comp]):
            rows_of.setdefault(k, []).append(i)
        rng = random.Random(_seed(seed, mix.name, comp, "trace"))
        out[comp] = [rng.choice(rows_of[k]) for k in problems]   # one of the problem's traces
    record = {"rule": "each problem at most once; components supply distinct problems",
              "problems_available": {c: len(set(k)) for c, k in keys.items()},
              "problems_in_mix": sum(len(v) for v in chosen.values()), "moved_by_repair": moved}
    return out, record


def write_mix(rows: pl.DataFrame, manifest: dict, out: Path) -> dict:
    """Write rows (Parquet + HF datasets), manifest, and the LLaMA-Factory / TRL exports into ``out``."""
    import datasets

    out.mkdir(parents=True, exist_ok=True)
    rows.write_parquet(out / names.MIX_ROWS)
    manifest = {**manifest, "rows_file": names.MIX_ROWS, "rows_digest": frame_digest(rows, MIX_ROW_COLUMNS)}
    messages = [build_messages(p, r) for p, r in zip(rows["problem"].to_list(), rows["response"].to_list())]
    with open(out / "messages.jsonl", "w", encoding="utf-8") as f:
        for tid, msgs in zip(rows["trace_id"].to_list(), messages):
            f.write(json.dumps({"trace_id": tid, "messages": msgs}, ensure_ascii=False) + "\n")
    ds = datasets.Dataset.from_dict({"trace_id": rows["trace_id"].to_list(), "messages": messages,
                                     "component": rows["component"].to_list(),
                                     "source": rows["source"].to_list()})
    ds.save_to_disk(str(out / "hf_dataset"))
    lf = out / "llamafactory"
    lf.mkdir()
    name = manifest["mix"]
    alpaca = [{"instruction": m[0]["content"], "input": "", "output": m[1]["content"]} for m in messages]
    (lf / f"{name}.json").write_text(json.dumps(alpaca, ensure_ascii=False, indent=1), encoding="utf-8")
    info = {name: {"file_name": f"{name}.json",
                   "columns": {"prompt": "instruction", "query": "input", "response": "output"}}}
    (lf / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    (out / names.MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return manifest


def mix_metrics(manifest: dict) -> dict:
    """The DVC metrics of a mix: rows, tokens and, per component, achieved share and count."""
    achieved = manifest["achieved"]
    return {"rows": manifest["n_rows"], "tokens": manifest["token_total"],
            "share": {c: a["share"] for c, a in achieved.items()},
            "token_share": {c: a["token_share"] for c, a in achieved.items()},
            "count": {c: a["count"] for c, a in achieved.items()}}


def verify_mix_dir(path: str | Path, curated_root: str | Path | None = None) -> dict:
    """Check a mix folder before anyone trains on it; return its manifest.

    Raises MixIntegrityError when the rows on disk no longer match the manifest, when a source's
    contract had failed, or (given ``curated_root``) when a curated source changed since mixing."""
    path = Path(path)
    mf = path / names.MANIFEST
    if not mf.exists():
        raise MixIntegrityError(f"{mf}: missing; run the mix stage")
    manifest = json.loads(mf.read_text(encoding="utf-8"))
    rows_path = path / manifest.get("rows_file", names.MIX_ROWS)
    if not rows_path.exists():
        raise MixIntegrityError(f"{rows_path}: missing rows for mix '{manifest.get('mix')}'")
    rows = read_parquet(rows_path)
    digest = frame_digest(rows, MIX_ROW_COLUMNS) if set(MIX_ROW_COLUMNS) <= set(rows.columns) else None
    if digest != manifest.get("rows_digest") or rows.height != manifest.get("n_rows"):
        raise MixIntegrityError(f"{rows_path}: rows do not match the manifest of mix '{manifest.get('mix')}' "
                                f"(digest {digest} vs {manifest.get('rows_digest')}, rows {rows.height} vs "
                                f"{manifest.get('n_rows')})")
    listed = [tuple(r) for r in manifest.get("rows", [])]
    actual = list(zip(rows["trace_id"].to_list(), rows["source"].to_list(), rows["component"].to_list()))
    if listed != actual:
        raise MixIntegrityError(f"{mf}: per-row lineage does not match {rows_path}")
    for name, info in manifest.get("sources", {}).items():
        if not info.get("contract_success"):
            raise MixIntegrityError(f"mix '{manifest['mix']}': source '{name}' failed its contract")
        if curated_root is not None:
            kept = Path(curated_root) / name / names.KEPT
            if kept.exists() and file_digest(kept) != info.get("kept_digest"):
                raise MixIntegrityError(f"{kept}: changed since mix '{manifest['mix']}' was built "
                                        "(re-run the mix stage)")
    return manifest
