"""Final-answer extraction, shared by curation, evaluation and `mixdistill grade`.

* `extract_answer` finds the final answer in a model response: the last ``\\boxed{}``, else an
  explicit marker ("the answer is", "Final Answer:", "#### 18"), else a concluding sentence
  ("Therefore, there are 239 strings ..."), which is how CHAMP-style teachers end their solutions.
* `last_boxed` is the content of the last ``\\boxed{}`` (benchmark loaders take MATH references
  from it too).

References and normalisation are in :mod:`grading.answers`.
"""

from __future__ import annotations

import re

from grading.boxes import final_boxes, last_boxed

__all__ = ["extract_answer", "find_answer", "last_boxed"]

# ----------------------------------------------------------------------------- shared patterns

# $$..$$ and \[..\] may span lines; inline $..$ may not (a lone "$18" is money, not maths)
_MATH_SPAN_RE = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]|\\\((.+?)\\\)|\$([^$\n]+?)\$", re.S)
_HOLE_RE = re.compile(r"\x00(\d+)\x00")
# Words that are maths, not English, inside an otherwise plain-text sentence.
_MATH_WORDS = {"sqrt", "choose", "mod", "infinity", "..."}
# Words that may sit between a copula and the answer ("is given by the expression n(n-3)/2").
_FILLER = {"given", "by", "the", "expression", "formula", "equal", "to", "exactly", "simply",
           "just", "only", "approximately", "about", "then", "that", "now", "therefore", "thus",
           "precisely", "indeed", "actually", "a", "total", "of", "value", "number", "result",
           "answer", "final", "still", "also", "always", "be", "us", "at", "most", "least", ":"}
_CONNECTORS = {"and", "or", ",", "&"}
_COPULA_RE = re.compile(r"\b(?:is|are|was|were|equals?|be|becomes|yields|gives|has|have|conclude that|"
                        r"converges to|tends to|approaches|"
                        r"we (?:get|have|find|obtain)|period of|simplif(?:y|ies|ied) to|reduces to)\b|≈",
                        re.I)
_REF_COPULA_RE = re.compile(r"\b(?:is|are|equals?|be|of)\b", re.I)  # references also say "period of 8"
_COPULA_WORDS = {"is", "are", "was", "were", "equals", "must", "can", "will"}
_COUNT_RE = re.compile(r"\b(?:at least|at most|exactly|only)\s+(\d+)\b(?!\s*[-+*/^=<>)])", re.I)
_CONCLUDE_RE = re.compile(
    r"^(?:so|thus|therefore|hence|consequently|finally|in conclusion|in summary|in total|overall|"
    r"as a result|altogether|this means|which means)\b|\b(?:therefore|thus|hence|we conclude|"
    r"the (?:final )?answer)\b", re.I)
_LEAD_CONNECTIVE_RE = re.compile(
    r"^(?:(?:so|thus|therefore|hence|consequently|finally|in conclusion|in summary|overall|"
    r"as a result|altogether|in total|in short)\b\s*,?\s*)+", re.I)
_NEGATION_RE = re.compile(r"\b(?:no|not|none|cannot|can't|impossible|never|doesn't|isn't|aren't)\b", re.I)
# Statements of non-existence answer "No" wherever they stand; at the start they beat any number.
_NONE_EXIST_RE = re.compile(r"\bthere (?:is|are|exists?) no\b|\b(?:has|have) no\b|\bdoes not exist\b|\bimpossible\b",
                            re.I)
_MAIN_NEGATION_RE = re.compile(r"(?:it is|it's) (?:not possible|impossible)\b|there (?:is|are|exists?) no\b|"
                               r"there (?:does|do) not exist\b|no such\b", re.I)
_YES_NO_RE = re.compile(r"^\W*(yes|no)\b(?!\s+(?:more|less|longer)\b)", re.I)
_YES_NO_SENTENCE_RE = re.compile(r"^\W*(yes|no)\s*(?:[,.;:!]|$)", re.I)  # not "No idea how ..."
_INFINITE_RE = re.compile(r"\binfinitely many\b", re.I)
_META_RE = re.compile(r"^(?:this is the (?:final )?answer|i hope|let me know|note\b)", re.I)
_NUMBER_WORDS = {"zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


def _protect_math(text: str) -> tuple[str, list[str]]:
    """Replace $...$-style spans by \\x00k\\x00 holes so sentence splitting cannot cut them."""
    spans: list[str] = []

    def hole(m: re.Match) -> str:
        spans.append(next(g for g in m.groups() if g is not None).strip())
        return f"\x00{len(spans) - 1}\x00"

    return _MATH_SPAN_RE.sub(hole, text), spans


def _restore(text: str, spans: list[str]) -> str:
    return _HOLE_RE.sub(lambda m: spans[int(m.group(1))], text)


# ----------------------------------------------------------------------------- boxed & markers

# "Final Answer: X", "**Answer:** X" and "#### X" head a line that is the answer (strong); "the
# answer is X" sits in prose, where only a maths run or yes/no after it counts.
_MARKER_RE = re.compile(r"(?P<strong>final answer(?:\*\*|__)?\s*:|answer(?:\*\*|__)?\s*:|####)|"
                        r"(?:the )?final answer is\b|the answer is\b", re.I)


def _marker_answer(text: str) -> str | None:
    for m in reversed(list(_MARKER_RE.finditer(text))):
        rest = text[m.end():].lstrip(" *_:")
        lines = [ln for ln in rest.splitlines() if ln.strip()]
        if lines:
            return _clause_answer(lines[0], strong=m.group("strong") is not None)
    return None


# ----------------------------------------------------------------------------- sentence heuristics

_OPERATOR_END = tuple("+-*/^=(<>≤≥±−")


def _is_math_token(tok: str, after_operator: bool = False) -> bool:
    """Whether a whitespace token is maths; `after_operator` admits "xy" in "z^2 - xy"."""
    if "\x00" in tok:
        return True
    if tok.strip(",;:") in {"...", "…", "\\ldots", "\\cdots"}:
        return True
    if tok.startswith(("\\text", "\\mbox", "\\quad", "\\qquad")):
        return False  # "n=6 \text{ is the answer}": prose inside maths ends the run
    core = tok.strip(".,;:?\"'")
    if not core or core == "—":
        return False
    if core in {"-", "−"}:
        return False  # a bare minus only counts between maths tokens (see _math_run)
    if re.fullmatch(r"\d+(?:st|nd|rd|th)", core):  # ordinals read as words
        return False
    bare = core.strip("()[]{}")
    if bare.lower() in _MATH_WORDS:
        return True
    if re.fullmatch(r"(?:[A-Za-z]\.){2,}|[A-Za-z]{2,}(?:[-'][A-Za-z]+)*", bare):  # English, "i.e."
        return after_operator is True and len(bare) <= 3 and bare.lower() not in {"and", "or", "the"}
    if re.fullmatch(r"[A-Za-z]", bare):
        return bare not in {"a", "A", "I"} or core != bare or after_operator is True
    return bool(re.search(r"[\d^*/=+<>()\[\]{}|√π∞±≤≥×·_\\!−-]", core))


def _math_run(tokens: list[str], start: int) -> tuple[list[str], int]:
    """Longest run of maths tokens from `start` ("and"/"or" join list items) and tokens consumed."""
    run: list[str] = []
    i = start
    while i < len(tokens):
        tok = tokens[i]
        after_op = bool(run) and run[-1].rstrip(".,;:").endswith(_OPERATOR_END)
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if _is_math_token(tok, after_op) or (re.fullmatch(r"[aAI]", tok) and nxt.startswith("=")):
            run.append(tok)  # ("I = n(n-3)/2": a lone "I" or "a" is a variable when assigned)
        elif (run and nxt and (tok.lower() in _CONNECTORS or tok in {"-", "−"})
              and _is_math_token(nxt, tok in {"-", "−"})):
            run.append(tok)  # "0 and 1", "x^2 - 1"
        else:
            break
        i += 1
        if tok.endswith((".", ";", "?")) and not tok.endswith("..."):
            break  # a sentence-final token closes the run
    consumed = i - start
    # keep the longest bracket-balanced prefix: "99 (100 - 1, because ..." -> "99"
    depth, balanced_len = 0, 0
    for k, tok in enumerate(run):
        depth += sum(tok.count(c) for c in "([{") - sum(tok.count(c) for c in ")]}")
        if depth < 0:
            break
        if depth == 0:
            balanced_len = k + 1
    if balanced_len:  # no balanced prefix at all: a typo like "((n(n+1)/2)^2", keep it whole
        run = run[:balanced_len]
    while run and run[-1].lower().strip(",") in _CONNECTORS | {"-", "−"}:
        run.pop()
    return run, consumed


def _split_top(expr: str, sep: str) -> list[str]:
    """Split on `sep` outside brackets, ignoring <=, >=, != and ==."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(expr):
        depth += (ch in "([{") - (ch in ")]}")
        if ch == sep and depth == 0 and not (sep == "=" and (expr[i - 1:i] in ("<", ">", "!", "=")
                                                             or expr[i + 1:i + 2] == "=")):
            parts.append(expr[start:i])
            start = i + 1
    return parts + [expr[start:]]


_VAR_RE = r"[A-Za-z](?:_\{?\w+\}?)?"
_ASSIGN_LHS_RE = re.compile(rf"\s*(?:{_VAR_RE}|\(\s*{_VAR_RE}(?:\s*,\s*{_VAR_RE})+\s*\)|[A-Za-z]\w*\([^()]*\))\s*")


def _tidy_equation(item: str) -> str:
    parts = _split_top(item, "=")
    if len(parts) > 1:
        first = _split_top(parts[0], ",")[0]
        keep_assignment = len(parts) == 2 and _ASSIGN_LHS_RE.fullmatch(parts[0]) is not None
        list_of_assignments = _ASSIGN_LHS_RE.fullmatch(first) is not None and "," in parts[1]
        if not (keep_assignment or list_of_assignments):
            return parts[-1].strip()  # "a + b = 230 + 311 = 771" -> "771"
    return item.strip()


def _tidy_run(run: list[str], spans: list[str]) -> str | None:
    text = " ".join(run).strip()
    if not text.endswith("..."):
        text = re.sub(r"[.,;:?]+$", "", text).strip()
    text = re.sub(r"\s*\(?\s*\\?(?:p?mod|bmod)\b\s*\{?\w+\}?\s*\)?$", "", text)  # "2 (mod 7)" -> 2
    text = _restore(text, spans)
    # display-environment debris: "9 \end{aligned}", "x=1 \quad", alignment "&", "\\"
    text = re.sub(r"\\(?:begin|end)\{\w+\*?\}|\\tag\{[^{}]*\}|\\q?quad\b|\\\\|&", " ", text).strip()
    text = re.sub(r"[.,;:]+$", "", text).strip()
    text = re.sub(r"^[^=]*?(?:≡|\\equiv\b)\s*", "", text).replace("≈", "=")  # "n \equiv 0 (mod 40)" is 0
    # "x = a + b and x = a - b": tidy each listed item on its own
    items = re.split(r"\s+(?:and|or)\s+", text)
    text = " and ".join(_tidy_equation(item) for item in items if item.strip())
    while text.startswith("(") and text.count("(") > text.count(")"):
        text = text[1:]  # a typo like "((n(n+1)/2)^2": drop the unmatched opening bracket
    return re.sub(r"^\$(?=\d)", "", text.strip()) or None  # "$18" (money) is 18


def _clause_answer(clause: str, strong: bool = False) -> str | None:
    """The answer at the start of `clause` (what follows a marker or a copula)."""
    clause, spans = _protect_math(clause)
    m = _YES_NO_RE.match(clause)
    if m:
        return m.group(1).capitalize()
    tokens = clause.split()
    i = 0
    while i < len(tokens) and tokens[i].lower().strip(",:") in _FILLER:
        i += 1
    run, _ = _math_run(tokens, i)
    if run and i + len(run) < len(tokens) and tokens[i + len(run)].lower() in _COPULA_WORDS:
        return None  # "the answer is that w_200 is ...": the run is a subject, not the answer
    if run:
        return _tidy_run(run, spans)
    if strong and (found := _sentence_answer(_restore(clause, spans), final=True)):
        return found  # "Final Answer: The smallest value of s is 1."
    if strong:  # "Final Answer: all real numbers" - keep a short textual answer
        text = _restore(re.split(r"(?<=[a-z])\.\s|\.$", clause.strip())[0], spans).strip(" .*")
        return text if 0 < len(text) <= 60 else None
    return None


def _sentence_answer(sentence: str, reference_mode: bool = False, final: bool = False) -> str | None:
    """Answer stated by one sentence: a yes/no, "there are N ...", "X is <expr>", or a negation.

    `final` marks the last sentence of a response, which may state a result without "so"/"thus".
    """
    decisive = reference_mode or final or bool(_CONCLUDE_RE.search(sentence))
    # A list bullet is a marker followed by a space; "-5" keeps its sign.
    body = _LEAD_CONNECTIVE_RE.sub("", _BULLET_RE.sub("", sentence.strip()).replace("**", ""))
    body = re.sub(r"\bnegative infinity\b", "-infinity", body, flags=re.I)
    body = re.sub(r"\b(at least|at most|exactly|only)\s+(\w+)\b",
                  lambda m: f"{m.group(1)} {_NUMBER_WORDS.get(m.group(2).lower(), m.group(2))}", body, flags=re.I)
    m = (_YES_NO_RE if reference_mode else _YES_NO_SENTENCE_RE).match(body)
    if m:
        return m.group(1).capitalize()
    if _INFINITE_RE.search(body):
        return "infinitely many"
    if decisive and _MAIN_NEGATION_RE.match(body):
        return "No"  # "it is not possible for ... to have two roots": the main clause decides
    protected, spans = _protect_math(body)
    tokens = protected.split()
    copula = _REF_COPULA_RE if reference_mode else _COPULA_RE
    positions = [len(protected[:m.end()].split()) for m in copula.finditer(protected)]
    negated = False
    for pos in reversed(positions):
        j = pos
        while j < len(tokens) and tokens[j].lower().strip(",:") in _FILLER:
            j += 1
        word = tokens[j].lower().strip(".,;:") if j < len(tokens) else ""
        if word in {"no", "not"}:
            negated = True  # "there are no solutions", "is not prime": a negative answer
            continue
        if word in _NUMBER_WORDS and not (j + 1 < len(tokens) and tokens[j + 1].lower() == "of"):
            return _NUMBER_WORDS[word]  # "is zero."
        run, _ = _math_run(tokens, j)
        if run and not (j + len(run) < len(tokens) and tokens[j + len(run)].lower() in _COPULA_WORDS):
            return _tidy_run(run, spans)
    count = _COUNT_RE.search(body)
    if count and (reference_mode or re.match(r"(?:at least|at most|exactly|only)\b", body, re.I)):
        return count.group(1)  # "(So,) at most two of them can be true" -> 2; mid-sentence it echoes the question
    if (negated and decisive) or _NONE_EXIST_RE.search(body) or (
            _NEGATION_RE.search(body) and (reference_mode or _CONCLUDE_RE.search(sentence))):
        return "No"
    lead, _ = _math_run(tokens, 0)
    if lead and decisive and len(lead) < len(tokens) and not reference_mode:
        return _tidy_run(lead, spans)  # "Thus, 0 is the only possible value." / "50 questions suffice."
    if not positions and not reference_mode:  # "So, F(11) = 89." - take the last maths run
        k, last = 0, None
        while k < len(tokens):
            run, consumed = _math_run(tokens, k) if _is_math_token(tokens[k]) else ([], 0)
            if any(re.search(r"[\d=\x00]", t) for t in run):
                last = run
            k += max(consumed, 1)
        if last:
            return _tidy_run(last, spans)
    return None


def _sentences(text: str) -> list[str]:
    protected, spans = _protect_math(text)
    out: list[str] = []
    for line in protected.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s+", "", line).strip()
        if line:
            out.extend(_restore(s, spans) for s in re.split(r"(?<=[.?!])\s+(?=[A-Z\"'(])", line) if s.strip())
    return out


def _is_display(line: str) -> bool:
    """A line of maths with at most a label ("Total = C(n, m) * 2^n"), not prose."""
    return not re.search(r"[a-z]{4,}", re.sub(r"\\[A-Za-z]+", "", line))


def _concluding_answer(text: str, max_back: int = 6) -> str | None:
    """Walk back over the last sentences; concluding ones ("So, ...", "Therefore ...") and the
    final one may state the answer. A trailing "This is the expression for ..." points back, so
    the sentence or display line before it counts as final too."""
    content = [s for s in _sentences(text) if not _META_RE.match(s.strip())]
    final = True
    for back, sentence in enumerate(reversed(content[-max_back:])):
        concluding = bool(_CONCLUDE_RE.search(sentence))
        if sentence.rstrip().endswith(":") and back > 0:
            nxt = content[len(content) - back]  # a display line after "... is:"
            if (concluding or final) and _is_display(nxt):
                found = _sentence_answer(nxt, final=True)
                if found:
                    return found
        if concluding or final:
            found = _sentence_answer(sentence, final=final)
            if found:
                return found
        final = final and bool(re.match(r"(?:this|these|that|which)\b", sentence.strip(), re.I))
    return None


_BULLET_RE = re.compile(r"^(?:[-*•]\s+)+")
# A whole response that is one short expression ("-5", "\\mathrm{E}", "f'", "$x^2+1$") is its answer.
_WRAP_RE = re.compile(r"^\s*(?:\$\$(.+)\$\$|\$(.+)\$|\\\((.+)\\\)|\\\[(.+)\\\])\s*\.?\s*$", re.S)
_LATEX_WORD_RE = re.compile(r"\\(?:begin|end)\s*\{\w+\*?\}|\\[A-Za-z]+|\\text\w*\s*\{[^{}]*\}|\\math\w+\s*\{[^{}]*\}")
_PLAIN_MATH_WORDS = re.compile(r"\b(?:sqrt|sin|cos|tan|sec|csc|cot|log|ln|exp|pi|inf|infinity|and|or)\b", re.I)


def _bare_answer(text: str) -> str | None:
    s = text.strip()
    if not s or len(s) > 120 or "\n" in s.strip():
        return None
    m = _WRAP_RE.match(s)
    inner = next((g for g in m.groups() if g is not None), s).strip() if m else s.rstrip(".").strip()
    if "$" in inner or not inner or re.search(r"\\(?:boxed|fbox)\b", inner):
        return None                      # prose with maths in it, or an empty box: not one expression
    words = _PLAIN_MATH_WORDS.sub("", _LATEX_WORD_RE.sub("", inner))
    if re.search(r"[^\W\d_]{3,}", words) or re.search(r"[.!?]\s+\S", inner):
        return None                      # English words or several sentences: leave it to the heuristics
    return inner


def extract_answer(text: str) -> str | None:
    """The final answer of a response, or None when nothing answer-like is found (see
    :func:`find_answer`, which also says how it was found)."""
    return find_answer(text)[0]


def find_answer(text: str) -> tuple[str | None, str | None]:
    """``(answer, how)``: how is "boxed", "marker", "bare" or "sentence" (None when no answer).

    Priority: the ``\\boxed{}``/``\\fbox{}`` answer (the last one, or all distinct ones of the last
    paragraph joined as a list); then the last explicit marker ("the final answer is", "Final
    Answer:", "**Answer:**", "#### 18"); then a response that is one short expression; then the
    concluding sentence near the end.
    """
    if not isinstance(text, str) or not text.strip():
        return None, None
    text = text.replace("`", "")  # markdown code spans: "Final Answer: `x = 3`"
    boxed = last_boxed(text)
    if boxed:
        boxes = list(dict.fromkeys(final_boxes(text)))
        return (", ".join(boxes) if len(boxes) > 1 and boxes[-1] == boxed else boxed), "boxed"
    for how, find in (("marker", _marker_answer), ("bare", _bare_answer), ("sentence", _concluding_answer)):
        found = find(text)
        if found:
            return found, how
    return None, None


# ----------------------------------------------------------------------------- references

_ALT_SPLIT_RE = re.compile(
    r",?\s+or\s+(?=(?:equivalently|an equivalent form(?: such as)?|approximately|about|roughly|"
    r"in other words)\b)", re.I)
