"""Turning a prompt record into the text the model continues.

Two kinds of prompt exist (docs/design.md): ``messages`` (a conversation, rendered with the tokenizer's chat
template and the assistant turn opened) and ``prompt`` (raw text, continued as is: the sentiment task
continues the opening of a review). ``chat_template`` decides what a plain ``prompt`` string becomes.
"""

from __future__ import annotations

from typing import Any, Literal

ChatTemplateMode = Literal["auto", "always", "never"]
"""``auto``: messages use the chat template, plain strings are continued raw; ``always``: a plain string
becomes one user turn; ``never``: messages are an error (raw continuation only)."""


def render_prompt(record: dict[str, Any], tokenizer: Any, chat_template: ChatTemplateMode = "auto") -> str:
    """The text to feed the model for one prompt record (``prompt`` string or ``messages`` list)."""
    messages = record.get("messages")
    if messages is None:
        prompt = record["prompt"]
        if isinstance(prompt, list):  # preference-style records may carry the prompt as messages
            messages = prompt
        elif chat_template == "always":
            messages = [{"role": "user", "content": prompt}]
        else:
            return prompt
    if chat_template == "never":
        raise ValueError("chat_template=never, but the prompt is a list of messages")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "the prompt is a list of messages but the tokenizer has no chat template; "
            "give plain `prompt` strings or a model with a chat template"
        )
    # A conversation ending with a user turn gets the assistant header appended (add_generation_prompt).
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def render_chat(messages: list[dict[str, Any]], tokenizer: Any, add_generation_prompt: bool = False) -> str:
    """A conversation rendered with the tokenizer's chat template (as text, not token ids).

    ``add_generation_prompt=True`` opens an assistant turn after the last message (what the model then
    continues); ``False`` renders the conversation as it stands, e.g. to train on its assistant turns.
    Raises :class:`ValueError` when the tokenizer has no chat template.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "the data holds a list of messages but the tokenizer has no chat template; "
            "give plain `prompt`/`completion` strings or a model with a chat template"
        )
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
