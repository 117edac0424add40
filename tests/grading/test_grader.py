"""Equivalence decisions, worker timeouts, caching and grade_file (grading/grader.py)."""

import json
import signal
import time

import pytest

from grading.files import grade_file
from grading.grader import Grader, GradingInputError, Verdict, fast_verdict
from grading.rules import HouseRules


@pytest.fixture(scope="module")
def inline():
    # workers=0: math-verify runs in this process with its own signal.alarm timeouts
    with Grader(timeout_s=5.0, workers=0) as grader:
        yield grader


@pytest.mark.parametrize(
    "answer, reference, correct, method",
    [
        ("239", "239", True, "exact"),
        ("252", "C(10, 5), or equivalently 252", True, "exact"),
        ("12", "13", False, "unequal"),  # two different numerals: settled without math-verify
        # 1/2 vs 0.5 vs \frac{1}{2}
        ("1/2", "0.5", True, "math_verify"),  # a value, not a string: math-verify decides
        ("0.5", r"\frac{1}{2}", True, "math_verify"),
        (r"\dfrac{1}{2}", "1/2", True, "normalized"),
        ("3.5", "7/2", True, "math_verify"),
        ("0.3333333", "1/3", True, "math_verify"),  # a rounding near miss goes to math-verify
        ("0.333", "1/3", False, "mismatch"),
        # exponent spellings and symbolic equivalence
        ("2^{n-1}", "2^(n-1)", True, "normalized"),
        ("2 * 2^m", "2^(m+1)", True, "math_verify"),
        ("n(n-3)/2", r"\frac{n(n-3)}{2}", True, "math_verify"),
        ("C(10,5)", "252", True, "math_verify"),
        ("n(n-3)/2", "n(n-1)/2", False, "mismatch"),  # they differ at n = 29: no math-verify needed
        ("1/sqrt(3)", "sqrt(3)/3, or equivalently 1/sqrt(3)", True, "exact"),
        ("1/√3", "sqrt(3)/3, or equivalently 1/sqrt(3)", True, "normalized"),
        (r"\frac{\sqrt{3}}{3}", "1/sqrt(3)", True, "math_verify"),
        # percent: the value or the percent figure, never an approximation of the reference
        ("35.7%", "0.357", True, "math_verify"),
        (r"35.7\%", "35.7", True, "exact"),  # the percent figure (house rule, see below)
        ("35.7%", "5/14, or approximately 35.7%", False, "mismatch"),
        # units
        ("18 dollars", "18", True, "normalized"),
        (r"18\text{ dollars}", "Janet makes 9 * 2 = 18 dollars.\n#### 18", True, "normalized"),
        (r"90^\circ", "90", True, "normalized"),
        # factorials: 5! is 120, not 5 (a math-verify false positive on bare text)
        ("5!", "5", False, "mismatch"),
        ("5!", "120", True, "math_verify"),
        ("n!", "n!", True, "exact"),
        ("(n-1)!", "n!", False, "mismatch"),
        ("n!/(2n)", "(n-1)!/2", True, "math_verify"),  # equal at every probe: math-verify confirms
        # yes / no
        ("No", "No", True, "exact"),
        ("no, it is not possible", "No", True, "normalized"),
        ("Yes", "No", False, "unequal"),
        ("No", "No integer solutions", True, "exact"),
        ("No", "0 (i.e., no such values)", True, "exact"),
        # intervals and tuples
        ("[-1,1]", r"\left[-1, 1\right]", True, "normalized"),
        ("(0, ∞)", r"(0,\infty)", True, "normalized"),
        (r"[-\frac{1}{2}, 1)", "[-0.5, 1)", True, "math_verify"),
        ("(x, y) = (0, 0)", "x=y=0", True, "normalized"),
        ("x = 6, y = 5", "x=6, y=5", True, "normalized"),
        ("9, 4, 1", "1, 4 and 9", True, "math_verify"),
        ("376, 625", "376 and 625", True, "normalized"),
        # a named answer against an unnamed reference
        ("L = 4", "The limit exists and is equal to 4", True, "normalized"),
        ("a_2 = -36", "120", False, "unequal"),
        # text references compare as text only
        ("monotonically increasing", "Monotonically increasing", True, "normalized"),
        ("20", "Always greater than 20", False, "mismatch"),
    ],
)
def test_equivalence(inline, answer, reference, correct, method):
    assert inline.grade_answers([answer], [reference]) == [Verdict(answer, correct, method)]


def test_fast_path_settles_only_what_strings_settle_exactly():
    assert fast_verdict("x+1", ["1+x"]) is None                    # algebra: math-verify's call
    assert fast_verdict("17", ["17"]) == (True, "exact")
    assert fast_verdict(r"\dfrac{1}{2}", ["1/2"]) == (True, "normalized")
    assert fast_verdict("17", ["18"]) == (False, "unequal")         # two plain numerals
    assert fast_verdict("-5", ["5"]) == (False, "unequal")
    assert fast_verdict("Yes", ["No"]) == (False, "unequal")
    assert fast_verdict("17", ["18", "x"]) is None                 # one variant is still open
    assert fast_verdict("n + s", ["n^2/(n-1)"]) is None            # different, but not by strings
    assert fast_verdict("0.5", ["1/2"]) is None                    # equal, but not by strings
    assert fast_verdict("20", ["Always greater than 20"]) is None


def test_math_verify_false_positive_on_factorials_is_caught_exactly(inline):
    # math-verify compares numbers with a float tolerance: 1/2004! and 1/2006! both look like 0
    assert inline.grade_answers([r"\frac{1}{2004!}"], [r"\frac{1}{2006!}"]) == [
        Verdict(r"\frac{1}{2004!}", False, "mismatch")]
    assert inline.grade_answers([r"\frac{1}{2004!}"], [r"\frac{1}{2004!}"])[0].correct


@pytest.mark.parametrize("rule, figure_ok", [("value_or_figure", True), ("value", False)])
def test_percent_is_a_documented_house_rule(rule, figure_ok):
    with Grader(workers=0, rules=HouseRules(percent=rule)) as grader:
        got = grader.grade_answers([r"35.7\%", "28", "35.7%", "0.28"], ["35.7", r"28\%", "0.357", "28%"])
    assert [v.correct for v in got] == [figure_ok, figure_ok, True, True]    # the value always counts
    with pytest.raises(ValueError, match="percent must be one of"):
        HouseRules(percent="lenient")


def test_extraction_keeps_signs_bare_letters_and_answer_lists(inline):
    verdicts = inline.grade_many(["-5", r"\mathrm{E}", "f'", r"The roots are $\boxed{2}$ and $\boxed{3}$.",
                                  r"First \boxed{3}. On reflection, \boxed{4}"], ["-5", "E", "f'", "2, 3", "4"])
    assert [(v.extracted, v.correct) for v in verdicts] == [
        ("-5", True), (r"\mathrm{E}", True), ("f'", True), ("2, 3", True), ("4", True)]
    assert inline.grade_many(["5"], ["-5"])[0] == Verdict("5", False, "unequal")


def test_math_verify_reads_a_matrix_the_heuristics_cannot(inline):
    v = inline.grade_many([r"The identity matrix is $ \begin{pmatrix}1 & 0 \\ 0 & 1\end{pmatrix} $."],
                          [r"\begin{bmatrix}1 & 0 \\ 0 & 1\end{bmatrix}"])[0]
    assert v.correct and v.method == "math_verify" and "pmatrix" in v.extracted   # what math-verify read
    none_found = inline.grade_many(["我们得到 3 页。"], ["3"])[0]      # no English marker; math-verify reads 3
    assert none_found.correct and none_found.extracted


def test_grade_many_extracts_then_grades(inline):
    responses = [
        r"First guess \boxed{3}, but correcting: \boxed{\frac{1}{2}}",
        "So, the number of ways is 2^(n-1).",
        "Therefore, it is impossible.",
        "I could not solve this.",
    ]
    verdicts = inline.grade_many(responses, ["0.5", "2^{n-1}", "No", "7"])
    assert verdicts == [
        Verdict(r"\frac{1}{2}", True, "math_verify"),
        Verdict("2^(n-1)", True, "normalized"),
        Verdict("No", True, "exact"),
        Verdict(None, False, "no_answer"),
    ]


def test_length_and_type_errors(inline):
    with pytest.raises(ValueError, match="2 answers but 1 references"):
        inline.grade_answers(["1", "2"], ["1"])
    with pytest.raises(TypeError, match=r"answers\[1\] must be a string or None, got int"):
        inline.grade_answers(["1", 2], ["1", "2"])
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        Grader(timeout_s=0)


CALLS = []


def counting_checker(answer, variants, timeout, tail=None):
    CALLS.append((answer, variants))
    return True, "math_verify"


def test_cache_grades_duplicates_once():
    CALLS.clear()
    with Grader(workers=0, checker=counting_checker) as grader:
        first = grader.grade_answers(["x+1", "x+1", "y+2"], ["1+x", "1+x", "2+y"])
        again = grader.grade_answers(["x+1"], ["1+x"])
    assert CALLS == [("x+1", ("1+x",)), ("y+2", ("2+y",))]
    assert first == [Verdict("x+1", True, "math_verify")] * 2 + [Verdict("y+2", True, "math_verify")]
    assert again == [Verdict("x+1", True, "math_verify")]


def test_cache_keeps_the_most_recently_used_verdicts_up_to_its_limit(monkeypatch):
    monkeypatch.setattr(Grader, "CACHE_LIMIT", 3)
    CALLS.clear()
    pairs = [(f"x+{i}", f"{i}+x") for i in range(5)]
    with Grader(workers=0, checker=counting_checker) as grader:
        # one call larger than the limit still gets every verdict
        assert all(v.correct for v in grader.grade_answers(*map(list, zip(*pairs))))
        assert len(CALLS) == 5 and len(grader._cache) == 3
        grader.grade_answers(["x+2"], ["2+x"])           # a hit: now the most recent
        grader.grade_answers(["x+0"], ["0+x"])           # evicted: graded again, evicting x+3
        grader.grade_answers(["x+2", "x+4"], ["2+x", "4+x"])
    assert [a for a, _ in CALLS[5:]] == ["x+0"]
    assert grader.stats["cached"] == 3


def broken_checker(answer, variants, timeout, tail=None):
    raise RuntimeError("simulated grader bug")


def test_checker_errors_become_error_verdicts():
    with Grader(workers=0, checker=broken_checker) as grader:
        assert grader.grade_answers(["x+1"], ["1+x"]) == [Verdict("x+1", False, "error")]


def stalling_checker(answer, variants, timeout, tail=None):
    """Stands in for math-verify on a hanging input (Math-Verify issue #65)."""
    if answer == "1+x":  # hangs in Python code: the worker's own alarm interrupts it
        time.sleep(30)
    if answer == "3+x":  # hangs where no signal gets through: only the parent can kill it
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        time.sleep(30)
    return True, "math_verify"


def test_hanging_pairs_time_out_and_the_batch_carries_on():
    answers = ["1+x", "2+x", "3+x", "4+x"]
    start = time.monotonic()
    with Grader(timeout_s=0.5, workers=1, checker=stalling_checker) as grader:
        verdicts = grader.grade_answers(answers, ["x+1", "x+2", "x+3", "x+4"])
    assert verdicts == [
        Verdict("1+x", False, "timeout"),
        Verdict("2+x", True, "math_verify"),
        Verdict("3+x", False, "timeout"),  # the worker was killed and replaced
        Verdict("4+x", True, "math_verify"),
    ]
    # both were tried once more with twice the budget, and hung again
    assert (grader.stats["retried"], grader.stats["timeout_after_retry"]) == (2, 2)
    assert time.monotonic() - start < 30
    # no attempt outlived its hard deadline (1.5 x the retry's 1 s budget + 1 s) by more than a poll
    assert 900 <= grader.stats["slowest_pair_ms"] <= 2500 + 300


def slow_checker(answer, variants, timeout, tail=None):
    """Takes 0.8 s on "slow": past a 0.5 s deadline, within the 1.0 s of the retry."""
    if answer == "slow":
        time.sleep(0.8)
    return True, "math_verify"


def test_a_timed_out_pair_is_retried_once_with_a_longer_deadline():
    with Grader(timeout_s=0.5, workers=1, checker=slow_checker) as grader:
        verdicts = grader.grade_answers(["slow", "fast"], ["x", "y"])
    assert verdicts == [Verdict("slow", True, "math_verify"), Verdict("fast", True, "math_verify")]
    assert (grader.stats["retried"], grader.stats["timeout_after_retry"]) == (1, 0)


def test_retry_can_be_turned_off():
    with Grader(timeout_s=0.5, workers=1, checker=slow_checker, retry_timeouts=False) as grader:
        verdicts = grader.grade_answers(["slow"], ["x"])
    assert verdicts == [Verdict("slow", False, "timeout")]
    assert grader.stats["retried"] == 0
    assert 450 <= grader.stats["slowest_pair_ms"] <= 1750 + 300     # the soft deadline stopped it


def test_math_verify_in_worker_processes():
    with Grader(timeout_s=5.0, workers=2) as grader:
        verdicts = grader.grade_answers(["x+1", "2 * 2^m", "x+2", "17"], ["1+x", "2^(m+1)", "1+x", "17"])
    assert [(v.correct, v.method) for v in verdicts] == [
        (True, "math_verify"), (True, "math_verify"), (False, "mismatch"), (True, "exact")]


# ----------------------------------------------------------------------------- grade_file

def write_lines(path, lines):
    path.write_bytes(b"".join(line if isinstance(line, bytes) else line.encode() + b"\n" for line in lines))


def test_grade_file_round_trip(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out" / "graded.jsonl"
    rows = [
        {"id": 1, "response": r"so \boxed{252}", "reference": "C(10, 5), or equivalently 252"},
        {"id": 2, "response": "Thus, there are 12 ways.", "reference": 13},
        {"id": 3, "response": "no idea", "reference": "7", "extra": {"kept": True}},
        {"id": 4, "response": "The answer is $\\frac{1}{2}$.", "reference": ["$0.5$"]},
    ]
    write_lines(src, [json.dumps(r) for r in rows] + [""])  # a trailing blank line is fine
    out.parent.mkdir()
    summary = grade_file(src, out, workers=0)
    assert summary == {"n": 4, "correct": 2, "accuracy": 0.5,
                       "by_method": {"exact": 1, "unequal": 1, "no_answer": 1, "math_verify": 1}}
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert graded == [
        {**rows[0], "extracted_answer": "252", "correct": True, "grade_method": "exact"},
        {**rows[1], "extracted_answer": "12", "correct": False, "grade_method": "unequal"},
        {**rows[2], "extracted_answer": None, "correct": False, "grade_method": "no_answer"},
        {**rows[3], "extracted_answer": r"\frac{1}{2}", "correct": True, "grade_method": "math_verify"},
    ]
    assert sorted(p.name for p in out.parent.iterdir()) == ["graded.jsonl"]  # no temp file left


def test_grade_file_custom_fields(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(src, [json.dumps({"completion": "#### 18", "answer": "... #### 18"})])
    summary = grade_file(src, out, workers=0, response_field="completion", reference_field="answer")
    assert summary == {"n": 1, "correct": 1, "accuracy": 1.0, "by_method": {"exact": 1}}


GOOD = json.dumps({"response": "The answer is 1.", "reference": "1"})


@pytest.mark.parametrize(
    "lines, message",
    [
        ([GOOD, '{"response": "x", "reference": '], r"in\.jsonl, line 2: invalid JSON"),
        ([GOOD, json.dumps({"reference": "1"})], r"in\.jsonl, line 2: field 'response' is missing"),
        ([GOOD, GOOD, json.dumps({"response": 5, "reference": "1"})],
         r"in\.jsonl, line 3: field 'response' must be a string, got int"),
        ([json.dumps({"response": "x", "reference": None})],
         r"in\.jsonl, line 1: field 'reference' must be a string, a number or a list of strings, got NoneType"),
        ([json.dumps({"response": "x", "reference": True})], r"in\.jsonl, line 1: field 'reference' .* got bool"),
        ([GOOD, b'{"response": "caf\xe9", "reference": "1"}\n'], r"in\.jsonl, line 2: not valid UTF-8"),
        ([json.dumps(["response", "reference"])], r"in\.jsonl, line 1: expected a JSON object, got list"),
        ([], r"in\.jsonl: empty file"),
        (["", "   "], r"in\.jsonl: empty file"),
    ],
)
def test_grade_file_bad_input(tmp_path, lines, message):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(src, lines)
    out.write_text("previous results\n")
    with pytest.raises(GradingInputError, match=message):
        grade_file(src, out, workers=0)
    assert out.read_text() == "previous results\n"  # untouched, never half-written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_grade_file_missing_input(tmp_path):
    with pytest.raises(GradingInputError, match=r"nope\.jsonl: cannot read"):
        grade_file(tmp_path / "nope.jsonl", tmp_path / "out.jsonl", workers=0)
    assert not (tmp_path / "out.jsonl").exists()


def test_grade_file_refuses_outputs_that_would_lose_data(tmp_path):
    src = tmp_path / "in.jsonl"
    write_lines(src, [json.dumps({"response": "2", "reference": "2"})])
    before = src.read_bytes()
    for out, message in ((src, "is the input file"), (tmp_path, "is a folder"),
                         (tmp_path / "missing" / "out.jsonl", "does not exist")):
        with pytest.raises(GradingInputError, match=message):
            grade_file(src, out, workers=0)
    assert src.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
