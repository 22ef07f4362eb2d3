"""The five kinds of data, the fields each needs, and the checks that turn a raw record into a valid one.

The kinds and their fields (names follow the Hugging Face / TRL conventions; docs/design.md "Data formats"):

============ ==================================================================================
kind          fields
============ ==================================================================================
prompts       ``prompt`` (string or message list) or ``messages`` (message list)
sft           ``prompt`` + ``completion``, or ``messages`` (a conversation ending with the assistant)
preferences   ``prompt`` + ``chosen`` + ``rejected`` (strings or message lists), optional ``margin``
ratings       ``prompt`` + ``completion`` + ``rating`` (a finite number), optional ``aspect``
unpaired      ``prompt`` + ``completion`` + ``label`` (true or false)
============ ==================================================================================

A *message list* is a non-empty list of ``{"role": ..., "content": ...}`` objects, ``role`` one of
``system``, ``user``, ``assistant`` and ``content`` a string (non-blank, except for a system turn). A
completion (``completion``, ``chosen``, ``rejected``) given as a message list ends with an assistant turn
and needs the ``prompt`` to be a message list too (it continues that conversation). Strings must not be
empty or whitespace only. Other fields (``id``, ...) are allowed and kept as they are; a ``null`` counts
as a missing field.

:func:`detect_kind` says which kind a raw record looks like; :func:`validate_record` checks a record
against a kind and returns it with normalised Python types (``rating``/``margin`` as ``float``, message
dicts without ``null`` keys), raising :class:`~rlxf.data.errors.DataError` with the field on any problem.
This module knows nothing of files; :mod:`rlxf.data.readers` and :mod:`rlxf.data.dataset` do.
"""

from __future__ import annotations

import math
from typing import Any, Literal, get_args

from rlxf.data.errors import DataError, show

Kind = Literal["prompts", "sft", "preferences", "ratings", "unpaired"]
KINDS: tuple[Kind, ...] = get_args(Kind)
ROLES = ("system", "user", "assistant")

KIND_FIELDS: dict[Kind, str] = {
    "prompts": "'prompt' (a string or message list) or 'messages' (a message list)",
    "sft": "'prompt' + 'completion', or 'messages' (a conversation whose last turn is the assistant's)",
    "preferences": "'prompt' + 'chosen' + 'rejected' (strings or message lists), optional 'margin'",
    "ratings": "'prompt' + 'completion' + 'rating' (a number), optional 'aspect'",
    "unpaired": "'prompt' + 'completion' + 'label' (true or false)",
}
"""What each kind needs, in words (used in error messages and help texts)."""

COMPLETION_FIELDS = ("completion", "chosen", "rejected")
"""Fields holding a model's answer: a string, or a message list continuing the prompt conversation."""


def _present(record: dict[str, Any], key: str) -> bool:
    return record.get(key) is not None


def detect_kind(record: dict[str, Any]) -> Kind:
    """The kind a raw record looks like, from the fields it has (a ``null`` field counts as absent).

    The most specific kind wins: ``chosen``/``rejected`` make preferences, then ``rating`` ratings,
    ``label`` unpaired, ``completion`` (or a ``messages`` conversation ending with the assistant) sft;
    anything else is prompts (and is then checked as such).
    """
    if _present(record, "chosen") or _present(record, "rejected"):
        return "preferences"
    if _present(record, "rating"):
        return "ratings"
    if _present(record, "label"):
        return "unpaired"
    if _present(record, "completion"):
        return "sft"
    messages = record.get("messages")
    if not _present(record, "prompt") and isinstance(messages, list) and messages:
        last = messages[-1]
        if isinstance(last, dict) and last.get("role") == "assistant":
            return "sft"
    return "prompts"


def signature_field(record: dict[str, Any], kind: Kind) -> str:
    """The field that marks ``record`` as ``kind`` (``chosen`` for preferences, ...), for error messages."""
    if kind == "preferences":
        return "chosen" if _present(record, "chosen") or not _present(record, "rejected") else "rejected"
    if kind == "ratings":
        return "rating"
    if kind == "unpaired":
        return "label"
    if kind == "sft":
        return "messages" if _present(record, "messages") and not _present(record, "prompt") else "completion"
    return "messages" if _present(record, "messages") and not _present(record, "prompt") else "prompt"


def describe_fields(record: dict[str, Any]) -> str:
    """``"prompt + chosen + rejected"``: the record's non-null fields, for messages about kinds."""
    names = [str(k) for k, v in record.items() if v is not None]
    return " + ".join(names) if names else "no fields"


# ---------------------------------------------------------------------------------------------------
# Field checks. Each returns the normalised value or raises DataError naming the field.


def check_text(value: Any, field: str) -> str:
    """A non-empty string that is not only whitespace."""
    if not isinstance(value, str):
        raise DataError(f"expected a non-empty string, got {type_name(value)} {show(value)}", field=field)
    if not value.strip():
        raise DataError(f"expected a non-empty string, got {show(value)}", field=field)
    return value


def check_messages(value: Any, field: str, *, last_role: str | None = None) -> list[dict[str, Any]]:
    """A non-empty list of ``{role, content}`` dicts; ``last_role``, if given, is required of the last turn.

    Returned dicts keep extra keys (``name``, ...) that are not ``null``.
    """
    if not isinstance(value, list):
        raise DataError(
            f"expected a list of {{role, content}} messages, got {type_name(value)} {show(value)}",
            field=field,
        )
    if not value:
        raise DataError("expected a non-empty list of {role, content} messages, got []", field=field)
    out = []
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise DataError(
                f"expected a {{role, content}} object, got {type_name(message)} {show(message)}", field=where
            )
        role = message.get("role")
        if role not in ROLES:
            got = "nothing (no 'role' key)" if "role" not in message else show(role)
            raise DataError(
                f"expected one of {', '.join(map(repr, ROLES))}, got {got}", field=f"{where}.role"
            )
        content = message.get("content")
        if not isinstance(content, str):
            got = (
                "nothing (no 'content' key)"
                if "content" not in message
                else f"{type_name(content)} {show(content)}"
            )
            raise DataError(f"expected a string, got {got}", field=f"{where}.content")
        if role != "system" and not content.strip():
            raise DataError(f"expected a non-empty string, got {show(content)}", field=f"{where}.content")
        out.append({k: v for k, v in message.items() if v is not None})
    if last_role is not None and out[-1]["role"] != last_role:
        raise DataError(
            f"expected the last turn to be the {last_role}'s, got a {out[-1]['role']!r} turn",
            field=f"{field}[{len(out) - 1}].role",
        )
    return out


def check_number(value: Any, field: str) -> float:
    """A finite int or float (``True``, ``"5"``, NaN and infinities are errors), returned as ``float``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"expected a number, got {type_name(value)} {show(value)}", field=field)
    number = float(value)
    if not math.isfinite(number):
        raise DataError(f"expected a finite number, got {show(number)}", field=field)
    return number


def check_bool(value: Any, field: str) -> bool:
    """``True`` or ``False`` (not ``1``/``0``; CSV text is converted before this check)."""
    if not isinstance(value, bool):
        raise DataError(f"expected true or false, got {type_name(value)} {show(value)}", field=field)
    return value


def type_name(value: Any) -> str:
    """``"a string"``, ``"a number"``, ... : how a JSON value's type reads in an error message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


# ---------------------------------------------------------------------------------------------------
# Records.


def _require(record: dict[str, Any], key: str, kind: Kind) -> Any:
    if key in record and record[key] is not None:
        return record[key]
    state = "is null" if key in record else "missing"
    fields = describe_fields(record)
    raise DataError(
        f"{state}; this record has {fields}, but {kind} records need {KIND_FIELDS[kind]}",
        field=key,
    )


def _prompt(record: dict[str, Any], kind: Kind) -> str | list[dict[str, Any]]:
    value = _require(record, "prompt", kind)
    if isinstance(value, list):
        return check_messages(value, "prompt")
    if not isinstance(value, str):
        raise DataError(
            f"expected a non-empty string or a list of {{role, content}} messages, got "
            f"{type_name(value)} {show(value)}",
            field="prompt",
        )
    return check_text(value, "prompt")


def _completion(record: dict[str, Any], key: str, kind: Kind, prompt: Any) -> str | list[dict[str, Any]]:
    value = _require(record, key, kind)
    if isinstance(value, list):
        if not isinstance(prompt, list):
            raise DataError(
                "a completion given as a message list continues a conversation, so 'prompt' must be a "
                "message list too (it is a string); give the completion as a string instead",
                field=key,
            )
        return check_messages(value, key, last_role="assistant")
    if not isinstance(value, str):
        raise DataError(
            f"expected a non-empty string or a list of {{role, content}} messages, got "
            f"{type_name(value)} {show(value)}",
            field=key,
        )
    return check_text(value, key)


def _prompt_or_messages(record: dict[str, Any], kind: Kind, last_role: str | None) -> dict[str, Any]:
    """For prompts and sft: exactly one of ``prompt``/``messages``; returns the checked field(s)."""
    if _present(record, "messages"):
        if _present(record, "prompt"):
            raise DataError(
                "give either 'prompt' or 'messages', not both (this record has both)", field="messages"
            )
        return {"messages": check_messages(record["messages"], "messages", last_role=last_role)}
    prompt = _prompt(record, kind)
    if kind == "sft":
        return {"prompt": prompt, "completion": _completion(record, "completion", kind, prompt)}
    return {"prompt": prompt}


def validate_record(record: Any, kind: Kind) -> dict[str, Any]:
    """Check a raw record against ``kind``; return a copy with normalised values (extra fields kept).

    Raises :class:`DataError` with ``field`` set (no file location: the caller adds it).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {', '.join(KINDS)}")
    if not isinstance(record, dict):
        raise DataError(f"expected an object with named fields, got {type_name(record)} {show(record)}")
    checked: dict[str, Any]
    if kind == "prompts":
        checked = _prompt_or_messages(record, kind, last_role=None)
    elif kind == "sft":
        checked = _prompt_or_messages(record, kind, last_role="assistant")
    else:
        prompt = _prompt(record, kind)
        checked = {"prompt": prompt}
        if kind == "preferences":
            checked["chosen"] = _completion(record, "chosen", kind, prompt)
            checked["rejected"] = _completion(record, "rejected", kind, prompt)
            if checked["chosen"] == checked["rejected"]:
                raise DataError(
                    "identical to 'chosen'; a preference pair needs two different completions",
                    field="rejected",
                )
            if _present(record, "margin"):
                checked["margin"] = check_number(record["margin"], "margin")
        else:
            checked["completion"] = _completion(record, "completion", kind, prompt)
            if kind == "ratings":
                checked["rating"] = check_number(_require(record, "rating", kind), "rating")
                if _present(record, "aspect"):
                    checked["aspect"] = check_text(record["aspect"], "aspect")
            else:
                checked["label"] = check_bool(_require(record, "label", kind), "label")
    out = dict(record)
    for key in ("margin", "aspect"):  # optional fields given as null are simply absent
        if key in out and out[key] is None and key not in checked:
            del out[key]
    out.update(checked)
    return out
