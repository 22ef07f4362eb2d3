"""Supervised fine-tuning: the loss against hand-computed values, and whole runs of ``rlxf.algos.sft.sft``
on the tiny model (run folder, a saved model that plain ``transformers`` loads, LoRA merged, bad data,
memorisation)."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import rlxf.algos.offline as offline_module
from rlxf.algos.sft import SFTConfig, count_label_tokens, pack_examples, sft, sft_loss
from rlxf.config import ConfigError, load_config
from rlxf.data import IGNORE_INDEX, DataError, tokenize_sft
from rlxf.train.metrics import read_metrics
from rlxf.train.run import RunExistsError

PROMPTS = [
    ("The movie was", " a delight from start to finish."),
    ("The restaurant served", " cold soup; I will not return."),
    ("This book is", " long but rewarding."),
    ("Our trip to the coast", " was sunny, calm and cheap."),
    ("The product", " broke after two days."),
    ("Customer service", " answered quickly and fixed the problem."),
    ("Human: hello there!", " Assistant: hi, how can I help you today?"),
    ("The ending", " surprised me."),
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def sft_records(n: int) -> list[dict]:
    return [
        {"prompt": PROMPTS[i % len(PROMPTS)][0], "completion": PROMPTS[i % len(PROMPTS)][1]} for i in range(n)
    ]


def make_config(model_dir: Path, data: Path, out: Path, eval_split: float = 0.0, **train) -> SFTConfig:
    """An SFT config built the way the command line builds it (``load_config`` with overrides)."""
    train_options = {
        "precision": "fp32",
        "micro_batch_size": 4,
        "global_batch_size": 8,
        "max_steps": 3,
        "learning_rate": 1e-3,
        "warmup_ratio": 0.0,
        **train,
    }
    overrides = {
        "model": {"name_or_path": str(model_dir)},
        "data": str(data),
        "out": str(out),
        "max_length": 64,
        "eval_split": eval_split,
        "train": train_options,
    }
    return load_config(SFTConfig, overrides=overrides)


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model runs fastest on one thread (two spin-wait for each other on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def captured_model(monkeypatch):
    """The trained in-memory model that ``sft`` hands to ``save_model`` (as ``captured["model"]``)."""
    captured: dict = {}
    original = offline_module.save_model

    def save_model(model, tokenizer, out_dir):
        captured["model"] = model
        return original(model, tokenizer, out_dir)

    monkeypatch.setattr(offline_module, "save_model", save_model)
    return captured


# A fresh interpreter with nothing but transformers: the saved folder must be a plain HF model.
LOAD_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model_dir, out = sys.argv[1], sys.argv[2]
    AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    with torch.no_grad():
        torch.save(model(input_ids=ids).logits, out)
    assert "rlxf" not in sys.modules and "peft" not in sys.modules
    """
)
PROBE_IDS = torch.tensor([[5, 17, 42, 99, 7, 3]])


def logits_in_fresh_interpreter(model_dir: Path, tmp_path: Path) -> torch.Tensor:
    script = tmp_path / "load_plain.py"
    script.write_text(LOAD_SCRIPT, encoding="utf-8")
    out = tmp_path / "logits.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(model_dir), str(out)], check=True, timeout=120, env=env)
    return torch.load(out)


def in_memory_logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=PROBE_IDS).logits.float()


# ---------------------------------------------------------------------------------------------- loss


def test_sft_loss_matches_a_hand_computed_example():
    # vocab of 3, one sequence of 4 tokens; position t predicts labels[t + 1]
    logits = torch.tensor(
        [[[1.0, 2.0, 0.0], [100.0, -50.0, 3.0], [0.5, 0.0, -1.0], [9.0, 9.0, 9.0]]], requires_grad=True
    )
    labels = torch.tensor([[2, 1, IGNORE_INDEX, 0]])  # labels[0] is never predicted; position 1 is masked
    loss, count = sft_loss(logits, labels)

    def nll(row, target):  # -log softmax(row)[target]
        return -(row[target] - math.log(sum(math.exp(v) for v in row)))

    expected = nll([1.0, 2.0, 0.0], 1) + nll([0.5, 0.0, -1.0], 0)
    assert count == 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert count_label_tokens({"labels": labels}) == count
    # masked positions get no gradient: their logits do not matter
    loss.backward()
    assert torch.all(logits.grad[0, 1] == 0) and torch.all(logits.grad[0, 3] == 0)


def test_sft_loss_computes_in_float32_from_bf16_logits():
    logits = torch.randn(2, 5, 7)
    labels = torch.randint(0, 7, (2, 5))
    labels[0, :3] = IGNORE_INDEX
    full, n = sft_loss(logits, labels)
    half, n_half = sft_loss(logits.bfloat16(), labels)
    assert half.dtype == torch.float32 and n == n_half == 6
    assert half.item() == pytest.approx(full.item(), rel=2e-2)


def test_packing_keeps_labels_and_drops_rows_without_targets():
    a = {"input_ids": [1, 2, 3, 4], "labels": [IGNORE_INDEX, IGNORE_INDEX, 3, 4]}
    b = {"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, 6, 7]}
    rows = pack_examples([a, b, {"input_ids": [8, 9], "labels": [IGNORE_INDEX, IGNORE_INDEX]}], max_length=3)
    # stream 1 2 3 | 4 5 6 | 7 8 9 -> the last row has no label after its first token and is dropped
    assert [r["input_ids"] for r in rows] == [[1, 2, 3], [4, 5, 6]]
    assert [r["labels"] for r in rows] == [[IGNORE_INDEX, IGNORE_INDEX, 3], [4, IGNORE_INDEX, 6]]
    assert rows[1]["completion_mask"] == [1, 0, 1]


def test_config_defaults_and_checks():
    cfg = load_config(SFTConfig, overrides=["data=x.jsonl", "out=o", "train.max_steps=3"])
    assert cfg.train.learning_rate == 2e-5  # SFT's own default survives overriding another train option
    assert (cfg.max_length, cfg.truncation, cfg.packing) == (512, "keep_start", False)
    with pytest.raises(ConfigError, match="max_length"):
        load_config(SFTConfig, overrides=["data=x.jsonl", "out=o", "max_length=1"])
    with pytest.raises(ConfigError, match="truncation"):
        load_config(SFTConfig, overrides=["data=x.jsonl", "out=o", "truncation=middle"])


# ---------------------------------------------------------------------------------------------- runs


def test_sft_run_trains_and_writes_a_plain_hf_model(tiny_model_dir, tmp_path, captured_model):
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "train.jsonl", sft_records(20))
    out = tmp_path / "run"
    final = sft(make_config(tiny_model_dir, data, out, eval_split=0.2))  # 16 to train on, 4 held out

    for entry in ("config.yaml", "metrics.jsonl", "summary.json", "model/config.json"):
        assert (out / entry).exists(), entry
    assert not (out / "checkpoints").exists()  # a finished run keeps model/, no optimizer state
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and 0 <= r["token_accuracy"] <= 1 for r in records if "loss" in r)
    assert math.isfinite(final["loss"])
    assert final["eval/perplexity"] == pytest.approx(math.exp(final["eval/loss"]))
    assert records[-1]["eval/loss"] == final["eval/loss"] and math.isfinite(final["eval/loss"])
    assert records[0] == {
        "step": 0,
        "eval/loss": records[0]["eval/loss"],
        "eval/perplexity": pytest.approx(math.exp(records[0]["eval/loss"])),
    }  # the untrained model, evaluated before the first step
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["num_tokens"] > 0
    held_out = summary["held_out"]
    assert held_out["n"] == 4 and held_out["unit"] == "examples"
    assert held_out["start"]["loss"] == records[0]["eval/loss"]
    assert held_out["end"]["loss"] == final["eval/loss"] == summary["metrics"]["eval/loss"]
    assert final.summary == summary and final.out == out and final.model_dir == out / "model"

    trained = captured_model["model"]
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    before, after = initial.state_dict(), trained.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "training changed no parameter"

    fresh = logits_in_fresh_interpreter(out / "model", tmp_path)
    torch.testing.assert_close(fresh, in_memory_logits(trained), rtol=0, atol=1e-5)


def test_lora_sft_saves_a_merged_model(tiny_model_dir, tmp_path, captured_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    data = write_jsonl(tmp_path / "train.jsonl", sft_records(16))
    out = tmp_path / "run"
    cfg = make_config(tiny_model_dir, data, out, learning_rate=1e-2)
    cfg.model.lora.r = 4
    sft(cfg)

    trained = captured_model["model"]
    assert isinstance(trained, PeftModel)
    saved = sorted(p.name for p in (out / "model").iterdir())
    assert not [name for name in saved if name.startswith("adapter")], saved
    assert "model.safetensors" in saved

    merged = logits_in_fresh_interpreter(out / "model", tmp_path)
    torch.testing.assert_close(merged, in_memory_logits(trained), rtol=0, atol=1e-5)
    base = in_memory_logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    assert (merged - base).abs().max() > 1e-4, "the adapters were not merged into the saved weights"


def test_bad_data_stops_before_anything_is_written(tiny_model_dir, tmp_path):
    records = sft_records(16)
    records[2]["completion"] = ""
    data = write_jsonl(tmp_path / "train.jsonl", records)
    out = tmp_path / "run"
    with pytest.raises(DataError) as info:
        sft(make_config(tiny_model_dir, data, out))
    message = str(info.value)
    assert "train.jsonl" in message and "line 3" in message and "completion" in message
    assert not out.exists()

    too_few = write_jsonl(tmp_path / "few.jsonl", sft_records(4))  # fewer than global_batch_size 8
    with pytest.raises(ValueError, match="no full batch"):
        sft(make_config(tiny_model_dir, too_few, out))
    assert not out.exists()


def test_training_loss_falls_when_memorising(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", sft_records(2) * 4)
    out = tmp_path / "run"
    sft(
        make_config(
            tiny_model_dir,
            data,
            out,
            max_steps=20,
            micro_batch_size=4,
            global_batch_size=4,
            learning_rate=1e-2,
            lr_schedule="constant",
        )
    )
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert len(losses) == 20
    # two sequences seen over and over: the loss falls from ~log(vocab) = 5.8 to ~1 (0.5 leaves a wide margin)
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses


def test_packing_fills_rows_and_trains(tiny_model_dir, tiny_tokenizer, tmp_path, caplog):
    records = sft_records(16)
    data = write_jsonl(tmp_path / "train.jsonl", records)
    out = tmp_path / "run"
    cfg = make_config(tiny_model_dir, data, out, max_steps=2, micro_batch_size=2, global_batch_size=4)
    cfg.packing, cfg.max_length = True, 32
    with caplog.at_level(logging.INFO, logger="rlxf"):
        final = sft(cfg)
    total = sum(len(tokenize_sft(r, tiny_tokenizer)["input_ids"]) for r in records)
    packed = re.search(r"packed 16 examples into (\d+) rows", caplog.text)
    assert packed and int(packed.group(1)) == math.ceil(total / 32)
    # the rows of a step are full (2 steps x 4 rows x 32 tokens), but for a shorter last row
    assert 2 * 4 * 32 - 32 < final["train_tokens"] <= 2 * 4 * 32
    assert math.isfinite(final["loss"])


def test_resuming_a_finished_run_without_checkpoints_is_refused(tiny_model_dir, tmp_path):
    """A finished run keeps no checkpoint by default, so --resume cannot extend it: a clear error that
    leaves the run as it was (never a silent restart that wipes it)."""
    data = write_jsonl(tmp_path / "train.jsonl", sft_records(16))
    out = tmp_path / "run"
    sft(make_config(tiny_model_dir, data, out, max_steps=1))
    before = (out / "model" / "model.safetensors").read_bytes()
    cfg = make_config(tiny_model_dir, data, out, max_steps=2)
    cfg.resume = True
    with pytest.raises(RunExistsError, match="finished run whose checkpoints were not kept") as info:
        sft(cfg)
    assert "keep_final_checkpoint" in str(info.value) and "--overwrite" in str(info.value)
    assert (out / "model" / "model.safetensors").read_bytes() == before
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


def test_chunked_head_trains_as_the_models_own_logits(tiny_model_dir, tmp_path, monkeypatch):
    """SFT's loss through the chunked output head (rlxf/models/lm_head.py) logs the same loss and token
    accuracy and ends at the same weights as through the model's own logits."""
    from safetensors.torch import load_file

    import rlxf.algos.sft as sft_module

    data = write_jsonl(tmp_path / "train.jsonl", sft_records(8))
    runs = {}
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(sft_module, "fusable_head", lambda model: None)
        out = tmp_path / ("fused" if fused else "plain")
        sft(make_config(tiny_model_dir, data, out))
        runs[fused] = (read_metrics(out / "metrics.jsonl"), load_file(out / "model" / "model.safetensors"))
    (fused_log, fused_weights), (plain_log, plain_weights) = runs[True], runs[False]
    assert [r["step"] for r in fused_log] == [r["step"] for r in plain_log]
    for a, b in zip(fused_log, plain_log):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["token_accuracy"] == b["token_accuracy"]
    assert max((fused_weights[k] - plain_weights[k]).abs().max().item() for k in plain_weights) < 1e-5
