"""Prompt templates of teacher generation: the paper's long and short CoT asks, or custom text."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from common.digests import dumps
from curation.errors import SourceError


@dataclass(frozen=True)
class Template:
    name: str
    user: str                     # contains {problem}; substituted literally (LaTeX braces are safe)
    system: str | None = None

    def messages(self, problem: str) -> list[dict]:
        user = {"role": "user", "content": self.user.replace("{problem}", problem)}
        return ([{"role": "system", "content": self.system}] if self.system else []) + [user]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(dumps({"system": self.system, "user": self.user}).encode("utf-8")).hexdigest()


# The paper's long CoT came from QwQ-32B-Preview and its short CoT from Qwen2.5-32B-Instruct; the
# style comes mostly from the teacher, the prompts only ask for it. The system line is QwQ's own
# ("think step-by-step"); both ask for \boxed{} so the Grader finds the answer.
TEMPLATES = {
    "long_cot": Template(
        "long_cot",
        "{problem}\n\nPlease reason step by step, exploring the problem thoroughly and checking your "
        "work before concluding, and put your final answer within \\boxed{}.",
        system="You are a helpful and harmless assistant. You should think step-by-step."),
    "short_cot": Template(
        "short_cot",
        "{problem}\n\nSolve the problem with a concise step-by-step solution, and put your final "
        "answer within \\boxed{}."),
}


def resolve_template(spec: str) -> Template:
    """A named template, or custom text containing ``{problem}`` (named "custom"; its sha256 tells
    custom texts apart)."""
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    if not isinstance(spec, str) or "{problem}" not in spec:
        raise SourceError(f"template: {spec!r} must be one of {', '.join(TEMPLATES)} or a text with {{problem}}")
    return Template("custom", spec)
