"""The one error type of the data layer: :class:`DataError`, which says where in which file what is wrong.

Every problem with a data file (a missing or mistyped field, a broken JSON line, a prompt that does not fit
the model) is raised as a ``DataError`` whose text names the file, the line (JSONL/CSV) or row
(Parquet, ``datasets`` folder), the field, and what was expected::

    data/prefs.jsonl, line 7, field 'chosen': expected a non-empty string, got ''

It subclasses :class:`ValueError`, so callers that only care that the input was bad can catch that.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

Unit = Literal["line", "row"]
"""How a record's position is counted: the physical ``line`` of a JSONL/JSON/CSV file (the CSV header is
line 1) or the 1-based ``row`` of a Parquet file or ``datasets`` folder."""


def show(value: Any, limit: int = 60) -> str:
    """A short ``repr`` of a bad value for an error message (long values are cut in the middle)."""
    text = repr(value)
    if len(text) > limit:
        keep = (limit - 5) // 2
        text = f"{text[:keep]} ... {text[-keep:]}"
    return text


def describe_location(
    path: str | Path | None,
    line: int | None = None,
    field: str | None = None,
    unit: Unit = "line",
    split: str | None = None,
) -> str:
    """``"data/x.jsonl, line 7, field 'chosen'"`` (or ``"data/d, split 'train', row 3"``): the known parts."""
    parts = []
    if path is not None:
        parts.append(str(path))
    if split is not None:
        parts.append(f"split {split!r}")
    if line is not None:
        parts.append(f"{unit} {line}")
    if field is not None:
        parts.append(f"field {field!r}")
    return ", ".join(parts)


class DataError(ValueError):
    """A data file (or one record of it) is not what rlxf expects.

    Attributes: ``path`` (the file or folder, as given), ``line`` (line or row number, 1-based, or
    ``None``), ``field`` (the field, e.g. ``'chosen'`` or ``'messages[2].role'``, or ``None``), ``unit``
    (``"line"`` or ``"row"``), ``split`` (the split of a ``datasets`` folder, if one was picked) and
    ``message`` (the bare explanation, without the location).
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
        unit: Unit = "line",
        split: str | None = None,
    ) -> None:
        self.message = message
        self.path = Path(path) if path is not None else None
        self.line = line
        self.field = field
        self.unit: Unit = unit
        self.split = split
        super().__init__(str(self))

    @property
    def location(self) -> str:
        """``"data/x.jsonl, line 7, field 'chosen'"``: the parts that are known, comma-separated."""
        return describe_location(self.path, self.line, self.field, self.unit, self.split)

    def __reduce__(self) -> tuple[Any, ...]:
        # keep the attributes through pickling (DataLoader workers, multiprocessing)
        return (_restore, (self.message, self.path, self.line, self.field, self.unit, self.split))

    def __str__(self) -> str:
        location = self.location
        return f"{location}: {self.message}" if location else self.message

    def located(
        self,
        path: str | Path | None,
        line: int | None,
        unit: Unit = "line",
        split: str | None = None,
    ) -> DataError:
        """A copy of this error placed in ``path`` at ``line`` (the field and message are kept)."""
        return DataError(self.message, path=path, line=line, field=self.field, unit=unit, split=split)


def _restore(
    message: str, path: Path | None, line: int | None, field: str | None, unit: Unit, split: str | None
) -> DataError:
    return DataError(message, path=path, line=line, field=field, unit=unit, split=split)
