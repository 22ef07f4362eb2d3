"""The shared training loop's guarantees (rlxf.train.loop), on the tiny model in fp32:

* per-unit normalisation over the whole step: one batch of 8 == eight accumulated batches of 1;
* exact resume after a real SIGKILL: the same losses and final weights as an uninterrupted run;
* precision: bf16-mixed keeps fp32 weights, bf16 stores bf16 weights;
* a non-finite loss stops the run naming the step; bad batch sizes fail at config build.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model

import rlxf.algos.offline as offline_module
from rlxf.algos.sft import SFTConfig, count_label_tokens, sft, sft_loss
from rlxf.config import ConfigError, load_config, to_yaml
from rlxf.data import IGNORE_INDEX, collate_sft
from rlxf.train.loop import HeldOut, LossOutput, Trainer, TrainingConfig
from rlxf.train.metrics import read_metrics
from rlxf.train.run import RunDir

N_EXAMPLES = 16


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny model runs fastest on one thread (two spin-wait for each other on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def examples(tiny_tokenizer) -> list[dict]:
    """SFT features of very different lengths (2, 9, 16 or 23 completion tokens), so per-token weighting matters."""
    gen = torch.Generator().manual_seed(1)
    vocab = len(tiny_tokenizer)
    out = []
    for i in range(N_EXAMPLES):
        prompt_len, completion_len = 3 + i % 4, 2 + (i * 7) % 28
        ids = torch.randint(0, vocab, (prompt_len + completion_len,), generator=gen).tolist()
        labels = [IGNORE_INDEX] * prompt_len + ids[prompt_len:]
        out.append(
            {"input_ids": ids, "labels": labels, "completion_mask": [int(x != IGNORE_INDEX) for x in labels]}
        )
    return out


def token_loss(model, batch) -> LossOutput:
    """SFT's learner: the loss summed over completion tokens (the loop divides by the step's tokens)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    loss, _ = sft_loss(logits, batch["labels"])
    return LossOutput(loss=loss, metrics={})


def make_trainer(
    tiny_tokenizer, examples, out: Path, *, micro: int, steps: int = 3, model=None, **kwargs
) -> Trainer:
    cfg = TrainingConfig(
        learning_rate=1e-3,
        warmup_ratio=0.0,
        lr_schedule="constant",
        max_steps=steps,
        global_batch_size=8,
        micro_batch_size=micro,
        precision=kwargs.pop("precision", "fp32"),
    )
    options = {"units": count_label_tokens, "compute_loss": token_loss, **kwargs}
    return Trainer(
        cfg,
        model=model if model is not None else build_tiny_model(tiny_tokenizer, seed=0),
        examples=examples,
        collate=functools.partial(collate_sft, pad_token_id=tiny_tokenizer.pad_token_id),
        run=RunDir.create(out, {"test": out.name}, tensorboard=False),
        seed=0,
        **options,
    )


def train(trainer: Trainer) -> tuple[list[float], dict[str, torch.Tensor]]:
    trainer.fit()
    trainer.run.close()
    losses = [r["loss"] for r in read_metrics(trainer.run.metrics_path)]
    return losses, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ------------------------------------------------------------------------------------ normalisation


def test_one_batch_of_8_equals_8_accumulated_batches_of_1(tiny_tokenizer, examples, tmp_path):
    losses_8, params_8 = train(make_trainer(tiny_tokenizer, examples, tmp_path / "batch8", micro=8))
    losses_1, params_1 = train(make_trainer(tiny_tokenizer, examples, tmp_path / "micro1", micro=1))
    assert len(losses_8) == len(losses_1) == 3
    assert losses_1 == pytest.approx(losses_8, abs=1e-5)
    assert max_difference(params_1, params_8) < 1e-5

    # The test can fail: averaging per-micro-batch means (each example's mean token loss, then the mean
    # of those) weighs a token of a short example more, and ends elsewhere.
    def mean_per_example(model, batch) -> LossOutput:
        loss, count = token_loss(model, batch).loss, count_label_tokens(batch)
        return LossOutput(loss=loss / count, metrics={})

    wrong = make_trainer(
        tiny_tokenizer,
        examples,
        tmp_path / "wrong",
        micro=1,
        units=lambda b: 1,
        compute_loss=mean_per_example,
    )
    losses_wrong, params_wrong = train(wrong)
    assert abs(losses_wrong[0] - losses_8[0]) > 1e-3
    assert max_difference(params_wrong, params_8) > 1e-4


# ------------------------------------------------------------------------------------ exact resume

# The child runs `rlxf sft` and SIGKILLs itself in the middle of optimizer step KILL_STEP (after the
# checkpoint of step 2, after step 3 was logged): nothing gets the chance to clean up.
CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import rlxf.algos.sft as sft_module
    from rlxf.algos.sft import SFTConfig
    from rlxf.config import load_config

    config_file, kill_step, micro_per_step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    original, calls = sft_module.fusable_head, 0

    def fusable_head(model):  # called once per micro-batch's loss
        global calls
        calls += 1
        if calls == (kill_step - 1) * micro_per_step + 1:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(model)

    sft_module.fusable_head = fusable_head
    sft_module.sft(load_config(SFTConfig, config_file))
    """
)


def sft_records(n: int) -> list[dict]:
    words = "the movie was a delight from start to finish and the cast was wonderful".split()
    return [
        {"prompt": " ".join(words[: 2 + i % 3]), "completion": " " + " ".join(words[i % 5 : i % 5 + 2 + i])}
        for i in range(n)
    ]


def resume_config(model_dir: Path, data: Path, out: Path) -> SFTConfig:
    overrides = {
        "model": {"name_or_path": str(model_dir)},
        "data": str(data),
        "out": str(out),
        "max_length": 64,
        "train": {
            "precision": "fp32",
            "learning_rate": 1e-3,
            "max_steps": 6,
            "micro_batch_size": 2,
            "global_batch_size": 4,
            "save_every": 2,
        },
    }
    return load_config(SFTConfig, overrides=overrides)


def saved_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(out / "model" / "model.safetensors")


def test_resume_after_sigkill_continues_exactly(tiny_model_dir, tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sft_records(12)), encoding="utf-8")

    # A: six steps without interruption (3 steps per epoch: the resume crosses an epoch boundary).
    cfg_a = resume_config(tiny_model_dir, data, tmp_path / "a")
    sft(cfg_a)
    steps_a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "a" / "metrics.jsonl")}
    assert sorted(steps_a) == [1, 2, 3, 4, 5, 6]

    # B: the same run in a child process, killed with SIGKILL during step 4.
    cfg_b = resume_config(tiny_model_dir, data, tmp_path / "b")
    config_file = tmp_path / "b.yaml"
    config_file.write_text(to_yaml(cfg_b), encoding="utf-8")
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, str(script), str(config_file), "4", "2"], env=env, timeout=180, capture_output=True
    )
    assert child.returncode == -9, child.stderr.decode()[-2000:]
    out_b = tmp_path / "b"
    assert sorted(p.name for p in (out_b / "checkpoints").glob("step-*")) == ["step-000002"]
    assert [r["step"] for r in read_metrics(out_b / "metrics.jsonl")] == [1, 2, 3]  # step 3 ran, unsaved
    assert not (out_b / "summary.json").exists() and not (out_b / "model").exists()

    # Resume B in this process: steps 3-6 run again from the checkpoint of step 2.
    final = sft(dataclasses.replace(cfg_b, resume=True))
    records_b = read_metrics(out_b / "metrics.jsonl")
    assert [r["step"] for r in records_b] == [1, 2, 3, 4, 5, 6]  # each step exactly once
    for record in records_b:
        assert record["loss"] == pytest.approx(steps_a[record["step"]], abs=1e-5), record["step"]
    assert final["loss"] == pytest.approx(steps_a[6], abs=1e-5)
    assert json.loads((out_b / "summary.json").read_text())["resumed_from_step"] == 2
    assert max_difference(saved_weights(out_b), saved_weights(tmp_path / "a")) < 1e-5


# ------------------------------------------------------------------------------------ precision


def test_bf16_mixed_computes_in_bf16_and_keeps_fp32_weights(tiny_tokenizer, examples, tmp_path):
    seen = []

    def loss_seeing_dtype(model, batch) -> LossOutput:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        seen.append(logits.dtype)
        loss, _ = sft_loss(logits, batch["labels"])
        return LossOutput(loss=loss, metrics={})

    trainer = make_trainer(
        tiny_tokenizer,
        examples,
        tmp_path / "mixed",
        micro=8,
        steps=1,
        precision="bf16-mixed",
        compute_loss=loss_seeing_dtype,
    )
    losses, params = train(trainer)
    assert seen == [torch.bfloat16]  # matmuls ran under bf16 autocast
    assert math.isfinite(losses[0])
    assert all(p.dtype == torch.float32 for p in params.values())
    assert all(s["exp_avg"].dtype == torch.float32 for s in trainer.optimizer.state.values())


def test_precision_bf16_trains_bf16_weights(tiny_model_dir, tmp_path, monkeypatch):
    captured = {}
    original = offline_module.save_model

    def save_model(model, tokenizer, out_dir):
        captured["dtypes"] = {p.dtype for p in model.parameters()}
        return original(model, tokenizer, out_dir)

    monkeypatch.setattr(offline_module, "save_model", save_model)
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in sft_records(8)), encoding="utf-8")
    cfg = resume_config(tiny_model_dir, data, tmp_path / "bf16")
    cfg.train.precision, cfg.train.max_steps, cfg.train.save_every = "bf16", 1, 0
    final = sft(cfg)
    assert captured["dtypes"] == {torch.bfloat16}
    assert math.isfinite(final["loss"])


# ------------------------------------------------------------------------------------ held-out cadence


def test_evaluates_at_step_0_every_eval_every_and_at_the_end(tiny_tokenizer, examples, tmp_path):
    """Cadence: evaluate before the first step (logged at step 0), at eval_every, and after the last step in
    that step's record; eval_start / eval_end hold the two ends."""
    seen = []

    def score(model, batch) -> dict[str, torch.Tensor]:
        seen.append(len(seen))
        return {"n": torch.full((len(batch),), float(len(seen)))}

    def summarize(figures) -> dict[str, float]:
        return {"loss": figures["n"].mean().item()}  # 1.0 at step 0, then 2.0, 3.0 ...

    held_out = HeldOut(examples[:3], 8, score, summarize)  # one batch
    trainer = make_trainer(tiny_tokenizer, examples, tmp_path / "run", micro=8, steps=5, held_out=held_out)
    trainer.cfg.eval_every = 2
    trainer.fit()
    trainer.run.close()
    records = read_metrics(trainer.run.metrics_path)
    assert [(r["step"], r.get("eval/loss")) for r in records] == [
        (0, 1.0),
        (1, None),
        (2, 2.0),
        (3, None),
        (4, 3.0),
        (5, 4.0),  # the end: evaluated into the last step's record, not a record of its own
    ]
    assert "loss" not in records[0] and "loss" in records[-1]
    assert trainer.eval_start == {"eval/loss": 1.0} and trainer.eval_end == {"eval/loss": 4.0}


# ------------------------------------------------------------------------------------ failures


def test_a_nan_loss_stops_the_run_naming_the_step(tiny_tokenizer, examples, tmp_path):
    calls = []

    def nan_at_step_2(model, batch) -> LossOutput:
        calls.append(1)
        out = token_loss(model, batch)
        return LossOutput(loss=out.loss * float("nan"), metrics={}) if len(calls) == 2 else out

    trainer = make_trainer(tiny_tokenizer, examples, tmp_path / "nan", micro=8, compute_loss=nan_at_step_2)
    with pytest.raises(FloatingPointError, match="step 2"):
        trainer.fit()
    trainer.run.close()
    assert [r["step"] for r in read_metrics(trainer.run.metrics_path)] == [1]


def test_global_batch_must_be_a_multiple_of_micro_batch():
    with pytest.raises(ValueError, match="multiple of micro_batch_size"):
        TrainingConfig(global_batch_size=10, micro_batch_size=4)
    with pytest.raises(ConfigError, match="multiple of micro_batch_size"):
        load_config(
            SFTConfig,
            overrides=["data=x.jsonl", "out=o", "train.global_batch_size=6", "train.micro_batch_size=4"],
        )


@pytest.mark.parametrize("sharding, calls", [("none", [[2, 3]]), ("fsdp2", [[2, 3], [0, 1]])])
def test_held_out_batches_are_dealt_to_the_processes(
    tiny_tokenizer, examples, tmp_path, monkeypatch, sharding, calls
):
    """Process 1 of 2 scores only its batches (the 2nd of three); a sharded model's process also runs the
    busiest process's number of forwards (its extra one discarded); summarize gets every batch's figures
    in file order (here the other process's come from a stand-in for the gather)."""
    import accelerate.utils

    seen = []

    def score(model, batch) -> dict[str, torch.Tensor]:
        seen.append(batch)
        return {"x": torch.tensor(batch, dtype=torch.float64)}

    summarized = []
    held_out = HeldOut(
        list(range(5)), 2, score, lambda figures: summarized.append(figures["x"]) or {"n": 0.0}
    )
    trainer = make_trainer(tiny_tokenizer, examples, tmp_path / "run", micro=8, steps=1, held_out=held_out)
    trainer.accelerator = types.SimpleNamespace(num_processes=2, process_index=1, device=torch.device("cpu"))
    trainer.sharding = sharding
    others = [(0, {"x": torch.tensor([0.0, 1.0], dtype=torch.float64)}), (4, {"x": torch.tensor([4.0])})]
    monkeypatch.setattr(accelerate.utils, "gather_object", lambda mine: [*others, *mine])
    assert trainer._evaluate() == {"eval/n": 0.0}
    trainer.run.close()
    assert seen == calls
    assert summarized[0].tolist() == [0, 1, 2, 3, 4]
