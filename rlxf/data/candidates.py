"""The candidates format: responses to be judged, ``{"prompt", "responses": [...], "id"?, "meta"?}``.

What ``rlxf sample`` writes and what the feedback stages read: ``rlxf judge`` and ``rlxf simulate`` (with
:func:`read_candidates`, which also takes a preferences file as unlabelled pairs plus their labels), and a
labelling project (``rlxf.feedback.label.schema``, stricter: prompts people read are plain text).
A prompt is a string or a message list; ``mode="pairwise"`` needs exactly two different responses.
Every problem is a :class:`~rlxf.data.errors.DataError` naming the file, the line (or row) and the field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rlxf.data.dataset import read_data
from rlxf.data.errors import DataError, show
from rlxf.data.formats import check_messages, check_text, type_name, validate_record
from rlxf.data.readers import read_records

Mode = Literal["pairwise", "pointwise"]  # pairwise: two responses compared; pointwise: each rated


@dataclass
class Candidates:
    """Validated judge input: ``responses[i]`` answer ``prompts[i]``; ``lines[i]`` is where record ``i`` was.

    ``labels[i]`` is the index of the preferred response when the input says (a preferences file: always
    0, the ``chosen`` one, since it is stored first) and ``None`` otherwise.
    """

    path: Path
    kind: Literal["candidates", "preferences"]
    prompts: list[Any]  # a string or a message list, as given
    responses: list[list[Any]]
    ids: list[str | None]
    labels: list[int | None]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, n: int) -> Candidates:
        """The first ``n`` records."""
        return Candidates(
            self.path,
            self.kind,
            self.prompts[:n],
            self.responses[:n],
            self.ids[:n],
            self.labels[:n],
            self.lines[:n],
        )


CANDIDATE_FIELDS = (
    "'prompt' + 'responses' (a list of strings), optional 'id'; or 'prompt' + 'chosen' + 'rejected'"
)


def _check_candidate(record: Any, mode: Mode) -> tuple[Any, list[Any], str | None]:
    """``(prompt, responses, id)`` of one candidates record; :class:`DataError` naming the field."""
    if not isinstance(record, dict):
        raise DataError(f"expected an object with named fields, got {type_name(record)} {show(record)}")
    prompt = record.get("prompt")
    if prompt is None:
        raise DataError(f"missing; candidates records need {CANDIDATE_FIELDS}", field="prompt")
    prompt = check_messages(prompt, "prompt") if isinstance(prompt, list) else check_text(prompt, "prompt")
    responses = record.get("responses")
    if isinstance(responses, str) and responses.lstrip().startswith("["):  # a CSV cell holding JSON
        try:
            responses = json.loads(responses)
        except json.JSONDecodeError:
            pass
    if responses is None:
        raise DataError(f"missing; candidates records need {CANDIDATE_FIELDS}", field="responses")
    if not isinstance(responses, list):
        raise DataError(
            f"expected a list of response strings, got {type_name(responses)} {show(responses)}",
            field="responses",
        )
    if mode == "pairwise" and len(responses) != 2:
        raise DataError(
            f"expected exactly 2 responses for pairwise judging, got {len(responses)}", field="responses"
        )
    if not responses:
        raise DataError("expected at least one response, got []", field="responses")
    for i, response in enumerate(responses):
        check_text(response, f"responses[{i}]")
    if mode == "pairwise" and responses[0] == responses[1]:
        raise DataError(
            "identical to responses[0]; a pair needs two different responses", field="responses[1]"
        )
    record_id = record.get("id")
    if record_id is not None and not isinstance(record_id, str | int):
        raise DataError(f"expected a string, got {type_name(record_id)} {show(record_id)}", field="id")
    return prompt, list(responses), None if record_id is None else str(record_id)


def read_candidates(path: str | Path, mode: Mode = "pairwise") -> Candidates:
    """Read and check judge input: candidates records or preference records (one kind per file).

    Any problem is a :class:`DataError` naming the file, the line (or row) and the field, raised before
    anything is loaded.
    """
    path = Path(path)
    raw = read_records(path)
    if not raw.records:
        raise DataError(f"holds no records (the file is empty); expected {CANDIDATE_FIELDS}", path=path)

    def is_preference(record: Any) -> bool:
        return isinstance(record, dict) and (
            record.get("chosen") is not None or record.get("rejected") is not None
        )

    kind: Literal["candidates", "preferences"] = (
        "preferences" if is_preference(raw.records[0]) else "candidates"
    )
    out = Candidates(path, kind, [], [], [], [], [])
    for record, line in zip(raw.records, raw.lines):
        try:
            if is_preference(record) != (kind == "preferences"):
                first = f"{raw.unit} {raw.lines[0]}"
                raise DataError(
                    f"this record is {'a preference' if kind == 'candidates' else 'a candidates'} record but "
                    f"{first} is {'a' if kind == 'candidates' else 'a preference'} record; keep one kind per file",
                    field="chosen" if kind == "candidates" else "responses",
                )
            if kind == "preferences":
                checked = validate_record(record, "preferences")
                prompt, responses, label = checked["prompt"], [checked["chosen"], checked["rejected"]], 0
                record_id = None if checked.get("id") is None else str(checked["id"])
            else:
                prompt, responses, record_id = _check_candidate(record, mode)
                label = None
        except DataError as exc:
            raise exc.located(path, line, unit=raw.unit, split=raw.split) from None
        out.prompts.append(prompt)
        out.responses.append(responses)
        out.ids.append(record_id)
        out.labels.append(label)
        out.lines.append(line)
    return out


def as_text(value: Any) -> str:
    """A prompt or response as the text the judge reads: a string as is; a message list as its turns, each
    ``"role: content"`` (a completion's assistant turns joined), so a conversation reads as a transcript."""
    if isinstance(value, str):
        return value
    if len(value) == 1 or all(m["role"] == "assistant" for m in value):
        return "\n\n".join(m["content"] for m in value)
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in value)


def _pair_key(prompt: Any, a: Any, b: Any) -> tuple[str, frozenset[str]]:
    """A pair's identity regardless of order: the prompt and the set of the two responses."""

    def dump(value: Any) -> str:  # strings and message lists alike, as comparable text
        return json.dumps(value, ensure_ascii=False, sort_keys=True)

    return dump(prompt), frozenset((dump(a), dump(b)))


def attach_labels(candidates: Candidates, labels_path: str | Path) -> int:
    """Set ``candidates.labels`` from a preferences file of (human) labels; returns how many pairs matched.

    A pair matches a label when the prompt and the two responses are the same (in either order)."""
    labelled = read_data(labels_path, kind="preferences")
    by_pair = {_pair_key(r["prompt"], r["chosen"], r["rejected"]): r["chosen"] for r in labelled.records}
    matched = 0
    for i, (prompt, responses) in enumerate(zip(candidates.prompts, candidates.responses)):
        if len(responses) != 2:
            continue
        chosen = by_pair.get(_pair_key(prompt, *responses))
        if chosen is not None:
            candidates.labels[i] = 0 if chosen == responses[0] else 1
            matched += 1
    return matched
