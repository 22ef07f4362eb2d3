"""Turning validated records into token ids: prompts, SFT examples with loss masks, preference triples.

How text becomes tokens (the same rules everywhere, so training sees what generation sees):

* A **prompt** is rendered by :func:`rlxf.data.chat.render_prompt` (messages through the chat template
  with the assistant turn opened; a plain string as is, or as one user turn with ``chat_template="always"``)
  and encoded without the tokenizer's automatic special tokens. If the tokenizer adds a BOS token by
  default (Llama-style) and the text does not already start with it, the BOS id is put in front.
* A **string completion** is encoded on its own (without special tokens) and ends with the EOS id
  (appended unless the text already ends with it). Prompt and completion are encoded separately and
  concatenated, so the prompt's tokens are exactly those generation starts from.
* A **message-list completion** (``prompt`` is a conversation too) is the text the chat template adds for
  it: ``render(prompt + completion) - render(prompt, generation prompt)``. It ends at its last EOS id (the
  template's end-of-turn, when that is the EOS; the template's whitespace after it is dropped), or gets one
  appended when the template writes none.
* An SFT **conversation** (``messages``) is cut into segments by rendering growing prefixes: for each
  assistant turn *k*, ``render(messages[:k], generation prompt)`` ends where the turn's text starts and
  ``render(messages[:k+1])`` where it ends. Only assistant turns are trained on (labels), up to and
  including their EOS; everything else is masked with -100. This assumes the template renders each prefix
  of the conversation as a prefix of the whole (true of ChatML, Llama, Gemma, SmolLM2, ... templates; not
  of templates that rewrite earlier turns, such as ones that drop past reasoning): a template that breaks
  it is reported as a :class:`DataError` rather than producing a wrong mask.

Truncation rules are in the docstrings of :func:`tokenize_sft` and :func:`tokenize_preference`;
:func:`check_prompt_lengths` checks a whole prompts file against a token budget before any work.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Literal

from rlxf.data.chat import ChatTemplateMode, render_chat, render_prompt
from rlxf.data.dataset import Dataset, format_numbers
from rlxf.data.errors import DataError

Truncation = Literal["keep_start", "keep_end", "error"]
"""Which part of a too-long sequence survives: the start, the end, or none (a :class:`DataError`)."""

IGNORE_INDEX = -100
"""Label of a token that carries no loss (prompt, template, padding), as in PyTorch's cross-entropy."""

SCALAR_FIELDS = ("margin", "rating", "label")
"""Per-record numbers carried from a record into its tokenised features (and on into the batch)."""

_ADDS_BOS: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def encode_text(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without any special tokens the tokenizer would add by itself."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def eos_token_id(tokenizer: Any) -> int:
    """The tokenizer's EOS id (what ends every completion); an error if it has none."""
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("the tokenizer has no eos_token; completions need one to end with")
    if isinstance(eos, list):  # some configs list several; the first is the canonical one
        eos = eos[0]
    return int(eos)


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad batches with: the tokenizer's pad token, else its EOS (padding is masked anyway)."""
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = getattr(tokenizer, "eos_token_id", None)
    if pad is None:
        raise ValueError("the tokenizer has neither a pad_token nor an eos_token to pad batches with")
    return int(pad[0] if isinstance(pad, list) else pad)


def _adds_bos(tokenizer: Any) -> bool:
    """Whether encoding with the tokenizer's defaults puts a BOS token first (Llama-style)."""
    try:
        return _ADDS_BOS[tokenizer]
    except (KeyError, TypeError):
        pass
    bos = getattr(tokenizer, "bos_token_id", None)
    adds = False
    if bos is not None:
        with_special = list(tokenizer("a")["input_ids"])
        plain = encode_text(tokenizer, "a")
        adds = len(with_special) > len(plain) and with_special[0] == bos
    try:
        _ADDS_BOS[tokenizer] = adds
    except TypeError:
        pass
    return adds


def _with_bos(ids: list[int], text: str, tokenizer: Any) -> list[int]:
    if _adds_bos(tokenizer) and not text.startswith(str(tokenizer.bos_token)):
        return [int(tokenizer.bos_token_id), *ids]
    return ids


def encode_prompt(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a rendered prompt: no special tokens added, but the BOS a Llama-style tokenizer puts
    first when the text (e.g. from a chat template that writes its own) does not already start with it."""
    return _with_bos(encode_text(tokenizer, text), text, tokenizer)


def prompt_field(record: dict[str, Any]) -> str:
    """The field a record's prompt lives in (``'messages'`` or ``'prompt'``), for error messages."""
    return "messages" if record.get("messages") is not None else "prompt"


def render_record_prompt(record: dict[str, Any], tokenizer: Any, chat_template: ChatTemplateMode) -> str:
    """:func:`render_prompt`, with its errors (no chat template, ``never`` with messages) as DataErrors."""
    try:
        return render_prompt(record, tokenizer, chat_template)
    except ValueError as exc:
        raise DataError(str(exc), field=prompt_field(record)) from exc


def prompt_token_ids(
    record: dict[str, Any], tokenizer: Any, chat_template: ChatTemplateMode = "auto"
) -> list[int]:
    """The token ids generation starts from for this record's prompt (see the module docstring)."""
    return encode_prompt(tokenizer, render_record_prompt(record, tokenizer, chat_template))


def _end_with_eos(ids: list[int], eos: int) -> list[int]:
    return ids if ids and ids[-1] == eos else [*ids, eos]


def _render(messages: list[dict[str, Any]], tokenizer: Any, generation: bool, field: str) -> str:
    try:
        return render_chat(messages, tokenizer, add_generation_prompt=generation)
    except ValueError as exc:
        raise DataError(str(exc), field=field) from exc


def _not_a_prefix(field: str) -> DataError:
    return DataError(
        "the chat template does not render the conversation so far as a prefix of the longer one, so the "
        "tokens of this turn cannot be told apart (a template that rewrites earlier turns?); "
        "give prompt and completion as plain strings instead",
        field=field,
    )


def completion_token_ids(
    record: dict[str, Any], field: str, tokenizer: Any, chat_template: ChatTemplateMode = "auto"
) -> list[int]:
    """Token ids of the completion in ``record[field]`` (``completion``, ``chosen`` or ``rejected``).

    A string is encoded and ends with EOS; a message list is the chat template's text for those turns
    after the prompt conversation, ending at its last EOS (see the module docstring).
    """
    value = record[field]
    eos = eos_token_id(tokenizer)
    if isinstance(value, str):
        return _end_with_eos(encode_text(tokenizer, value), eos)
    if chat_template == "never":
        raise DataError("chat_template=never, but the completion is a list of messages", field=field)
    head = _render(record["prompt"], tokenizer, True, field)
    full = _render([*record["prompt"], *value], tokenizer, False, field)
    if not full.startswith(head):
        raise _not_a_prefix(field)
    ids = encode_text(tokenizer, full[len(head) :])
    if eos in ids:
        last = len(ids) - 1 - ids[::-1].index(eos)
        return ids[: last + 1]
    return [*ids, eos]


def _conversation_segments(
    messages: list[dict[str, Any]], tokenizer: Any, chat_template: ChatTemplateMode
) -> list[tuple[list[int], bool]]:
    """``(ids, trained)`` pieces of a rendered conversation; see the module docstring for the rule."""
    if chat_template == "never":
        raise DataError("chat_template=never, but the record is a list of messages", field="messages")
    eos = eos_token_id(tokenizer)
    assistant_turns = [k for k, m in enumerate(messages) if m["role"] == "assistant"]
    if not assistant_turns:
        raise DataError("the conversation has no assistant turn to train on", field="messages")
    last_assistant = assistant_turns[-1]
    segments: list[tuple[list[int], bool]] = []
    done = ""  # the part of the conversation's text already cut into segments
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if k == 0:
            raise DataError(
                "the conversation starts with an assistant turn; SFT needs a user (or system) turn before "
                "the first assistant turn",
                field="messages[0].role",
            )
        head = _render(messages[:k], tokenizer, True, "messages")
        full = _render(messages[: k + 1], tokenizer, False, "messages")
        if not head.startswith(done) or not full.startswith(head):
            raise _not_a_prefix(f"messages[{k}]")
        segments.append((encode_text(tokenizer, head[len(done) :]), False))
        ids = encode_text(tokenizer, full[len(head) :])
        if eos in ids:  # train up to and including the turn's end; mask the template's text after it
            cut = len(ids) - ids[::-1].index(eos)
            segments.append((ids[:cut], True))
            segments.append((ids[cut:], False))
        elif k == last_assistant:
            segments.append((_end_with_eos(ids, eos), True))
        else:
            segments.append((ids, True))
        done = full
    whole = _render(messages, tokenizer, False, "messages")
    if whole != done:
        if not whole.startswith(done):
            raise _not_a_prefix("messages")
        segments.append((encode_text(tokenizer, whole[len(done) :]), False))
    # the first segment is the start of the text: a BOS goes there, as for a prompt
    segments[0] = (_with_bos(segments[0][0], whole, tokenizer), False)
    return segments


def _scalars(record: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: record[k] for k in keys if record.get(k) is not None}


def tokenize_sft(
    record: dict[str, Any],
    tokenizer: Any,
    max_length: int | None = None,
    chat_template: ChatTemplateMode = "auto",
    truncation: Truncation = "keep_start",
) -> dict[str, Any]:
    """Token ids and labels of one SFT example (``prompt`` + ``completion``, or ``messages``).

    Returns ``input_ids``, ``labels`` (the id where the loss applies, -100 elsewhere) and
    ``completion_mask`` (1 where the loss applies), all of one length, plus ``rating``/``label`` when the
    record has them (ratings and unpaired records tokenise the same way). For ``prompt`` + ``completion``
    the prompt's tokens are masked and the completion (ending with EOS) is trained on; for ``messages``
    the assistant turns are trained on (module docstring).

    Truncation, when ``max_length`` is set and the example is longer: ``keep_start`` keeps the first
    ``max_length`` tokens, ``keep_end`` the last ``max_length``, ``error`` raises :class:`DataError`. An
    example left with no trained token is an error too (the prompt fills ``max_length``).
    """
    if record.get("messages") is not None:
        field = "messages"
        segments = _conversation_segments(record["messages"], tokenizer, chat_template)
    else:
        field = "completion"
        segments = [
            (prompt_token_ids(record, tokenizer, chat_template), False),
            (completion_token_ids(record, "completion", tokenizer, chat_template), True),
        ]
    input_ids: list[int] = []
    labels: list[int] = []
    for ids, trained in segments:
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))
    if max_length is not None and len(input_ids) > max_length:
        if truncation == "error":
            raise DataError(
                f"the example has {len(input_ids)} tokens, more than max_length={max_length}", field=field
            )
        keep = (
            slice(0, max_length) if truncation == "keep_start" else slice(len(input_ids) - max_length, None)
        )
        input_ids, labels = input_ids[keep], labels[keep]
    if all(label == IGNORE_INDEX for label in labels):
        raise DataError(
            f"no completion token is left after truncating to max_length={max_length} (truncation="
            f"{truncation}); raise max_length or shorten the prompt",
            field=field,
        )
    return {
        "input_ids": input_ids,
        "labels": labels,
        "completion_mask": [int(label != IGNORE_INDEX) for label in labels],
        **_scalars(record, ("rating", "label")),
    }


def tokenize_preference(
    record: dict[str, Any],
    tokenizer: Any,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    chat_template: ChatTemplateMode = "auto",
    truncation: Truncation = "keep_end",
) -> dict[str, Any]:
    """``prompt_ids``, ``chosen_ids`` and ``rejected_ids`` of one preference pair (plus ``margin`` if given).

    Each completion ends with EOS (module docstring). Truncation rules, applied in this order:

    1. If ``max_prompt_length`` is set and the prompt is longer, the prompt is cut to
       ``max_prompt_length`` tokens: ``truncation="keep_end"`` (default) keeps its **last** tokens (drops
       from the left, so the question nearest the answer survives), ``keep_start`` its first tokens,
       ``error`` raises :class:`DataError`.
    2. If ``max_length`` is set, each completion longer than ``max_length - len(prompt_ids)`` is cut to
       that many **first** tokens (it then has no EOS); with ``truncation="error"`` this raises instead. A
       prompt that leaves no room for even one completion token is an error.

    So ``len(prompt_ids) + len(chosen_ids) <= max_length`` and likewise for ``rejected_ids``.
    """
    if max_length is not None and max_prompt_length is not None and max_prompt_length >= max_length:
        raise ValueError(
            f"max_prompt_length ({max_prompt_length}) must be smaller than max_length ({max_length}) "
            "to leave room for the completions"
        )
    prompt_ids = prompt_token_ids(record, tokenizer, chat_template)
    completions = {
        key: completion_token_ids(record, key, tokenizer, chat_template) for key in ("chosen", "rejected")
    }
    field = prompt_field(record)
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        prompt_ids = _truncate(prompt_ids, max_prompt_length, truncation, field, "max_prompt_length")
    if max_length is not None:
        room = max_length - len(prompt_ids)
        if room < 1:
            raise DataError(
                f"the prompt has {len(prompt_ids)} tokens, leaving no room for a completion within "
                f"max_length={max_length}; set max_prompt_length below max_length",
                field=field,
            )
        for key, ids in completions.items():
            if len(ids) > room:
                if truncation == "error":
                    raise DataError(
                        f"prompt + {key} have {len(prompt_ids) + len(ids)} tokens, more than "
                        f"max_length={max_length}",
                        field=key,
                    )
                completions[key] = ids[:room]
    return {
        "prompt_ids": prompt_ids,
        "chosen_ids": completions["chosen"],
        "rejected_ids": completions["rejected"],
        **_scalars(record, ("margin",)),
    }


def _truncate(ids: list[int], limit: int, truncation: Truncation, field: str, name: str) -> list[int]:
    if truncation == "error":
        raise DataError(f"the prompt has {len(ids)} tokens, more than {name}={limit}", field=field)
    return ids[:limit] if truncation == "keep_start" else ids[len(ids) - limit :]


def tokenize_prompt(
    record: dict[str, Any],
    tokenizer: Any,
    chat_template: ChatTemplateMode = "auto",
    max_length: int | None = None,
    truncation: Truncation = "keep_end",
) -> dict[str, Any]:
    """``{"input_ids": ...}``: the prompt's token ids for generation (module docstring).

    With ``max_length`` set, a longer prompt keeps its last tokens (``keep_end``, default), its first
    (``keep_start``), or raises :class:`DataError` (``error``).
    """
    ids = prompt_token_ids(record, tokenizer, chat_template)
    if max_length is not None and len(ids) > max_length:
        ids = _truncate(ids, max_length, truncation, prompt_field(record), "max_length")
    return {"input_ids": ids}


def tokenize_dataset(
    ds: Dataset, tokenize: Callable[..., dict[str, Any]], tokenizer: Any, **options: Any
) -> list[dict[str, Any]]:
    """``[tokenize(record, tokenizer, **options) for record in ds]``, errors placed at the record's line.

    ``tokenize`` is one of :func:`tokenize_sft`, :func:`tokenize_preference`, :func:`tokenize_prompt`.
    """
    out = []
    for i, record in enumerate(ds.records):
        try:
            out.append(tokenize(record, tokenizer, **options))
        except DataError as exc:
            raise ds.locate(i, exc) from None
    return out


def check_prompt_lengths(
    ds: Dataset,
    tokenizer: Any,
    max_prompt_tokens: int,
    chat_template: ChatTemplateMode = "auto",
    why: str | None = None,
) -> None:
    """Raise :class:`DataError` if any rendered prompt of ``ds`` has more than ``max_prompt_tokens`` tokens.

    The error names the first such record (file, line, field ``prompt`` or ``messages``), its token count
    and the limit, followed by ``why`` (e.g. ``"the model's context of 2048 tokens minus max_new_tokens
    256"``), and lists the lines of the other too-long prompts. Prompts are counted as
    :func:`prompt_token_ids` encodes them.
    """
    texts = []
    for i, record in enumerate(ds.records):
        try:
            texts.append(render_record_prompt(record, tokenizer, chat_template))
        except DataError as exc:
            raise ds.locate(i, exc) from None
    too_long: list[tuple[int, int]] = []
    chunk = 1024
    for start in range(0, len(texts), chunk):
        batch = texts[start : start + chunk]
        encoded = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for j, (text, ids) in enumerate(zip(batch, encoded)):
            n = len(_with_bos(list(ids), text, tokenizer))
            if n > max_prompt_tokens:
                too_long.append((start + j, n))
    if not too_long:
        return
    i, n = too_long[0]
    because = f" ({why})" if why else ""
    message = f"the prompt has {n} tokens, more than the limit of {max_prompt_tokens}{because}"
    if len(too_long) > 1:
        others = format_numbers(ds.unit, [ds.lines[k] for k, _ in too_long])
        message += f"; {len(too_long)} prompts of this file are too long ({others})"
    message += "; shorten them or allow longer prompts"
    raise ds.error(i, message, field=prompt_field(ds.records[i]))
