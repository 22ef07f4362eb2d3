"""DeepSpeed ZeRO-2 and ZeRO-3 on CPU through ``accelerate launch``: do two processes train like one?

For each ZeRO stage, ``rlxf sft`` runs on a tiny random Llama (2 layers, hidden 32, tied embeddings; built
here, or ``--model`` for any local HF folder) for ``--steps`` steps at global batch 8 (micro-batches of 2):
once in one plain process, then on 2 processes with

    accelerate launch --config_file configs/accelerate/deepspeed_zero{2,3}.yaml -m rlxf sft ...

Printed per stage: the largest absolute difference between the two runs' saved weights (``model/``), the
largest relative difference of the logged training loss, the wall seconds of the launch (process start,
imports, DeepSpeed's set-up and training), and its exit status (0 expected: ZeRO-3 included).

The first DeepSpeed run on a machine compiles DeepSpeed's shared-memory communication op (``ninja`` and a
C++ compiler; cached under ``~/.cache/torch_extensions``); ``--cold`` points ``TORCH_EXTENSIONS_DIR`` at an
empty folder so that the figure includes that compilation. rlxf's optimizer is torch's AdamW (DeepSpeed
compiles no optimizer op for it).

Run (needs ``pip install 'rlxf[deepspeed]'``)::

    .venv/bin/python benchmarks/deepspeed_cpu.py
    .venv/bin/python benchmarks/deepspeed_cpu.py --cold --stages 3 --steps 8 --out deepspeed_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).with_name("accelerate")

PAIRS = [
    ("Name a colour of the sky.", " Blue."),
    ("What is two plus two?", " Four."),
    ("Say hello.", " Hello there!"),
    ("Name a fruit.", " An apple."),
]


def tiny_model(folder: Path) -> Path:
    """The tests' tiny random Llama (tests/tiny_model.py: 2 layers, hidden 32, tied embeddings)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import save_tiny_model

    return save_tiny_model(folder)


def sft_args(model: Path, data: Path, out: Path, steps: int) -> list[str]:
    return [
        "-m",
        "rlxf",
        "sft",
        "--model",
        str(model),
        "--data",
        str(data),
        "--out",
        str(out),
        "eval_split=0",
        "max_length=64",
        "train.global_batch_size=8",
        "train.micro_batch_size=2",
        f"train.max_steps={steps}",
        "train.learning_rate=1e-3",
        "train.warmup_ratio=0",
        "train.precision=fp32",
    ]


def launch(command: list[str], env: dict[str, str]) -> tuple[int, float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=ROOT)
    return result.returncode, time.perf_counter() - started, result.stderr


def compare(one: Path, two: Path) -> tuple[float, float]:
    """Largest absolute weight difference and largest relative difference of the logged loss."""
    from safetensors.torch import load_file

    a, b = load_file(one / "model" / "model.safetensors"), load_file(two / "model" / "model.safetensors")
    if a.keys() != b.keys():
        raise SystemExit(f"the saved models differ in their keys: {sorted(a.keys() ^ b.keys())}")
    weights = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    loss_one = [json.loads(line)["loss"] for line in (one / "metrics.jsonl").read_text().splitlines()]
    loss_two = [json.loads(line)["loss"] for line in (two / "metrics.jsonl").read_text().splitlines()]
    losses = max(abs(x - y) / abs(x) for x, y in zip(loss_one, loss_two, strict=True))
    return weights, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 3], choices=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--model", type=Path, help="a local HF folder (default: a tiny random Llama)")
    parser.add_argument("--cold", action="store_true", help="compile DeepSpeed's ops again (empty cache)")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rlxf-deepspeed-cpu-"))
    model = args.model or tiny_model(work / "model")
    data = work / "train.jsonl"
    data.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in PAIRS * 6))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.cold:
        env["TORCH_EXTENSIONS_DIR"] = str(work / "torch_extensions")

    code, seconds, stderr = launch([sys.executable, *sft_args(model, data, work / "one", args.steps)], env)
    if code != 0:
        raise SystemExit(f"the one-process run failed:\n{stderr[-3000:]}")
    print(f"one process: {seconds:.1f} s, exit {code}")
    figures = {"one_process": {"seconds": round(seconds, 2), "exit": code}, "stages": {}}
    for stage in args.stages:
        config = ROOT / "configs" / "accelerate" / f"deepspeed_zero{stage}.yaml"
        if not config.is_file():  # ZeRO-1 ships no config: the ZeRO-2 one with its stage changed
            text = (ROOT / "configs" / "accelerate" / "deepspeed_zero2.yaml").read_text()
            config = work / "deepspeed_zero1.yaml"
            config.write_text(text.replace("zero_stage: 2", "zero_stage: 1"))
        out = work / f"zero{stage}"
        command = [str(ACCELERATE), "launch", "--config_file", str(config), "--num_processes", "2"]
        code, seconds, stderr = launch([*command, *sft_args(model, data, out, args.steps)], env)
        row: dict[str, object] = {"seconds": round(seconds, 2), "exit": code}
        if code == 0:
            weights, losses = compare(work / "one", out)
            row.update(max_weight_diff=weights, max_loss_rel_diff=losses)
            print(
                f"ZeRO-{stage} on 2 processes: max weight diff {weights:.2e}, max loss rel. diff {losses:.2e}, "
                f"{seconds:.1f} s, exit {code}"
            )
        else:
            print(f"ZeRO-{stage} on 2 processes: exit {code} after {seconds:.1f} s\n{stderr[-3000:]}")
        figures["stages"][f"zero{stage}"] = row
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
