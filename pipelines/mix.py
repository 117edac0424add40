"""Stage `mix@MIX`: draw one named mix from the curated sources at its exact configured shares;
write rows, manifest, exports and a metrics file for `dvc metrics show`."""
from __future__ import annotations

import sys
import time

from common.io import atomic_dir, write_json
from common.progress import StepProgress, quiet_library_bars
from curation.config import members
from curation.mixing import build_mix, load_curated, mix_metrics, write_mix
from pipelines import stage
from pipelines.params import load_params


def main(argv=None) -> int:
    args = stage.parser(__doc__, fan="mix").parse_args(argv)

    def body():
        params = load_params(args.params)
        layout, section = params.layout, params.mix
        mix = stage.pick(args.mix, section.mixes, "mix")
        names = sorted({m for comp in mix.components for m in members(comp, params.groups)})
        # A bar only for a mix large enough to take a while (delay); the line below is the summary.
        quiet_library_bars()
        with StepProgress(f"mix@{args.mix}", rows=0, steps=2, delay=2.0, summary=False) as progress:
            started = time.perf_counter()
            sources = {n: load_curated(layout.curated_root, n) for n in names}
            rows, manifest = build_mix(mix, params.groups, sources, section.seed)
            progress.record("draw", time.perf_counter() - started, rows=rows.height)
            started = time.perf_counter()
            with atomic_dir(layout.mix(args.mix)) as out:
                manifest = write_mix(rows, manifest, out)
            progress.record("export", time.perf_counter() - started, rows=rows.height)
        write_json(layout.mix_metrics(args.mix), mix_metrics(manifest))
        print(f"mix@{args.mix}: {manifest['n_rows']} rows, {manifest['token_total']} tokens, shares "
              f"{ {c: a['share'] for c, a in manifest['achieved'].items()} }")

    return stage.run(f"mix@{args.mix}", body)


if __name__ == "__main__":
    sys.exit(main())
