"""The offline trainers on two processes (``torchrun``, gloo on CPU) against one process at the same global
batch: the same weights (within 1e-5), the same logged global metrics, and only the main process writing
the run's files (one ``metrics.jsonl``, one TensorBoard file, one summary), for sft (fp32, bf16-mixed),
dpo and reward training. Issue 13's first step; kto, RL and FSDP / DeepSpeed are still to come."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

PROMPTS = [
    ("Name a colour of the sky.", " Blue."),
    ("What is two plus two?", " Four."),
    ("Say hello.", " Hello there!"),
    ("Name a fruit.", " An apple."),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(name: str, model_dir: Path, data: Path, out: Path, precision: str) -> list[str]:
    return [
        "-m",
        "rlxf",
        *name.split(),
        "--model",
        str(model_dir),
        "--data",
        str(data),
        "--out",
        str(out),
        "eval_split=0",
        *(["max_length=64"] if name != "reward train" else []),
        *(["max_prompt_length=32"] if name == "dpo" else []),
        "train.global_batch_size=8",
        "train.micro_batch_size=2",
        "train.max_steps=4",
        "train.learning_rate=1e-3",
        "train.warmup_ratio=0",
        f"train.precision={precision}",
    ]


def run(args: list[str], processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if processes == 1:
        command = [sys.executable, *args]
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            f"--master_port={free_port()}",
            *args,  # torchrun's own -m: run rlxf as a module on each process
        ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def write_data(name: str, path: Path) -> Path:
    if name == "sft":
        records = [{"prompt": p, "completion": c} for p, c in PROMPTS * 6]
    else:  # preferences: the right answer over another prompt's
        records = [
            {"prompt": p, "chosen": c, "rejected": PROMPTS[(i + 1) % len(PROMPTS)][1]}
            for i, (p, c) in enumerate(PROMPTS * 6)
        ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "name, precision", [("sft", "fp32"), ("sft", "bf16-mixed"), ("dpo", "fp32"), ("reward train", "fp32")]
)
def test_two_processes_train_like_one(tiny_model_dir, tmp_path, name, precision):
    data = write_data(name, tmp_path / "train.jsonl")
    one, two = tmp_path / "one", tmp_path / "two"
    run(command(name, tiny_model_dir, data, one, precision), processes=1)
    run(command(name, tiny_model_dir, data, two, precision), processes=2)

    weights_one = load_file(one / "model" / "model.safetensors")
    weights_two = load_file(two / "model" / "model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    worst = max((weights_one[k].float() - weights_two[k].float()).abs().max().item() for k in weights_one)
    assert worst < 1e-5, worst
    start = load_file(tiny_model_dir / "model.safetensors")
    assert (
        any(not torch.equal(start[k], weights_one[k]) for k in start if k in weights_one)
        or name == "reward train"
    )

    lines_one = (one / "metrics.jsonl").read_text().splitlines()
    lines_two = (two / "metrics.jsonl").read_text().splitlines()
    assert len(lines_two) == len(lines_one) == 4  # one writer: a record per step, not one per process
    for a, b in zip(map(json.loads, lines_one), map(json.loads, lines_two)):
        assert a["step"] == b["step"]
        assert a.keys() == b.keys()
        for key in a.keys() - {"step", "tokens_per_s"}:  # every logged figure but the speed
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a, b)
    assert len(list((two / "tb").glob("events.*"))) == 1
    summary = json.loads((two / "summary.json").read_text())
    assert summary["metrics"]["loss"] == pytest.approx(json.loads(lines_one[-1])["loss"], rel=1e-4)
