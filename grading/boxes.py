"""``\\boxed{}`` answers: the last box, and the run of boxes that together state one answer."""
from __future__ import annotations

import re


def last_boxed(text: str, first: bool = False):
    """Content of the last \\boxed{...} / \\fbox{...} (nested braces) or "\\boxed 5".

    With ``first``, the first one instead, as ``(content, start, end)`` offsets (or None)."""
    matches = list(re.finditer(r"\\(?:boxed|fbox)\b\s*", text))
    for m in (matches if first else reversed(matches)):
        inner, depth, end = None, 0, m.end()
        if text[m.end():m.end() + 1] == "{":
            for i in range(m.end(), len(text)):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    inner, end = text[m.end() + 1:i], i + 1
                    break
        else:  # "\boxed 5": the argument is the next token
            inner = re.match(r"[^\s$]*", text[m.end():]).group(0)
            end = m.end() + len(inner)
        if inner and inner.strip():
            return (inner.strip(), m.start(), end) if first else inner.strip()
    return None


# What may stand between boxes that together state one answer: "$\\boxed{2}$ and $\\boxed{3}$".
_BOX_JOINER_RE = re.compile(r"[\s$,;]*(?:(?:and|or|&|\\quad|\\qquad|\\text\s*\{\s*(?:and|or)?\s*\})[\s$,;]*)*")


def final_boxes(text: str) -> list[str]:
    """The run of ``\\boxed{}`` answers that ends with the last one, when only list joiners stand
    between them (a set or list of answers); a box followed by prose and another box is a revision,
    and only the last counts."""
    spans, start = [], 0
    while (found := last_boxed(text[start:], first=True)) is not None:
        inner, begin, end = found
        spans.append((inner, start + begin, start + end))
        start += end
    run = spans[-1:]
    for prev in reversed(spans[:-1]):
        if not _BOX_JOINER_RE.fullmatch(text[prev[2]:run[0][1]]):
            break
        run.insert(0, prev)
    return [inner for inner, _, _ in run]
