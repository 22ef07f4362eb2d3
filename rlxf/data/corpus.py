"""The pre-training corpus: documents read as a stream, held out by a hash, packed into token blocks.

* **Reading** (:func:`iter_documents`): a corpus *spec* names plain text in one of several shapes, and
  yields :class:`Document` s one at a time, never the whole corpus in memory:

  ==========================================  =============================================================
  ``stdlib:docstrings``, ``stdlib:prose``,    text that ships with Python (:mod:`rlxf.data.stdlib_corpus`);
  ``stdlib:code``                             prose: the docstrings, then the comment blocks
  ``notes.txt``                               the whole file is one document
  ``a.jsonl`` / ``a.json`` / ``a.csv``        one document per record: its ``text_field``, a non-empty
  ``a.parquet``                               string (JSONL streamed by line, Parquet by batches)
  a ``datasets.save_to_disk`` folder          one document per row (a ``DatasetDict``: its ``train`` split)
  any other folder                            every supported file below it, recursively, in path order
  ``data/*.jsonl`` (has ``*``, ``?``, ``[``)  the matching files (and folders), in path order
  ==========================================  =============================================================

  Bad input is a :class:`~rlxf.data.errors.DataError` naming the file, the line (or row) and the field;
  :func:`validate_corpus` makes one full pass so that a command fails before any work.
* **Held-out split** (:func:`is_held_out`): document ``i`` is held out iff ``u(seed, i) < share`` with
  ``u = int(blake2b(f"{seed}:{i}")[:8]) / 2**64``, uniform in ``[0, 1)``. The decision needs neither a
  second pass nor the corpus size (a shuffled index list would need both), and the same seed holds out
  the same documents on every run and machine (unlike Python's salted ``hash``).
* **Packing** (:func:`write_token_file`, :class:`TokenBlocks`): the documents' token ids are concatenated,
  each followed by an end-of-text id, into one stream cut into full-length blocks, as GPT-3 trains (Brown
  et al. 2020, appendix B: several documents packed into one sequence, delimited by an end-of-text token,
  without special masking). The stream is a raw ``uint16`` (vocabulary < 2**16) or ``uint32`` file read
  through ``np.memmap`` (as nanoGPT's ``prepare.py`` / ``train.py`` do), so a corpus larger than memory
  trains. Block ``i`` of size ``T`` is ``tokens[i*T : (i+1)*T]``; an ``N``-token file has ``floor(N / T)``
  blocks (the tail is dropped).

Left out: compressed files (``.gz``, ``.zst``), remote files and Hub datasets (no download at run time),
several text fields per record, deduplication, document shuffling before packing (the stream keeps the
corpus order; the training loop shuffles blocks), and attention masks at document boundaries (a block may
span two documents, separated only by the end-of-text id, as in GPT-3).
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import operator
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlxf.data.errors import DataError, Unit, show
from rlxf.data.formats import type_name
from rlxf.data.readers import load_saved_dataset, parse_json_line, read_json

__all__ = [
    "FILE_SUFFIXES",
    "STDLIB_CORPORA",
    "CorpusStats",
    "Document",
    "TokenBlocks",
    "corpus_sources",
    "is_held_out",
    "iter_documents",
    "read_token_info",
    "validate_corpus",
    "write_token_file",
]

FILE_SUFFIXES = (".txt", ".jsonl", ".json", ".csv", ".parquet")
STDLIB_CORPORA = ("stdlib:docstrings", "stdlib:prose", "stdlib:code")
SUPPORTED = (
    "expected a corpus: stdlib:docstrings, stdlib:prose, stdlib:code, a .txt file (one document), a .jsonl, .json, .csv "
    "or .parquet file (one document per record), a folder written by datasets' save_to_disk, a folder of "
    "such files, or a glob pattern matching them"
)
_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_GLOB_CHARS = ("*", "?", "[")
_PARQUET_BATCH = 1024


@dataclass(frozen=True)
class Document:
    """One document of a corpus: its text, where it comes from and its line (or row) there, 1-based."""

    text: str
    source: str
    line: int


@dataclass
class CorpusStats:
    """What one pass over a corpus saw: documents, characters (``len`` of the texts) and sources (files,
    ``datasets`` folders or built-in corpora) opened."""

    documents: int
    characters: int
    files: int


# ---------------------------------------------------------------------------------------------- sources


def _is_saved_dataset(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _DATASET_MARKERS)


def _path_key(path: Path) -> tuple[str, ...]:
    # Part-wise order keeps a folder's files together ("a/x" before "a-b/y"), the same on every Python.
    return path.parts


def _folder_sources(folder: Path) -> list[Path]:
    """Supported files below ``folder`` (and saved ``datasets`` folders, each as one source: their own
    ``.json`` files are metadata, not documents); hidden files and folders are skipped."""
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        keep = []
        for name in dirs:
            if name.startswith("."):
                continue
            if _is_saved_dataset(here / name):
                found.append(here / name)
            else:
                keep.append(name)
        dirs[:] = keep
        found.extend(
            here / name
            for name in files
            if not name.startswith(".") and Path(name).suffix.lower() in FILE_SUFFIXES
        )
    return sorted(found, key=_path_key)


def _check_stdlib(spec: str) -> None:
    if spec not in STDLIB_CORPORA:
        raise DataError(f"unknown built-in corpus; the built-ins are {', '.join(STDLIB_CORPORA)}", path=spec)
    if spec == "stdlib:code":
        try:
            import pycodestyle  # noqa: F401
        except ImportError:
            raise DataError(
                "needs the pycodestyle package (its lines are checked for PEP 8): pip install pycodestyle",
                path=spec,
            ) from None


def corpus_sources(spec: str | Path) -> list[str | Path]:
    """The sources a corpus spec names, in reading order: a built-in corpus name (``str``), files and
    saved ``datasets`` folders (``Path``). Raises :class:`DataError` when the spec names nothing readable."""
    if isinstance(spec, str) and spec.startswith("stdlib:"):
        _check_stdlib(spec)
        return [spec]
    path = Path(spec)
    if path.is_file():
        if path.suffix.lower() not in FILE_SUFFIXES:
            shown = f"'{path.suffix}'" if path.suffix else "(no suffix)"
            raise DataError(f"unknown file type {shown}; {SUPPORTED}", path=path)
        return [path]
    if path.is_dir():
        if _is_saved_dataset(path):
            return [path]
        found = _folder_sources(path)
        if not found:
            raise DataError(
                f"no .txt, .jsonl, .json, .csv or .parquet file below this folder; {SUPPORTED}", path=path
            )
        return list(found)
    if any(char in str(spec) for char in _GLOB_CHARS):
        sources: list[Path] = []
        for match in sorted((Path(m) for m in glob.glob(str(spec), recursive=True)), key=_path_key):
            if match.is_dir():
                sources.extend([match] if _is_saved_dataset(match) else _folder_sources(match))
            elif match.suffix.lower() in FILE_SUFFIXES:
                sources.append(match)  # other matches (a README next to the data) are not corpus files
        if not sources:
            raise DataError(
                f"the pattern matched no .txt, .jsonl, .json, .csv or .parquet file; {SUPPORTED}", path=spec
            )
        return list(dict.fromkeys(sources))  # overlapping folder matches: each file once
    raise DataError(f"no such file or folder; {SUPPORTED}", path=spec)


# ---------------------------------------------------------------------------------------------- readers
# Each reader yields (text, line-or-row) for one source and raises DataError for a bad record.


def _text_value(
    record: Any, field: str, path: Path, line: int, unit: Unit = "line", split: str | None = None
) -> str:
    """``record[field]`` when it is a non-empty string (not only whitespace), else a located DataError."""
    where: dict[str, Any] = {"path": path, "line": line, "unit": unit, "split": split}
    if not isinstance(record, dict):
        raise DataError(
            f"expected a JSON object with a {field!r} field, got {type_name(record)} {show(record)}", **where
        )
    if field not in record:
        fields = ", ".join(map(str, record)) or "none"
        raise DataError(
            f"missing (the record's fields: {fields}); expected a non-empty string", field=field, **where
        )
    value = record[field]
    if value is None:
        raise DataError("expected a non-empty string, got null", field=field, **where)
    if not isinstance(value, str):
        raise DataError(
            f"expected a non-empty string, got {type_name(value)} {show(value)}", field=field, **where
        )
    if not value.strip():
        raise DataError(f"expected a non-empty string, got {show(value)}", field=field, **where)
    return value


def _decode_error(path: Path, data: bytes, exc: UnicodeDecodeError, line: int | None = None) -> DataError:
    return DataError(
        f"not valid UTF-8 text (byte {show(data[exc.start : exc.start + 1])}); save the file as UTF-8",
        path=path,
        line=line if line is not None else data[: exc.start].count(b"\n") + 1,
    )


def _read_txt(path: Path, field: str) -> Iterator[tuple[str, int]]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _decode_error(path, data, exc) from exc
    if text.strip():  # an empty file holds no document (a folder may have one)
        yield text, 1


def _read_jsonl(path: Path, field: str) -> Iterator[tuple[str, int]]:
    # Binary lines split on b"\n" only (like readers.read_jsonl): U+2028 inside a string is not a line end.
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                raise _decode_error(path, raw, exc, line=number) from exc
            if not line.strip():
                continue
            yield _text_value(parse_json_line(line, path, number), field, path, number), number


def _read_json(path: Path, field: str) -> Iterator[tuple[str, int]]:
    # A JSON list cannot be streamed with the standard library: read_json parses the file (JSON lines or a
    # list of objects) in memory, with each record's line.
    raw = read_json(path)
    for record, number in zip(raw.records, raw.lines):
        yield _text_value(record, field, path, number), number


def _read_csv(path: Path, field: str) -> Iterator[tuple[str, int]]:
    csv.field_size_limit(max(csv.field_size_limit(), 2**30))  # long documents exceed the 128 KiB default
    with path.open(encoding="utf-8-sig", newline="") as stream:
        reader = csv.DictReader(stream)
        try:
            header = reader.fieldnames
            if header is None:
                return  # an empty file
            if field not in header:
                raise DataError(
                    f"the header has no column {field!r} (columns: {', '.join(header)}); name the text column "
                    "with the text_field setting",
                    path=path,
                    line=reader.line_num,
                    field=field,
                )
            for row in reader:
                # line_num is where the record ends; a quoted cell spanning lines moves its start back.
                breaks = sum(cell.count("\n") for cell in row.values() if isinstance(cell, str))
                number = reader.line_num - breaks
                if row[field] is None:
                    raise DataError(
                        f"missing: the row has fewer cells than the header's {len(header)} columns",
                        path=path,
                        line=number,
                        field=field,
                    )
                yield _text_value(row, field, path, number), number
        except UnicodeDecodeError as exc:
            raise DataError(
                "not valid UTF-8 text; save the file as UTF-8", path=path, line=reader.line_num + 1
            ) from exc
        except csv.Error as exc:
            raise DataError(f"not valid CSV: {exc}", path=path, line=reader.line_num) from exc


def _read_parquet(path: Path, field: str) -> Iterator[tuple[str, int]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise DataError(f"not a readable Parquet file: {exc}", path=path) from exc
    names = parquet.schema_arrow.names
    if field not in names:
        raise DataError(
            f"the file has no column {field!r} (columns: {', '.join(names)}); name the text column with the "
            "text_field setting",
            path=path,
            field=field,
        )
    row = 0
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH, columns=[field]):
        for value in batch.column(0).to_pylist():
            row += 1
            yield _text_value({field: value}, field, path, row, unit="row"), row


def _read_saved_dataset(path: Path, field: str) -> Iterator[tuple[str, int]]:
    loaded, split = load_saved_dataset(path)
    if field not in loaded.column_names:
        raise DataError(
            f"the dataset has no column {field!r} (columns: {', '.join(loaded.column_names)}); name the text "
            "column with the text_field setting",
            path=path,
            field=field,
            split=split,
        )
    # Arrow-backed and memory-mapped: iterating reads one row at a time from disk.
    for row, record in enumerate(loaded.select_columns([field]), start=1):
        yield _text_value(record, field, path, row, unit="row", split=split), row


_READERS: dict[str, Callable[[Path, str], Iterator[tuple[str, int]]]] = {
    ".txt": _read_txt,
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
}


def _source_documents(source: str | Path, text_field: str) -> Iterator[Document]:
    if isinstance(source, str):
        from rlxf.data import stdlib_corpus

        texts = {
            "stdlib:docstrings": stdlib_corpus.stdlib_docstrings,
            "stdlib:prose": stdlib_corpus.stdlib_prose,
            "stdlib:code": stdlib_corpus.stdlib_code_lines,
        }[source]()
        for index, text in enumerate(texts):
            yield Document(text, source, index + 1)
        return
    reader = _read_saved_dataset if source.is_dir() else _READERS[source.suffix.lower()]
    name = str(source)
    for text, line in reader(source, text_field):
        yield Document(text, name, line)


def _documents(sources: list[str | Path], text_field: str) -> Iterator[Document]:
    for source in sources:
        yield from _source_documents(source, text_field)


def iter_documents(spec: str | Path, text_field: str = "text") -> Iterator[Document]:
    """The documents of a corpus (see the module docstring for the specs), streamed in a fixed order.

    The spec is resolved at the call (a missing path raises here); each record is checked as it is read
    (a record whose ``text_field`` is missing, not a string, or blank raises :class:`DataError` then).
    """
    return _documents(corpus_sources(spec), text_field)


def validate_corpus(
    spec: str | Path, text_field: str = "text", max_documents: int | None = None
) -> CorpusStats:
    """Read the corpus once (or its first ``max_documents`` documents) and count it; the first bad record
    raises its :class:`DataError`, as does a corpus without any document."""
    sources = corpus_sources(spec)
    stats = CorpusStats(documents=0, characters=0, files=0)
    if max_documents is not None and max_documents <= 0:
        return stats
    for source in sources:
        stats.files += 1
        for document in _source_documents(source, text_field):
            stats.documents += 1
            stats.characters += len(document.text)
            if max_documents is not None and stats.documents >= max_documents:
                return stats
    if stats.documents == 0:
        raise DataError(f"holds no document (only empty files?); {SUPPORTED}", path=spec)
    return stats


# ---------------------------------------------------------------------------------------------- split


def is_held_out(index: int, seed: int, share: float) -> bool:
    """Whether document ``index`` is held out: ``u(seed, index) < share`` with ``u`` a blake2b hash mapped
    to ``[0, 1)`` (module docstring). ``share`` 0 holds out nothing, 1 everything."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be between 0 and 1, got {share}")
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < share


# ---------------------------------------------------------------------------------------------- packing


def _token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size < 2**16 else np.dtype(np.uint32)


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def _atomic_target(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _append_batch(out: Any, tokenizer: Any, batch: list[str], eos_id: int | None, dtype: np.dtype) -> int:
    """Tokenise ``batch`` in one call and append its ids (each document's, then ``eos_id``) to ``out``."""
    encoded = tokenizer(
        batch,
        add_special_tokens=False,
        return_attention_mask=False,
        return_token_type_ids=False,
        verbose=False,  # no "longer than the model's maximum" warning: documents are cut into blocks
    )["input_ids"]
    flat: list[int] = []
    for ids in encoded:
        flat.extend(ids)
        if eos_id is not None:
            flat.append(eos_id)
    # numpy refuses (OverflowError) an id that does not fit the dtype instead of wrapping it around
    np.asarray(flat, dtype=dtype).tofile(out)  # [tokens of the batch]
    return len(flat)


def write_token_file(
    texts: Iterable[str], tokenizer: Any, path: Path, eos_id: int | None, batch_documents: int = 1000
) -> int:
    """Tokenise ``texts`` into the raw token file ``path`` (and its sidecar ``path.with_suffix(".json")``):
    each document's ids (no special tokens added), then ``eos_id`` when given. Returns the token count.

    The tokenizer runs on ``batch_documents`` texts at a time (a fast tokenizer's batch call works in
    parallel) and only one batch of ids is in memory. Both files appear complete or not at all: they are
    written under temporary names in the same folder and renamed (the data first, then the sidecar, which
    readers open first).
    """
    path = Path(path)
    if _sidecar(path) == path:
        raise ValueError(f"{path}: the token file needs a suffix other than .json (its sidecar is the .json)")
    if batch_documents < 1:
        raise ValueError(f"batch_documents must be at least 1, got {batch_documents}")
    vocab_size = len(tokenizer)
    if eos_id is not None and not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id {eos_id} is not an id of the tokenizer's {vocab_size} tokens")
    dtype = _token_dtype(vocab_size)
    tokens = documents = 0
    data_tmp, info_tmp = _atomic_target(path), _atomic_target(_sidecar(path))
    try:
        with data_tmp.open("wb") as out:
            batch: list[str] = []
            for text in texts:
                batch.append(text)
                documents += 1
                if len(batch) == batch_documents:
                    tokens += _append_batch(out, tokenizer, batch, eos_id, dtype)
                    batch = []
            if batch:
                tokens += _append_batch(out, tokenizer, batch, eos_id, dtype)
        info = {
            "dtype": dtype.name,
            "tokens": tokens,
            "vocab_size": vocab_size,
            "documents": documents,
            "eos_id": eos_id,
        }
        info_tmp.write_text(json.dumps(info) + "\n", encoding="utf-8")
        os.replace(data_tmp, path)
        os.replace(info_tmp, _sidecar(path))
    finally:
        data_tmp.unlink(missing_ok=True)
        info_tmp.unlink(missing_ok=True)
    return tokens


def read_token_info(path: Path) -> dict[str, Any]:
    """The sidecar of a token file: ``{"dtype", "tokens", "vocab_size", "documents", "eos_id"}``."""
    sidecar = _sidecar(Path(path))
    try:
        return json.loads(sidecar.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no sidecar {sidecar.name}; write token files with write_token_file"
        ) from None


class TokenBlocks:
    """The blocks of a token file as a map-style dataset: ``blocks[i]`` is the int64 tensor ``[block_size]``
    of tokens ``i*block_size .. (i+1)*block_size - 1``; ``len`` is ``tokens // block_size``.

    The file is read through ``np.memmap`` (opened on first use, and again in each DataLoader worker after
    pickling, so a worker never receives the tokens themselves)."""

    def __init__(self, path: Path, block_size: int) -> None:
        self.path = Path(path)
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.block_size = block_size
        self.info = read_token_info(self.path)
        self.dtype = np.dtype(self.info["dtype"])
        self.tokens = int(self.info["tokens"])
        size = self.path.stat().st_size
        if size != self.tokens * self.dtype.itemsize:
            raise ValueError(
                f"{self.path}: {size} bytes, but its sidecar says {self.tokens} {self.dtype.name} tokens "
                f"({self.tokens * self.dtype.itemsize} bytes); write it again"
            )
        if self.tokens < block_size:
            raise ValueError(
                f"{self.path}: holds {self.tokens} tokens, fewer than one block of {block_size}; use a larger "
                "corpus (or a larger held-out share) or a smaller block size"
            )
        self._memmap: np.memmap | None = None

    def _array(self) -> np.memmap:
        if self._memmap is None:
            self._memmap = np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.tokens,))
        return self._memmap

    def __len__(self) -> int:
        return self.tokens // self.block_size

    def __getitem__(self, index: int) -> Any:
        import torch

        i = operator.index(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"block {index} out of range: {self.path} holds {n} blocks of {self.block_size}")
        start = i * self.block_size
        block = np.array(
            self._array()[start : start + self.block_size], dtype=np.int64
        )  # a copy: [block_size]
        return torch.from_numpy(block)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_memmap"] = None  # a pickled memmap would carry the whole array
        return state
