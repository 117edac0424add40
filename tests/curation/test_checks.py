import polars as pl
import pytest

from curation.checks import (EmptyCheck, LanguageCheck, LengthCheck, RepetitionCheck, TruncationCheck,
                             default_checks, ngram_hashes, text_chunks, word_hashes)
from curation.runner import run_curation
from curation.config import CurateParams, QualityParams
from tests.curation.helpers import make_traces

SOLUTION = r"""We want the number of strings of length $n$ over $\{1, 2, 3\}$ whose adjacent digits differ
by at most 1. Let $a_n$, $b_n$, $c_n$ count those ending in 1, 2 and 3. A string ending in 1 can
only follow one ending in 1 or 2, so $a_{n+1} = a_n + b_n$; likewise $b_{n+1} = a_n + b_n + c_n$
and $c_{n+1} = b_n + c_n$. By symmetry $a_n = c_n$, hence $a_{n+1} = a_n + b_n$ and
$b_{n+1} = 2a_n + b_n$. Starting from $a_1 = b_1 = 1$:
Case $n = 2$: $a_2 = 2$, $b_2 = 3$, total $7$.
Case $n = 3$: $a_3 = 5$, $b_3 = 7$, total $17$.
Case $n = 4$: $a_4 = 12$, $b_4 = 17$, total $41$.
Case $n = 5$: $a_5 = 29$, $b_5 = 41$, total $99$.
Case $n = 6$: $a_6 = 70$, $b_6 = 99$, total $239$.
The totals satisfy $t_{n+1} = 2t_n + t_{n-1}$, e.g. $2 \cdot 99 + 41 = 239$, as expected since
$\alpha = 1 + \sqrt{2}$ is the dominant root and $\sum_{k} \binom{n}{k} \le 3^n$ for all
$n \in \mathbb{N}$. Therefore the answer is $\boxed{239}$."""


def reasons(check, rows):
    return check(make_traces(rows)).to_list()


# --- length ----------------------------------------------------------------------------------

LENGTH_ROWS = [
    {"response_tokens": 3},                                   # too short
    {"response_tokens": 8},                                   # exactly min: passes
    {"response_tokens": 4096, "sequence_tokens": 1024},       # exactly max and cutoff: passes
    {"response_tokens": 4097, "sequence_tokens": 900},        # too long, fits the cutoff
    {"response_tokens": 900, "sequence_tokens": 1025},        # fine length, over the cutoff
    {"response_tokens": 5000, "sequence_tokens": 5030},       # both: the cutoff wins
    {"response_tokens": 2, "sequence_tokens": 2000},          # short response, huge prompt
]


def test_length_reject_mode_reasons():
    check = LengthCheck(min_tokens=8, max_tokens=4096, cutoff_len=1024)
    assert check.name == "length"
    assert reasons(check, LENGTH_ROWS) == [
        "too_short", None, None, "too_long", "over_cutoff", "over_cutoff", "over_cutoff"]


def test_length_flag_mode_keeps_over_cutoff_rows_and_flags_them():
    check = LengthCheck(min_tokens=8, max_tokens=4096, cutoff_len=1024, over_cutoff="flag")
    frame = make_traces(LENGTH_ROWS)
    assert check(frame).to_list() == ["too_short", None, None, "too_long", None, "too_long", "too_short"]
    flags = check.flags(frame)
    assert flags.name == "over_cutoff" and flags.dtype == pl.Boolean
    assert flags.to_list() == [False, False, False, False, True, True, True]


def test_length_flags_through_the_runner():
    frame = make_traces(LENGTH_ROWS)
    for mode, kept, flagged in (("reject", 2, 0), ("flag", 3, 1)):
        check = LengthCheck(8, 4096, 1024, over_cutoff=mode)
        result = run_curation(frame, row_checks=[check], flaggers=[lambda f: {"over_cutoff": check.flags(f)}])
        assert result.kept.height == kept
        assert result.kept["over_cutoff"].sum() == flagged
        assert result.report["flags"] == {"over_cutoff": 3}
        expected = {"reject": {"over_cutoff": 3, "too_short": 1, "too_long": 1},
                    "flag": {"too_short": 2, "too_long": 2}}[mode]
        assert result.report["rejected_by_reason"] == expected


def test_length_validates_arguments_and_columns():
    with pytest.raises(ValueError, match="over_cutoff: 'drop'"):
        LengthCheck(8, 4096, 1024, over_cutoff="drop")
    with pytest.raises(ValueError, match="min_tokens 10 must be <= max_tokens 5"):
        LengthCheck(10, 5, 1024)
    with pytest.raises(KeyError, match="response_tokens"):
        LengthCheck(8, 4096, 1024)(make_traces([{}]).drop("response_tokens"))


# --- truncation and empty ------------------------------------------------------------------

def test_truncation_from_flag_or_finish_reason():
    rows = [{"truncated": True, "finish_reason": "stop"}, {"truncated": False, "finish_reason": "length"},
            {"truncated": True, "finish_reason": "length"}, {}, {"finish_reason": "unknown"},
            {"truncated": None, "finish_reason": None}]
    assert reasons(TruncationCheck(), rows) == [
        "truncated_generation", "truncated_generation", "truncated_generation", None, None, None]


def test_empty_response():
    rows = [{"response": ""}, {"response": "  \n\t "}, {"response": "\u200b\ufeff "}, {"response": None},
            {"response": "0"}, {"response": "  x  "}]
    assert reasons(EmptyCheck(), rows) == [
        "empty_response", "empty_response", "empty_response", "empty_response", None, None]


# --- repetition ------------------------------------------------------------------------------

def test_repetition_loop_and_degenerate_text():
    paragraph = " ".join(f"w{i}" for i in range(20))                  # 20 distinct words
    listing = " ".join(f"f({i}) = {i * i}," for i in range(1, 120))   # short pattern, new numbers
    rows = [
        {"response": SOLUTION},
        {"response": listing},
        {"response": SOLUTION + "\n" + SOLUTION},                     # said twice over: a loop
        {"response": "So we check again. " + " ".join([paragraph] * 5)},
        {"response": " ".join(["0"] * 300)},                           # a handful of tokens, looping
        {"response": "!" * 5000},                                     # no spaces at all
        {"response": " ".join(["1"] * 10)},                            # short, but a loop already
        {"response": "The answer is 1. The answer is 1."},            # one 8-gram: no evidence
    ]
    assert reasons(RepetitionCheck(), rows) == [
        None, None, "repetition_loop", "repetition_loop", "degenerate_text", "degenerate_text",
        "repetition_loop", None]


def test_repetition_stats_are_exact():
    paragraph = " ".join(f"w{i}" for i in range(20))
    stats = RepetitionCheck().stats(pl.Series([" ".join([paragraph] * 5), "a b c", None]))
    # 100 words -> 93 8-grams, of which 20 distinct: the paragraph's 20 rotations.
    assert stats["repeat_fraction"].to_list()[0] == pytest.approx(1 - 20 / 93)
    assert stats["min_window_distinct"].to_list() == [0.2, None, None]
    assert stats["repeat_fraction"].to_list()[1:] == [None, None]


def test_repetition_threshold_is_strictly_above():
    # 70 distinct words then the first 30 again: the 23 8-grams inside the repeat are old.
    words = [f"u{i}" for i in range(70)]
    text = " ".join(words + words[:30])
    fraction = RepetitionCheck().stats(pl.Series([text]))["repeat_fraction"][0]
    assert fraction == pytest.approx(23 / 93)
    assert reasons(RepetitionCheck(max_ngram_repeat_fraction=fraction), [{"response": text}]) == [None]
    assert reasons(RepetitionCheck(max_ngram_repeat_fraction=0.2), [{"response": text}]) == ["repetition_loop"]


# --- language --------------------------------------------------------------------------------

CHINESE = "首先，我们设 $x = \\cos\\theta$，则 $x^2 + y^2 = 1$。因此所求的最大值为 $\\boxed{2}$，证明完毕。"
SWITCH = ("Let me compute the sum carefully. The first term is $a_1 = 3$ and the ratio is $r = 2$, so "
          "the partial sums grow quickly and we need the tenth one. Using the formula "
          "$S_n = a_1 (r^n - 1)/(r - 1)$ we get $S_{10} = 3 \\cdot 1023 = 3069$. "
          "等等，我再检查一下这个结果是否正确。答案是 3069。")
RUSSIAN = "Рассмотрим сумму всех чисел от 1 до 100. По формуле получаем $S = 5050$, это и есть ответ."


def test_language_reasons():
    rows = [
        {"response": SOLUTION},                                             # LaTeX, Greek, ℕ
        {"response": "Since α + β = π and ∑ x_i ≤ ∫ f, we get ℝ ∋ ξ = 2 ∈ ℕ; Δ = ε·λ."},
        {"response": CHINESE},
        {"response": SWITCH},
        {"response": RUSSIAN},
        {"response": "2 + 2 = 4"},                                           # no letters at all
        {"response": "By the theorem of 华罗庚 (Hua Luogeng) the bound holds."},  # a name, 3 chars
        {"response": None},
    ]
    assert reasons(LanguageCheck(), rows) == [
        None, None, "non_english", "mixed_language", "non_english", None, None, None]


def test_language_counts_words_per_script():
    stats = LanguageCheck().stats(make_traces([{"response": CHINESE}, {"response": SWITCH}]))
    # CHINESE: 19 Han characters; Latin words x, cos, theta, x, y, boxed. SWITCH: 41 Latin words
    # (LaTeX's S, n, a, r and cdot included), then 19 Han characters.
    assert stats.rows() == [(6, 19), (41, 19)]
    # SWITCH is 41 / 60 = 68% Latin: above 0.6, so mixed rather than non-English...
    assert reasons(LanguageCheck(min_english_fraction=0.6), [{"response": SWITCH}]) == ["mixed_language"]
    # ...and a stricter share or a higher word floor change the verdict.
    assert reasons(LanguageCheck(min_english_fraction=0.7), [{"response": SWITCH}]) == ["non_english"]
    assert reasons(LanguageCheck(min_foreign_words=20), [{"response": SWITCH}]) == [None]


# --- suite -----------------------------------------------------------------------------------

def test_default_checks_follow_params():
    params = CurateParams(min_tokens=8, max_tokens=4096, cutoff_len=1024, over_cutoff="flag",
                          quality=QualityParams(max_ngram_repeat_fraction=0.25,
                                                min_distinct_token_fraction=0.05, min_english_fraction=0.7))
    checks = default_checks(params)
    assert [c.name for c in checks] == ["empty", "truncation", "length", "repetition", "language"]
    length, repetition, language = checks[2], checks[3], checks[4]
    assert (length.min_tokens, length.max_tokens, length.cutoff_len, length.over_cutoff) == (8, 4096, 1024, "flag")
    assert (repetition.max_ngram_repeat_fraction, repetition.min_distinct_token_fraction) == (0.25, 0.05)
    assert language.min_english_fraction == 0.7


def test_default_suite_on_mixed_frame():
    rows = [
        {"response": SOLUTION, "response_tokens": 400, "sequence_tokens": 450},
        {"response": "   ", "response_tokens": 0, "sequence_tokens": 40},
        {"response": SWITCH, "truncated": True, "finish_reason": "length",
         "response_tokens": 120, "sequence_tokens": 1500},
        {"response": SOLUTION + "\n" + SOLUTION, "response_tokens": 800, "sequence_tokens": 850},
    ]
    frame = make_traces(rows)
    params = CurateParams(min_tokens=8, max_tokens=4096, cutoff_len=1024)
    per_row = [[] for _ in rows]
    for check in default_checks(params):
        series = check(frame)
        assert series.dtype == pl.Utf8 and series.len() == len(rows)
        for i, r in enumerate(series.to_list()):
            if r is not None:
                per_row[i].append(r)
    assert per_row == [[], ["empty_response", "too_short"],
                       ["truncated_generation", "over_cutoff", "mixed_language"], ["repetition_loop"]]


def test_checks_accept_an_empty_frame():
    frame = make_traces([])
    for check in default_checks(CurateParams(min_tokens=8, max_tokens=4096, cutoff_len=1024)):
        assert check(frame).to_list() == []


def test_ngram_hashes_stay_within_a_text():
    words = word_hashes(pl.Series(["a b c", "a b c d", "", None, "b c d"]))
    grams = ngram_hashes(words, 3)
    assert grams["row"].to_list() == [0, 1, 1, 4]
    # Same words, same hash, whichever text they come from.
    assert grams["gram"][0] == grams["gram"][1] and grams["gram"][2] == grams["gram"][3]
    assert grams["gram"][0] != grams["gram"][2]


def test_chunking_does_not_change_results():
    texts = pl.Series([SOLUTION, " ".join(["0"] * 300), None, "", "a b c d e f g h a b c d e f g h"] * 7)
    chunks = list(text_chunks(texts, 500))
    assert [start for start, _ in chunks][:3] == [0, 1, 2]      # one row per chunk when rows are big
    assert sum(c.len() for _, c in chunks) == texts.len()
    whole = RepetitionCheck().stats(texts)
    assert RepetitionCheck(chunk_bytes=500).stats(texts).equals(whole)
    assert whole["row"].to_list() == list(range(texts.len()))
