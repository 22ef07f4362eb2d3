"""The pre-training corpus: every spec kind read as a stream, the located DataErrors, the hashed held-out
split, token files and their blocks, and the built-in standard-library corpora (docstrings, PEP 8 lines)."""

from __future__ import annotations

import csv
import itertools
import json
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rlxf.data import corpus as corpus_module
from rlxf.data.corpus import (
    CorpusStats,
    Document,
    TokenBlocks,
    corpus_sources,
    is_held_out,
    iter_documents,
    validate_corpus,
    write_token_file,
)
from rlxf.data.errors import DataError
from rlxf.data.stdlib_corpus import (
    inject_pep8_violation,
    pep8_corpus,
    pep8_violations,
    stdlib_code_lines,
    stdlib_comments,
    stdlib_docstrings,
    stdlib_root,
    stdlib_sources,
    write_jsonl_corpus,
)


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def texts_and_lines(spec, text_field: str = "text") -> list[tuple[str, int]]:
    return [(d.text, d.line) for d in iter_documents(spec, text_field)]


# ---------------------------------------------------------------------------------------------------------
# the spec kinds


def test_txt_file_is_one_document(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes("\ufeffFirst line.\nSecond line, caf\u00e9.\n".encode())  # a BOM is dropped
    assert list(iter_documents(path)) == [Document("First line.\nSecond line, caf\u00e9.\n", str(path), 1)]
    (tmp_path / "empty.txt").write_text("  \n")
    assert list(iter_documents(tmp_path / "empty.txt")) == []  # no document, and no error by itself


def test_jsonl_one_document_per_record_with_physical_line_numbers(tmp_path):
    path = tmp_path / "c.jsonl"
    # line 2 is blank (skipped); U+2028 inside a string does not end a line
    path.write_text('{"body": "one"}\n\n{"body": "two\\nlines", "x": 1}\n{"body": "three\u2028four"}\n')
    assert texts_and_lines(path, "body") == [("one", 1), ("two\nlines", 3), ("three\u2028four", 4)]
    assert {d.source for d in iter_documents(path, "body")} == {str(path)}


def test_json_list_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('[\n  {"text": "alpha"},\n  {"text": "beta"}\n]\n')
    assert texts_and_lines(path) == [("alpha", 2), ("beta", 3)]


def test_csv_records_numbered_by_their_first_line(tmp_path):
    path = tmp_path / "c.csv"
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["id", "text"])
        writer.writerow(["1", "plain"])
        writer.writerow(["2", "spans\ntwo lines"])  # lines 3-4
        writer.writerow(["3", "after"])  # line 5
    assert texts_and_lines(path) == [("plain", 2), ("spans\ntwo lines", 3), ("after", 5)]


def test_parquet_read_in_batches(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "c.parquet", {"text": ["a", "b", "c", "d", "e"], "n": [1, 2, 3, 4, 5]})
    monkeypatch.setattr(corpus_module, "_PARQUET_BATCH", 2)  # 3 batches: 2 + 2 + 1 rows
    assert texts_and_lines(path) == [("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)]


def test_saved_datasets_folder_and_its_train_split(tmp_path):
    import datasets

    single = tmp_path / "single"
    datasets.Dataset.from_dict({"text": ["x1", "x2"], "label": [0, 1]}).save_to_disk(str(single))
    assert corpus_sources(single) == [single]
    assert texts_and_lines(single) == [("x1", 1), ("x2", 2)]
    splits = tmp_path / "splits"
    datasets.DatasetDict(
        {
            "test": datasets.Dataset.from_dict({"text": ["held"]}),
            "train": datasets.Dataset.from_dict({"text": ["t1", "t2", "t3"]}),
        }
    ).save_to_disk(str(splits))
    assert texts_and_lines(splits) == [("t1", 1), ("t2", 2), ("t3", 3)]


def test_folder_reads_every_supported_file_below_it_in_path_order(tmp_path):
    import datasets

    root = tmp_path / "corpus"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    (root / "b" / "deep" / "z.txt").write_text("deep text")
    write_jsonl(root / "b" / "a.jsonl", [{"text": "b/a 1"}, {"text": "b/a 2"}])
    (root / "a" / "x.txt").write_text("a/x text")
    (root / "a-c.txt").write_text("a-c text")
    (root / "README.md").write_text("not a corpus file")
    (root / ".hidden.txt").write_text("hidden")
    datasets.Dataset.from_dict({"text": ["saved row"]}).save_to_disk(str(root / "b" / "saved"))
    # part-wise order: a/x.txt before a-c.txt (as strings "a-c.txt" < "a/x.txt"); in b/: a.jsonl, deep/,
    # saved/ (a dataset folder, read as one source: its own .json files are not documents)
    texts = ["a/x text", "a-c text", "b/a 1", "b/a 2", "deep text", "saved row"]
    assert [d.text for d in iter_documents(root)] == texts
    assert validate_corpus(root) == CorpusStats(documents=6, characters=sum(map(len, texts)), files=5)


def test_glob_pattern_reads_the_matching_files_sorted(tmp_path):
    write_jsonl(tmp_path / "part-2.jsonl", [{"text": "second"}])
    write_jsonl(tmp_path / "part-1.jsonl", [{"text": "first"}])
    write_jsonl(tmp_path / "other.jsonl", [{"text": "other"}])
    (tmp_path / "part-3.md").write_text("ignored: not a corpus file type")
    assert [d.text for d in iter_documents(str(tmp_path / "part-*"))] == ["first", "second"]
    assert corpus_sources(str(tmp_path / "part-[12].jsonl")) == [
        tmp_path / "part-1.jsonl",
        tmp_path / "part-2.jsonl",
    ]


def test_stdlib_specs():
    docs = list(itertools.islice(iter_documents("stdlib:docstrings"), 3))
    assert [(d.source, d.line) for d in docs] == [
        ("stdlib:docstrings", 1),
        ("stdlib:docstrings", 2),
        ("stdlib:docstrings", 3),
    ]
    assert docs[0].text == next(stdlib_docstrings())
    # prose: the docstrings, then the comment blocks (whole-line comments only, without their "#")
    docstrings = sum(1 for _ in stdlib_docstrings())
    prose = list(iter_documents("stdlib:prose"))
    assert [d.text for d in prose[:3]] == [d.text for d in docs]
    comments = [d.text for d in prose[docstrings:]]
    assert comments == list(stdlib_comments()) and len(comments) > 1000
    assert all(len(c) >= 80 and not c.startswith("#") and "\n" not in c for c in comments)
    code = next(iter_documents("stdlib:code"))
    assert (code.source, code.line, code.text) == ("stdlib:code", 1, next(stdlib_code_lines()))


# ---------------------------------------------------------------------------------------------------------
# errors


def message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value)


def test_missing_field_names_file_line_and_field(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "ok"}, {"text": "ok"}, {"body": "no text"}])
    with pytest.raises(DataError) as excinfo:
        list(iter_documents(path))
    assert message(excinfo).startswith(f"{path}, line 3, field 'text': missing")
    assert (excinfo.value.line, excinfo.value.field) == (3, "text")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"text": 3}', "line 2, field 'text': expected a non-empty string, got a number 3"),
        ('{"text": ["a"]}', "line 2, field 'text': expected a non-empty string, got a list"),
        ('{"text": "  "}', "line 2, field 'text': expected a non-empty string, got '  '"),
        ('{"text": null}', "line 2, field 'text': expected a non-empty string, got null"),
        ('{"body": "x"}', "line 2, field 'text': missing (the record's fields: body)"),
        ('{"text": "unclosed}', "line 2: not valid JSON"),
        ('["text"]', "line 2: expected a JSON object with a 'text' field, got a list"),
    ],
)
def test_bad_jsonl_records(tmp_path, line, expected):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n' + line + "\n")
    with pytest.raises(DataError) as excinfo:
        list(iter_documents(path))
    assert message(excinfo).startswith(f"{path}, {expected}")


def test_bad_csv_parquet_and_dataset_inputs(tmp_path):
    import datasets

    no_column = tmp_path / "a.csv"
    no_column.write_text("id,body\n1,hello\n")
    with pytest.raises(
        DataError,
        match=r"a\.csv, line 1, field 'text': the header has no column 'text' \(columns: id, body\)",
    ):
        list(iter_documents(no_column))
    short = tmp_path / "b.csv"
    short.write_text("id,text\n1,hello\n2\n")
    with pytest.raises(DataError, match=r"b\.csv, line 3, field 'text': missing"):
        list(iter_documents(short))
    numbers = write_parquet(tmp_path / "c.parquet", {"text": [1, 2]})
    with pytest.raises(
        DataError, match=r"c\.parquet, row 1, field 'text': expected a non-empty string, got a number 1"
    ):
        list(iter_documents(numbers))
    nulls = write_parquet(tmp_path / "d.parquet", {"text": ["a", None]})
    with pytest.raises(
        DataError, match=r"d\.parquet, row 2, field 'text': expected a non-empty string, got null"
    ):
        list(iter_documents(nulls))
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"body": ["x"]}).save_to_disk(str(saved))
    with pytest.raises(
        DataError, match=r"saved, field 'text': the dataset has no column 'text' \(columns: body\)"
    ):
        list(iter_documents(saved))
    latin1 = tmp_path / "e.txt"
    latin1.write_bytes("fine\ncaf\u00e9".encode("latin-1"))
    with pytest.raises(DataError, match=r"e\.txt, line 2: not valid UTF-8"):
        list(iter_documents(latin1))


def test_specs_that_name_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.md").write_text("x")
    cases = {
        str(tmp_path / "*.jsonl"): "the pattern matched no .txt, .jsonl, .json, .csv or .parquet file",
        str(tmp_path / "missing.jsonl"): "no such file or folder",
        str(tmp_path / "empty"): "no .txt, .jsonl, .json, .csv or .parquet file below this folder",
        str(tmp_path / "notes.md"): "unknown file type '.md'",
        "stdlib:poems": "unknown built-in corpus; the built-ins are stdlib:docstrings, stdlib:prose, stdlib:code",
    }
    for spec, expected in cases.items():
        with pytest.raises(DataError) as excinfo:
            iter_documents(spec)  # raised at the call, before any reading
        assert message(excinfo).startswith(f"{spec}: {expected}")
        if not spec.startswith("stdlib:"):
            assert "expected a corpus: stdlib:docstrings, stdlib:prose, stdlib:code, a .txt file" in message(
                excinfo
            )


def test_validate_corpus_counts_stops_early_and_raises_the_first_error(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"text": "abc"}, {"text": "de"}, {"text": ""}])
    assert validate_corpus(path, max_documents=2) == CorpusStats(documents=2, characters=5, files=1)
    with pytest.raises(DataError, match=r"line 3, field 'text'"):
        validate_corpus(path)
    (tmp_path / "only-empty").mkdir()
    (tmp_path / "only-empty" / "a.txt").write_text("")
    with pytest.raises(DataError, match="holds no document"):
        validate_corpus(tmp_path / "only-empty")


# ---------------------------------------------------------------------------------------------------------
# held-out split


def test_is_held_out_is_deterministic_and_holds_out_the_share():
    n = 2000
    first = [is_held_out(i, seed=7, share=0.2) for i in range(n)]
    assert first == [is_held_out(i, seed=7, share=0.2) for i in range(n)]
    assert abs(sum(first) / n - 0.2) < 0.03
    other_seed = [is_held_out(i, seed=8, share=0.2) for i in range(n)]
    assert other_seed != first and abs(sum(other_seed) / n - 0.2) < 0.03
    # a larger share holds out a superset (the same hash, a higher bar)
    larger = [is_held_out(i, seed=7, share=0.5) for i in range(n)]
    assert all(b for a, b in zip(first, larger) if a) and abs(sum(larger) / n - 0.5) < 0.03
    assert not any(is_held_out(i, 0, 0.0) for i in range(n))
    assert all(is_held_out(i, 0, 1.0) for i in range(n))
    with pytest.raises(ValueError, match="share"):
        is_held_out(0, 0, 1.5)


# ---------------------------------------------------------------------------------------------------------
# token files and blocks

TEXTS = ["The movie was a delight.", "Terrible quality, avoid it.", "", "abc xyz 0123", "Human: hello there!"]


def expected_ids(tokenizer, texts: list[str], eos_id: int | None) -> list[int]:
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += [eos_id] if eos_id is not None else []
    return ids


def test_write_token_file_and_blocks_round_trip(tmp_path):
    from tiny_model import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    eos = tokenizer.eos_token_id
    path = tmp_path / "train.bin"
    n = write_token_file(iter(TEXTS), tokenizer, path, eos, batch_documents=2)
    ids = expected_ids(tokenizer, TEXTS, eos)
    assert n == len(ids) and ids.count(eos) == len(TEXTS)
    assert np.fromfile(path, dtype=np.uint16).tolist() == ids
    info = json.loads(path.with_suffix(".json").read_text())
    assert info == {
        "dtype": "uint16",
        "tokens": n,
        "vocab_size": len(tokenizer),
        "documents": 5,
        "eos_id": eos,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.bin", "train.json"]  # no temporary left

    blocks = TokenBlocks(path, 4)
    assert len(blocks) == n // 4
    for i in range(len(blocks)):
        block = blocks[i]
        assert block.dtype == torch.int64 and block.shape == (4,)
        assert block.tolist() == ids[i * 4 : (i + 1) * 4]
    assert blocks[-1].tolist() == ids[(len(blocks) - 1) * 4 : len(blocks) * 4]
    with pytest.raises(IndexError):
        blocks[len(blocks)]
    # a DataLoader worker gets a pickled copy: it reopens the file and reads the same blocks
    blocks[0]
    copy = pickle.loads(pickle.dumps(blocks))
    assert copy._memmap is None and copy[1].tolist() == blocks[1].tolist()
    with pytest.raises(ValueError, match=rf"train\.bin: holds {n} tokens, fewer than one block of {n + 1}"):
        TokenBlocks(path, n + 1)
    assert len(TokenBlocks(path, n)) == 1


def test_write_token_file_without_eos_and_empty(tmp_path):
    from tiny_model import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    n = write_token_file(TEXTS, tokenizer, tmp_path / "a.bin", None)
    assert np.fromfile(tmp_path / "a.bin", dtype=np.uint16).tolist() == expected_ids(tokenizer, TEXTS, None)
    assert n == len(expected_ids(tokenizer, TEXTS, None))
    assert write_token_file([], tokenizer, tmp_path / "b.bin", 0) == 0
    with pytest.raises(ValueError, match=r"b\.bin: holds 0 tokens, fewer than one block of 1"):
        TokenBlocks(tmp_path / "b.bin", 1)


def test_several_batches_write_the_same_file_as_one(tmp_path):
    from tiny_model import CORPUS, build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    texts = CORPUS * 3  # 24 documents
    for batch in (1, 5, 24, 1000):
        write_token_file(
            texts, tokenizer, tmp_path / f"b{batch}.bin", tokenizer.eos_token_id, batch_documents=batch
        )
    reference = (tmp_path / "b1000.bin").read_bytes()
    assert all((tmp_path / f"b{batch}.bin").read_bytes() == reference for batch in (1, 5, 24))


class BigVocabTokenizer:
    """A tokenizer double with 70,000 ids: each character becomes 65,000 + its code point."""

    def __len__(self) -> int:
        return 70_000

    def __call__(self, texts, **kwargs):
        assert kwargs["add_special_tokens"] is False
        return {"input_ids": [[65_000 + ord(c) for c in text] for text in texts]}


def test_uint16_below_65536_ids_uint32_above(tmp_path):
    path = tmp_path / "big.bin"
    n = write_token_file(["ab", "c"], BigVocabTokenizer(), path, eos_id=69_999)
    assert n == 5 and json.loads(path.with_suffix(".json").read_text())["dtype"] == "uint32"
    assert path.stat().st_size == 5 * 4
    assert TokenBlocks(path, 5)[0].tolist() == [65_097, 65_098, 69_999, 65_099, 69_999]
    with pytest.raises(ValueError, match="eos_id 70000 is not an id"):
        write_token_file(["a"], BigVocabTokenizer(), path, eos_id=70_000)


# ---------------------------------------------------------------------------------------------------------
# the standard-library corpora


def test_stdlib_sources_leave_out_tests_and_packages():
    sources = stdlib_sources()
    assert sources == sorted(sources, key=lambda p: p.relative_to(stdlib_root()).parts)
    assert stdlib_root() / "textwrap.py" in sources
    excluded = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    assert not any(excluded & set(p.relative_to(stdlib_root()).parts) for p in sources)


def test_stdlib_docstrings():
    count = 0
    for text in stdlib_docstrings():
        assert isinstance(text, str) and len(text) >= 80
        count += 1
    assert count > 1000
    assert list(itertools.islice(stdlib_docstrings(), 20)) == list(itertools.islice(stdlib_docstrings(), 20))
    assert all(len(t) >= 400 for t in itertools.islice(stdlib_docstrings(min_chars=400), 50))


def test_pep8_violations_counts():
    assert pep8_violations("x = f(a, b)") == 0
    assert pep8_violations("x=f(a, b)") == 1  # E225
    assert pep8_violations("x = f(a ,b)") == 2  # E203 and E231
    assert pep8_violations("y = a-b") == 0  # E226 is in pycodestyle's default ignore list
    assert pep8_violations("foo(") == 1  # does not tokenise alone: E901


def test_stdlib_code_lines_are_clean_single_statements():
    lines = list(itertools.islice(stdlib_code_lines(), 200))
    assert len(lines) == 200 and len(set(lines)) == 200
    for line in lines:
        assert 20 <= len(line) <= 79 and line == line.strip()
        assert pep8_violations(line) == 0
        assert not line.startswith(("#", '"', "'"))
    bounded = list(itertools.islice(stdlib_code_lines(min_chars=40, max_chars=50), 50))
    assert all(40 <= len(line) <= 50 for line in bounded)


def test_inject_pep8_violation_edits():
    line = "result = compute(a, b) if x is None else y"
    variants = {inject_pep8_violation(line, random.Random(seed)) for seed in range(300)}
    assert all(pep8_violations(v) > 0 for v in variants)
    assert {
        "result=compute(a, b) if x is None else y",  # E225
        "result = compute (a, b) if x is None else y",  # E211
        "result = compute( a, b) if x is None else y",  # E201
        "result = compute(a , b) if x is None else y",  # E203
        "result = compute(a, b) if x is None else y ",  # W291
        "result = compute(a, b) if x == None else y",  # E711
        "result = compute(a,b) if x is None else y",  # E231
    } <= variants
    joined = {inject_pep8_violation("first, second = 1, 2", random.Random(seed)) for seed in range(100)}
    assert "first = 1; second = 2" in joined  # E702
    # never inside a string literal; a line that does not tokenise cannot get worse
    assert all(
        '"a = b, c(d)"' in inject_pep8_violation('s = "a = b, c(d)"', random.Random(s)) for s in range(50)
    )
    assert inject_pep8_violation('"""unclosed', random.Random(0)) is None


def test_pep8_corpus_injects_the_share():
    pairs = list(pep8_corpus(bad_share=0.3, seed=1, max_lines=2000))
    assert len(pairs) == 2000
    injected = [line for line, bad in pairs if bad]
    assert abs(len(injected) / 2000 - 0.3) < 0.05
    assert all(pep8_violations(line) > 0 for line in injected[:200])
    assert all(pep8_violations(line) == 0 for line, bad in pairs[:200] if not bad)
    assert pairs[:100] == list(pep8_corpus(bad_share=0.3, seed=1, max_lines=100))
    assert not any(bad for _, bad in pep8_corpus(bad_share=0.0, max_lines=100))


def test_write_jsonl_corpus_round_trip(tmp_path):
    path = tmp_path / "lines.jsonl"
    texts = ["x = 1", "caf\u00e9 \u2028 two\nlines", 'quote "q"']
    assert write_jsonl_corpus(iter(texts), path) == 3
    assert [d.text for d in iter_documents(path)] == texts
    assert [p.name for p in tmp_path.iterdir()] == ["lines.jsonl"]
