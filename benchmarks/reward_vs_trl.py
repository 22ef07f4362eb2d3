"""A first reward model with default options: rlxf's ``reward train`` vs TRL's ``RewardTrainer``.

Both sides learn a Bradley-Terry reward model on the same preference pairs from the same starting model
(default ``smollm2-135m-instruct``) and are scored on the same held-out pairs. Neither side is tuned:

* rlxf runs exactly ``rlxf reward train --model MODEL --data PAIRS --out DIR`` (no other option: its
  default validation split, learning rate, epochs, batch size, schedule and precision), as a user's first
  command would; ``--rlxf-option key=value`` (repeatable) adds options, for measuring alternatives;
* TRL runs ``RewardTrainer`` with ``RewardConfig``'s own defaults (learning rate 1e-4, 3 epochs, batch 8,
  linear decay, bf16 autocast, gradient checkpointing, fused AdamW), changing only what a CPU and a
  benchmark need: ``use_cpu=True``, ``report_to="none"``, ``save_strategy="no"``, and the seed.
  It trains on exactly the pairs rlxf trained on (rlxf's default split of PAIRS, computed by rlxf's own
  function) and is evaluated on exactly the pairs rlxf held out.

Held-out accuracy is the share of held-out pairs whose chosen response scores higher, each model scored
the way its own trainer fed it (rlxf: ``prompt + completion + EOS`` read at the EOS, from its
``summary.json``; TRL: ``trainer.evaluate()``'s ``eval_accuracy``, its own tokenisation). With
``--extra-eval FILE`` both are also scored on a second held-out file (e.g. pairs from prompts neither saw:
``rlxf reward eval`` for rlxf, ``trainer.evaluate`` for TRL). The standard error of an accuracy over n
pairs is ``sqrt(acc (1 - acc) / n)``; differences within about two of them are noise.

Time is the wall clock of each side's child process from start to saved model (model loading and
tokenisation included), one side after the other, each in a fresh Python process.

Run on an otherwise idle machine (two torch processes on two cores slow each other ~10x)::

    .venv/bin/pip install trl==1.16.0          # TRL for this benchmark only
    rlxf sample --model smollm2-135m-instruct --prompts rlxf/assets/review_openings.jsonl \\
        --prompts-split train -n 6 --max-new-tokens 32 --out runs/rm-bench/samples --seed 1
    rlxf simulate --data runs/rm-bench/samples/candidates.jsonl --reward sentiment --noise 0 \\
        --out runs/rm-bench/prefs
    .venv/bin/python benchmarks/reward_vs_trl.py --data runs/rm-bench/prefs/preferences.jsonl \\
        --out runs/rm-bench/result.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULT_MARKER = "REWARD_VS_TRL_RESULT "  # the child's one line of JSON on stdout starts with this
TRL_INSTALL = ".venv/bin/pip install trl==1.16.0"


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def rlxf_split(data: Path, seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The training and held-out records of ``data`` exactly as ``rlxf reward train`` splits them."""
    from rlxf.algos.offline import read_train_eval
    from rlxf.algos.reward_model import RewardTrainConfig
    from rlxf.config import load_config

    cfg = load_config(RewardTrainConfig, overrides={"data": str(data), "out": "unused", "seed": seed})
    train, held_out = read_train_eval(cfg, kind=None)
    if held_out is None:
        raise SystemExit(f"rlxf holds out nothing of {data} by default: it is too small for this benchmark")
    return list(train.records), list(held_out.records)


def accuracy_se(accuracy: float, n: int) -> float:
    return math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / n)


# ---------------------------------------------------------------------------------------------- children


def child_rlxf(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """``rlxf reward train --model M --data PAIRS --out DIR`` (+ --rlxf-option), then its held-out figures."""
    out = workdir / "rlxf-rm"
    command = [sys.executable, "-m", "rlxf", "reward", "train", "--model", args.model]
    command += ["--data", str(args.data), "--out", str(out), *args.rlxf_option]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    metrics = summary["metrics"]
    result = {
        "command": " ".join(command[1:]),
        "seconds": seconds,
        "held_out_accuracy": metrics["eval/accuracy"],
        "held_out_pairs": summary["held_out"]["n"],
        "steps": read_jsonl(out / "metrics.jsonl")[-1]["step"],
        "config": (out / "config.yaml").read_text(encoding="utf-8"),
    }
    if args.extra_eval:
        from rlxf.algos.reward_eval import RewardEvalConfig, reward_eval

        extra = reward_eval(RewardEvalConfig(model=str(out), data=str(args.extra_eval)))
        result["extra_accuracy"] = extra["accuracy"]
        result["extra_pairs"] = len(read_jsonl(args.extra_eval))
    return result


def child_trl(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """TRL's ``RewardTrainer`` with ``RewardConfig`` defaults on rlxf's training pairs; its own evaluation."""
    start = time.perf_counter()
    import datasets
    import trl
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlxf.models.registry import resolve_model

    train, held_out = rlxf_split(args.data, args.seed)
    fields = ("prompt", "chosen", "rejected")
    to_dataset = lambda rows: datasets.Dataset.from_list([{k: r[k] for k in fields} for r in rows])  # noqa: E731
    path = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    config = trl.RewardConfig(
        output_dir=str(workdir / "trl-rm"),
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        seed=args.seed,
    )
    trainer = trl.RewardTrainer(
        model=model,
        args=config,
        train_dataset=to_dataset(train),
        eval_dataset=to_dataset(held_out),
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(str(workdir / "trl-rm" / "model"))
    seconds = time.perf_counter() - start
    result = {
        "trl": trl.__version__,
        "seconds": seconds,
        "held_out_accuracy": trainer.evaluate()["eval_accuracy"],
        "held_out_pairs": len(held_out),
        "train_pairs": len(train),
        "defaults": {
            "learning_rate": config.learning_rate,
            "num_train_epochs": config.num_train_epochs,
            "per_device_train_batch_size": config.per_device_train_batch_size,
            "lr_scheduler_type": str(config.lr_scheduler_type),
            "bf16": config.bf16,
            "gradient_checkpointing": config.gradient_checkpointing,
            "optim": str(config.optim),
        },
    }
    if args.extra_eval:
        extra = read_jsonl(args.extra_eval)
        result["extra_accuracy"] = trainer.evaluate(eval_dataset=to_dataset(extra))["eval_accuracy"]
        result["extra_pairs"] = len(extra)
    return result


def run_side(side: str, args: argparse.Namespace) -> dict[str, Any]:
    """One side in a fresh Python process; its result is the line of JSON it prints last."""
    command = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--data", str(args.data)]
    command += ["--model", args.model, "--seed", str(args.seed)]
    if args.extra_eval:
        command += ["--extra-eval", str(args.extra_eval)]
    for option in args.rlxf_option:
        command += ["--rlxf-option", option]
    print(f"== {side}: {' '.join(command[2:])}", flush=True)
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit status {proc.returncode}; output:\n{proc.stdout[-3000:]}"}
    return json.loads(lines[-1][len(RESULT_MARKER) :])


def report(results: dict[str, dict[str, Any]]) -> None:
    print("\n| | held-out accuracy | pairs | extra held-out accuracy | time (s) |")
    print("| --- | --- | --- | --- | --- |")
    for side, r in results.items():
        if "error" in r:
            print(f"| {side} | error: {r['error'][:200]} | | | |")
            continue
        acc, n = r["held_out_accuracy"], r["held_out_pairs"]
        extra = ""
        if "extra_accuracy" in r:
            e, m = r["extra_accuracy"], r["extra_pairs"]
            extra = f"{e:.3f} +- {accuracy_se(e, m):.3f} (n={m})"
        print(f"| {side} | {acc:.3f} +- {accuracy_se(acc, n):.3f} | {n} | {extra} | {r['seconds']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, required=True, help="preference pairs (JSONL)")
    parser.add_argument("--extra-eval", type=Path, help="a second held-out preference file scored by both")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="registry name or local HF folder")
    parser.add_argument("--side", choices=["rlxf", "trl", "both"], default="both")
    parser.add_argument("--seed", type=int, default=0, help="rlxf's seed (its split) and TRL's")
    parser.add_argument(
        "--rlxf-option", action="append", default=[], help="key=value added to rlxf's command (repeatable)"
    )
    parser.add_argument("--out", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--child", choices=["rlxf", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        with tempfile.TemporaryDirectory(prefix=f"rm-bench-{args.child}-") as tmp:
            run = child_rlxf if args.child == "rlxf" else child_trl
            result = run(args, Path(tmp))
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return
    if args.side != "rlxf":
        try:
            import trl  # noqa: F401
        except ImportError:
            sys.exit(f"TRL is not installed: {TRL_INSTALL} (or run --side rlxf)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sides = ["rlxf", "trl"] if args.side == "both" else [args.side]
    results = {side: run_side(side, args) for side in sides}
    report(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"figures written to {args.out}")
    if any("error" in r for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
