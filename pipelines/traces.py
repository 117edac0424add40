"""Stage `traces@SOURCE`: import one configured trace source into the common trace schema, with
held-out problems removed (and that removal verified)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import polars as pl

from curation.io import atomic_file
from curation.sources import SourceError, assert_no_heldout, load_source
from pipelines.params import ParamsError, load_params, parse_paths, parse_sources


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--source", required=True)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
        paths, sources = parse_paths(params), parse_sources(params)
        if args.source not in sources:
            raise ParamsError(f"--source: unknown source '{args.source}' (known: {sorted(sources)})")
        source = sources[args.source]
        problems_dir = Path(paths.problems)
        heldout = pl.read_parquet(problems_dir / "test.parquet")
        train_problems = pl.read_parquet(problems_dir / "train.parquet")
        frame = load_source(source, champ_settings=(params.get("champ") or {}).get("settings") or [],
                            heldout=heldout, problems=train_problems)
        assert_no_heldout(frame, heldout, f"sources.{source.name}")
        out = Path(paths.traces) / f"{source.name}.parquet"
        with atomic_file(out, "wb") as f:
            frame.write_parquet(f)
    except (ParamsError, SourceError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"traces@{source.name}: {frame.height} traces -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
