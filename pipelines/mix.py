"""Stage `mix@MIX`: draw one named mix from the curated sources at its exact configured shares;
write rows, manifest, exports and a metrics file for `dvc metrics show`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from curation.io import atomic_dir, write_json
from curation.mixing import MixError, build_mix, load_curated, write_mix
from pipelines.params import ParamsError, load_params, parse_groups, parse_mix, parse_paths, parse_sources


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--mix", required=True)
    ap.add_argument("--params", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        params = load_params(args.params)
        paths, section = parse_paths(params), parse_mix(params)
        groups = parse_groups(params, parse_sources(params))
        if args.mix not in section.mixes:
            raise ParamsError(f"--mix: unknown mix '{args.mix}' (known: {sorted(section.mixes)})")
        mix = section.mixes[args.mix]
        names = sorted({m for comp in mix.components for m in groups.get(comp, [comp])})
        sources = {n: load_curated(paths.curated, n) for n in names}
        rows, manifest = build_mix(mix, groups, sources, section.seed)
        with atomic_dir(Path(paths.mixes) / args.mix) as out:
            manifest = write_mix(rows, manifest, out)
        write_json(Path(paths.mixes) / f"{args.mix}.metrics.json", {
            "rows": manifest["n_rows"], "tokens": manifest["token_total"],
            "share": {c: a["share"] for c, a in manifest["achieved"].items()},
            "token_share": {c: a["token_share"] for c, a in manifest["achieved"].items()},
            "count": {c: a["count"] for c, a in manifest["achieved"].items()},
        })
    except (ParamsError, MixError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"mix@{args.mix}: {manifest['n_rows']} rows, {manifest['token_total']} tokens, shares "
          f"{ {c: a['share'] for c, a in manifest['achieved'].items()} }")
    return 0


if __name__ == "__main__":
    sys.exit(main())
