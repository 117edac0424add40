"""``eval.protocol: paper``: the evaluation of "Small Models Struggle to Learn from Strong Reasoners"
(Li et al. 2025), as its lm-evaluation-harness fork ran it, with mixdistill's grader scored beside it.

What the protocol changes (the recorded facts are :data:`grading.paper.PAPER_PROTOCOL`):

* **Prompt.** Maths benchmarks: the user turn is the paper's "Solve the following math problem.
  ... Problem: {problem}\\nAnswer:"; GSM8K (the fork's ``gsm8k_cot_zeroshot``): the question
  alone (the fork's ``doc_to_text`` is ``{{question}}``, not upstream lm-eval's "Q: ... A: Let's
  think step by step."). No system turn: the model's chat template supplies its default, as
  ``lm_eval --apply_chat_template`` did.
* **Decoding.** Greedy, 16,000 new tokens: the defaults of ``eval.sampling`` under this protocol
  (explicit keys win; evaluation/config.py). Stop strings: "Problem:" (GSM8K: "Q:" and the end-of-
  turn markers). The engines take no stop strings, so a response is cut at the first one after
  generation: for greedy decoding the same text the paper got (its token count, though, is the
  engine's, and ``stop_string`` records the cut; ``finish_reason`` becomes "stop").
* **Scoring.** Maths: :func:`grading.paper.paper_is_equiv` on the last ``\\boxed{}`` against the
  published reference (``reference_raw``: OlympiadBench ``final_answer[0]``, AMC's float, MATH's
  last box of the solution); no box: wrong and never judged; a boxed rule miss goes to the judge
  when ``eval.judge`` is set, asked the paper's True/False question (20 tokens, greedy) and read
  as the published script reads it: "True" in the output is correct, else "False" is wrong, else
  unreadable (wrong). Every flip, unreadable or ambiguous output is audited. GSM8K: lm-eval's
  flexible-extract (the last number) and exact match, never judged.

Every sample is also graded by mixdistill's own grader (rule + judge as usual). ``graded.jsonl``
holds the protocol's verdict in the usual fields and ours under ``mixdistill_*``; ``scores.json``
holds the protocol's metrics under the usual names and ours under ``mixdistill_<metric>``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from evaluation.metrics import summarize
from generation.engines import Engine, SamplingConfig
from grading.answers import normalize_answer
from grading.judge import FinalVerdict, VerdictCache, looks_like_injection
from grading.paper import PAPER_PROTOCOL, paper_is_equiv, paper_last_box, paper_normalise, paper_reference

REFERENCE_RAW = "reference_raw"       # evaluation/benchmarks.py REFERENCE_RAW (a test keeps them equal)
JUDGE_VERSION = "paper-judge-v1"      # part of the judge's cache key: never shares verdicts with ours
GRADED_FIELDS = ("extracted", "rule_correct", "correct", "method", "judge_output")
PREFIX = "mixdistill_"
_JUDGE = PAPER_PROTOCOL["judge"]
_GSM8K = PAPER_PROTOCOL["gsm8k"]
_FLEXIBLE = re.compile(_GSM8K["flexible_extract"]["regex"])


@dataclass(frozen=True)
class PaperTask:
    """How the paper prompts and stops one benchmark: ``boxed`` (maths) or ``gsm8k``."""
    kind: str
    prompt: str
    placeholder: str
    stop: tuple[str, ...]

    def messages(self, problem: str) -> list[dict]:
        # .replace, not .format: the prompt holds literal braces (\boxed{your_answer})
        return [{"role": "user", "content": self.prompt.replace(self.placeholder, problem)}]


BOXED_TASK = PaperTask("boxed", PAPER_PROTOCOL["prompt"], "{problem}", tuple(PAPER_PROTOCOL["decoding"]["until"]))
GSM8K_TASK = PaperTask("gsm8k", _GSM8K["prompt"], "{question}", tuple(_GSM8K["until"]))


def task_for(spec: dict) -> PaperTask:
    """The paper's task for a benchmark spec (``eval.benchmarks.<name>``)."""
    return GSM8K_TASK if spec.get("format") == "gsm8k" else BOXED_TASK


def fingerprint() -> dict:
    """What the protocol adds to the samples' fingerprint (another protocol: other samples)."""
    return {"protocol": "paper", "prompt": BOXED_TASK.prompt, "stop": list(BOXED_TASK.stop),
            "gsm8k_prompt": GSM8K_TASK.prompt, "gsm8k_stop": list(GSM8K_TASK.stop)}


def cut_at_stop(text: str, stop: tuple[str, ...]) -> tuple[str, str | None]:
    """``text`` up to its first stop string (excluded, as vLLM and lm-eval do), and that string."""
    hits = [(text.find(s), s) for s in stop if s and s in text]
    if not hits:
        return text, None
    at, which = min(hits)
    return text[:at], which


def raw_references(frame, spec: dict, bench: str) -> dict:
    """problem_id -> the reference as the paper's scorer reads the published row."""
    if spec.get("kind") == "champ_heldout":
        return dict(zip(frame["problem_id"], frame["reference_answer"]))
    if REFERENCE_RAW not in frame.columns:
        raise ValueError(f"benchmark '{bench}': its frame has no '{REFERENCE_RAW}' column (prepared by an "
                         "older problems stage); rerun the problems stage for eval.protocol paper")
    return {pid: json.loads(raw) for pid, raw in zip(frame["problem_id"], frame[REFERENCE_RAW])}


# ------------------------------------------------------------------------------ GSM8K

def gsm8k_flexible_extract(text: str) -> str | None:
    """lm-eval's ``flexible-extract``: the last match of its number pattern (None: "[invalid]")."""
    matches = _FLEXIBLE.findall(text)
    if not matches:
        return None
    groups = [g for g in matches[_GSM8K["flexible_extract"]["group_select"]] if g]
    return groups[0].strip() if groups else None


def gsm8k_exact_match(prediction: str | None, reference: str) -> bool:
    """lm-eval's ``exact_match`` with the task's ``regexes_to_ignore`` and ``ignore_case``."""
    pred, ref = "[invalid]" if prediction is None else prediction, str(reference)
    for pattern in _GSM8K["exact_match"]["regexes_to_ignore"]:
        pred, ref = re.sub(pattern, "", pred), re.sub(pattern, "", ref)
    return pred.lower() == ref.lower()


# ------------------------------------------------------------------------------ the judge

def parse_true_false(raw: str | None) -> bool | None:
    """The published reading: "True" anywhere is correct, else "False" anywhere is wrong, else None."""
    out = (raw or "").strip()
    if "True" in out:
        return True
    if "False" in out:
        return False
    return None


def judge_messages(problem: str, reference, answer: str) -> list[dict]:
    values = {"problem": problem, "answer": str(reference), "response_answer": answer}
    # one pass, so a placeholder-like text inside the problem is never substituted again
    user = re.sub(r"\{(problem|answer|response_answer)\}", lambda m: values[m.group(1)], _JUDGE["prompt"])
    return [{"role": "system", "content": _JUDGE["system"]}, {"role": "user", "content": user}]


JUDGE_SAMPLING = SamplingConfig(temperature=_JUDGE["sampling"]["temperature"], top_p=_JUDGE["sampling"]["top_p"],
                                max_tokens=_JUDGE["sampling"]["max_tokens"])


class PaperGrader:
    """The paper's verdicts: rule first, then (``judge`` given) the True/False judge on boxed misses.
    ``batch``: judge prompts per engine call (None: all at once, for vLLM); verdicts are cached per call."""

    def __init__(self, judge: Engine | None, judge_id: str, cache: VerdictCache, batch: int | None = None):
        self.judge, self.judge_id, self.cache, self.batch = judge, f"{judge_id}|{JUDGE_VERSION}", cache, batch
        self.judge_calls = 0

    def grade(self, rows: list[dict]) -> tuple[list[FinalVerdict], list[dict]]:
        """``rows``: ``task`` (a :class:`PaperTask` kind), ``problem``, ``response``, ``reference``
        (raw) and ``ids`` (for audits). Returns one verdict per row and the audit."""
        out: list[FinalVerdict | None] = [None] * len(rows)
        pending: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            if row["task"] == "gsm8k":
                got = gsm8k_flexible_extract(row["response"])
                ok = gsm8k_exact_match(got, row["reference"])
                out[i] = FinalVerdict(got, ok, ok, "flexible_extract")
                continue
            answer = paper_last_box(row["response"])
            if answer is None:
                out[i] = FinalVerdict(None, False, False, "no_answer")
            elif paper_is_equiv(row["response"], row["reference"]):
                out[i] = FinalVerdict(answer, True, True, "paper_rule")
            elif self.judge is None:
                out[i] = FinalVerdict(answer, False, False, "paper_rule_miss")
            else:
                key = VerdictCache.key(self.judge_id, row["problem"], str(paper_reference(row["reference"])), answer)
                pending.setdefault(key, []).append(i)
        raws = self._judge_all(pending, rows)
        audit = []
        for key, where in pending.items():
            raw = raws[key]
            verdict = parse_true_false(raw)
            for i in where:
                answer = paper_last_box(rows[i]["response"])
                out[i] = FinalVerdict(answer, False, bool(verdict), "paper_judge" if verdict is not None
                                      else "paper_judge_unreadable", verdict, raw)
                kinds = (["unreadable"] if verdict is None else ["disagreement"] if verdict else [])
                if "True" in (raw or "") and "False" in (raw or ""):
                    kinds.append("ambiguous")
                if looks_like_injection(answer):
                    kinds.append("injection_suspect")   # judged all the same: the paper did
                audit += [self._audit(f"paper_{kind}", rows[i], answer, raw) for kind in kinds]
        return out, audit

    def _judge_all(self, pending: dict[str, list[int]], rows: list[dict]) -> dict[str, str]:
        raws: dict[str, str] = {}
        for key in pending:
            cached = self.cache.get(key)
            if cached is not None:
                raws[key] = cached
        todo = [k for k in pending if k not in raws]
        step = self.batch or max(1, len(todo))
        for start in range(0, len(todo), step):
            keys = todo[start:start + step]
            firsts = [rows[pending[k][0]] for k in keys]       # rows sharing a key share the prompt
            convs = [judge_messages(r["problem"], paper_reference(r["reference"]), paper_last_box(r["response"]))
                     for r in firsts]
            fresh = [(k, o[0].text) for k, o in zip(keys, self.judge.generate(convs, JUDGE_SAMPLING))]
            self.cache.put_many(fresh)            # per call: a crash keeps what was already judged
            raws.update(fresh)
            self.judge_calls += len(keys)
        return raws

    def _audit(self, kind: str, row: dict, answer: str, raw: str | None) -> dict:
        problem = row["problem"] if len(row["problem"]) <= 500 else row["problem"][:500] + " [...truncated]"
        return {"kind": kind, **row["ids"], "problem": problem, "extracted_answer": answer, "reference": str(paper_reference(row["reference"])),
                "rule_correct": False, "judge_output": raw, "judge": self.judge_id}


# ------------------------------------------------------------------------------ side by side

def merge_graded(ours: list[dict], verdicts: list[FinalVerdict]) -> list[dict]:
    """Graded records with the protocol's verdict in the usual fields and ours under ``mixdistill_*``."""
    merged = []
    for rec, v in zip(ours, verdicts):
        kept = {k: val for k, val in rec.items() if k not in GRADED_FIELDS}
        merged.append({**kept, "extracted": v.extracted, "rule_correct": v.rule_correct, "correct": v.correct,
                       "method": v.method, "judge_output": v.judge_output,
                       **{PREFIX + k: rec[k] for k in GRADED_FIELDS}})
    return merged


def _grader_metric(key: str) -> bool:
    return key in ("accuracy", "accuracy_rule", "judge_flips", "extracted_rate") or key.startswith(("pass@", "maj@"))


def side_by_side_scores(graded: list[dict], ks: list[int]) -> dict:
    """Per benchmark: the protocol's metrics under the usual names, ``protocol``, ``stop_string_rate``
    and, for every metric that depends on the grader, ours as ``mixdistill_<metric>``."""
    paper = summarize(graded, ks, normalize=paper_normalise)
    ours = summarize([{**r, **{k: r[PREFIX + k] for k in GRADED_FIELDS}} for r in graded], ks,
                     normalize=normalize_answer)
    for bench, metrics in paper.items():
        rows = [r for r in graded if r["benchmark"] == bench]
        cut = sum(r.get("stop_string") is not None for r in rows)
        extra = {"protocol": "paper", "stop_string_rate": cut / len(rows)}
        extra.update({PREFIX + k: v for k, v in ours[bench].items() if _grader_metric(k)})
        metrics.update(extra)
    return paper
