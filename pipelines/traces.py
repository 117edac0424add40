"""Stage `traces@SOURCE`: import one configured trace source into the common trace schema, with
held-out problems removed (and that removal verified)."""
from __future__ import annotations

import sys

from common.io import atomic_file, read_parquet
from curation.sources import assert_no_heldout, load_source
from pipelines import stage
from pipelines.params import load_params


def main(argv=None) -> int:
    args = stage.parser(__doc__, fan="source").parse_args(argv)

    def body():
        params = load_params(args.params)
        source, layout = stage.pick(args.source, params.sources, "source"), params.layout
        heldout = read_parquet(layout.problem_split("test"))
        frame = load_source(source, champ_settings=params.champ_settings, heldout=heldout,
                            problems=read_parquet(layout.problem_split("train")))
        assert_no_heldout(frame, heldout, f"sources.{source.name}")
        out = layout.traces(source.name)
        with atomic_file(out, "wb") as f:
            frame.write_parquet(f)
        print(f"traces@{source.name}: {frame.height} traces -> {out}")

    return stage.run(f"traces@{args.source}", body)


if __name__ == "__main__":
    sys.exit(main())
