"""The scoring rule of "Small Models Struggle to Learn from Strong Reasoners" (Li et al. 2025).

``mixdistill grade --protocol paper`` grades with this module alone: no math-verify, no judge.
It re-implements, in our own code, the rule the paper's scores come from, so that our numbers
can be set beside its tables. Sources read (github.com/Small-Model-Gap/Small-Model-Learnability-Gap):

* ``lm-evaluation-harness/math_metric_llm_eval_general.py``: the scoring script the README and
  ``test.sh`` run for every task but GSM8K. It takes the response's last box, compares it with the
  reference by string equality after the hendrycks MATH normalisation, and sends every miss that
  has a box to Qwen2.5-32B-Instruct. This module is that rule (:func:`paper_is_equiv`).
* ``lm-evaluation-harness/lm_eval/tasks/{AIME,AMC,Olympiad}/utils.py`` and ``.yaml``: the prompt
  and the harness's own ``exact_match``, whose ``is_equiv`` first strips leading zeros and a
  zero-only decimal tail (``harness=True``; AMC's reference passes through ``str()``).
* ``lm-evaluation-harness/lm_eval/tasks/hendrycks_math{,_500}/utils.py``: MATH references taken
  as the last box of the solution (hence: a reference holding a box is read as a solution).
* ``lm-evaluation-harness/lm_eval/tasks/gsm8k/gsm8k-cot-zeroshot.yaml``, ``math_metric_gsm8k.py``
  and ``test.sh``: GSM8K's regex scoring and the generation settings (in :data:`PAPER_PROTOCOL`).

Published behaviour kept on purpose, quirks included:

* Only the last ``\\boxed`` counts; ``\\fbox`` only when there is no ``\\boxed`` at all, even an
  earlier one. Braces nest. No box, or a box never closed: no answer (wrong, and never judged).
* If ``"\\boxed "`` (with a space) occurs anywhere, the answer is everything after its last
  occurrence up to the next ``$`` (or the end of the text): ``\\boxed 5.`` answers ``5.``, and a
  later ``\\boxed{6}`` is swallowed into that text rather than winning.
* ``\\boxed\\frac{1}{2}`` (no brace right after) is cut at the first closing brace and its first
  seven characters dropped, as the published slicing does.
* Where the published code would stop on a failed assertion (a ``\\fbox{`` inside a ``\\boxed``
  answer), the response counts as unanswered.
* Normalisation is textual: ``\\dfrac``/``\\tfrac`` -> ``\\frac``, ``\\left``/``\\right`` deleted
  (also inside ``\\rightarrow``), units only when written ``\\text{ unit}`` with a space (and
  then everything after is dropped too), ``\\%`` removed but a bare ``%`` kept, ``\\$`` removed but
  a bare ``$`` kept (OlympiadBench's ``$2n$`` never matches ``2n``), ``.5`` -> ``0.5`` only at the
  start or after a space or ``{`` (``-.5`` stays), a ``x =`` prefix only when at most two
  characters stand before the single ``=``, ``\\sqrt3`` -> ``\\sqrt{3}`` but ``\\sqrt 3`` ->
  ``\\sqrt{}3`` (the space is braced before spaces go), only the whole string ``0.5`` becomes
  ``\\frac{1}{2}`` (``0.50`` does not), ``a/b`` -> ``\\frac{a}{b}`` for integers only.
* When normalising either side fails (a second ``\\text{ ``, a trailing ``\\sqrt`` or ``\\frac``,
  one ``/`` between non-integers such as ``\\pi/2``), the two raw strings are compared instead.
* A reference that is not a string (AMC's ``27.0``) never equals a response in the final script.
"""
from __future__ import annotations

__all__ = ["PAPER_PROTOCOL", "PaperProtocol", "paper_last_box", "paper_normalise", "paper_is_equiv",
           "paper_reference"]

_PROMPT = ("Solve the following math problem. Present the final answer in the format: "
           "Final Answer: \\boxed{your_answer}.\nProblem: {problem}\nAnswer:")
_JUDGE_PROMPT = (
    "Given a math problem, its correct answer, and the model's generated answer, determine if the "
    "model's generated answer is correct. Respond with 'True' if the answer is correct and 'False' if "
    "it is incorrect. Directly provide your judgement 'True' or 'False' without any other description.\n"
    "Problem: {problem}\nCorrect Answer: {answer}\nModel's Generated Answer: {response_answer}\n"
    "Your judgement:")

# What the paper's evaluation ran, as read from the sources above (no code of ours runs it).
PAPER_PROTOCOL: dict = {
    # fill with .replace("{problem}", ...): the text holds literal braces; Olympiad uses "question"
    "prompt": _PROMPT,
    "chat_template": True,  # lm_eval --apply_chat_template
    "decoding": {"do_sample": False, "temperature": 0.0, "max_gen_toks": 16000, "max_model_len": 16000,
                 "until": ["Problem:"], "engine": "vllm", "dtype": "bfloat16"},
    "answer": "remove_boxed(last_boxed_only_string(response)); no box -> wrong, not judged",
    "rule": "hendrycks MATH strip_string on both sides, then string equality",
    "references": {"AIME": "answer", "AMC": "answer (a float: the final rule never matches it)",
                   "Olympiad": "final_answer[0]", "hendrycks_math_500": "answer",
                   "hendrycks_math": "last box of solution", "Numina": "last box of solution"},
    "judge": {"model": "Qwen/Qwen2.5-32B-Instruct", "when": "rule miss with a boxed answer",
              "prompt": _JUDGE_PROMPT,
              "system": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
              "sampling": {"max_tokens": 20, "temperature": 0.0, "top_p": 1.0, "top_k": 1},
              "dtype": "float16",
              "verdict": "'True' in output -> correct, else 'False' in output -> wrong, else none (wrong)"},
    "gsm8k": {"task": "gsm8k_cot_zeroshot", "prompt": "{question}", "num_fewshot": 0,
              "until": ["Q:", "</s>", "<|im_end|>", "<|eot_id|>", "<|start_header_id|>user<|end_header_id|>"],
              "metric": "exact_match,flexible-extract",
              "flexible_extract": {"regex": r"(-?[$0-9.,]{2,})|(-?[0-9]+)", "group_select": -1},
              "strict_match": {"regex": r"Final Answer: \\boxed\{(\-?[0-9\.\,]*[0-9]+)\}"},
              "exact_match": {"ignore_case": True, "ignore_punctuation": False,
                              "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}},
}
PaperProtocol = PAPER_PROTOCOL  # the name the brief and callers may use


class _Unscorable(Exception):
    """Where the published code stops on a failed assertion instead of returning a verdict."""


class _NormaliseFailed(Exception):
    """Where the published normalisation raises (its caller then compares the raw strings)."""


# ------------------------------------------------------------------------------ the last box

def _last_box_text(text: str) -> str | None:
    """The published ``last_boxed_only_string``: the whole last box, wrapper included."""
    start = text.rfind("\\boxed")
    if "\\boxed " in text:  # the space form wins, whatever else the text holds
        return "\\boxed " + text.split("\\boxed ")[-1].split("$")[0]
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[start:i + 1]
    return None


def _unwrap(box: str) -> str:
    """The published ``remove_boxed``: strip the wrapper by position."""
    if "\\fbox{" in box:
        if not box.startswith("\\fbox{") or not box.endswith("}"):
            raise _Unscorable(box)
        return box[len("\\fbox{"):-1]
    if "\\boxed " in box:
        if not box.startswith("\\boxed "):
            raise _Unscorable(box)
        return box[len("\\boxed "):]
    return box[len("\\boxed{"):-1]


def paper_last_box(text: str) -> str | None:
    """The answer the paper reads from ``text``: its last box's content (see the module doc),
    or None when there is none (also where the published code would fail an assertion)."""
    box = _last_box_text(text)
    if box is None:
        return None
    try:
        return _unwrap(box)
    except _Unscorable:
        return None


# ------------------------------------------------------------------------------ normalisation

_SIMPLE_EDITS = (("\n", ""), ("\\!", ""), ("\\\\", "\\"), ("tfrac", "frac"), ("dfrac", "frac"),
                 ("\\left", ""), ("\\right", ""), ("^{\\circ}", ""), ("^\\circ", ""), ("\\$", ""))


def _drop_units(s: str) -> str:
    pieces = s.split("\\text{ ")
    if len(pieces) > 2:
        raise _NormaliseFailed("more than one \\text{ ")
    return pieces[0]


def _brace_sqrt(s: str) -> str:
    head, *rest = s.split("\\sqrt")
    out = [head]
    for piece in rest:
        if not piece:
            raise _NormaliseFailed("\\sqrt with nothing after it")
        out.append("\\sqrt" + (piece if piece[0] == "{" else "{" + piece[0] + "}" + piece[1:]))
    return "".join(out)


def _brace_fracs(s: str) -> str:
    head, *rest = s.split("\\frac")
    out = [head]
    for piece in rest:
        if not piece:
            raise _NormaliseFailed("\\frac with nothing after it")
        if piece[0] == "{":
            out.append("\\frac" + piece)
            continue
        if len(piece) < 2:
            return s  # one character after \frac: the whole string is left as it was
        num, den, tail = piece[0], piece[1], piece[2:]
        out.append("\\frac{" + num + "}" + (den if den == "{" else "{" + den + "}") + tail)
    return "".join(out)


def _slash_to_frac(s: str) -> str:
    pieces = s.split("/")
    if len(pieces) != 2:
        return s
    try:
        num, den = int(pieces[0]), int(pieces[1])
    except ValueError:
        raise _NormaliseFailed("a/b with a non-integer side") from None
    if s != f"{num}/{den}":
        return s
    return "\\frac{" + str(num) + "}{" + str(den) + "}"


def _strip(s: str) -> str:
    """The published ``strip_string``; raises _NormaliseFailed where it raises."""
    for old, new in _SIMPLE_EDITS:
        s = s.replace(old, new)
    s = _drop_units(s)
    s = s.replace("\\%", "").replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    sides = s.split("=")
    if len(sides) == 2 and len(sides[0]) <= 2:
        s = sides[1]
    s = _brace_sqrt(s).replace(" ", "")
    s = _brace_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _slash_to_frac(s)


def paper_normalise(s: str) -> str:
    """``s`` in the paper's normal form; ``s`` itself where that normalisation fails (the
    comparison then falls back to the raw strings, see :func:`paper_is_equiv`)."""
    try:
        return _strip(s)
    except _NormaliseFailed:
        return s


def _trim_zeros(s: str) -> str:
    """The AIME/AMC/Olympiad harness pre-step: leading zeros off, then a decimal tail of zeros
    (or nothing: ``5.``) dropped with its point."""
    s = s.lstrip("0")
    if "." in s and s.split(".")[1].rstrip("0") == "":
        s = s.split(".")[0]
    return s


# ------------------------------------------------------------------------------ the verdict

def paper_reference(reference):
    """The reference the paper compares with: OlympiadBench's ``final_answer[0]`` for a list, the
    last box of a reference that holds one (a MATH/Numina solution; None if it does not close),
    the value itself otherwise."""
    if isinstance(reference, (list, tuple)):
        reference = reference[0] if reference else None
    if isinstance(reference, str) and ("\\boxed" in reference or "\\fbox" in reference):
        return paper_last_box(reference)
    return reference


def paper_is_equiv(response: str, reference, *, harness: bool = False) -> bool:
    """Whether the paper's rule counts ``response`` correct against ``reference``.

    Default: the final scoring script (``math_metric_llm_eval_general.py``), the rule half of the
    published scores. ``harness=True``: the AIME/AMC/Olympiad task ``is_equiv`` (lm-eval's own
    exact_match), which trims zeros first (``025`` = ``25``, ``27.0`` = ``27``; ``0`` becomes empty).
    """
    answer = paper_last_box(response)
    reference = paper_reference(reference)
    if answer is None or reference is None:
        return False
    if harness:
        reference = str(reference)
    elif not isinstance(reference, str):
        return False  # the published check compares the raw string with the number: never equal
    try:
        if harness:
            answer, reference = _trim_zeros(answer), _trim_zeros(reference)
        return _strip(answer) == _strip(reference)
    except _NormaliseFailed:
        return answer == reference
