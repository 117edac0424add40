"""The prompt and chat formatting every stage shares.

Curation measures the length of the training example, training builds it, evaluation feeds its
prompt to the model, and a mix exports it: all through these functions, so they agree to the
token. Changing the prompt here re-runs every stage that depends on ``common/`` (dvc.yaml).
"""
from __future__ import annotations

BOXED_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."


def build_prompt(problem: str) -> str:
    """The user turn for a problem; training and evaluation both use it, so they agree."""
    return f"{problem.strip()}\n\n{BOXED_INSTRUCTION}"


def build_messages(problem: str, response: str | None = None) -> list[dict]:
    """Chat messages for a problem (and the assistant's response when training). No system turn:
    the student's template supplies its own default, the same at training and evaluation."""
    messages = [{"role": "user", "content": build_prompt(problem)}]
    if response is not None:
        messages.append({"role": "assistant", "content": response})
    return messages


def prompt_text(tokenizer, problem: str) -> str:
    """The generation prompt as text (chat template, with the assistant header opened)."""
    return tokenizer.apply_chat_template(build_messages(problem), tokenize=False, add_generation_prompt=True)


def chat_length(tokenizer, prompt: str, response: str) -> int:
    """Tokens of one user/assistant exchange rendered by the tokenizer's chat template."""
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    ids = tokenizer.apply_chat_template(messages, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)
