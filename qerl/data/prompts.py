"""Turning a question into the policy's chat-formatted prompt, with an optional system prompt."""
from __future__ import annotations

THINK_ANSWER = (
    "A conversation between User and Assistant. The User asks a question and the Assistant solves it. "
    "The Assistant first thinks through the reasoning step by step, then gives the final answer. "
    "The reasoning goes inside <think> </think> tags and the final answer inside <answer> </answer> tags, "
    "i.e. <think> reasoning here </think><answer> answer here </answer>."
)
BOXED = "Please reason step by step, and put your final answer within \\boxed{}."

SYSTEM_PROMPTS: dict[str, str] = {"think_answer": THINK_ANSWER, "boxed": BOXED}
"""Preset system prompts a recipe can name instead of spelling them out."""


def resolve_system_prompt(system_prompt: str | None) -> str | None:
    """A preset name ("think_answer", "boxed") becomes its text; anything else is used as given."""
    if system_prompt is None or not system_prompt.strip():
        return None
    return SYSTEM_PROMPTS.get(system_prompt.strip(), system_prompt)


def format_prompt(question: str, tokenizer=None, system_prompt: str | None = None) -> str:
    """`tokenizer.apply_chat_template(..., add_generation_prompt=True)`; plain text without a tokenizer.

    The plain-text fallback is `system prompt + blank line + question` (or just the question).
    """
    if tokenizer is None:
        return f"{system_prompt}\n\n{question}" if system_prompt else question
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": question})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def format_messages(messages: list[dict], tokenizer=None, system_prompt: str | None = None) -> str:
    """A chat (`[{"role": ..., "content": ...}, ...]`) through the chat template with the generation prompt.

    `system_prompt` goes first unless the chat opens with its own system message. Without a tokenizer the
    messages' contents are joined by blank lines.
    """
    chat = list(messages)
    if system_prompt and not (chat and chat[0].get("role") == "system"):
        chat.insert(0, {"role": "system", "content": system_prompt})
    if tokenizer is None:
        return "\n\n".join(str(m["content"]) for m in chat)
    return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
