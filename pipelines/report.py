"""Stage `report`: every evaluated model on every benchmark, ΔLong / ΔLarge, mix gains, plots.

The work is :func:`evaluation.report.build_report`; which mix plays which role is the ``report:``
section of params.yaml. Writes ``<reports>/summary.md``, ``metrics.json``, ``plots/accuracy.json``
(for ``dvc plots``), ``accuracy.png`` and ``response_lengths.png``. Models evaluated under
``eval.protocol: paper`` are shown with mixdistill's grader beside the protocol's scoring. Every
accuracy, delta and gain gets a paired bootstrap interval (``report.bootstrap``) and McNemar p;
held-out losses under ``paths.heldout`` add a table when they exist, and the student NLL of
curated traces (``curate.score``) a trace learnability table and ``student_nll.png``.
``plots/shares.json`` / ``heldout_shares.json`` hold each mix's achieved long and large shares
beside its accuracy and held-out loss: the points of a ratio-sweep curve (dvc.yaml's top-level
plots, drawn across experiments by ``dvc plots diff``).
"""
from __future__ import annotations

import json
import sys

from evaluation.report import build_report
from evaluation.report_stats import as_json
from pipelines import stage
from pipelines.params import load_params
from pipelines.recipe import describe


def main(argv=None) -> int:
    args = stage.parser(__doc__).parse_args(argv)

    def body():
        params = load_params(args.params)
        result = build_report(params.layout, params.report, list(params.mix.mixes),
                              arms=describe(params, with_data=False), sources=list(params.sources))
        brief = {k: result[k] for k in ("delta_long", "delta_large", "missing")}
        brief["intervals"] = as_json({k: result["intervals"][k] for k in ("delta_long", "delta_large")})
        if result["heldout_loss"]:
            brief["heldout_loss"] = result["heldout_loss"]
        if "mixdistill" in result:     # a protocol other than ours: our grader's deltas beside it
            brief["mixdistill"] = {k: result["mixdistill"][k] for k in ("delta_long", "delta_large")}
        print(json.dumps(brief, indent=2))

    return stage.run("report", body)


if __name__ == "__main__":
    sys.exit(main())
