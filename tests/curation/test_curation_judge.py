"""curate.correctness.judge: rule misses go to the LLM judge, with eval's cache, verdict parsing
and audit; off (null) by default."""
import pytest

from common.params import ParamsError
from curation.config import CorrectnessParams
from curation.runner import run_curation
from generation.engines import FakeEngine
from grading.grader import Grader
from grading.judge import JudgeGrader, VerdictCache
from tests.curation.test_runner import _frame


def _judge_says(message: str, _i: int) -> str:
    if "<candidate>\ntwo\n</candidate>" in message:
        return "Two is 2.\nVERDICT: CORRECT"
    if "<candidate>\nthree\n</candidate>" in message:
        return "I think so"                     # no verdict line: unreadable, counts as wrong
    return "VERDICT: INCORRECT"


def test_rule_misses_go_to_the_judge_and_verdicts_are_cached(tmp_path):
    frame = _frame([r"So the answer is $\boxed{2}$.", r"The answer is $\boxed{two}$.",
                    r"The answer is $\boxed{5}$.", r"The answer is $\boxed{three}$.", "no answer here"],
                   refs=["2", "2", "2", "3", "2"])
    engine = FakeEngine(respond=_judge_says)
    for run in range(2):
        cache = VerdictCache(tmp_path / "judge.sqlite")
        with Grader(workers=0) as grader:
            judge = JudgeGrader(grader, engine, "fake-judge", cache)
            res = run_curation(frame, row_checks=[], grader=grader, judge=judge)
        cache.close()
        kept = dict(zip(res.kept["trace_id"].to_list(), res.kept["grade_method"].to_list()))
        assert kept == {"trace_id0": "exact", "trace_id1": "judge"}
        rejected = {t: (m, r) for t, m, r in res.rejected.select("trace_id", "grade_method", "reasons").iter_rows()}
        assert rejected["trace_id2"] == ("judge", ["answer_mismatch"])
        assert rejected["trace_id3"] == ("judge_unreadable", ["answer_mismatch"])
        assert rejected["trace_id4"][1] == ["no_answer"]           # nothing extracted: never judged
        report = res.report["judge"]
        assert (report["judged"], report["accepted"]) == (3, 1)
        assert report["calls"] == (3 if run == 0 else 0) and report["cache_hits"] == (0 if run == 0 else 3)
        assert {a["kind"] for a in report["audit"]} == {"disagreement", "unreadable"}
        assert {a["trace_id"] for a in report["audit"]} == {"trace_id1", "trace_id3"}
    assert len(engine.calls) == 3                  # the second run asked nothing


def test_the_judge_is_off_by_default_and_its_kind_is_checked():
    assert CorrectnessParams().judge is None
    with pytest.raises(ParamsError, match=r"curate\.correctness\.judge\.kind: 'gpt' must be one of"):
        CorrectnessParams(judge={"kind": "gpt"})
