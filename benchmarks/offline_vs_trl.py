"""Offline trainers, rlxf vs TRL side by side: DPO vs ``DPOTrainer``, SFT vs ``SFTTrainer``, a reward model
vs ``RewardTrainer``; seconds per step, peak memory and the loss curve.

Both sides train the same model (default ``smollm2-135m-instruct``) on the same data, full fine-tune, for
``--steps`` optimizer steps of ``--batch`` examples, one side after the other, each in a fresh Python
process. The data are built here, with no model and no network: each ``train`` review opening of
``rlxf/assets/review_openings.jsonl`` is a prompt (plain text, no chat template); for DPO and the reward
model the chosen completion is one of a few warm endings and the rejected one a cold ending; for SFT the
completion is the warm ending. ``steps x batch`` examples in all, so one epoch is the run.

Matched settings (rlxf option = TRL ``DPOConfig`` / ``SFTConfig`` argument): DPO ``beta=0.1``,
``loss_type=sigmoid``; SFT: the loss on completion tokens only (TRL's ``completion_only_loss``, its default
for prompt-completion data), no packing; reward model: Bradley-Terry on a one-output head, no
centring term;
``train.global_batch_size=batch`` and ``train.micro_batch_size=--micro`` = ``per_device_train_batch_size
=--micro`` with ``gradient_accumulation_steps=batch/micro``; ``learning_rate=--lr``, constant, no warm-up,
weight decay 0, gradient norm clipped at 1.0, AdamW (torch's); bf16 autocast on fp32 weights
(``precision=bf16-mixed`` = ``bf16=True``); no gradient checkpointing; DPO: dropout off on both and the
reference log-probs computed once before training on both (rlxf's default ``reference=precompute`` =
``precompute_ref_log_probs=True``); ``max_length=1024``; no held-out split (rlxf ``eval_split=0``).
TRL's SFT also computes its logged entropy and token accuracy from the full logits (its default; rlxf
logs token accuracy).
Each side draws the pairs in its own order (its own sampler), so step k's loss differs between the
sides by the pairs it saw: compare the curves' means and ends, not step by step.

Printed for each side: seconds per optimizer step (median and mean of the steps after the first; rlxf:
the shared loop's ``train_step``, timed around it; TRL: ``on_step_begin`` to ``on_step_end`` of a
callback), steps per second and the ratio, the seconds of the whole run (model loading, tokenisation,
the reference pass, training; rlxf also writes its model folder, TRL here saves nothing), peak RSS of the process, and the loss per step.

    .venv/bin/pip install trl==1.16.0
    .venv/bin/python benchmarks/offline_vs_trl.py --trainer dpo        # both sides, 10 steps of 8 pairs
    .venv/bin/python benchmarks/offline_vs_trl.py --trainer sft --lr 2e-5
    .venv/bin/python benchmarks/offline_vs_trl.py --trainer reward --lr 1e-5
    .venv/bin/python benchmarks/offline_vs_trl.py --trainer dpo --side rlxf --steps 4 --out dpo.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROMPTS_FILE = ROOT / "rlxf" / "assets" / "review_openings.jsonl"
RESULT_MARKER = "OFFLINE_VS_TRL_RESULT "
TRL_INSTALL = ".venv/bin/pip install trl==1.16.0"
BETA = 0.1
WARM = [
    " It was a delight from start to finish, and I would gladly go back.",
    " Everything about it felt warm, generous and carefully made.",
    " I loved it: the kind of experience you tell your friends about for weeks.",
    " A wonderful surprise, honest and full of heart.",
]
COLD = [
    " It was a letdown from start to finish, and I will not go back.",
    " Everything about it felt cold, careless and rushed.",
    " I regret it: the kind of experience you warn your friends about.",
    " A tiresome disappointment, hollow and badly made.",
]


def build_examples(trainer: str, count: int) -> list[dict[str, str]]:
    records = [json.loads(line) for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines() if line]
    prompts = [r["prompt"] for r in records if r.get("split") == "train"]
    if trainer == "sft":
        return [
            {"prompt": prompts[i % len(prompts)], "completion": WARM[i % len(WARM)]} for i in range(count)
        ]
    return [
        {
            "prompt": prompts[i % len(prompts)],
            "chosen": WARM[i % len(WARM)],
            "rejected": COLD[(i // 2) % len(COLD)],
        }
        for i in range(count)
    ]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def run_rlxf(args: argparse.Namespace, model: str, pairs: Path, out: Path) -> dict[str, Any]:
    from rlxf.algos.dpo import DPOConfig, dpo
    from rlxf.algos.reward_model import RewardTrainConfig, reward_train
    from rlxf.algos.sft import SFTConfig, sft
    from rlxf.config import load_config
    from rlxf.train.metrics import read_metrics

    extra = {"beta": BETA, "loss_type": "sigmoid"} if args.trainer == "dpo" else {}
    config_class, train = {
        "dpo": (DPOConfig, dpo),
        "sft": (SFTConfig, sft),
        "reward": (RewardTrainConfig, reward_train),
    }[args.trainer]
    cfg = load_config(
        config_class,
        overrides={
            "model": {"name_or_path": model, "gradient_checkpointing": False},
            "data": str(pairs),
            "out": str(out),
            "eval_split": 0,
            "chat_template": "never",
            "max_length": 1024,
            **extra,
            "seed": 0,
            "train": {
                "num_epochs": 1,
                "global_batch_size": args.batch,
                "micro_batch_size": args.micro,
                "learning_rate": args.lr,
                "lr_schedule": "constant",
                "warmup_ratio": 0.0,
                "weight_decay": 0.0,
                "max_grad_norm": 1.0,
                "precision": "bf16-mixed",
                "log_every": 1,
            },
        },
    )
    start = time.perf_counter()
    train(cfg)
    total = time.perf_counter() - start
    records = sorted((r for r in read_metrics(out / "metrics.jsonl") if "loss" in r), key=lambda r: r["step"])
    return {"loss": [r["loss"] for r in records], "run_s": total}


def run_trl(args: argparse.Namespace, model: str, pairs: Path, out: Path) -> dict[str, Any]:
    import trl
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        TrainerCallback,
    )
    from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    records = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines() if line]
    dataset = Dataset.from_list(records)
    seconds: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t = time.perf_counter()

        def on_step_end(self, *a, **k):
            seconds.append(time.perf_counter() - self.t)

    common = dict(
        output_dir=str(out),
        per_device_train_batch_size=args.micro,
        gradient_accumulation_steps=args.batch // args.micro,
        learning_rate=args.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        bf16=True,
        gradient_checkpointing=False,
        max_length=1024,
        num_train_epochs=1,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    if args.trainer == "dpo":
        config = DPOConfig(
            **common, beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=True, disable_dropout=True
        )
        trainer_class = DPOTrainer
    elif args.trainer == "sft":
        config = SFTConfig(**common, packing=False, completion_only_loss=True)
        trainer_class = SFTTrainer
    else:
        config = RewardConfig(**common, center_rewards_coefficient=None, disable_dropout=True)
        trainer_class = RewardTrainer
    start = time.perf_counter()  # as rlxf's: from loading the model (rlxf also saves it at the end)
    tokenizer = AutoTokenizer.from_pretrained(model)
    if args.trainer == "reward":
        policy = AutoModelForSequenceClassification.from_pretrained(model, num_labels=1, dtype="float32")
        policy.config.pad_token_id = tokenizer.pad_token_id
    else:
        policy = AutoModelForCausalLM.from_pretrained(model, dtype="float32")
    trainer = trainer_class(
        model=policy, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[StepTimer()]
    )
    trainer.train()
    total = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"loss": [float(x) for x in losses], "seconds": seconds, "run_s": total, "trl": trl.__version__}


def child(args: argparse.Namespace) -> None:
    real_stdout = sys.stdout
    sys.stdout = sys.stderr  # the trainers' chatter goes to stderr; only the result line to stdout
    import torch

    from rlxf.models.registry import resolve_model

    if args.threads:
        torch.set_num_threads(args.threads)
    model = str(resolve_model(args.model))
    with tempfile.TemporaryDirectory(prefix=f"{args.trainer}-vs-trl-{args.child}-") as tmp:
        pairs = Path(tmp) / "pairs.jsonl"
        examples = build_examples(args.trainer, args.steps * args.batch)
        pairs.write_text("".join(json.dumps(p) + "\n" for p in examples))
        if args.child == "rlxf":
            result = run_rlxf_timed(args, model, pairs, Path(tmp) / "run")
        else:
            result = run_trl(args, model, pairs, Path(tmp) / "run")
    result["peak_rss_mib"] = _peak_rss_mib()
    result["threads"] = torch.get_num_threads()
    print(RESULT_MARKER + json.dumps(result), file=real_stdout, flush=True)


def run_rlxf_timed(args: argparse.Namespace, model: str, pairs: Path, out: Path) -> dict[str, Any]:
    """rlxf's run, with each optimizer step's wall time taken around the shared loop's ``train_step``."""
    from rlxf.train import loop

    seconds: list[float] = []
    original = loop.Trainer.train_step

    def timed_step(self, step):
        start = time.perf_counter()
        try:
            return original(self, step)
        finally:
            seconds.append(time.perf_counter() - start)

    loop.Trainer.train_step = timed_step
    result = run_rlxf(args, model, pairs, out)
    result["seconds"] = seconds
    return result


def run_side(side: str, args: argparse.Namespace) -> dict[str, Any]:
    if side == "trl" and importlib.util.find_spec("trl") is None:
        return {"error": f"TRL is not installed; install it with: {TRL_INSTALL}"}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--model", args.model]
    command += ["--trainer", args.trainer]
    command += ["--steps", str(args.steps), "--batch", str(args.batch), "--micro", str(args.micro)]
    command += ["--lr", repr(args.lr), "--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    print(f"--- {side}: {args.steps} steps in a child process (its log on stderr)", flush=True)
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        return {"error": f"the {side} run failed (exit code {proc.returncode}; its error is above)"}
    return json.loads(lines[-1][len(RESULT_MARKER) :])


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ok = {s: r for s, r in results.items() if "error" not in r}
    for side, r in results.items():
        if "error" in r:
            print(f"{side}: NOT RUN: {r['error']}")
    for r in ok.values():
        timed = r["seconds"][1:]
        r["median_s"], r["mean_s"] = statistics.median(timed), statistics.fmean(timed)
    what = {
        "dpo": f"DPO (sigmoid, beta {BETA}, reference precomputed)",
        "sft": "SFT",
        "reward": "Reward model (Bradley-Terry)",
    }[args.trainer]
    print(
        f"\n{what} on {args.model}: {args.steps} steps of {args.batch} examples "
        f"({args.micro} per micro-batch), lr {args.lr:g}, bf16 autocast, "
        f"{next(iter(ok.values()), {}).get('threads', '?')} threads\n"
    )
    names = {"rlxf": "rlxf", "trl": f"TRL {ok['trl']['trl']}" if "trl" in ok else "TRL"}
    print(f"{'':36}" + "".join(f"{names[s]:>14}" for s in ok))
    rows = [
        ("s/step, median (steps 2..)", lambda r: f"{r['median_s']:.2f}"),
        ("s/step, mean (steps 2..)", lambda r: f"{r['mean_s']:.2f}"),
        ("run s (model load to end)", lambda r: f"{r['run_s']:.1f}"),
        ("peak RSS (MiB, whole process)", lambda r: f"{r['peak_rss_mib']:.0f}"),
        ("loss, mean over steps", lambda r: f"{statistics.fmean(r['loss']):.4f}"),
        ("loss, last step", lambda r: f"{r['loss'][-1]:.4f}"),
    ]
    for label, cell in rows:
        print(f"{label:36}" + "".join(f"{cell(r):>14}" for r in ok.values()))
    print(f"\n{'step':>5}" + "".join(f"{names[s] + ' s / loss':>22}" for s in ok))
    for i in range(args.steps):
        cells = [
            f"{r['seconds'][i]:7.2f} / {r['loss'][i]:.4f}"
            if i < len(r["seconds"]) and i < len(r["loss"])
            else "-"
            for r in ok.values()
        ]
        print(f"{i + 1:>4}{'*' if i == 0 else ' '}" + "".join(f"{c:>22}" for c in cells))
    print("  * warm-up step, not counted in the timings")
    summary: dict[str, Any] = {"settings": vars(args), "results": results}
    if "rlxf" in ok and "trl" in ok:
        ratio = ok["trl"]["median_s"] / ok["rlxf"]["median_s"]
        summary["steps_per_s_ratio_rlxf_over_trl"] = ratio
        rss = ok["rlxf"]["peak_rss_mib"] / ok["trl"]["peak_rss_mib"]
        print(f"\nsteps per second, rlxf / TRL: {ratio:.2f} (medians); peak RSS rlxf / TRL: {rss:.2f}")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trainer", choices=["dpo", "sft", "reward"], required=True)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps (>= 2; step 1 is warm-up)")
    parser.add_argument("--batch", type=int, default=8, help="examples (pairs) per optimizer step")
    parser.add_argument("--micro", type=int, default=8, help="examples per forward/backward pass")
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--side", choices=["rlxf", "trl", "both"], default="both")
    parser.add_argument("--out", help="write every figure to this JSON file")
    parser.add_argument("--child", choices=["rlxf", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch % args.micro:
        parser.error("--batch must be a multiple of --micro")
    if args.child:
        child(args)
        return
    sides = ["rlxf", "trl"] if args.side == "both" else [args.side]
    results = {side: run_side(side, args) for side in sides}
    summary = report(args, results)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2))
        print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
