"""Points for ratio-sweep curves: each trained mix's achieved long and large shares beside its
accuracy (with its bootstrap interval) and held-out loss per style.

A `dvc exp` sweep over a mix's shares gives one set of points per experiment; ``dvc plots diff``
of those experiments draws them on one chart per quantity against the long (or large) share,
with the plot definitions at the top of dvc.yaml. The shares are the achieved ones, counted from
the mix's rows (``style`` / ``teacher_size`` of each drawn trace), not the requested ones.
"""
from __future__ import annotations

from pathlib import Path

from common import layout as names
from common.io import read_parquet


def achieved_shares(rows_path: Path) -> dict | None:
    """``{"long_share": x, "large_share": y, "rows": n}`` of a built mix, or None without rows."""
    if not rows_path.exists():
        return None
    rows = read_parquet(rows_path, columns=["style", "teacher_size"])
    if rows.height == 0:
        return None
    return {"long_share": round(float((rows["style"] == "long").mean()), 6),
            "large_share": round(float((rows["teacher_size"] == "large").mean()), 6), "rows": rows.height}


def points(mixes_root: Path, mixes: list[str], result: dict, heldout_loss: dict) -> tuple[list[dict], list[dict]]:
    """Accuracy rows (one per mix and benchmark) and held-out loss rows (one per mix)."""
    metric = result["metric"]
    accuracy, heldout = [], []
    for mix in mixes:
        shares = achieved_shares(Path(mixes_root) / mix / names.MIX_ROWS)
        if shares is None:
            continue
        for bench, value in (result[metric].get(mix) or {}).items():
            if value is None:
                continue
            interval = (result["intervals"].get(f"accuracy/{mix}") or {}).get(bench)
            accuracy.append({"mix": mix, "benchmark": bench, **shares, metric: value,
                             f"{metric}_low": interval.low if interval else None,
                             f"{metric}_high": interval.high if interval else None})
        loss = heldout_loss.get(mix)
        if loss:
            heldout.append({"mix": mix, **shares, **{f"heldout_{style}": v for style, v in sorted(loss.items())}})
    return accuracy, heldout
