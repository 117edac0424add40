from dataclasses import dataclass

import polars as pl

from curation.runner import add_token_counts, length_stats, run_curation
from curation.schema import TRACE_SCHEMA


def _frame(responses, refs=None, truncated=None):
    n = len(responses)
    data = {c: [f"{c}{i}" for i in range(n)] for c, t in TRACE_SCHEMA.items() if t == pl.Utf8}
    data.update(response=responses, reference_answer=refs or ["1"] * n,
                truncated=truncated or [False] * n, response_tokens=[len(r.split()) for r in responses],
                sequence_tokens=[len(r.split()) + 10 for r in responses])
    return pl.DataFrame(data, schema_overrides={"reference_answer": pl.Utf8})


class ShortCheck:
    name = "short"

    def __call__(self, frame):
        return pl.Series([("too_short" if n < 2 else None) for n in frame["response_tokens"]], dtype=pl.Utf8)


class TruncCheck:
    name = "trunc"

    def __call__(self, frame):
        return pl.Series([("truncated_generation" if t else None) for t in frame["truncated"]], dtype=pl.Utf8)


@dataclass
class V:
    extracted: str | None
    correct: bool
    method: str


class FakeGrader:
    def grade_many(self, responses, references):
        out = []
        for r, ref in zip(responses, references):
            ans = r.split()[-1] if "=" in r else None
            out.append(V(ans, ans == ref, "no_answer" if ans is None else ("exact" if ans == ref else "mismatch")))
        return out


def test_every_row_kept_or_rejected_with_all_reasons():
    frame = _frame(["so x = 1", "x", "so x = 2", "long but = 1", "so y = 1"],
                   refs=["1", "1", "1", "1", None], truncated=[False, True, False, True, False])

    def dedup(f, prefer):
        # Row 3 duplicates row 0; row 0 is preferred, so row 3 is the duplicate.
        return pl.Series([None, None, None, "exact_duplicate", None], dtype=pl.Utf8)

    res = run_curation(frame, row_checks=[ShortCheck(), TruncCheck()], grader=FakeGrader(), dedup=dedup)
    assert res.kept["trace_id"].to_list() == ["trace_id0"]
    by_id = dict(zip(res.rejected["trace_id"].to_list(), res.rejected["reasons"].to_list()))
    assert by_id == {"trace_id1": ["too_short", "truncated_generation", "no_answer"],
                     "trace_id2": ["answer_mismatch"],
                     "trace_id3": ["truncated_generation", "exact_duplicate"],
                     "trace_id4": ["no_reference"]}
    rep = res.report
    assert (rep["input"], rep["kept"], rep["rejected"]) == (5, 1, 4)
    assert rep["kept"] + rep["rejected"] == rep["input"]
    assert rep["rejected_by_reason"] == {"truncated_generation": 2, "too_short": 1, "no_answer": 1,
                                         "answer_mismatch": 1, "exact_duplicate": 1, "no_reference": 1}
    assert rep["rejected_with_several_reasons"] == 2
    assert res.kept["correct"].to_list() == [True]


def test_dedup_prefers_rows_that_passed():
    frame = _frame(["a b = 1", "x", "c d = 1"])
    seen = {}

    def dedup(f, prefer):
        seen["prefer"] = prefer.to_list()
        return pl.Series([None] * f.height, dtype=pl.Utf8)

    run_curation(frame, row_checks=[ShortCheck()], dedup=dedup)
    assert seen["prefer"] == [True, False, True]


class WordTok:
    """A whitespace tokenizer with a two-token chat template, enough to test the length arithmetic."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [t.split() for t in texts]}

    def apply_chat_template(self, messages, tokenize=True):
        ids = ["<s>"]
        for m in messages:
            ids += m["content"].split() + ["<eot>"]
        return ids


def test_token_counts_sequence_includes_prompt_and_template():
    frame = _frame(["one two three", "four"])
    frame = frame.with_columns(problem=pl.Series(["p q", "r"]))
    out = add_token_counts(frame.drop("response_tokens", "sequence_tokens"), WordTok(),
                           lambda p: f"Solve: {p}", cutoff_len=6)
    assert out["response_tokens"].to_list() == [3, 1]
    # <s> + "Solve: p q" (3) + <eot> + response + <eot>
    assert out["sequence_tokens"].to_list() == [1 + 3 + 1 + 3 + 1, 1 + 2 + 1 + 1 + 1]


def test_length_stats():
    assert length_stats([]) == {"count": 0}
    s = length_stats(list(range(1, 101)))
    assert (s["min"], s["p50"], s["p90"], s["max"], s["mean"]) == (1, 51, 91, 100, 50.5)
