"""The labelling app's inputs, checked without a database: project settings and the "candidates" items.

* :class:`Settings` and :func:`check_settings`: ``name``, ``kind`` (pairwise | ranking | rating),
  ``labels_per_item`` (k >= 1), ``aspects`` (rating only, default ``["overall"]``), ``scale`` (ratings
  1..N, 2 <= N <= 100), ``ask_reason`` (off | optional | required);
* :class:`Candidate`, :func:`check_candidate`, :func:`check_candidates`: one item is
  ``{"prompt": str, "responses": [str, ...], "id"?: str, "meta"?: dict}``; pairwise needs exactly 2
  responses, ranking 2 or more, rating 1 or more;
* :func:`read_candidates`: a candidates JSONL file, every line checked (file, line and field in the error);
* :func:`check_text`: what every stored string must be: no lone surrogates (JSON's ``"\\ud800"`` decodes to
  one, and neither UTF-8 nor a database can store it), no NUL (PostgreSQL refuses it in text), a length
  bound that matches its column; names (project, aspect, username) also hold no control or format
  characters (bidi overrides, zero-width spaces), which would make two names look alike.

Every error is a :class:`FieldError` naming the field (and the item); this module needs no extra, so the
command line can check its options before anything heavy is imported.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlxf.data.errors import DataError, show
from rlxf.data.readers import read_jsonl

DEFAULT_DB = "sqlite:///rlxf-label.db"  # the database of every rlxf label command without --db
KINDS = ("pairwise", "ranking", "rating")
EXPORT_FORMATS = ("preferences", "ratings", "raw")  # rlxf.feedback.label.export
ASK_REASON = ("off", "optional", "required")
MIN_RESPONSES = {"pairwise": 2, "ranking": 2, "rating": 1}
MAX_SCALE = 100
MAX_LABELS_PER_ITEM = 100  # k: more answers per item than any agreement study asks for
MAX_NAME = 200  # projects.name and items.external_id are String(200)
MAX_ASPECTS = 20
MAX_RESPONSES = 50  # responses per item: a ranking of more is not something a person can do
MAX_ASPECT_NAME = 100
MAX_TEXT = 1_000_000  # a prompt, a response, guidelines: 1M characters is far past anything labellers read


class FieldError(ValueError):
    """One bad value: ``field`` names it (``"scale"``, ``"items[3].responses"``), ``index`` is the item's
    0-based position when the error is in an item."""

    def __init__(self, field: str, message: str, index: int | None = None) -> None:
        self.field = field
        self.message = message
        self.index = index
        super().__init__(f"{field}: {message}")


def check_text(value: str, field: str, *, max_length: int = MAX_TEXT, name: bool = False) -> str:
    """``value`` if it can be stored and shown as it is; :class:`FieldError` naming ``field`` otherwise.

    ``name``: a name people tell apart by eye, so no control or format characters (category C*: tabs,
    newlines, bidi overrides, zero-width spaces) and no surrounding spaces.
    """
    if len(value) > max_length:
        raise FieldError(field, f"at most {max_length} characters, got {len(value)}")
    if "\x00" in value:
        raise FieldError(field, "must not contain the NUL character (\\u0000)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise FieldError(
            field, "holds a lone surrogate (an invalid \\ud800-\\udfff escape): not text"
        ) from None
    if name:
        if value != value.strip():
            raise FieldError(field, f"must not start or end with spaces, got {show(value)}")
        bad = next((c for c in value if unicodedata.category(c).startswith("C")), None)
        if bad is not None:
            raise FieldError(field, f"must not contain control or invisible characters (U+{ord(bad):04X})")
    return value


def check_json_text(value: Any, field: str) -> None:
    """Every string (and key) inside a JSON value passes :func:`check_text` (an item's ``meta``)."""
    if isinstance(value, str):
        check_text(value, field)
    elif isinstance(value, dict):
        for key, inner in value.items():
            check_text(key, field)
            check_json_text(inner, f"{field}.{key}")
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            check_json_text(inner, f"{field}[{i}]")


@dataclass
class Settings:
    """A project's settings, checked (see the contract in the module docstring of the app)."""

    name: str
    kind: str
    guidelines: str = ""
    labels_per_item: int = 1
    aspects: list[str] | None = None  # rating only; default ["overall"]
    scale: int = 5
    ask_reason: str = "optional"


def check_settings(settings: Settings) -> Settings:
    """``settings`` with defaults filled in; :class:`FieldError` naming the first bad field."""
    if not settings.name.strip():
        raise FieldError("name", "must not be empty")
    check_text(settings.name, "name", max_length=MAX_NAME, name=True)
    check_text(settings.guidelines, "guidelines")
    if settings.kind not in KINDS:
        raise FieldError("kind", f"must be one of {', '.join(KINDS)}, got {show(settings.kind)}")
    if not 1 <= settings.labels_per_item <= MAX_LABELS_PER_ITEM:
        raise FieldError(
            "labels_per_item", f"must be between 1 and {MAX_LABELS_PER_ITEM}, got {settings.labels_per_item}"
        )
    if not 2 <= settings.scale <= MAX_SCALE:
        raise FieldError("scale", f"must be between 2 and {MAX_SCALE}, got {settings.scale}")
    if settings.ask_reason not in ASK_REASON:
        raise FieldError(
            "ask_reason", f"must be one of {', '.join(ASK_REASON)}, got {show(settings.ask_reason)}"
        )
    aspects = settings.aspects or ["overall"]
    if settings.kind != "rating" and settings.aspects:
        raise FieldError("aspects", f"only rating projects have aspects; this one is {settings.kind}")
    if len(aspects) > MAX_ASPECTS:
        raise FieldError("aspects", f"at most {MAX_ASPECTS} aspects, got {len(aspects)}")
    for aspect in aspects:
        if not isinstance(aspect, str) or not aspect.strip():
            raise FieldError("aspects", f"each aspect must be a non-empty name, got {show(aspect)}")
        check_text(aspect, "aspects", max_length=MAX_ASPECT_NAME, name=True)
    if len(set(aspects)) != len(aspects):
        raise FieldError("aspects", f"names an aspect twice: {aspects}")
    settings.aspects = list(aspects)
    return settings


@dataclass
class Candidate:
    prompt: str
    responses: list[str]
    id: str | None = None
    meta: dict[str, Any] | None = None


def check_candidate(record: Any, kind: str, index: int = 0) -> Candidate:
    """One item of the candidates format, checked for a project of ``kind``."""

    def bad(field: str, message: str) -> FieldError:
        return FieldError(field, message, index)

    if not isinstance(record, dict):
        raise bad("item", f"expected a JSON object, got {show(record)}")
    unknown = sorted(set(record) - {"prompt", "responses", "id", "meta"})
    if unknown:
        raise bad(unknown[0], "unknown field; an item has prompt, responses, id (optional), meta (optional)")
    prompt = record.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise bad("prompt", f"expected a non-empty string, got {show(prompt)}")
    try:
        check_text(prompt, "prompt")
    except FieldError as exc:
        raise bad(exc.field, exc.message) from None
    responses = record.get("responses")
    if not isinstance(responses, list):
        raise bad("responses", f"expected a list of strings, got {show(responses)}")
    least = MIN_RESPONSES[kind]
    if kind == "pairwise" and len(responses) != 2:
        raise bad("responses", f"a pairwise project needs exactly 2 responses, got {len(responses)}")
    if len(responses) < least:
        raise bad("responses", f"a {kind} project needs at least {least} responses, got {len(responses)}")
    if len(responses) > MAX_RESPONSES:
        raise bad("responses", f"at most {MAX_RESPONSES} responses per item, got {len(responses)}")
    for j, response in enumerate(responses):
        if not isinstance(response, str) or not response.strip():
            raise bad(f"responses[{j}]", f"expected a non-empty string, got {show(response)}")
        try:
            check_text(response, f"responses[{j}]")
        except FieldError as exc:
            raise bad(exc.field, exc.message) from None
    item_id = record.get("id")
    if item_id is not None and not isinstance(item_id, str):
        raise bad("id", f"expected a string, got {show(item_id)}")
    meta = record.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise bad("meta", f"expected a JSON object, got {show(meta)}")
    try:
        if item_id is not None:
            check_text(item_id, "id", max_length=MAX_NAME)
        check_json_text(meta, "meta")
    except FieldError as exc:
        raise bad(exc.field, exc.message) from None
    return Candidate(prompt, list(responses), item_id, meta)


def check_candidates(records: list[Any], kind: str) -> list[Candidate]:
    if not records:
        raise FieldError("items", "a project needs at least one item")
    return [check_candidate(record, kind, i) for i, record in enumerate(records)]


def read_candidates(path: str | Path, kind: str) -> list[Candidate]:
    """Every line of a candidates JSONL file, checked; :class:`DataError` with file, line and field."""
    raw = read_jsonl(path)
    try:
        return check_candidates(raw.records, kind)
    except FieldError as exc:
        line = raw.lines[exc.index] if exc.index is not None else None
        raise DataError(exc.message, path=path, line=line, field=exc.field) from None
