"""The labelling app's inputs, checked without a database: project settings and the "candidates" items.

* :class:`Settings` and :func:`check_settings`: ``name``, ``kind`` (pairwise | ranking | rating),
  ``labels_per_item`` (k >= 1), ``aspects`` (rating only, default ``["overall"]``), ``scale`` (ratings
  1..N, 2 <= N <= 100), ``ask_reason`` (off | optional | required);
* :class:`Candidate`, :func:`check_candidate`, :func:`check_candidates`: one item is
  ``{"prompt": str, "responses": [str, ...], "id"?: str, "meta"?: dict}``; pairwise needs exactly 2
  responses, ranking 2 or more, rating 1 or more;
* :func:`read_candidates`: a candidates JSONL file, every line checked (file, line and field in the error).

Every error is a :class:`FieldError` naming the field (and the item); this module needs no extra, so the
command line can check its options before anything heavy is imported.
"""

from __future__ import annotations

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


class FieldError(ValueError):
    """One bad value: ``field`` names it (``"scale"``, ``"items[3].responses"``), ``index`` is the item's
    0-based position when the error is in an item."""

    def __init__(self, field: str, message: str, index: int | None = None) -> None:
        self.field = field
        self.message = message
        self.index = index
        super().__init__(f"{field}: {message}")


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
    if settings.kind not in KINDS:
        raise FieldError("kind", f"must be one of {', '.join(KINDS)}, got {show(settings.kind)}")
    if settings.labels_per_item < 1:
        raise FieldError("labels_per_item", f"must be >= 1, got {settings.labels_per_item}")
    if not 2 <= settings.scale <= MAX_SCALE:
        raise FieldError("scale", f"must be between 2 and {MAX_SCALE}, got {settings.scale}")
    if settings.ask_reason not in ASK_REASON:
        raise FieldError(
            "ask_reason", f"must be one of {', '.join(ASK_REASON)}, got {show(settings.ask_reason)}"
        )
    aspects = settings.aspects or ["overall"]
    if settings.kind != "rating" and settings.aspects:
        raise FieldError("aspects", f"only rating projects have aspects; this one is {settings.kind}")
    for aspect in aspects:
        if not isinstance(aspect, str) or not aspect.strip():
            raise FieldError("aspects", f"each aspect must be a non-empty name, got {show(aspect)}")
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
    responses = record.get("responses")
    if not isinstance(responses, list):
        raise bad("responses", f"expected a list of strings, got {show(responses)}")
    least = MIN_RESPONSES[kind]
    if kind == "pairwise" and len(responses) != 2:
        raise bad("responses", f"a pairwise project needs exactly 2 responses, got {len(responses)}")
    if len(responses) < least:
        raise bad("responses", f"a {kind} project needs at least {least} responses, got {len(responses)}")
    for j, response in enumerate(responses):
        if not isinstance(response, str) or not response.strip():
            raise bad(f"responses[{j}]", f"expected a non-empty string, got {show(response)}")
    item_id = record.get("id")
    if item_id is not None and not isinstance(item_id, str):
        raise bad("id", f"expected a string, got {show(item_id)}")
    meta = record.get("meta")
    if meta is not None and not isinstance(meta, dict):
        raise bad("meta", f"expected a JSON object, got {show(meta)}")
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
