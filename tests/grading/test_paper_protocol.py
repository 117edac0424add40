"""``--protocol paper`` (grading/paper.py) against an oracle of the published scoring functions.

The oracle below restates, helper by helper, the functions of
github.com/Small-Model-Gap/Small-Model-Learnability-Gap ``lm-evaluation-harness/
math_metric_llm_eval_general.py`` (``last_boxed_only_string``, ``remove_boxed``, ``strip_string``
and its ``fix_*`` helpers, ``is_equiv``) and the zero-trimming ``is_equiv`` of
``lm_eval/tasks/{AIME,AMC,Olympiad}/utils.py``, keeping their control flow (and so their
exceptions) step for step. It is deliberately independent of grading/paper.py, which is written
differently; every generated case must get the same verdict from both.
"""
from __future__ import annotations

import json
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest

from grading.files import grade_file
from grading.grader import GradingInputError
from grading.paper import PAPER_PROTOCOL, paper_is_equiv, paper_last_box, paper_normalise

ROOT = Path(__file__).resolve().parents[2]


# ============================================================================ the oracle

def pub_last_boxed_only_string(text):
    pos = text.rfind("\\boxed")
    if "\\boxed " in text:
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    if pos < 0:
        pos = text.rfind("\\fbox")
        if pos < 0:
            return None
    k, closing, open_count = pos, None, 0
    while k < len(text):
        if text[k] == "{":
            open_count += 1
        if text[k] == "}":
            open_count -= 1
            if open_count == 0:
                closing = k
                break
        k += 1
    return None if closing is None else text[pos:closing + 1]


def pub_remove_boxed(box):
    if "\\fbox{" in box:
        prefix = "\\fbox{"
        assert box[:len(prefix)] == prefix
        assert box[-1] == "}"
        return box[len(prefix):-1]
    if "\\boxed " in box:
        prefix = "\\boxed "
        assert box[:len(prefix)] == prefix
        return box[len(prefix):]
    prefix = "\\boxed{"
    return box[len(prefix):-1]


def pub_fix_fracs(text):
    chunks = text.split("\\frac")
    rebuilt = chunks[0]
    if len(chunks) > 1:
        for chunk in chunks[1:]:
            rebuilt += "\\frac"
            if chunk[0] == "{":  # IndexError on an empty chunk, as published
                rebuilt += chunk
            else:
                if len(chunk) < 2:
                    return text
                first, second = chunk[0], chunk[1]
                if second != "{":
                    rebuilt += "{" + first + "}{" + second + "}" + chunk[2:]
                else:
                    rebuilt += "{" + first + "}" + second + chunk[2:]
    return rebuilt


def pub_fix_a_slash_b(text):
    if len(text.split("/")) != 2:
        return text
    top, bottom = text.split("/")
    try:
        top, bottom = int(top), int(bottom)  # a ValueError escapes, as published
        assert text == "{}/{}".format(top, bottom)
        return "\\frac{" + str(top) + "}{" + str(bottom) + "}"
    except AssertionError:
        return text


def pub_remove_right_units(text):
    if "\\text{ " in text:
        pieces = text.split("\\text{ ")
        assert len(pieces) == 2
        return pieces[0]
    return text


def pub_fix_sqrt(text):
    if "\\sqrt" not in text:
        return text
    pieces = text.split("\\sqrt")
    result = pieces[0]
    for piece in pieces[1:]:
        if piece[0] != "{":  # IndexError on an empty piece, as published
            result += "\\sqrt{" + piece[0] + "}" + piece[1:]
        else:
            result += "\\sqrt" + piece
    return result


def pub_strip_string(text):
    text = text.replace("\n", "")
    text = text.replace("\\!", "")
    text = text.replace("\\\\", "\\")
    text = text.replace("tfrac", "frac")
    text = text.replace("dfrac", "frac")
    text = text.replace("\\left", "")
    text = text.replace("\\right", "")
    text = text.replace("^{\\circ}", "")
    text = text.replace("^\\circ", "")
    text = text.replace("\\$", "")
    text = pub_remove_right_units(text)
    text = text.replace("\\%", "")
    text = text.replace("\\%", "")  # the published source has this line twice
    text = text.replace(" .", " 0.")
    text = text.replace("{.", "{0.")
    if len(text) == 0:
        return text
    if text[0] == ".":
        text = "0" + text
    if len(text.split("=")) == 2 and len(text.split("=")[0]) <= 2:
        text = text.split("=")[1]
    text = pub_fix_sqrt(text)
    text = text.replace(" ", "")
    text = pub_fix_fracs(text)
    if text == "0.5":
        text = "\\frac{1}{2}"
    return pub_fix_a_slash_b(text)


def pub_is_equiv(a, b):
    """math_metric_llm_eval_general.py (and the MATH tasks' utils.py)."""
    if a is None and b is None:
        return True
    if a is None or b is None:
        return False
    try:
        return pub_strip_string(a) == pub_strip_string(b)
    except Exception:
        return a == b


def pub_is_equiv_task(a, b):
    """AIME/AMC/Olympiad utils.py: trims zeros first (the trimmed strings reach the fallback)."""
    if a is None and b is None:
        return True
    if a is None or b is None:
        return False
    try:
        a = a.lstrip("0")
        b = b.lstrip("0")
        if "." in a and a.split(".")[1].rstrip("0") == "":
            a = a.split(".")[0]
        if "." in b and b.split(".")[1].rstrip("0") == "":
            b = b.split(".")[0]
        return pub_strip_string(a) == pub_strip_string(b)
    except Exception:
        return a == b


def pub_answer(text):
    """resp_answer of the scoring script; None also where remove_boxed's assertion would stop it."""
    box = pub_last_boxed_only_string(text)
    if box is None:
        return None
    try:
        return pub_remove_boxed(box)
    except AssertionError:
        return None


def oracle(response, reference, harness=False):
    if isinstance(reference, list):  # OlympiadBench: final_answer[0]
        reference = reference[0]
    if isinstance(reference, str) and ("\\boxed" in reference or "\\fbox" in reference):
        reference = pub_answer(reference)  # a full solution (MATH, Numina): its last box
    answer = pub_answer(response)
    if answer is None:
        return False
    if harness:
        return pub_is_equiv_task(answer, None if reference is None else str(reference))
    return pub_is_equiv(answer, reference)


# ============================================================================ generated cases

ANSWERS = [
    "5", "05", "5.", "5.0", "0.5", ".5", "-.5", "-0.5", "0.50", "1/2", "\\frac12", "\\dfrac{1}{2}",
    "\\tfrac12", "\\frac{1}{2}", "\\frac{1}{2}.", "\\dfrac34", "3/4 ", "k = \\frac{3}{4}",
    "10\\text{ cm}", "10\\text{cm}", "10 \\text{ cm}^2", "10\\text{ m}\\text{ s}", "50\\%", "50%", "50",
    "x = 5", "x=5", "xy = 5", " x = 5", "\\left( 3, \\frac{\\pi}{2} \\right)", "(3,\\frac{\\pi}{2})",
    "\\sqrt3", "\\sqrt{3}", "\\sqrt 3", "2\\sqrt", "\\pi/2", "\\frac{\\pi}{2}", "a/b ", "90^\\circ",
    "90^{\\circ}", "90", "\\$18", "18", "$18$", "1,\\!000", "1,000", "", "0", "025", "25", "27.0",
    "27", "\\frac{1}{2}\\frac", "{.5}", "\\{1,2\\}", "x \\rightarrow 5", "5\n", "\\frac1{72}",
]
REFERENCES = [
    "5", "0.5", "\\frac{1}{2}", "\\frac{3}{4}", "10", "50", "50\\%", "(3,\\frac{\\pi}{2})",
    "\\sqrt{3}", "\\frac{\\pi}{2}", "\\pi/2", "90", "18", "1,000", "25", "025", "27", "0", "",
    "a/b", "{0.5}", "x=5", "\\frac{1}{72}", "-0.5",
    "so the answer is $\\boxed{5}$.", "first \\boxed{4}, finally \\boxed{\\dfrac{1}{2}}", "\\boxed{5",
    ["5"], ["$5$"], ["\\frac{1}{2}", "0.5"], 27.0, 5,
]
WRAPPERS = {
    "plain": "\\boxed{X}",
    "final_answer": "Final Answer: $\\boxed{X}$.",
    "fbox": "\\fbox{X}",
    "space_dollar": "so $\\boxed X$ is it",
    "space_to_end": "\\boxed X",
    "space_brace": "\\boxed {X}",
    "last_of_two": "first \\boxed{7}, no: \\boxed{X}",
    "boxed_before_fbox": "\\boxed{X} and \\fbox{7}",
    "fbox_before_boxed": "\\fbox{7} and \\boxed{X}",
    "space_then_brace": "\\boxed 7$ then \\boxed{X}",
    "fbox_inside": "\\boxed{\\fbox{X}}",
    "nested": "\\boxed{{X}}",
    "unclosed": "\\boxed{X",
    "no_box": "The answer is X.",
}


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
@pytest.mark.parametrize("harness", [False, True], ids=["final", "harness"])
def test_agrees_with_the_published_functions(wrapper, harness):
    cases = [(WRAPPERS[wrapper].replace("X", a), r) for a, r in product(ANSWERS, REFERENCES)]
    assert len(cases) == len(ANSWERS) * len(REFERENCES) > 1500
    wrong = [(resp, ref, exp) for resp, ref in cases
             if paper_is_equiv(resp, ref, harness=harness) != (exp := oracle(resp, ref, harness))]
    assert not wrong, f"{len(wrong)} disagreements, e.g. {wrong[:5]}"
    for resp, _ in cases[::len(REFERENCES)]:
        assert paper_last_box(resp) == pub_answer(resp)


def test_generated_cases_cover_both_verdicts_and_the_fallback():
    verdicts = [oracle(w.replace("X", a), r) for w, a, r in product(WRAPPERS.values(), ANSWERS, REFERENCES)]
    assert sum(verdicts) > 500 and verdicts.count(False) > 5000
    raises = 0
    for a in ANSWERS:
        try:
            pub_strip_string(a)
        except Exception:
            raises += 1
    assert raises >= 5  # the raw-string fallback is exercised


def test_normal_form_matches_strip_string_where_it_succeeds():
    for a in ANSWERS + [r for r in REFERENCES if isinstance(r, str)]:
        try:
            expected = pub_strip_string(a)
        except Exception:
            expected = a
        assert paper_normalise(a) == expected, a


# ============================================================================ known verdicts

@pytest.mark.parametrize(
    "response, reference, verdict",
    [
        (r"The answer is \boxed{\dfrac{1}{2}}", r"\frac{1}{2}", True),
        (r"\boxed{.5}", "0.5", True),  # ".5" -> "0.5" -> \frac{1}{2}
        (r"\boxed{1/2}", "0.5", True),
        (r"\boxed{-.5}", "-0.5", False),  # the leading-zero fix needs a start, space or "{"
        (r"\boxed{0.50}", r"\frac{1}{2}", False),  # only the exact string 0.5 is rewritten
        (r"\boxed{10\text{ cm}}", "10", True),
        (r"\boxed{10\text{cm}}", "10", False),  # units only with "\text{ " (a space)
        (r"\boxed{50\%}", "50", True),
        (r"\boxed{50%}", "50", False),  # a bare % stays
        (r"\boxed{x = 5}", "5", True),
        (r"\boxed{xy = 5}", "5", False),  # prefix longer than two characters
        (r"\boxed{\left( 3, \frac{\pi}{2} \right)}", r"(3,\frac{\pi}{2})", True),
        ("the answer is 5", "5", False),  # no box: wrong
        (r"$\boxed 5$.", "5", True),
        (r"\boxed 5.", "5", False),  # the space form runs to the next $ or the end
        (r"\boxed{3}, no wait: \boxed{5}", "5", True),  # the last box wins
        (r"\boxed 3$, no wait: \boxed{5}", "3", True),  # ... unless a space form is anywhere
        (r"\fbox{5}", "5", True),
        (r"\fbox{}", "5", False),
        (r"\boxed{5} and \fbox{6}", "5", True),  # \boxed beats a later \fbox
        (r"\boxed{\fbox{5}}", "5", False),  # the published remove_boxed would fail its assertion
        (r"\boxed{\frac{\pi}{2}}", r"\pi/2", False),  # \pi/2 fails int(): raw strings compared
        (r"\boxed{a/b }", "a/b", False),  # raw fallback keeps the space
        (r"\boxed{\sqrt3}", r"\sqrt{3}", True),
        (r"\boxed{\sqrt 3}", r"\sqrt{3}", False),  # becomes \sqrt{}3
        (r"\boxed{90^\circ}", "90", True),
        (r"\boxed{\$18}", "18", True),
        (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac1{\sqrt{2}}", True),  # nested braces
        (r"\boxed{025}", "25", False),
        (r"\boxed{27}", 27.0, False),  # AMC's float reference: never equal in the final script
        (r"\boxed{2n}", ["$2n$"], False),  # OlympiadBench final_answer[0]; a bare $ stays
        (r"\boxed{2n}", ["2n", "n2"], True),
        (r"\boxed{5}", r"We get $\boxed{5}$.", True),  # a solution as reference: its last box
    ],
)
def test_known_published_verdicts(response, reference, verdict):
    assert oracle(response, reference) is verdict
    assert paper_is_equiv(response, reference) is verdict


@pytest.mark.parametrize(
    "response, reference, verdict",
    [(r"\boxed{025}", "25", True), (r"\boxed{27}", 27.0, True), (r"\boxed{5.}", "5", True),
     (r"\boxed{}", "0", True), (r"\boxed{0.5}", r"\frac{1}{2}", True), (r"\boxed{27.5}", 27.0, False)],
)
def test_harness_rule_trims_zeros(response, reference, verdict):
    assert oracle(response, reference, harness=True) is verdict
    assert paper_is_equiv(response, reference, harness=True) is verdict


def test_last_box_forms():
    assert paper_last_box(r"\boxed{\frac{1}{\sqrt{2}}}") == r"\frac{1}{\sqrt{2}}"
    assert paper_last_box(r"\boxed 5 is the answer") == "5 is the answer"
    assert paper_last_box(r"so $\boxed 5$") == "5"
    assert paper_last_box(r"\boxed {5}") == "{5}"
    assert paper_last_box(r"\fbox{}") == ""
    assert paper_last_box(r"\boxed{5") is None
    assert paper_last_box("no box") is None
    assert paper_last_box(r"\boxed{\fbox{5}}") is None
    assert paper_normalise(r"\dfrac12") == r"\frac{1}{2}"
    assert paper_normalise(r"\sqrt 3") == r"\sqrt{}3"
    assert paper_normalise(r"k = \sqrt3") == r"\sqrt{3}"


def test_protocol_description():
    assert PAPER_PROTOCOL["prompt"] == (
        "Solve the following math problem. Present the final answer in the format: Final Answer: "
        "\\boxed{your_answer}.\nProblem: {problem}\nAnswer:")
    assert PAPER_PROTOCOL["decoding"]["max_gen_toks"] == 16000
    assert PAPER_PROTOCOL["decoding"]["until"] == ["Problem:"]
    assert PAPER_PROTOCOL["judge"]["model"] == "Qwen/Qwen2.5-32B-Instruct"
    assert PAPER_PROTOCOL["judge"]["sampling"]["max_tokens"] == 20
    assert PAPER_PROTOCOL["references"]["Olympiad"] == "final_answer[0]"


# ============================================================================ grade_file and the CLI

ROWS = [
    {"id": 1, "response": r"Final Answer: $\boxed{\dfrac{1}{2}}$", "reference": "0.5"},
    {"id": 2, "response": "It is 7.", "reference": "7"},
    {"id": 3, "response": r"\boxed{8}", "reference": "7"},
    {"id": 4, "response": r"\boxed{2n}", "reference": ["2n"]},
    {"id": 5, "response": r"\boxed{27}", "reference": 27.0},
    {"id": 6, "response": r"\boxed{\fbox{3}}", "reference": "3"},
]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_grade_file_paper_protocol(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, ROWS)
    summary = grade_file(src, out, protocol="paper")
    assert summary == {"n": 6, "correct": 2, "accuracy": 2 / 6, "by_method": {"paper_rule": 4, "no_answer": 2}}
    graded = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(g["extracted_answer"], g["correct"], g["grade_method"]) for g in graded] == [
        (r"\dfrac{1}{2}", True, "paper_rule"), (None, False, "no_answer"), ("8", False, "paper_rule"),
        ("2n", True, "paper_rule"), ("27", False, "paper_rule"), (None, False, "no_answer")]
    assert [{k: g[k] for k in ROWS[0]} for g in graded] == ROWS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_grade_file_paper_protocol_keeps_input_checks(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, [ROWS[0], {"response": 5, "reference": "5"}])
    with pytest.raises(GradingInputError, match=r"in\.jsonl, line 2: field 'response' must be a string"):
        grade_file(src, out, protocol="paper")
    with pytest.raises(GradingInputError, match=r"protocol must be one of mixdistill, paper, got 'lm_eval'"):
        grade_file(src, out, protocol="lm_eval")
    assert not out.exists()


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "grade", *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_cli_paper_protocol(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, ROWS)
    done = _cli("--protocol", "paper", src, out)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["by_method"] == {"paper_rule": 4, "no_answer": 2}
    assert [json.loads(line)["correct"] for line in out.read_text().splitlines()] == [
        True, False, False, True, False, False]


def test_cli_rejects_an_unknown_protocol(tmp_path):
    src, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    _write(src, ROWS)
    done = _cli("--protocol", "harness", src, out)
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: protocol must be one of")
    assert not out.exists()
