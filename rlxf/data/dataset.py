"""A validated data file in memory (:class:`Dataset`) and :func:`read_data`, which builds one.

``read_data`` reads the raw records (:mod:`rlxf.data.readers`), settles the kind (given, or detected
from the fields, one kind per file) and checks every record against it (:mod:`rlxf.data.formats`)
before returning, so a malformed record stops a command before any work, with an error that names the
file, the line (or row) and the field.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlxf.data.errors import DataError, Unit, describe_location
from rlxf.data.formats import (
    KIND_FIELDS,
    KINDS,
    Kind,
    describe_fields,
    detect_kind,
    signature_field,
    validate_record,
)
from rlxf.data.readers import read_records


@dataclass
class Dataset:
    """The validated records of one data file, each with the line (or row) it came from.

    ``records[i]`` came from ``lines[i]``: the physical line of a JSONL/JSON/CSV file (the CSV header is
    line 1) or the 1-based row of a Parquet file or ``datasets`` folder (``unit`` says which). ``split`` is
    the split read from a saved ``DatasetDict``, if any.
    """

    path: Path
    kind: Kind
    records: list[dict[str, Any]]
    lines: list[int]
    unit: Unit = "line"
    split: str | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.records[i]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def where(self, i: int) -> str:
        """Where record ``i`` came from: ``"data/prefs.jsonl, line 7"`` or ``"data/x.parquet, row 3"``."""
        return describe_location(self.path, self.lines[i], unit=self.unit, split=self.split)

    def error(self, i: int, message: str, field: str | None = None) -> DataError:
        """A :class:`DataError` about record ``i`` (and ``field`` of it), located in this file."""
        return DataError(
            message, path=self.path, line=self.lines[i], field=field, unit=self.unit, split=self.split
        )

    def locate(self, i: int, error: DataError) -> DataError:
        """``error`` (raised about record ``i``, without a location) placed at record ``i`` of this file."""
        return error.located(self.path, self.lines[i], unit=self.unit, split=self.split)

    def select(self, indices: Iterable[int]) -> Dataset:
        """A new dataset of the records at ``indices`` (in that order), keeping their lines."""
        indices = list(indices)
        return Dataset(
            path=self.path,
            kind=self.kind,
            records=[self.records[i] for i in indices],
            lines=[self.lines[i] for i in indices],
            unit=self.unit,
            split=self.split,
        )


def format_numbers(unit: Unit, numbers: Sequence[int], limit: int = 8) -> str:
    """``"lines 1-4, 6"`` / ``"row 5"``: sorted numbers as ranges (at most ``limit`` ranges, then ``...``)."""
    ranges: list[tuple[int, int]] = []
    for n in sorted(numbers):
        if ranges and n == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], n)
        else:
            ranges.append((n, n))
    parts = [f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        parts.append("...")
    plural = "s" if len(numbers) > 1 else ""
    return f"{unit}{plural} {', '.join(parts)}"


_RANK: dict[Kind, int] = {"prompts": 0, "sft": 1, "ratings": 2, "unpaired": 2, "preferences": 3}


def _file_kind(records: list[Any], lines: list[int], unit: Unit, path: Path, split: str | None) -> Kind:
    """The one kind all records have; a file mixing kinds is an error saying which lines have which."""
    kinds = [detect_kind(r) if isinstance(r, dict) else None for r in records]
    first = kinds[0]
    if first is None or all(k == first for k in kinds):
        return first or "prompts"  # a non-object record is reported by validation
    by_kind: dict[str, list[int]] = {}
    for k, line in zip(kinds, lines):
        by_kind.setdefault(k or "not a record", []).append(line)
    i = next(i for i, k in enumerate(kinds) if k != first)
    other = kinds[i]
    record = records[i]
    if other is None:
        return first  # validation names the bad record
    # name the field that makes the difference: the odd record's own mark, or the one it lacks
    if _RANK[other] >= _RANK[first]:
        field = signature_field(record, other)
    else:
        field = signature_field(records[0], first)
    summary = "; ".join(f"{kind} on {format_numbers(unit, ls)}" for kind, ls in by_kind.items())
    raise DataError(
        f"this record is {other} ({describe_fields(record)}) but {unit} {lines[0]} is {first} "
        f"({describe_fields(records[0])}); the file mixes kinds: {summary}. Keep one kind per file "
        f"({first} needs {KIND_FIELDS[first]}), or name the kind to read only the fields it needs",
        path=path,
        line=lines[i],
        field=field,
        unit=unit,
        split=split,
    )


def read_data(path: str | Path, kind: Kind | None = None) -> Dataset:
    """Read and validate a data file of one kind (detected from its fields when ``kind`` is None).

    ``path`` is a ``.jsonl``, ``.json``, ``.csv`` or ``.parquet`` file or a ``datasets`` ``save_to_disk``
    folder (see :mod:`rlxf.data.readers`). With ``kind`` given, every record must have that kind's fields
    (extra fields are kept, so e.g. a preference file can be read as ``prompts``). Without it, the kind is
    the most specific one the fields show (:func:`~rlxf.data.formats.detect_kind`) and must be the same
    for every record. Raises :class:`DataError` on the first problem; an empty file is one.
    """
    path = Path(path)
    if kind is not None and kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {', '.join(KINDS)}")
    raw = read_records(path)
    if not raw.records:
        expected = (
            f"{kind} records with {KIND_FIELDS[kind]}"
            if kind
            else f"records of one kind ({', '.join(KINDS)})"
        )
        raise DataError(
            f"holds no records (the file is empty); expected {expected}",
            path=path,
            split=raw.split,
        )
    if kind is None:
        kind = _file_kind(raw.records, raw.lines, raw.unit, path, raw.split)
    records = []
    for record, line in zip(raw.records, raw.lines):
        try:
            records.append(validate_record(record, kind))
        except DataError as exc:
            raise exc.located(path, line, unit=raw.unit, split=raw.split) from None
    return Dataset(
        path=path, kind=kind, records=records, lines=list(raw.lines), unit=raw.unit, split=raw.split
    )


def read_prompts(path: str | Path, split: str | None = None, limit: int | None = None) -> Dataset:
    """Prompt records of ``path`` (validated), only those whose ``split`` field equals ``split`` when given,
    the first ``limit`` of them when given. A split no record has is an error naming the file."""
    ds = read_data(path, kind="prompts")
    if split is not None:
        keep = [i for i, r in enumerate(ds.records) if r.get("split") == split]
        if not keep:
            raise ValueError(f"{path}: no record has split == {split!r}")
        ds = ds.select(keep)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return ds
