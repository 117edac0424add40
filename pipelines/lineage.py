"""`mixdistill lineage <checkpoint dir | MLflow run id | models:/NAME/VERSION>`: what was this
checkpoint trained on, and is that still what is on disk?

The chain: checkpoint → MLflow run (params, git commit, DVC hashes) → mix (manifest digest,
requested vs achieved shares) → each curated source (digest, contract, kept/rejected by reason) →
raw trace source (DVC hash, origin). Every link is re-verified against the files on disk; any
drift (changed data, missing files, a manifest that no longer matches its rows) exits non-zero.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl

from common import layout as names
from common.digests import file_digest
from common.io import read_parquet
from curation.mixing import MixIntegrityError, verify_mix_dir
from pipelines import stage, tracking
from pipelines.params import load_params


def _dvc_lock() -> dict:
    import yaml

    p = Path("dvc.lock")
    return (yaml.safe_load(p.read_text()) or {}).get("stages", {}) if p.exists() else {}


def _lock_out(lock: dict, stage: str, path: str) -> str | None:
    for o in (lock.get(stage) or {}).get("outs", []):
        if o["path"] == path:
            return o.get("md5")
    return None


def _mlflow_run(params, run_id: str) -> dict | None:
    try:
        return tracking.get_run(params, run_id)
    except Exception as exc:  # no store, unknown id: reported as a problem, not a crash
        return {"error": f"MLflow run {run_id}: {exc}"}


def _logged_lineage(params, run_id: str) -> dict | None:
    """The lineage.json artifact the train stage logged to the run, or None if it cannot be read."""
    try:
        return tracking.load_run_dict(params, run_id, names.LINEAGE)
    except Exception:
        return None


def resolve_checkpoint(target: str, params, paths) -> tuple[Path | None, str | None]:
    """A checkpoint directory, an MLflow run id whose run names its checkpoint, or a registered
    model version ``models:/<name>/<version>`` (traced through the run that logged it)."""
    p = Path(target)
    if p.is_dir():
        rid = p / names.RUN_ID
        return p, rid.read_text().strip() if rid.exists() else None
    if target.startswith("models:/"):
        target = tracking.model_version_run(params, target)
    run = _mlflow_run(params, target)
    if run is None or "error" in run:
        return None, target
    ckpt = run["tags"].get("mixdistill.checkpoint_dir") or run["params"].get("checkpoint_dir")
    if not ckpt:
        mix = run["tags"].get("mixdistill.mix")
        ckpt = str(Path(paths.checkpoints) / mix) if mix else None
    return (Path(ckpt) if ckpt else None), target


def build_lineage(target: str, params, trace: str | None = None) -> dict:
    paths = params.paths
    problems: list[str] = []
    ckpt, run_id = resolve_checkpoint(target, params, paths)
    out: dict = {"target": target, "checkpoint": {"path": str(ckpt) if ckpt else None}}
    if ckpt is None or not ckpt.is_dir():
        problems.append(f"checkpoint for '{target}' not found on disk")
        out["problems"] = problems
        return out
    lin_path = ckpt / names.LINEAGE
    recorded = json.loads(lin_path.read_text()) if lin_path.exists() else {}
    if not recorded:
        problems.append(f"{lin_path}: missing (checkpoint not written by the train stage)")
    if run_id and not Path(target).is_dir():
        # Asked about a run: verify against the lineage that run logged, not whatever checkpoint
        # the workspace holds now (after a DVC experiment, it may be another run's).
        logged = _logged_lineage(params, run_id)
        if logged is not None:
            if recorded.get("mlflow_run_id") not in (None, run_id):
                exp = logged.get("dvc_exp")
                hint = f"; `dvc exp apply {exp}` restores it" if exp else ""
                problems.append(f"{ckpt} holds the checkpoint of run {recorded.get('mlflow_run_id')}, "
                                f"not of run {run_id}{hint}")
            recorded = logged
    weights = sorted(ckpt.glob("*.safetensors"))
    out["checkpoint"].update(files=[w.name for w in weights], recorded=recorded)
    recorded_weights = recorded.get("weights_sha256") or {}
    for w in weights:
        want = recorded_weights.get(w.name)
        if want and file_digest(w) != want:
            problems.append(f"{w}: weights changed since training")
    for missing in sorted(set(recorded_weights) - {w.name for w in weights}):
        problems.append(f"{ckpt / missing}: recorded weights missing on disk (`dvc pull {ckpt}` restores them)")

    out["mlflow"] = _mlflow_run(params, run_id) if run_id else None
    if run_id is None:
        problems.append(f"{ckpt}/mlflow_run_id.txt: missing")
    elif out["mlflow"] and "error" in out["mlflow"]:
        problems.append(out["mlflow"]["error"])

    mix_name = recorded.get("mix") or ckpt.name
    mix_dir = Path(recorded.get("mix_dir") or Path(paths.mixes) / mix_name)
    lock = _dvc_lock()
    mix_info: dict = {"name": mix_name, "path": str(mix_dir),
                      "dvc_md5": _lock_out(lock, f"mix@{mix_name}", str(mix_dir))}
    manifest = None
    try:
        manifest = verify_mix_dir(mix_dir, paths.curated)
    except MixIntegrityError as exc:
        problems.append(str(exc))
        mf = mix_dir / names.MANIFEST
        manifest = json.loads(mf.read_text()) if mf.exists() else None
    if manifest:
        if recorded.get("rows_digest") and manifest.get("rows_digest") != recorded["rows_digest"]:
            problems.append(f"{mix_dir}: mix rows changed since the checkpoint was trained "
                            f"({recorded['rows_digest']} -> {manifest.get('rows_digest')})")
        mix_info.update({k: manifest.get(k) for k in ("rows_digest", "n_rows", "token_total", "seed",
                                                      "mode", "shares", "requested", "achieved")})
    out["mix"] = mix_info

    sources = {}
    for name, info in (manifest or {}).get("sources", {}).items():
        cdir = Path(paths.curated) / name
        rep_path = cdir / names.CURATE_REPORT
        rep = json.loads(rep_path.read_text()) if rep_path.exists() else {}
        if not rep:
            problems.append(f"{rep_path}: missing")
        kept = cdir / names.KEPT
        src = {"curated": {"path": str(cdir), "kept_digest": info.get("kept_digest"),
                           "kept_digest_on_disk": file_digest(kept) if kept.exists() else None,
                           "contract": rep.get("contract", {}).get("success"),
                           "input": rep.get("input"), "kept": rep.get("kept"), "rejected": rep.get("rejected"),
                           "rejected_by_reason": rep.get("rejected_by_reason")}}
        raw = Path(paths.traces) / f"{name}.parquet"
        raw_src = {"path": str(raw), "dvc_md5": _lock_out(lock, f"traces@{name}", str(raw))}
        if raw.exists():
            raw_src["md5_on_disk"] = file_digest(raw, "md5")
            if raw_src["dvc_md5"] and raw_src["dvc_md5"] != raw_src["md5_on_disk"]:
                problems.append(f"{raw}: raw traces changed since the last `dvc repro` (dvc.lock md5 differs)")
            first = read_parquet(raw, columns=["origin", "teacher", "generation"]).head(1)
            if first.height:
                raw_src.update(origin=json.loads(first["origin"][0]), teacher=first["teacher"][0])
        else:
            problems.append(f"{raw}: missing")
        src["raw"] = raw_src
        sources[name] = src
    out["sources"] = sources
    if trace:
        out["trace"] = trace_history(trace, mix_dir, paths, problems)
    out["problems"] = problems
    return out


def trace_history(tid: str, mix_dir: Path, paths, problems: list[str]) -> dict:
    """One training row's full history: its mix row, the checks it passed, its raw origin."""
    rows = mix_dir / names.MIX_ROWS
    hit = read_parquet(rows).filter(pl.col("trace_id") == tid) if rows.exists() else pl.DataFrame()
    if hit.height == 0:
        problems.append(f"trace {tid}: not in mix {mix_dir.name}")
        return {"trace_id": tid, "found": False}
    row = hit.row(0, named=True)
    src = row["source"]
    kept = read_parquet(Path(paths.curated) / src / names.KEPT).filter(pl.col("trace_id") == tid)
    rep = json.loads((Path(paths.curated) / src / names.CURATE_REPORT).read_text())
    # The curate report's timings name every check that ran on this source; a kept trace passed all.
    checks = {"checks_passed": sorted(rep.get("timings_s", {}))}
    if kept.height:
        k = kept.row(0, named=True)
        checks.update({c: k.get(c) for c in ("response_tokens", "sequence_tokens", "extracted_answer",
                                             "correct", "grade_method", "over_cutoff")})
    else:
        problems.append(f"trace {tid}: no longer among the kept traces of '{src}'")
    return {"trace_id": tid, "found": True, "component": row["component"], "source": src,
            "problem_id": row["problem_id"], "teacher": row["teacher"], "style": row["style"],
            "teacher_size": row["teacher_size"], "draw": row["draw"], "curation": checks,
            "origin": json.loads(row["origin"]), "generation": json.loads(row["generation"]),
            "problem": row["problem"][:300], "response_head": row["response"][:300]}


def render(lin: dict) -> str:
    lines = []
    ck = lin["checkpoint"]
    lines.append(f"checkpoint  {ck.get('path')}  ({', '.join(ck.get('files', [])) or 'no weights'})")
    ml = lin.get("mlflow") or {}
    if ml and "error" not in ml:
        t = ml["tags"]
        exp = f"  dvc exp {t['mixdistill.dvc_exp']}" if t.get("mixdistill.dvc_exp") else ""
        lines.append(f"└─ mlflow run {ml['run_id']} '{ml['name']}' [{ml['status']}] "
                     f"git {t.get('mixdistill.git_commit', '?')[:10]}{exp}")
        for k in sorted(ml["metrics"])[:12]:
            lines.append(f"   · {k} = {ml['metrics'][k]:.4g}")
    mix = lin.get("mix") or {}
    lines.append(f"   └─ mix {mix.get('name')}  rows {mix.get('n_rows')}  digest {mix.get('rows_digest')}  "
                 f"dvc md5 {mix.get('dvc_md5')}")
    for comp, req in (mix.get("requested") or {}).items():
        ach = (mix.get("achieved") or {}).get(comp, {})
        lines.append(f"      · {comp}: requested share {req.get('share')} -> achieved {ach.get('share')} "
                     f"({ach.get('count')} rows, {ach.get('tokens')} tokens)")
    for name, s in (lin.get("sources") or {}).items():
        c, r = s["curated"], s["raw"]
        lines.append(f"      └─ curated {name}: contract {'passed' if c['contract'] else 'FAILED'}, "
                     f"kept {c['kept']}/{c['input']}, digest {c['kept_digest']}")
        lines.append(f"         rejected: {c['rejected_by_reason']}")
        origin = r.get("origin") or {}
        lines.append(f"         └─ raw {r['path']} md5 {r.get('md5_on_disk')} teacher {r.get('teacher')} "
                     f"origin {json.dumps({k: v for k, v in origin.items() if k != 'row'})}")
    if "trace" in lin:
        lines.append("trace " + json.dumps(lin["trace"], indent=2, ensure_ascii=False))
    if lin["problems"]:
        lines.append("DRIFT / PROBLEMS:")
        lines += [f"  ✗ {p}" for p in lin["problems"]]
    else:
        lines.append("verified: everything on disk matches what the checkpoint was trained on")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = stage.parser(__doc__, prog="mixdistill lineage", mlflow=False)
    ap.add_argument("target", help="checkpoint directory, MLflow run id, or models:/<registered model>/<version>")
    ap.add_argument("--trace", help="show one training row's full history")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    args = ap.parse_args(argv)

    def body():
        lin = build_lineage(args.target, load_params(args.params), trace=args.trace)
        print(json.dumps(lin, indent=2, default=str) if args.json else render(lin))
        return 1 if lin["problems"] else 0

    return stage.run("lineage", body)


if __name__ == "__main__":
    sys.exit(main())
