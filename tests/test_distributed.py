"""The offline trainers on two processes (gloo on CPU) against one process at the same global batch: the
same weights (within 1e-5), the same logged global metrics (held-out figures within 1e-5, evaluated half
by each process), and only the main process writing the run's files (one ``metrics.jsonl``, one
TensorBoard file, one summary).

* sft, dpo and reward training (fp32 and bf16-mixed) and kto under ``torchrun``; sft under ``accelerate launch``
  with ``configs/accelerate/ddp.yaml``; sft and reward training with ``fsdp2.yaml`` (FSDP2 on CPU: the
  saved ``model/`` is a plain HF folder with every key);
* a run killed (SIGKILL to torchrun and its workers) after a checkpoint and resumed with ``--resume`` ends where
  an uninterrupted run ends, with the same ``metrics.jsonl``;
* FSDP2 checkpoints hold the full optimizer state, and a resumed run equals an uninterrupted one;
* DeepSpeed ZeRO-2 and ZeRO-3 (marker ``deepspeed``, needs ``rlxf[deepspeed]``): the same, through
  ``accelerate launch --config_file configs/accelerate/deepspeed_zero{2,3}.yaml``, with exit status 0.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from rlxf.train.checkpoint import latest_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
ACCELERATE = Path(sys.executable).with_name("accelerate")

PROMPTS = [
    ("Name a colour of the sky.", " Blue."),
    ("What is two plus two?", " Four."),
    ("Say hello.", " Hello there!"),
    ("Name a fruit.", " An apple."),
]
HELD_OUT = [  # five records: three eval batches of two, dealt 2 + 1 to two processes
    ("Name a colour of grass.", " Green."),
    ("What is one plus one?", " Two."),
    ("Say goodbye.", " Goodbye!"),
    ("Name a vegetable.", " A carrot."),
    ("Name an animal.", " A cat."),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(name: str, model_dir: Path, data: Path, out: Path, precision: str, *extra: str) -> list[str]:
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
        *(["max_prompt_length=32"] if name in ("dpo", "kto") else []),
        "train.global_batch_size=8",
        "train.micro_batch_size=2",
        "train.max_steps=4",
        "train.learning_rate=1e-3",
        "train.warmup_ratio=0",
        f"train.precision={precision}",
        *extra,
    ]


def launch(args: list[str], processes: int, launcher: str = "torchrun") -> list[str]:
    """The command line that runs ``python -m rlxf ...`` (``args``) on ``processes`` processes."""
    if processes == 1:
        return [sys.executable, *args]
    if launcher == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            f"--master_port={free_port()}",
            *args,  # torchrun's own -m: run rlxf as a module on each process
        ]
    return [
        str(ACCELERATE),
        "launch",
        "--config_file",
        str(CONFIGS / f"{launcher}.yaml"),
        "--num_processes",
        str(processes),
        "--main_process_port",
        str(free_port()),
        *args,
    ]


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(args: list[str], processes: int, launcher: str = "torchrun") -> str:
    """Run to the end; exit status 0 asserted. Returns stderr."""
    return run_env(args, processes, {}, launcher)


def run_env(args: list[str], processes: int, env: dict[str, str], launcher: str = "torchrun") -> str:
    """:func:`run` with ``env`` added to the environment."""
    result = subprocess.run(
        launch(args, processes, launcher), env={**ENV, **env}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def write_data(name: str, path: Path, pairs=PROMPTS * 6) -> Path:
    if name == "sft":
        records = [{"prompt": p, "completion": c} for p, c in pairs]
    elif name == "kto":  # unpaired: the right answer is desirable, another prompt's answer is not
        records = [
            {
                "prompt": p,
                "completion": c if i % 2 == 0 else pairs[(i + 1) % len(pairs)][1],
                "label": i % 2 == 0,
            }
            for i, (p, c) in enumerate(pairs)
        ]
    else:  # preferences: the right answer over another prompt's
        records = [
            {"prompt": p, "chosen": c, "rejected": pairs[(i + 1) % len(pairs)][1]}
            for i, (p, c) in enumerate(pairs)
        ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def max_weight_diff(a: Path, b: Path) -> float:
    weights_a = load_file(a / "model" / "model.safetensors")
    weights_b = load_file(b / "model" / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()  # every key, tied embeddings saved as one process saves them
    return max((weights_a[k].float() - weights_b[k].float()).abs().max().item() for k in weights_a)


def assert_same_metrics(one: Path, two: Path, steps: int) -> None:
    records_one = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    records_two = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(records_two) == len(records_one)  # one writer: a record per step, not one per process
    assert [r["step"] for r in records_one] == [r["step"] for r in records_two]
    assert records_one[-1]["step"] == steps
    for a, b in zip(records_one, records_two):
        assert a.keys() == b.keys()
        for key in a.keys() - {"step", "tokens_per_s"}:  # every logged figure but the speed
            if key.startswith("eval/"):  # within 1e-5 (relative for figures above 1: a perplexity of 291)
                assert abs(b[key] - a[key]) <= 1e-5 * max(1.0, abs(a[key])), (key, a, b)
            else:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (key, a, b)


CASES = [
    ("sft", "fp32", "torchrun", True),
    ("sft", "bf16-mixed", "torchrun", False),
    ("dpo", "fp32", "torchrun", True),
    ("dpo", "bf16-mixed", "torchrun", False),
    ("reward train", "fp32", "torchrun", False),
    ("reward train", "bf16-mixed", "torchrun", True),
    ("kto", "fp32", "torchrun", True),
    ("sft", "fp32", "ddp", False),
    ("sft", "fp32", "fsdp2", True),
    ("reward train", "fp32", "fsdp2", True),
]


@pytest.mark.parametrize("name, precision, launcher, held_out", CASES)
def test_two_processes_train_like_one(tiny_model_dir, tmp_path, name, precision, launcher, held_out):
    kind = name.split()[0]
    data = write_data(kind, tmp_path / "train.jsonl")
    extra = [f"--eval-data={write_data(kind, tmp_path / 'eval.jsonl', HELD_OUT)}"] if held_out else []
    one, two = tmp_path / "one", tmp_path / "two"
    run(command(name, tiny_model_dir, data, one, precision, *extra), processes=1)
    log = run(command(name, tiny_model_dir, data, two, precision, *extra), processes=2, launcher=launcher)
    layout = "fsdp2" if launcher == "fsdp2" else "replicated"
    assert log.count(f"training on 2 processes: {layout}") == 2, log[-3000:]

    worst = max_weight_diff(one, two)
    assert worst < 1e-5, worst
    start = load_file(tiny_model_dir / "model.safetensors")
    weights = load_file(one / "model" / "model.safetensors")
    assert any(not torch.equal(start[k], weights[k]) for k in start if k in weights) or kind == "reward"

    assert_same_metrics(one, two, steps=4)
    records = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert held_out == ("eval/loss" in records[0] and "eval/loss" in records[-1])
    assert len(list((two / "tb").glob("events.*"))) == 1
    summary = json.loads((two / "summary.json").read_text())
    assert summary["metrics"]["loss"] == pytest.approx(records[-1]["loss"], rel=1e-4)
    if launcher == "fsdp2":  # the gathered model/ is a plain HF folder
        from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

        auto = AutoModelForSequenceClassification if kind == "reward" else AutoModelForCausalLM
        model = auto.from_pretrained(two / "model")
        reference = auto.from_pretrained(one / "model")
        ids = torch.tensor([[1, 5, 9, 14, 2]])
        assert torch.allclose(model(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-4)


def test_killed_two_process_run_resumes_like_an_uninterrupted_one(tiny_model_dir, tmp_path):
    """A real interruption: SIGKILL to torchrun and its workers once a checkpoint is complete, then
    ``--resume`` on two processes; the weights and every logged figure equal an uninterrupted run's."""
    data = write_data("sft", tmp_path / "train.jsonl")
    held_out = write_data("sft", tmp_path / "eval.jsonl", HELD_OUT)
    steps = 40
    extra = [
        f"--eval-data={held_out}",
        f"train.max_steps={steps}",
        "train.save_every=2",
        "train.eval_every=10",
    ]
    killed, whole = tmp_path / "killed", tmp_path / "whole"

    args = command("sft", tiny_model_dir, data, killed, "fp32", *extra)
    resumed_from = kill_after_first_checkpoint(args, killed, tmp_path / "killed.log")
    assert 2 <= resumed_from < steps

    run([*args, "--resume"], processes=2)
    run(command("sft", tiny_model_dir, data, whole, "fp32", *extra), processes=2)
    assert max_weight_diff(whole, killed) < 1e-5
    assert_same_metrics(whole, killed, steps=steps)
    summary = json.loads((killed / "summary.json").read_text())
    assert summary["resumed_from_step"] == resumed_from


def kill_after_first_checkpoint(args: list[str], out: Path, log_path: Path) -> int:
    """Launch ``python -m rlxf ...`` (``args``) on two processes, SIGKILL torchrun and its workers once
    ``out`` holds a complete checkpoint at step 2, and return the step of the latest complete checkpoint
    (what ``--resume`` continues from)."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(launch(args, 2), env=ENV, stdout=log, stderr=log)
        deadline = time.monotonic() + 300
        while not (out / "checkpoints" / "step-000002" / "meta.json").is_file():
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.005)
        # torchrun starts each worker in a session of its own: kill every process of the launch
        launched = psutil.Process(process.pid)
        every = [*launched.children(recursive=True), launched]
        for one in every:
            one.send_signal(signal.SIGKILL)
        psutil.wait_procs(every, timeout=30)
        process.wait()
    assert not (out / "summary.json").exists()  # interrupted, not finished
    return int(latest_checkpoint(out / "checkpoints").name.removeprefix("step-"))


def stop_and_resume(tiny_model_dir, tmp_path: Path, launcher: str) -> tuple[Path, Path]:
    """One process for 4 steps; ``launcher`` on two for 2 steps (a checkpoint each step, the final one
    kept), then resumed to 4 (constant learning rate, so the schedule does not depend on the length)."""
    data = write_data("sft", tmp_path / "train.jsonl")
    held_out = write_data("sft", tmp_path / "eval.jsonl", HELD_OUT)
    # eval_every=2: the 2-step run's final evaluation is the 4-step run's step-2 one
    extra = [f"--eval-data={held_out}", "train.lr_schedule=constant", "train.eval_every=2"]
    one, two = tmp_path / "one", tmp_path / "two"
    run(command("sft", tiny_model_dir, data, one, "fp32", *extra), processes=1)
    first = [*extra, "train.max_steps=2", "train.save_every=1", "train.keep_final_checkpoint=true"]
    run(command("sft", tiny_model_dir, data, two, "fp32", *first), processes=2, launcher=launcher)
    return one, two


def resume(tiny_model_dir, tmp_path: Path, two: Path, launcher: str) -> None:
    extra = [
        f"--eval-data={tmp_path / 'eval.jsonl'}",
        "train.lr_schedule=constant",
        "train.eval_every=2",
        "--resume",
    ]
    run(
        command("sft", tiny_model_dir, tmp_path / "train.jsonl", two, "fp32", *extra),
        processes=2,
        launcher=launcher,
    )


def test_fsdp2_checkpoints_hold_full_states_and_resume(tiny_model_dir, tmp_path):
    one, two = stop_and_resume(tiny_model_dir, tmp_path, "fsdp2")
    checkpoint = two / "checkpoints" / "step-000002"
    assert json.loads((checkpoint / "meta.json").read_text())["layout"] == "fsdp2"
    model = torch.load(checkpoint / "model.pt", weights_only=True)
    optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=True)
    full = load_file(tiny_model_dir / "model.safetensors")
    for name, tensor in full.items():  # gathered, not one process's shard
        assert model[name].shape == tensor.shape
        assert optimizer["state"][name]["exp_avg"].shape == tensor.shape
    resume(tiny_model_dir, tmp_path, two, "fsdp2")
    assert max_weight_diff(one, two) < 1e-5
    assert_same_metrics(one, two, steps=4)


@pytest.mark.deepspeed
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_trains_and_resumes_like_one_process(tiny_model_dir, tmp_path, stage):
    """ZeRO-2 / ZeRO-3 on CPU through accelerate: 2 steps, a checkpoint (each process's optimizer partition),
    then resumed to 4; equal to one process, each launch exiting with status 0 (ZeRO-3 included)."""
    pytest.importorskip("deepspeed", reason="DeepSpeed is the optional extra rlxf[deepspeed]")
    launcher = f"deepspeed_zero{stage}"
    one, two = stop_and_resume(tiny_model_dir, tmp_path, launcher)
    checkpoint = two / "checkpoints" / "step-000002"
    assert json.loads((checkpoint / "meta.json").read_text())["layout"] == f"deepspeed-zero{stage}"
    resume(tiny_model_dir, tmp_path, two, launcher)
    assert max_weight_diff(one, two) < 1e-5
    assert_same_metrics(one, two, steps=4)


def test_pretraining_from_scratch_on_two_processes_trains_like_one(tmp_path):
    """rlxf pretrain from nothing: the tokenizer is trained and the corpus tokenised once, by the first
    process (the second waits for the cache and reads it); the two processes then train like one."""
    corpus = tmp_path / "corpus.jsonl"
    words = "the a cat dog sat ran on in mat park warm green river sea".split()
    corpus.write_text(
        "".join(
            json.dumps({"text": " ".join(words[(i * k) % len(words)] for k in range(1, 12)) + "."}) + "\n"
            for i in range(200)
        )
    )

    def pretrain_args(out: Path) -> list[str]:
        return [
            "-m", "rlxf", "pretrain", "--arch", "gpt2", "--size", "tiny", "--data", str(corpus),
            "--out", str(out), "vocab_size=300", "block_size=32", "max_eval_blocks=4",
            "train.global_batch_size=8", "train.micro_batch_size=2", "train.max_steps=3",
            "train.precision=fp32", "train.eval_every=3",
        ]  # fmt: skip

    one, two = tmp_path / "one", tmp_path / "two"
    run_env(pretrain_args(one), 1, {"RLXF_HOME": str(tmp_path / "home-one")})  # a fresh token cache each
    stderr = run_env(pretrain_args(two), 2, {"RLXF_HOME": str(tmp_path / "home-two")})
    # Built once, by the first process; the second reads it, whether it had to wait for it or (when the
    # first was quick) found it finished: which of the two happens is timing, not behaviour.
    assert stderr.count("training a bpe tokenizer") == 1
    assert stderr.count("tokenised the corpus into") == 1
    assert stderr.count("reusing the tokenised corpus in") == 1
    assert max_weight_diff(one, two) < 1e-5
    assert_same_metrics(one, two, steps=3)
