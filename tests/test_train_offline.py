"""The offline learners' shared tail (rlxf.algos.offline): the default validation split and the held-out
verdicts, against hand-computed numbers; reading train / eval data with one error wording."""

from __future__ import annotations

import json
import logging

import pytest

from rlxf.algos.offline import (
    auto_eval_size,
    chance_bound,
    held_out_report,
    held_out_warning,
    read_train_eval,
)
from rlxf.algos.sft import SFTConfig
from rlxf.config import ConfigError, load_config
from rlxf.data import DataError


@pytest.mark.parametrize(
    ("n", "held_out"),
    [
        (12, 0),  # the loop tests' 12 records: no split
        (99, 0),  # below 100: no split at all
        (100, 32),  # a tenth is 10, raised to the minimum 32
        (320, 32),
        (335, 34),  # 33.5 rounds to the even 34
        (600, 60),  # a tenth
        (5120, 512),
        (20000, 512),  # a tenth is 2000, capped at 512
    ],
)
def test_auto_eval_size(n, held_out):
    assert auto_eval_size(n) == held_out


def write_sft(path, n: int) -> str:
    path.write_text("".join(json.dumps({"prompt": f"Q{i}", "completion": f" A{i}"}) + "\n" for i in range(n)))
    return str(path)


def config(data: str, **options) -> SFTConfig:
    return load_config(SFTConfig, overrides={"data": data, "out": "unused", **options})


def prompts(ds) -> list[str]:
    return [r["prompt"] for r in ds]


def test_auto_split_is_seeded_and_disjoint(tmp_path):
    data = write_sft(tmp_path / "train.jsonl", 150)
    train, held = read_train_eval(config(data), "sft")
    assert (len(train), len(held)) == (118, 32)
    assert not set(prompts(train)) & set(prompts(held))
    again_train, again_held = read_train_eval(config(data), "sft")
    assert prompts(again_held) == prompts(held) and prompts(again_train) == prompts(train)
    _, other = read_train_eval(config(data, seed=1), "sft")
    assert prompts(other) != prompts(held)


def test_explicit_split_zero_and_eval_file(tmp_path, caplog):
    data = write_sft(tmp_path / "train.jsonl", 150)
    train, held = read_train_eval(config(data, eval_split=0.2), "sft")
    assert (len(train), len(held)) == (120, 30)  # an explicit share keeps its meaning
    train, held = read_train_eval(config(data, eval_split=0), "sft")
    assert (len(train), held) == (150, None)
    eval_file = write_sft(tmp_path / "eval.jsonl", 5)
    train, held = read_train_eval(config(data, eval_data=eval_file), "sft")
    assert (len(train), len(held)) == (150, 5)

    small = write_sft(tmp_path / "small.jsonl", 40)
    with caplog.at_level(logging.INFO, logger="rlxf"):
        train, held = read_train_eval(config(small), "sft")
    assert (len(train), held) == (40, None)
    assert "40 training records are too few to hold out a validation split" in caplog.text


def test_eval_split_values(tmp_path):
    assert config("x").eval_split == "auto"
    assert config("x", eval_split="0.25").eval_split == 0.25
    for bad in (1.0, -0.1, "half"):
        with pytest.raises(ConfigError, match="eval_split"):
            config("x", eval_split=bad)


def test_too_few_records_is_one_wording(tmp_path):
    data = write_sft(tmp_path / "few.jsonl", 20)
    with pytest.raises(DataError, match="16 training records once 4 are held out make no full batch"):
        read_train_eval(
            config(data, eval_split=0.2, train={"global_batch_size": 32, "micro_batch_size": 8}), "sft"
        )


def test_chance_bound_by_hand():
    # 2 * sqrt(0.25 / n) = 1 / sqrt(n)
    assert chance_bound(100) == pytest.approx(0.1)
    assert chance_bound(400) == pytest.approx(0.05)
    assert chance_bound(32) == pytest.approx(0.1767767, abs=1e-6)


def test_held_out_warning_rules():
    # accuracy on 100 pairs: 0.59 is within 0.5 + 0.1, 0.61 is not
    warning = held_out_warning("accuracy", None, 0.59, 100, "pairs")
    assert warning is not None and "0.590 on 100 pairs" in warning and "0.5 + 0.100" in warning
    assert "more or cleaner pairs" in warning and "train.learning_rate" in warning
    assert "train.num_epochs" in warning
    assert held_out_warning("accuracy", 0.5, 0.61, 100, "pairs") is None
    assert held_out_warning("accuracy", None, 0.3, 100, "pairs") is not None  # worse than chance: also
    # a loss must end below step 0's
    assert held_out_warning("loss", 0.693, 0.5, 16, "pairs") is None
    stuck = held_out_warning("loss", 0.693, 0.693, 16, "pairs")
    assert stuck is not None and "did not improve on 0.693 at step 0 (16 pairs)" in stuck
    assert held_out_warning("loss", None, 0.9, 16) is None  # no step-0 figure: no verdict


def test_held_out_report(caplog):
    with caplog.at_level(logging.INFO, logger="rlxf"):
        report = held_out_report(
            {"eval/loss": 0.69, "eval/accuracy": 0.5},
            {"eval/loss": 0.7, "eval/accuracy": 0.55},
            64,
            metric="accuracy",
            unit="pairs",
        )
    assert report["n"] == 64 and report["start"] == {"loss": 0.69, "accuracy": 0.5}
    assert report["end"] == {"loss": 0.7, "accuracy": 0.55}
    assert len(report["warnings"]) == 1 and caplog.records[-1].levelname == "WARNING"  # 0.05 < 0.125
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="rlxf"):
        empty = held_out_report(None, None, 0, metric="loss", unit="examples")
    assert empty == {"n": 0, "unit": "examples", "start": None, "end": None, "warnings": []}
    assert [r.levelname for r in caplog.records] == ["INFO"] and "no held-out data" in caplog.text
