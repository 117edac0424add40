"""Stage `heldout`: the fixed held-out trace set that every model's held-out loss is measured on.

Teacher traces of the held-out (test-split) problems from the sources of ``groups.long`` and
``groups.short`` (the traces stage keeps exactly these out of training), through curation's
per-trace checks (``curation/heldout.py`` says which and why), then a seeded subset of
``heldout.max_traces_per_style`` per style. Writes ``<paths.heldout>/traces.parquet`` and
``summary.json`` (counts, reject reasons, and a note when there is nothing to hold out, as with
``problems.test_fraction: 0``)."""
from __future__ import annotations

import sys

import polars as pl

from common.io import atomic_file, read_parquet, write_json
from curation.errors import SourceError
from curation.heldout import build_heldout, style_sources
from pipelines import stage
from pipelines.params import load_params


def main(argv=None) -> int:
    args = stage.parser(__doc__).parse_args(argv)     # --no-mlflow accepted: it logs nothing anyway

    def body():
        params = load_params(args.params)
        layout, cfg, cur = params.layout, params.heldout, params.curate
        test = read_parquet(layout.problem_split("test"))
        tokenizer, grader = None, None
        if test.height:
            if not (layout.student / "config.json").exists():
                raise SourceError(f"{layout.student}: no student model here (its tokenizer counts the tokens); "
                                  "run the student stage first")
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(layout.student)
            if cur.correctness.enabled:
                from grading.grader import Grader

                grader = Grader(timeout_s=cur.correctness.timeout_s, workers=cur.correctness.workers,
                                rules=cur.correctness.rules)
        try:
            # Reference answers of file/hub sources are matched against the whole problem set.
            problems = pl.concat([read_parquet(layout.problem_split("train")), test])
            traces, summary = build_heldout(style_sources(params.sources, params.groups), test, problems, cur,
                                            tokenizer, champ_settings=params.champ_settings,
                                            max_per_style=cfg.max_traces_per_style, seed=cfg.seed, grader=grader)
        finally:
            if grader is not None:
                grader.close()
        with atomic_file(layout.heldout_traces, "wb") as f:
            traces.write_parquet(f)
        write_json(layout.heldout_summary, summary)
        counts = {s: e["selected"] for s, e in summary["styles"].items()}
        note = f" ({summary['note']})" if summary.get("note") else ""
        print(f"heldout: {traces.height} traces {counts} of {test.height} held-out problems -> "
              f"{layout.heldout_traces}{note}")

    return stage.run("heldout", body)


if __name__ == "__main__":
    sys.exit(main())
