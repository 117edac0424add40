"""The held-out trace set: teacher traces of the held-out (test-split) problems, per style.

The traces stage removes every trace of a held-out problem from each training source (by problem
id and by problem text, ``curation.sources.load_source``); this module keeps exactly those traces
instead, so that each model's loss on them measures how well it learnt a style of reasoning on
problems it never trained on.

Which checks, and why:

- kept: ``empty_response``, ``truncated_generation``, the length rules (``too_short``,
  ``too_long``, ``over_cutoff``), ``repetition_loop`` / ``degenerate_text`` and the language
  checks, with curation's thresholds, and answer correctness when ``curate.correctness`` is on
  (rule grader only, no LLM judge): the held-out traces then look like the traces a mix trains
  on. ``over_cutoff`` always rejects here, even where ``curate.over_cutoff: flag`` keeps long
  training traces for a truncating trainer: the student never learns positions past the cutoff,
  and a trace scored on its head only would not be the whole trace.
- left out: decontamination (these are the evaluation problems by construction) and
  near-duplicate removal (the subset takes one trace per problem before a second, which already
  spreads it out; exact duplicate trace ids are dropped, since scores are keyed by trace id).

The subset is seeded and independent of row order: traces are ranked by a hash of the seed and
their trace id; the first trace of each problem comes before any problem's second, so the
subset covers as many problems as it can.
"""
from __future__ import annotations

import dataclasses
import hashlib
import sys

import polars as pl

from common.layout import HELDOUT_COLUMNS, NO_HELDOUT
from common.params import ParamsError
from common.prompt import build_prompt
from curation.checks import default_checks
from curation.runner import add_token_counts, run_curation
from curation.schema import STYLES, problem_key
from curation.sources import load_source

HELDOUT_SCHEMA = {c: pl.Utf8 for c in HELDOUT_COLUMNS}
# Sources whose traces a teacher generates for the train split only: they hold no held-out trace.
NO_HELDOUT_KINDS = ("generate",)


def style_sources(sources: dict, groups: dict[str, list[str]]) -> dict[str, list]:
    """The sources of each style: ``groups.<style>`` where that group exists, else every source
    whose ``style:`` is that style. A grouped source of another style is a params error."""
    out = {}
    for style in STYLES:
        if style in groups:
            members = [sources[name] for name in groups[style]]
            wrong = [s.name for s in members if s.style != style]
            if wrong:
                raise ParamsError(f"groups.{style}: source(s) {wrong} have another style: (sources.<name>.style), "
                                  f"so their traces cannot stand for the {style} style in the held-out set")
        else:
            members = [s for s in sources.values() if s.style == style]
        out[style] = members
    return out


def heldout_source_traces(source, test: pl.DataFrame, problems: pl.DataFrame,
                          champ_settings: list[str]) -> pl.DataFrame:
    """The traces of one source that answer a held-out problem: exactly those the traces stage
    leaves out (matched by problem id or by problem text)."""
    frame = load_source(source, champ_settings=champ_settings, heldout=test.head(0), problems=problems)
    ids = set(test["problem_id"].to_list())
    keys = set(problem_key(p) for p in test["problem"].to_list())
    return frame.filter(pl.col("problem_id").is_in(list(ids)) |
                        pl.col("problem").map_elements(problem_key, return_dtype=pl.Utf8).is_in(list(keys)))


def heldout_checks(curate) -> list:
    """Curation's per-trace checks with its thresholds, rejecting over the cutoff (module doc)."""
    return default_checks(dataclasses.replace(curate, over_cutoff="reject"))


def seeded_subset(frame: pl.DataFrame, n: int | None, seed: int) -> pl.DataFrame:
    """``n`` rows (all with None): one trace per problem in hash order, then a second, ..."""
    ranked = frame.with_columns(
        pl.col("trace_id").map_elements(lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest(),
                                        return_dtype=pl.Utf8).alias("_rank")
    ).sort("_rank").with_columns(pl.int_range(pl.len()).over("problem_id").alias("_round"))
    picked = ranked.sort(["_round", "_rank"])
    return (picked if n is None else picked.head(n)).drop("_rank", "_round")


def build_heldout(by_style: dict[str, list], test: pl.DataFrame, problems: pl.DataFrame, curate, tokenizer, *,
                  champ_settings: list[str], max_per_style: int | None, seed: int,
                  grader=None) -> tuple[pl.DataFrame, dict]:
    """``(traces, summary)``: the held-out set (``HELDOUT_COLUMNS``) and what went into it.

    ``grader`` (a ``grading.grader.Grader``) checks answers; None skips that check."""
    summary: dict = {"n_heldout_problems": test.height, "seed": seed, "max_traces_per_style": max_per_style,
                     "cutoff_len": curate.cutoff_len, "styles": {}}
    if test.height == 0:
        summary["note"] = f"{NO_HELDOUT}: the test split is empty (problems.test_fraction: 0)"
        return pl.DataFrame(schema=HELDOUT_SCHEMA), summary
    checks = heldout_checks(curate)
    summary["checks"] = [c.name for c in checks] + (["correctness"] if grader is not None else [])
    picked, notes = [], []
    for style, members in by_style.items():
        usable = [s for s in members if s.kind not in NO_HELDOUT_KINDS]
        skipped = sorted(s.name for s in members if s.kind in NO_HELDOUT_KINDS)
        frames = [heldout_source_traces(s, test, problems, champ_settings) for s in usable]
        frames = [f for f in frames if f.height]
        candidates = pl.concat(frames).unique("trace_id", keep="first", maintain_order=True) if frames else None
        entry = {"sources": sorted(s.name for s in usable), "skipped_sources": skipped,
                 "candidates": 0 if candidates is None else candidates.height}
        if candidates is None:
            entry.update(passed=0, selected=0, problems=0, rejected_by_reason={})
            notes.append(f"no {style} traces of held-out problems")
        else:
            counted = add_token_counts(candidates, tokenizer, build_prompt, cutoff_len=curate.cutoff_len)
            result = run_curation(counted, row_checks=checks, grader=grader)
            chosen = seeded_subset(result.kept, max_per_style, seed)
            entry.update(passed=result.kept.height, selected=chosen.height,
                         problems=chosen["problem_id"].n_unique(),
                         rejected_by_reason=result.report["rejected_by_reason"],
                         response_tokens=result.report["response_tokens"]["kept"])
            if chosen.height:
                picked.append(chosen.with_columns(pl.lit(style).alias("style")).select(list(HELDOUT_COLUMNS)))
            else:
                notes.append(f"every {style} trace of the held-out problems was rejected")
        summary["styles"][style] = entry
        print(f"heldout: {style}: {entry['candidates']} traces of held-out problems, {entry.get('passed', 0)} pass "
              f"the checks, {entry['selected']} kept", file=sys.stderr)
    if notes:
        summary["note"] = "; ".join(notes)
    traces = pl.concat(picked).sort(["style", "trace_id"]) if picked else pl.DataFrame(schema=HELDOUT_SCHEMA)
    return traces.select([pl.col(c).cast(pl.Utf8) for c in HELDOUT_COLUMNS]), summary
