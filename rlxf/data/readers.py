"""Reading raw records, with their line or row numbers, from the file types rlxf accepts.

* ``.jsonl``: one JSON object per line (blank lines are skipped); ``.json``: the same, or one JSON list of
  objects. Records are numbered by the physical line they start on.
* ``.csv``: a header row (line 1) then one record per row; records are numbered by the physical line they
  start on (a quoted cell may span lines). Cells are text, so :func:`coerce_csv_record` converts the known
  fields: ``messages`` (and ``prompt``/``completion``/``chosen``/``rejected`` cells holding a JSON list of
  objects) are parsed as JSON, ``rating``/``margin`` as numbers, ``label`` from ``true``/``false``/``1``/``0``;
  an empty ``margin`` or ``aspect`` cell means the field is absent.
* ``.parquet``: one record per row, numbered from row 1.
* a folder written by ``datasets.Dataset.save_to_disk`` (or a ``DatasetDict`` with a ``train`` split or a
  single split): one record per row, numbered from row 1.

Only the shape of the file is checked here (readable, decodable, JSON objects, a consistent CSV table);
the fields are checked by :mod:`rlxf.data.formats`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlxf.data.errors import DataError, Unit, show
from rlxf.data.formats import type_name

SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
SUPPORTED = (
    "supported: .jsonl, .json (JSON lines or a list of objects), .csv, .parquet, "
    "or a folder written by datasets' save_to_disk"
)

_WHITESPACE = re.compile(r"[ \t\n\r]*")


@dataclass
class RawRecords:
    """Records as read from a file, before any field checks: ``lines[i]`` numbers ``records[i]``."""

    records: list[Any]
    lines: list[int]
    unit: Unit = "line"
    split: str | None = None


def read_records(path: str | Path) -> RawRecords:
    """Read every record of a data file or saved ``datasets`` folder (see the module docstring)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file or folder; expected a data file ({SUPPORTED})", path=path)
    if path.is_dir():
        return read_saved_dataset(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return read_jsonl(path)
    if suffix == ".json":
        return read_json(path)
    if suffix == ".csv":
        return read_csv(path)
    if suffix == ".parquet":
        return read_parquet(path)
    shown = f"'{path.suffix}'" if path.suffix else "(no suffix)"
    raise DataError(f"unknown file type {shown}; {SUPPORTED}", path=path)


def _read_text(path: Path) -> str:
    """The file as text (UTF-8, a leading byte-order mark dropped); a decoding error names its line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"not valid UTF-8 text (byte {show(data[exc.start : exc.start + 1])}); save the file as UTF-8",
            path=path,
            line=line,
        ) from exc


def _object_or_error(value: Any, path: Path, line: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DataError(
            f"expected a JSON object with named fields (one record), got {type_name(value)} {show(value)}",
            path=path,
            line=line,
        )
    return value


def read_jsonl(path: str | Path) -> RawRecords:
    """One JSON object per line; blank lines are skipped; a broken line is an error naming it."""
    path = Path(path)
    text = _read_text(path)
    return _parse_json_lines(text, path)


def parse_json_line(line: str, path: Path, number: int) -> Any:
    """The JSON value on line ``number`` of a JSON-lines file, or a :class:`DataError` naming the line."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"not valid JSON: {exc.msg} (column {exc.colno}); expected one JSON object per line",
            path=path,
            line=number,
        ) from exc


def _parse_json_lines(text: str, path: Path) -> RawRecords:
    records: list[Any] = []
    lines: list[int] = []
    # split on "\n" only: str.splitlines would also split inside strings holding U+2028 and friends
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        records.append(_object_or_error(parse_json_line(line, path, number), path, number))
        lines.append(number)
    return RawRecords(records, lines)


def read_json(path: str | Path) -> RawRecords:
    """A ``.json`` file: a JSON list of objects (each numbered by its starting line), or JSON lines."""
    path = Path(path)
    text = _read_text(path)
    start = _WHITESPACE.match(text, 0).end()
    if text.startswith("[", start):
        return _parse_json_list(text, start, path)
    try:
        return _parse_json_lines(text, path)
    except DataError as lines_error:
        try:  # maybe one object pretty-printed over several lines
            whole = json.loads(text)
        except json.JSONDecodeError:
            raise lines_error from None
        raise DataError(
            f"holds a single JSON {'object' if isinstance(whole, dict) else 'value'}; expected a JSON list "
            "of records or one JSON object per line (JSON lines)",
            path=path,
        ) from None


def _parse_json_list(text: str, start: int, path: Path) -> RawRecords:
    decoder = json.JSONDecoder()
    records: list[Any] = []
    lines: list[int] = []
    line, counted = 1, 0

    def line_at(pos: int) -> int:
        nonlocal line, counted
        line += text.count("\n", counted, pos)
        counted = pos
        return line

    def broken(msg: str, pos: int) -> DataError:
        column = pos - (text.rfind("\n", 0, pos) + 1) + 1
        return DataError(f"not valid JSON: {msg} (column {column})", path=path, line=line_at(pos))

    pos = _WHITESPACE.match(text, start + 1).end()
    if text.startswith("]", pos):
        pos += 1
    else:
        while True:
            try:
                value, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as exc:
                raise broken(exc.msg, exc.pos) from exc
            number = line_at(pos)
            records.append(_object_or_error(value, path, number))
            lines.append(number)
            pos = _WHITESPACE.match(text, end).end()
            if text.startswith(",", pos):
                pos = _WHITESPACE.match(text, pos + 1).end()
            elif text.startswith("]", pos):
                pos += 1
                break
            else:
                raise broken("Expecting ',' delimiter or ']'", pos)
    if _WHITESPACE.match(text, pos).end() != len(text):
        raise broken("Extra data after the closing ']'", _WHITESPACE.match(text, pos).end())
    return RawRecords(records, lines)


def read_csv(path: str | Path) -> RawRecords:
    """A CSV table with a header row; each record's known fields converted by :func:`coerce_csv_record`."""
    path = Path(path)
    text = _read_text(path)
    csv.field_size_limit(max(csv.field_size_limit(), 2**30))  # long completions exceed the 128 KiB default
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 1
    records: list[Any] = []
    lines: list[int] = []
    last = 0
    try:
        for row in reader:
            first, last = last + 1, reader.line_num
            if not row:
                continue  # blank line
            if header is None:
                header, header_line = [name.strip() for name in row], first
                _check_header(header, path, first)
                continue
            if len(row) != len(header):
                raise DataError(
                    f"has {len(row)} cells but the header (line {header_line}) has {len(header)} columns",
                    path=path,
                    line=first,
                )
            try:
                records.append(coerce_csv_record(dict(zip(header, row))))
            except DataError as exc:
                raise exc.located(path, first) from None
            lines.append(first)
    except csv.Error as exc:
        raise DataError(f"not valid CSV: {exc}", path=path, line=reader.line_num) from exc
    return RawRecords(records, lines)


def _check_header(header: list[str], path: Path, line: int) -> None:
    seen: set[str] = set()
    for i, name in enumerate(header, start=1):
        if not name:
            raise DataError(f"the header's column {i} has no name", path=path, line=line)
        if name in seen:
            raise DataError(f"the header names column {name!r} twice", path=path, line=line)
        seen.add(name)


_TRUE = ("true", "1")
_FALSE = ("false", "0")


def coerce_csv_record(row: dict[str, str]) -> dict[str, Any]:
    """Turn the text cells of the known fields into the types JSON would carry (see the module docstring).

    Unknown columns stay text. Raises :class:`DataError` with the field for unparseable cells.
    """
    out: dict[str, Any] = dict(row)
    for key in ("margin", "aspect"):
        if key in out and not out[key].strip():
            del out[key]  # optional: an empty cell means "not given"
    if "messages" in out and out["messages"].strip():
        out["messages"] = _json_cell(out["messages"], "messages")
    for key in ("prompt", "completion", "chosen", "rejected"):
        cell = out.get(key)
        if cell is not None and cell.lstrip().startswith("[") and cell.rstrip().endswith("]"):
            try:
                value = json.loads(cell)
            except json.JSONDecodeError:
                continue  # plain text that happens to be bracketed
            if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
                out[key] = value
    for key in ("rating", "margin"):
        cell = out.get(key)
        if cell is not None and cell.strip():
            try:
                out[key] = float(cell)
            except ValueError:
                raise DataError(f"expected a number, got {show(cell)}", field=key) from None
            if not math.isfinite(out[key]):
                raise DataError(f"expected a finite number, got {show(cell)}", field=key)
    cell = out.get("label")
    if cell is not None and cell.strip():
        word = cell.strip().lower()
        if word not in _TRUE + _FALSE:
            raise DataError(f"expected true, false, 1 or 0, got {show(cell)}", field="label")
        out["label"] = word in _TRUE
    return out


def _json_cell(cell: str, field: str) -> Any:
    try:
        return json.loads(cell)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"expected a JSON list of {{role, content}} messages, got text that is not valid JSON "
            f"({exc.msg}, column {exc.colno}): {show(cell)}",
            field=field,
        ) from exc


def read_parquet(path: str | Path) -> RawRecords:
    """A Parquet file: one record per row (rows numbered from 1)."""
    import pyarrow.parquet as pq

    path = Path(path)
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"not a readable Parquet file: {exc}", path=path) from exc
    records = table.to_pylist()
    return RawRecords(records, list(range(1, len(records) + 1)), unit="row")


def load_saved_dataset(path: str | Path) -> tuple[Any, str | None]:
    """The ``datasets.Dataset`` of a folder from ``save_to_disk`` and the split it is (``None`` for a plain
    ``Dataset``; a ``DatasetDict``'s ``train`` split, or its only split). Nothing is read into memory."""
    path = Path(path)
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises several types for broken folders
        raise DataError(f"could not load the saved dataset: {exc}", path=path) from exc
    split = None
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded)
        if "train" in loaded:
            split = "train"
        elif len(names) == 1:
            split = names[0]
        else:
            raise DataError(
                f"holds several splits ({', '.join(names)}) and none is called 'train'; save the split to "
                "use on its own",
                path=path,
            )
        loaded = loaded[split]
    return loaded, split


def read_saved_dataset(path: str | Path) -> RawRecords:
    """A folder from ``datasets``' ``save_to_disk``: a ``Dataset``, or a ``DatasetDict`` whose ``train``
    split (or only split) is read. Rows are numbered from 1."""
    path = Path(path)
    if not any((path / name).is_file() for name in ("dataset_info.json", "dataset_dict.json", "state.json")):
        raise DataError(
            "is a folder but not one written by datasets' save_to_disk (no dataset_info.json or "
            f"dataset_dict.json in it); {SUPPORTED}",
            path=path,
        )
    loaded, split = load_saved_dataset(path)
    records = loaded.to_list()
    return RawRecords(records, list(range(1, len(records) + 1)), unit="row", split=split)
