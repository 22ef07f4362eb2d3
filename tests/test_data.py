"""Reading and validating data files: the kinds, the file types, and one test per kind of bad input.

Every error test checks that the message names the file, the line (or row) and the field.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from rlxf.data import DataError, Dataset, detect_kind, read_data, split_data

# ------------------------------------------------------------------------------------------------------
# helpers


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, records: list[dict]) -> Path:
    """CSV with message lists as JSON text and numbers/bools as text (as a spreadsheet would save them)."""
    columns: list[str] = []
    for r in records:
        columns += [k for k in r if k not in columns]

    def cell(v):
        if v is None:
            return ""
        if isinstance(v, list):
            return json.dumps(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        return str(v)

    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in records:
            w.writerow([cell(r.get(c)) for c in columns])
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def write_saved_dataset(path: Path, records: list[dict], split: str | None = None) -> Path:
    import datasets

    ds = datasets.Dataset.from_list(records)
    (datasets.DatasetDict({split: ds}) if split else ds).save_to_disk(str(path))
    return path


def error_of(path: Path, kind=None) -> DataError:
    with pytest.raises(DataError) as info:
        read_data(path, kind=kind)
    return info.value


def assert_names(err: DataError, path: Path, where: str, field: str | None) -> None:
    """The message starts with the file, then e.g. 'line 3', then the field."""
    text = str(err)
    assert text.startswith(str(path)), text
    assert f", {where}" in text, text
    if field is not None:
        assert f"field '{field}'" in text, text
        assert err.field == field
    assert err.path == path


MSGS = [{"role": "user", "content": "Say hi"}]
ASSISTANT = [{"role": "assistant", "content": "Hi!"}]

# ------------------------------------------------------------------------------------------------------
# kinds


@pytest.mark.parametrize(
    ("record", "kind"),
    [
        ({"prompt": "p"}, "prompts"),
        ({"messages": MSGS}, "prompts"),
        ({"prompt": "p", "completion": "c"}, "sft"),
        ({"messages": MSGS + ASSISTANT}, "sft"),
        ({"prompt": "p", "chosen": "a", "rejected": "b"}, "preferences"),
        ({"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1}, "preferences"),
        ({"prompt": "p", "completion": "c", "rating": 3}, "ratings"),
        ({"prompt": "p", "completion": "c", "label": False}, "unpaired"),
        ({"prompt": "p", "completion": "c", "rating": None}, "sft"),  # null = absent (Parquet unions)
    ],
)
def test_detect_kind(record, kind):
    assert detect_kind(record) == kind


def test_read_each_kind_detected_and_normalised(tmp_path):
    cases = {
        "prompts": [{"prompt": "Once upon a time"}, {"prompt": "The film", "id": "x"}],
        "sft": [{"prompt": "2+2=", "completion": " 4"}],
        "preferences": [{"prompt": MSGS, "chosen": ASSISTANT, "rejected": "Go away", "margin": 2}],
        "ratings": [{"prompt": "p", "completion": "c", "rating": 4, "aspect": "helpfulness"}],
        "unpaired": [{"prompt": "p", "completion": "c", "label": True}],
    }
    for kind, records in cases.items():
        ds = read_data(write_jsonl(tmp_path / f"{kind}.jsonl", records))
        assert ds.kind == kind
        assert len(ds) == len(records)
        assert ds.lines == list(range(1, len(records) + 1))
    ratings = read_data(tmp_path / "ratings.jsonl")
    assert ratings[0]["rating"] == 4.0 and isinstance(ratings[0]["rating"], float)
    prefs = read_data(tmp_path / "preferences.jsonl")
    assert prefs[0]["margin"] == 2.0 and isinstance(prefs[0]["margin"], float)
    assert read_data(tmp_path / "prompts.jsonl")[1]["id"] == "x"  # extra columns are kept


def test_explicit_kind_reads_only_the_fields_it_needs(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}])
    ds = read_data(path, kind="prompts")
    assert ds.kind == "prompts"
    assert ds[0] == {"prompt": "p", "chosen": "a", "rejected": "b"}


def test_blank_lines_keep_physical_line_numbers(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n   \n{"prompt": "b"}\n\n', encoding="utf-8")
    ds = read_data(path)
    assert ds.lines == [1, 4]
    assert ds.where(1) == f"{path}, line 4"


def test_json_list_records_numbered_by_their_first_line(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n  {"prompt": "a"},\n\n  {\n    "prompt": "b"\n  }\n]\n', encoding="utf-8")
    ds = read_data(path)
    assert [r["prompt"] for r in ds] == ["a", "b"]
    assert ds.lines == [2, 4]


def test_json_file_with_json_lines(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n', encoding="utf-8")
    assert read_data(path).lines == [1, 2]


def test_csv_multiline_cell_line_numbers(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,id\n"two\nlines",1\n\nthird,2\n', encoding="utf-8")
    ds = read_data(path)
    assert [r["prompt"] for r in ds] == ["two\nlines", "third"]
    assert ds.lines == [2, 5]
    assert ds[1]["id"] == "2"  # unknown columns stay text


def test_csv_label_text_and_bracketed_plain_text(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text(
        'prompt,completion,label\n[not json],c,TRUE\np,"[1, 2]",0\np,c, false \np,c,1\n', encoding="utf-8"
    )
    ds = read_data(path)
    assert ds.kind == "unpaired"
    assert [r["label"] for r in ds] == [True, False, False, True]
    assert ds[0]["prompt"] == "[not json]" and ds[1]["completion"] == "[1, 2]"


# ------------------------------------------------------------------------------------------------------
# the same content in every file type gives the same records

ROUND_TRIP = {
    "preferences": [
        {"id": "a", "prompt": "Tell me a joke", "chosen": "Why did...", "rejected": "No.", "margin": 1.5},
        {"id": "b", "prompt": "Be kind", "chosen": "Sure!", "rejected": "Whatever", "margin": None},
        {"id": "c", "prompt": "Hello", "chosen": "Hi, how are you?", "rejected": "Bye", "margin": -0.25},
    ],
    "chat_preferences": [
        {"prompt": MSGS, "chosen": ASSISTANT, "rejected": [{"role": "assistant", "content": "No"}]},
        {
            "prompt": [{"role": "system", "content": "Be brief"}, *MSGS],
            "chosen": [{"role": "assistant", "content": "Hi"}],
            "rejected": [{"role": "assistant", "content": "Hello, hello, hello"}],
        },
    ],
    "ratings": [
        {"prompt": "p1", "completion": "c1", "rating": 4.0, "aspect": "helpful"},
        {"prompt": "p2", "completion": "c2", "rating": -1.5, "aspect": "honest"},
    ],
    "unpaired": [
        {"prompt": "p1", "completion": "c1", "label": True},
        {"prompt": "p2", "completion": "c2", "label": False},
    ],
    "sft_messages": [
        {"messages": [*MSGS, *ASSISTANT]},
        {"messages": [{"role": "system", "content": ""}, *MSGS, *ASSISTANT]},
    ],
}


@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_round_trip_all_file_types(tmp_path, name):
    records = ROUND_TRIP[name]
    files = {
        "jsonl": write_jsonl(tmp_path / "d.jsonl", records),
        "json": tmp_path / "d.json",
        "csv": write_csv(tmp_path / "d.csv", records),
        "parquet": write_parquet(tmp_path / "d.parquet", records),
        "datasets": write_saved_dataset(tmp_path / "saved", records),
        "datasets_dict": write_saved_dataset(tmp_path / "saved_dict", records, split="train"),
    }
    files["json"].write_text(json.dumps(records, indent=2), encoding="utf-8")
    read = {fmt: read_data(path) for fmt, path in files.items()}
    expected = read["jsonl"].records
    # `null` margins are dropped, numbers become floats
    assert all(r.get("margin", 0) is not None for r in expected)
    for fmt, ds in read.items():
        assert ds.records == expected, fmt
        assert ds.kind == read["jsonl"].kind, fmt
    assert read["jsonl"].lines == [1, 2, 3][: len(records)]
    assert read["csv"].lines == [2, 3, 4][: len(records)]
    assert read["parquet"].lines == read["datasets"].lines == [1, 2, 3][: len(records)]
    assert read["parquet"].where(0) == f"{files['parquet']}, row 1"
    assert read["datasets_dict"].where(1) == f"{files['datasets_dict']}, split 'train', row 2"


def test_datasets_dict_without_train_split(tmp_path):
    import datasets

    ds = datasets.Dataset.from_list([{"prompt": "a"}])
    path = tmp_path / "saved"
    datasets.DatasetDict({"test": ds, "validation": ds}).save_to_disk(str(path))
    err = error_of(path)
    assert str(err).startswith(str(path)) and "test, validation" in str(err)
    single = tmp_path / "single"
    datasets.DatasetDict({"test": ds}).save_to_disk(str(single))
    assert read_data(single).split == "test"


# ------------------------------------------------------------------------------------------------------
# bad input: one test per case, each naming the file, the line (or row) and the field


def test_missing_field(tmp_path):
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "p", "chosen": "a"}],
    )
    err = error_of(path)
    assert_names(err, path, "line 2", "rejected")
    assert "missing" in str(err) and "'prompt' + 'chosen' + 'rejected'" in str(err)
    assert err.line == 2


def test_sft_file_read_as_preferences_names_chosen(tmp_path):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}])
    err = error_of(path, kind="preferences")
    assert_names(err, path, "line 1", "chosen")
    assert "missing" in str(err)


GOOD = {
    "prompts": {"prompt": "ok"},
    "sft": {"prompt": "p", "completion": "c"},
    "preferences": {"prompt": "p", "chosen": "a", "rejected": "b"},
    "unpaired": {"prompt": "p", "completion": "c", "label": True},
}


@pytest.mark.parametrize(
    ("kind", "record", "field", "expected"),
    [
        (
            "prompts",
            {"prompt": 42},
            "prompt",
            "expected a non-empty string or a list of {role, content} messages, got a number 42",
        ),
        ("sft", {"prompt": "p", "completion": ["x"]}, "completion", "'prompt' must be a message list too"),
        ("sft", {"prompt": MSGS, "completion": ["x"]}, "completion[0]", "expected a {role, content} object"),
        (
            "unpaired",
            {"prompt": "p", "completion": "c", "label": "yes"},
            "label",
            "expected true or false, got a string 'yes'",
        ),
        (
            "unpaired",
            {"prompt": "p", "completion": "c", "label": 1},
            "label",
            "expected true or false, got a number 1",
        ),
        (
            "prompts",
            {"messages": {"role": "user"}},
            "messages",
            "expected a list of {role, content} messages, got an object",
        ),
        (
            "preferences",
            {"prompt": "p", "chosen": "a", "rejected": "b", "margin": "1"},
            "margin",
            "expected a number, got a string '1'",
        ),
    ],
)
def test_wrong_type(tmp_path, kind, record, field, expected):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD[kind], record])
    err = error_of(path, kind=kind)
    assert_names(err, path, "line 2", field)
    assert expected in str(err)


@pytest.mark.parametrize("value", ["", "   ", "\n\t"])
def test_empty_or_blank_string(tmp_path, value):
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 6
        + [{"prompt": "p", "chosen": value, "rejected": "b"}],
    )
    err = error_of(path)
    assert_names(err, path, "line 7", "chosen")
    assert f"expected a non-empty string, got {value!r}" in str(err)
    if value == "":
        assert str(err) == f"{path}, line 7, field 'chosen': expected a non-empty string, got ''"


def test_empty_completion(tmp_path):
    path = write_jsonl(
        tmp_path / "sft.jsonl", [{"prompt": "p", "completion": "c"}, {"prompt": "q", "completion": ""}]
    )
    err = error_of(path)
    assert_names(err, path, "line 2", "completion")
    assert "expected a non-empty string, got ''" in str(err)


def test_broken_json_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "c",}\n', encoding="utf-8")
    err = error_of(path)
    assert_names(err, path, "line 3", None)
    assert err.line == 3
    assert "not valid JSON" in str(err) and "column" in str(err)
    assert "Expecting property name" in str(err)  # the JSON parser's own words


def test_broken_json_list(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[\n  {"prompt": "a"},\n  {"prompt": "b"\n]\n', encoding="utf-8")
    err = error_of(path)
    assert_names(err, path, "line 4", None)
    assert "not valid JSON" in str(err)


def test_json_file_with_one_object(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{\n  "prompt": "a"\n}\n', encoding="utf-8")
    err = error_of(path)
    assert str(err).startswith(f"{path}: holds a single JSON object; expected a JSON list")


def test_json_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n["prompt", "b"]\n', encoding="utf-8")
    err = error_of(path)
    assert_names(err, path, "line 2", None)
    assert "expected a JSON object" in str(err) and "got a list" in str(err)


def test_unknown_file_type(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("hello\n", encoding="utf-8")
    err = error_of(path)
    assert str(err).startswith(f"{path}: unknown file type '.txt'")
    for suffix in (".jsonl", ".json", ".csv", ".parquet", "save_to_disk"):
        assert suffix in str(err)


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "data.jsonl"
    err = error_of(path)
    assert str(err).startswith(f"{path}: no such file")


def test_folder_that_is_not_a_saved_dataset(tmp_path):
    err = error_of(tmp_path)
    assert str(err).startswith(f"{tmp_path}: is a folder but not one written by datasets")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("e.jsonl", ""),
        ("e.jsonl", "\n\n  \n"),
        ("e.csv", "prompt,completion\n"),
        ("e.csv", ""),
        ("e.json", "[]"),
    ],
)
def test_empty_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    err = error_of(path, kind="sft")
    assert str(err).startswith(f"{path}: holds no records")
    assert "'prompt' + 'completion'" in str(err)


def test_empty_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "e.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    assert str(error_of(path)).startswith(f"{path}: holds no records")


def test_mixed_kinds(tmp_path):
    sft = {"prompt": "p", "completion": "c"}
    pref = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "mixed.jsonl", [sft, sft, sft, sft, pref, sft, pref])
    err = error_of(path)
    assert_names(err, path, "line 5", "chosen")
    text = str(err)
    assert "sft on lines 1-4, 6" in text
    assert "preferences on lines 5, 7" in text
    assert "line 1 is sft" in text


def test_mixed_kinds_less_specific_record(tmp_path):
    rating = {"prompt": "p", "completion": "c", "rating": 1}
    path = write_jsonl(tmp_path / "r.jsonl", [rating, rating, {"prompt": "p", "completion": "c"}])
    err = error_of(path)
    assert_names(err, path, "line 3", "rating")  # the field the odd record lacks
    assert "ratings on lines 1-2; sft on line 3" in str(err)


def test_chosen_identical_to_rejected(tmp_path):
    path = write_jsonl(
        tmp_path / "prefs.jsonl",
        [
            {"prompt": "p", "chosen": "a", "rejected": "b"},
            {"prompt": "p", "chosen": "same", "rejected": "same"},
        ],
    )
    err = error_of(path)
    assert_names(err, path, "line 2", "rejected")
    assert "identical to 'chosen'" in str(err)


def test_chosen_identical_to_rejected_as_messages(tmp_path):
    path = write_jsonl(
        tmp_path / "prefs.jsonl", [{"prompt": MSGS, "chosen": ASSISTANT, "rejected": ASSISTANT}]
    )
    assert_names(error_of(path), path, "line 1", "rejected")


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('{"prompt": "p", "completion": "c", "rating": NaN}', "expected a finite number, got nan"),
        ('{"prompt": "p", "completion": "c", "rating": Infinity}', "expected a finite number, got inf"),
        ('{"prompt": "p", "completion": "c", "rating": "5"}', "expected a number, got a string '5'"),
        ('{"prompt": "p", "completion": "c", "rating": true}', "expected a number, got a boolean True"),
        ('{"prompt": "p", "completion": "c", "rating": [5]}', "expected a number, got a list"),
    ],
)
def test_bad_rating(tmp_path, line, expected):
    path = tmp_path / "ratings.jsonl"
    path.write_text('{"prompt": "p", "completion": "c", "rating": 5}\n' + line + "\n", encoding="utf-8")
    err = error_of(path)
    assert_names(err, path, "line 2", "rating")
    assert expected in str(err)


def test_nan_margin(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "margin": NaN}\n', encoding="utf-8")
    err = error_of(path)
    assert_names(err, path, "line 1", "margin")
    assert "finite" in str(err)


@pytest.mark.parametrize(
    ("messages", "field", "expected"),
    [
        (
            [{"role": "human", "content": "hi"}],
            "messages[0].role",
            "expected one of 'system', 'user', 'assistant', got 'human'",
        ),
        ([{"content": "hi"}], "messages[0].role", "no 'role' key"),
        (
            [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 3}],
            "messages[1].content",
            "expected a string, got a number 3",
        ),
        ([{"role": "user", "content": ["a"]}], "messages[0].content", "expected a string, got a list"),
        ([{"role": "user", "content": " "}], "messages[0].content", "expected a non-empty string"),
        (["hi"], "messages[0]", "expected a {role, content} object, got a string"),
        ([], "messages", "expected a non-empty list"),
    ],
)
def test_bad_messages(tmp_path, messages, field, expected):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": MSGS}, {"messages": messages}])
    err = error_of(path, kind="prompts")
    assert_names(err, path, "line 2", field)
    assert expected in str(err)


def test_sft_messages_must_end_with_assistant(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": MSGS}])
    err = error_of(path, kind="sft")
    assert_names(err, path, "line 1", "messages[0].role")
    assert "last turn to be the assistant's" in str(err)


def test_message_completion_needs_message_prompt(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [{"prompt": "p", "chosen": ASSISTANT, "rejected": "no"}])
    err = error_of(path)
    assert_names(err, path, "line 1", "chosen")
    assert "'prompt' must be a message list too" in str(err)


def test_prompt_and_messages_both_given(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "p", "messages": MSGS}])
    err = error_of(path)
    assert_names(err, path, "line 1", "messages")
    assert "not both" in str(err)


def test_bad_row_in_parquet_names_the_row(tmp_path):
    records = [{"prompt": "p", "completion": "c", "rating": r} for r in (1.0, 2.0, float("nan"))]
    path = write_parquet(tmp_path / "r.parquet", records)
    err = error_of(path)
    assert_names(err, path, "row 3", "rating")
    assert (err.unit, err.line) == ("row", 3)


def test_bad_row_in_saved_dataset_names_the_row(tmp_path):
    records = [
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "a", "rejected": " "},
    ]
    path = write_saved_dataset(tmp_path / "saved", records, split="train")
    err = error_of(path)
    assert_names(err, path, "row 2", "rejected")
    assert "split 'train'" in str(err)


@pytest.mark.parametrize(
    ("body", "line", "field", "expected"),
    [
        ("p,c,abc\n", 3, "rating", "expected a number, got 'abc'"),
        ("p,c,nan\n", 3, "rating", "expected a finite number, got 'nan'"),
        ("p,c,\n", 3, "rating", "expected a number, got a string ''"),
        ('"multi\nline",c,5\np,,5\n', 5, "completion", "expected a non-empty string, got ''"),
    ],
)
def test_bad_csv_cells(tmp_path, body, line, field, expected):
    path = tmp_path / "ratings.csv"
    path.write_text("prompt,completion,rating\np,c,5\n" + body, encoding="utf-8")
    err = error_of(path, kind="ratings")
    assert_names(err, path, f"line {line}", field)
    assert expected in str(err)


def test_bad_csv_label(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("prompt,completion,label\np,c,maybe\n", encoding="utf-8")
    err = error_of(path)
    assert_names(err, path, "line 2", "label")
    assert "expected true, false, 1 or 0, got 'maybe'" in str(err)


def test_bad_csv_messages_json(tmp_path):
    path = tmp_path / "chat.csv"
    path.write_text('messages\n"[{""role"": ""user"", ""content"": ""hi""}]"\n"[{""role"": ""user""}"\n')
    err = error_of(path)
    assert_names(err, path, "line 3", "messages")
    assert "not valid JSON" in str(err)


def test_csv_row_with_wrong_cell_count(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,completion\na,b\nc,d,e\n", encoding="utf-8")
    err = error_of(path)
    assert_names(err, path, "line 3", None)
    assert "3 cells but the header (line 1) has 2 columns" in str(err)


def test_not_utf8(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')
    err = error_of(path)
    assert_names(err, path, "line 2", None)
    assert "UTF-8" in str(err)


def test_data_error_survives_pickling():
    import pickle

    err = DataError("expected a number", path="d.csv", line=4, field="rating")
    back = pickle.loads(pickle.dumps(err))
    assert (back.path, back.line, back.field, str(back)) == (err.path, 4, "rating", str(err))
    assert str(back) == "d.csv, line 4, field 'rating': expected a number"
    assert isinstance(back, ValueError)


def test_unknown_kind_is_a_value_error(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a"}])
    with pytest.raises(ValueError, match="unknown data kind 'pairs'"):
        read_data(path, kind="pairs")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------
# splitting


def make_dataset(n: int) -> Dataset:
    return Dataset(
        path=Path("d.jsonl"),
        kind="prompts",
        records=[{"prompt": f"p{i}"} for i in range(n)],
        lines=[2 * i + 1 for i in range(n)],
    )


def test_split_is_deterministic_disjoint_and_keeps_lines():
    ds = make_dataset(40)
    train, test = split_data(ds, 0.25, seed=3)
    assert (len(train), len(test)) == (30, 10)
    again_train, again_test = split_data(ds, 0.25, seed=3)
    assert train.records == again_train.records and test.lines == again_test.lines
    prompts = [r["prompt"] for r in train] + [r["prompt"] for r in test]
    assert sorted(prompts) == sorted(r["prompt"] for r in ds)
    for part in (train, test):
        assert part.lines == sorted(part.lines)  # file order kept
        for record, line in zip(part.records, part.lines):
            assert line == 2 * int(record["prompt"][1:]) + 1
        assert part.kind == "prompts" and part.path == ds.path
    other_train, _ = split_data(ds, 0.25, seed=4)
    assert other_train.records != train.records


def test_split_count_and_rounding():
    ds = make_dataset(10)
    assert len(split_data(ds, 3, seed=0)[1]) == 3
    assert len(split_data(ds, 0.14, seed=0)[1]) == 1
    assert len(split_data(ds, 0.16, seed=0)[1]) == 2


@pytest.mark.parametrize("size", [0, 10, 11, 0.01])
def test_split_that_leaves_a_part_empty(size):
    with pytest.raises(DataError, match="cannot split") as info:
        split_data(make_dataset(10), size, seed=0)
    assert str(info.value).startswith("d.jsonl: ")


@pytest.mark.parametrize("size", [0.0, 1.0, -0.5, True, "0.1"])
def test_split_bad_test_size(size):
    with pytest.raises(ValueError):
        split_data(make_dataset(10), size, seed=0)


def test_nan_in_parquet_optional_margin_is_an_error_but_null_is_absent(tmp_path):
    records = [
        {"prompt": "p", "chosen": "a", "rejected": "b", "margin": None},
        {"prompt": "p", "chosen": "a", "rejected": "b", "margin": math.nan},
    ]
    path = write_parquet(tmp_path / "m.parquet", records)
    err = error_of(path)
    assert_names(err, path, "row 2", "margin")
    ok = read_data(write_parquet(tmp_path / "ok.parquet", records[:1]))
    assert "margin" not in ok[0]
