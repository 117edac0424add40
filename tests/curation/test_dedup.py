import random

import polars as pl
import pytest

from curation.dedup import duplicate_reasons
from tests.curation.helpers import make_traces

# 300 distinct words: 296 distinct 5-word shingles.
BASE = [f"w{i}" for i in range(300)]


def edit(words: list[str], positions: list[int], tag: str) -> list[str]:
    """Replace single words far apart: each replacement changes exactly 5 shingles."""
    out = list(words)
    for p in positions:
        out[p] = f"{tag}{p}"
    return out


def text(words: list[str]) -> str:
    return " ".join(words)


def dedup(responses, prefer=None, **kw):
    frame = make_traces([{"response": r} for r in responses])
    series = duplicate_reasons(frame, None if prefer is None else pl.Series(prefer, dtype=pl.Boolean), **kw)
    assert series.dtype == pl.Utf8 and series.len() == frame.height
    return series.to_list()


def test_exact_duplicates_after_whitespace_normalisation():
    a = "We add the two numbers.\n\nSo the answer is $\\boxed{7}$."
    same = "  We add the two  numbers. So the\tanswer is $\\boxed{7}$.  "
    other_case = a.upper()
    # Exact means byte-identical up to whitespace; a case change is left to the near pass, whose
    # shingles are lower-cased.
    assert dedup([a, same, other_case, a]) == [None, "exact_duplicate", "near_duplicate", "exact_duplicate"]
    assert dedup([a, same, other_case, a], near_threshold=1.0) == [
        None, "exact_duplicate", "near_duplicate", "exact_duplicate"]


def test_prefer_decides_the_kept_copy():
    a, b = "x = 1 so the answer is 1.", "y = 2 so the answer is 2."
    # Preferred row first among its copies, else the first row.
    assert dedup([a, a, a, b, b], prefer=[False, True, True, False, False]) == [
        "exact_duplicate", None, "exact_duplicate", None, "exact_duplicate"]
    # A null preference counts as not preferred.
    assert dedup([a, a], prefer=[None, True]) == ["exact_duplicate", None]


def test_duplicates_across_problem_ids():
    # The same problem imported twice under two ids: identical solutions are one example.
    frame = make_traces([{"problem_id": "champ-7", "response": text(BASE)},
                         {"problem_id": "hf-123", "response": text(BASE)}])
    assert duplicate_reasons(frame, None).to_list() == [None, "exact_duplicate"]


def test_near_duplicates_over_threshold_only():
    one_word = text(edit(BASE, [150], "x"))                 # J = 291/301 = 0.967
    three_words = text(edit(BASE, [50, 150, 250], "y"))     # J = 281/311 = 0.904
    ten_words = text(edit(BASE, list(range(10, 300, 30)), "z"))  # J = 246/346 = 0.711
    unrelated = text(f"v{i}" for i in range(300))
    assert dedup([text(BASE), one_word, three_words, ten_words, unrelated]) == [
        None, "near_duplicate", "near_duplicate", None, None]
    # At a threshold above 0.904 the three-word edit is its own solution.
    assert dedup([text(BASE), three_words], near_threshold=0.95) == [None, None]
    assert dedup([text(BASE), three_words], near_threshold=0.9) == [None, "near_duplicate"]


def test_prefer_keeps_the_preferred_near_duplicate():
    a, b = text(BASE), text(edit(BASE, [100], "x"))
    assert dedup([a, b], prefer=[False, True]) == ["near_duplicate", None]
    assert dedup([a, b], prefer=[True, True]) == [None, "near_duplicate"]
    # Exact and near together: the copies of the dropped text are exact duplicates.
    assert dedup([a, b, a, b], prefer=[False, True, False, False]) == [
        "near_duplicate", None, "exact_duplicate", "exact_duplicate"]


def test_no_chaining_through_dropped_rows():
    a = BASE
    b = edit(a, [50, 150, 250], "b")          # J(a, b) = 0.904
    c = edit(b, [100, 200, 280], "c")         # J(b, c) = 0.904, J(a, c) = 266/326 = 0.816
    # b is dropped as close to a; c is compared with kept rows only, and a is not close enough.
    assert dedup([text(a), text(b), text(c)]) == [None, "near_duplicate", None]
    # With b preferred, b is kept and both a and c are its near duplicates.
    assert dedup([text(a), text(b), text(c)], prefer=[False, True, False]) == [
        "near_duplicate", None, "near_duplicate"]


def test_empty_and_short_responses():
    # Empty responses are the empty check's business; short ones are compared exactly only.
    assert dedup(["", "  ", None, "The answer is 4.", "The answer is 4.", "the answer is 4."]) == [
        None, None, None, None, "exact_duplicate", None]


def test_deterministic_and_validated():
    rng = random.Random(5)
    responses, expected = [], []
    for i in range(200):
        base = [f"t{i % 40}_{j}" for j in range(120)]
        if i >= 40 and rng.random() < 0.5:
            base[rng.randrange(120)] = f"edit{i}"            # a near copy of an earlier text
            expected.append("near_duplicate")
        elif i >= 40:
            base = [f"u{i}_{j}" for j in range(120)]          # a new text
            expected.append(None)
        else:
            expected.append(None)
        responses.append(text(base))
    first = dedup(responses)
    assert first == expected
    assert expected.count("near_duplicate") == 75
    assert dedup(responses) == first
    with pytest.raises(ValueError, match="prefer has 1 values for 2 rows"):
        duplicate_reasons(make_traces([{}, {}]), pl.Series([True]))
    assert duplicate_reasons(make_traces([]), None).to_list() == []
