"""One GRPO step of rlxf vs TRL's ``GRPOTrainer``: seconds per step, peak memory, reward, tokens.

Both sides run GRPO on the same model (default ``smollm2-135m-instruct``, the registry's local HF folder)
with 16 prompts x 4 samples = 64 completions of at most 32 new tokens per optimizer step, full fine-tune,
for ``--steps`` steps (default 10), one after the other, each in its own fresh Python process, so that
the peak memory of one does not mix with the other's and neither warms the other's caches. Printed for
each side, with the precision it used:

* seconds per optimizer step, median and mean over the steps *after the first* (step 1 is warm-up:
  first-call allocations, lazy imports, the VADER lexicon; it is shown but not counted), and the ratio of
  steps per second rlxf / TRL (of the medians, and of the means). rlxf: the sum of its logged
  ``time/generate + time/score + time/train``; TRL: wall time from ``on_step_begin`` to ``on_step_end``
  of a ``TrainerCallback`` (generation, reward, reference pass, forward/backward of the 4 micro-batches,
  clipping and the optimizer step; logging falls outside on both sides). Where TRL's ``_generate`` and
  ``_calculate_rewards`` can be wrapped, its generation and scoring seconds are shown too;
* peak memory: the process's RSS high-water mark (``getrusage(RUSAGE_SELF).ru_maxrss``) at the end of
  the child process, so it covers imports, both model copies (policy and reference), optimizer state and
  the peak of any step;
* the reward per step: the batch mean of VADER's compound score of the 64 completions (rlxf's
  ``sentiment`` reward; TRL gets a reward function calling the same ``sentiment_scores``);
* tokens per step (prompt + completion tokens, padding excluded: rlxf's count behind ``tokens_per_s``,
  TRL's ``num_tokens`` increments) and the mean completion length.

Run (the TRL side needs TRL, installed for this benchmark only; 1.16.0 works with transformers 5.x and
installs nothing else into this venv)::

    .venv/bin/pip install trl==1.16.0
    .venv/bin/python benchmarks/rl_step.py                          # both sides, fp32, 10 steps
    .venv/bin/python benchmarks/rl_step.py --precision bf16 --out rl_step.json
    .venv/bin/python benchmarks/rl_step.py --side rlxf --steps 3 --model path/to/hf-folder --threads 1

Run it on an otherwise idle machine: with more torch threads than free cores, every matrix product waits
on a descheduled thread (on a tiny model, 100x slower), and which side that hits is chance.

How the settings are matched (rlxf ``RLConfig`` key = TRL ``GRPOConfig`` argument):

* prompts: the ``train`` openings of ``rlxf/assets/review_openings.jsonl``, raw text, no chat template
  (rlxf ``chat_template=never``; TRL: a ``datasets.Dataset`` with a plain-string ``prompt`` column,
  which TRL tokenises as is); both draw them in ``torch.randperm(280)`` order under seed 0 (rlxf's
  ``step_prompts``, TRL's ``RepeatSampler``), so step k sees the same 16 prompts on both sides for the
  first 17 steps (one pass over the 280 openings);
* batch: ``prompts_per_step=16``, ``sampling.n=4``, ``sampling.batch_size=64`` (one ``generate`` call),
  ``micro_batch_size=16``, ``ppo_epochs=1`` = ``num_generations=4``, ``generation_batch_size=64``,
  ``per_device_train_batch_size=16``, ``gradient_accumulation_steps=4``, ``num_iterations=1``: one
  generation of 64 completions, then one optimizer step over them in 4 micro-batches of 16;
* sampling: ``max_new_tokens=32`` = ``max_completion_length=32``; temperature 1.0, no top-k / top-p
  (``top_k=0``, ``top_p=1.0``), stop at EOS on both; no vLLM (``use_vllm=False``);
* loss: GRPO advantages ``(R - mean_group) / std_group`` (``scale_by_std=true`` =
  ``scale_rewards="group"``); clipped surrogate ``clip_eps=0.2`` = ``epsilon=0.2``; on-policy, so
  neither runs an old-log-prob pass; KL ``kl.coef=beta, estimator=k3, placement=loss`` = ``beta``
  (TRL adds ``beta * k3`` per token to the loss); aggregation ``loss_aggregation=token-mean`` = TRL's
  default ``loss_type="dapo"`` (the sum over every completion token of the optimizer step divided by
  their number);
* optimizer: AdamW (torch's, betas 0.9 / 0.999, eps 1e-8), the same ``--lr`` (rlxf ``train.*``),
  constant schedule, no warm-up, weight decay 0, gradient norm clipped at 1.0 (TRL:
  ``optim="adamw_torch"`` rather than its default fused variant, ``lr_scheduler_type="constant"``);
* model: full fine-tune, weights in fp32 on both; ``--precision bf16`` trains them under bf16 autocast
  (rlxf ``train.precision=bf16-mixed``; TRL ``bf16=True``), else fp32 (TRL ``bf16=False``: its default is
  True); dropout off (rlxf always; TRL ``disable_dropout=True``); no gradient checkpointing (rlxf
  ``model.gradient_checkpointing=false``, its default; TRL ``gradient_checkpointing=False``: its default
  is True); ``use_cpu=True``;
* bookkeeping: TRL ``report_to="none"``, ``save_strategy="no"``, ``logging_steps=1``; rlxf logs every
  step (``train.log_every=1``) and, as ``rl()`` always does, writes the final checkpoint and model once
  the steps are done (outside the timed steps), then deletes the checkpoint.

Known differences: the advantages' epsilon is 1e-6 in rlxf and 1e-4 in TRL; the samples
differ (each side has its own sampler and random stream), so completion lengths, and with them the work
per step, may differ a little: compare the tokens per step. rlxf's ``rl()`` also writes a checkpoint and
the model after the last step (outside the timings; on a 4-layer model of SmolLM2's width it did not
raise the peak RSS). TRL's import and ``Trainer`` machinery add to its process's RSS.
"""

from __future__ import annotations

import argparse
import contextlib
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
PROMPTS_SPLIT = "train"
PROMPTS_PER_STEP = 16
NUM_GENERATIONS = 4
MICRO_BATCH = 16
MAX_NEW_TOKENS = 32
TEMPERATURE = 1.0
CLIP_EPS = 0.2
MAX_GRAD_NORM = 1.0
SEED = 0
TRL_INSTALL = ".venv/bin/pip install trl==1.16.0"
RESULT_MARKER = "RL_STEP_RESULT "  # the child's one line of JSON on stdout starts with this


# ---------------------------------------------------------------------------------------------- children


def _peak_rss_mib() -> float:
    """RSS high-water mark of this process in MiB (``ru_maxrss`` is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _environment() -> dict[str, Any]:
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
    }


def run_rlxf(model: str, steps: int, precision: str, lr: float, beta: float) -> dict[str, Any]:
    """rlxf's ``rl()`` with ``estimator=grpo``; per-step figures from its ``metrics.jsonl``."""
    from rlxf.algos.rl import RLConfig, rl
    from rlxf.config import load_config
    from rlxf.train.metrics import read_metrics

    with tempfile.TemporaryDirectory(prefix="rl-step-rlxf-") as tmp:
        out = Path(tmp) / "run"
        cfg = load_config(
            RLConfig,
            overrides={
                "model": {"name_or_path": model, "gradient_checkpointing": False},
                "prompts": str(PROMPTS_FILE),
                "prompts_split": PROMPTS_SPLIT,
                "eval_split": 0,  # all 280 openings train, in the order TRL's sampler draws them
                "chat_template": "never",
                "reward": "sentiment",
                "out": str(out),
                "seed": SEED,
                "estimator": "grpo",
                "num_steps": steps,
                "prompts_per_step": PROMPTS_PER_STEP,
                "sampling": {
                    "n": NUM_GENERATIONS,
                    "max_new_tokens": MAX_NEW_TOKENS,
                    "temperature": TEMPERATURE,
                    "top_k": 0,
                    "top_p": 1.0,
                    "batch_size": PROMPTS_PER_STEP * NUM_GENERATIONS,
                },
                "ppo_epochs": 1,
                "mini_batch_size": 0,
                "micro_batch_size": MICRO_BATCH,
                "train": {
                    "learning_rate": lr,
                    "lr_schedule": "constant",
                    "warmup_ratio": 0.0,
                    "weight_decay": 0.0,
                    "max_grad_norm": MAX_GRAD_NORM,
                    "precision": "bf16-mixed" if precision == "bf16" else "fp32",
                    "log_every": 1,
                    "save_every": 0,
                },
                "clip_eps": CLIP_EPS,
                "loss_aggregation": "token-mean",
                "scale_by_std": True,
                "kl": {"coef": beta, "estimator": "k3", "placement": "loss"},
            },
        )
        rl(cfg)
        records = [r for r in read_metrics(out / "metrics.jsonl") if "time/train" in r]
    records.sort(key=lambda r: r["step"])
    seconds = [r["time/generate"] + r["time/score"] + r["time/train"] for r in records]
    return {
        "precision": cfg.train.precision,
        "seconds": seconds,
        "generate_seconds": [r["time/generate"] for r in records],
        "score_seconds": [r["time/score"] for r in records],
        "reward": [r["reward/mean"] for r in records],
        "tokens": [round(r["tokens_per_s"] * s) for r, s in zip(records, seconds)],
        "completion_len": [r["response_len/mean"] for r in records],
    }


def run_trl(model: str, steps: int, precision: str, lr: float, beta: float) -> dict[str, Any]:
    """TRL's ``GRPOTrainer`` on the same setting; per-step seconds from a callback, figures from its logs."""
    import trl
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlxf.feedback.sentiment import sentiment_scores

    records = [json.loads(line) for line in PROMPTS_FILE.read_text(encoding="utf-8").splitlines() if line]
    prompts = [r["prompt"] for r in records if r.get("split") == PROMPTS_SPLIT]
    dataset = Dataset.from_dict({"prompt": prompts})  # plain strings: no chat template

    def sentiment(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
        return sentiment_scores(list(completions))  # the completion alone, as rlxf's `sentiment` reward

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.start = 0.0
            self.seconds: list[float] = []
            self.logs: list[dict[str, Any]] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.seconds.append(time.perf_counter() - self.start)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward" in logs:
                self.logs.append({"step": state.global_step, **logs})

    with tempfile.TemporaryDirectory(prefix="rl-step-trl-") as tmp:
        config = GRPOConfig(
            output_dir=tmp,
            max_steps=steps,
            seed=SEED,
            learning_rate=lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=MAX_GRAD_NORM,
            optim="adamw_torch",
            per_device_train_batch_size=MICRO_BATCH,
            gradient_accumulation_steps=PROMPTS_PER_STEP * NUM_GENERATIONS // MICRO_BATCH,
            generation_batch_size=PROMPTS_PER_STEP * NUM_GENERATIONS,
            num_generations=NUM_GENERATIONS,
            num_iterations=1,
            max_completion_length=MAX_NEW_TOKENS,
            temperature=TEMPERATURE,
            top_k=0,
            top_p=1.0,
            beta=beta,
            epsilon=CLIP_EPS,
            scale_rewards="group",
            loss_type="dapo",
            use_vllm=False,
            bf16=precision == "bf16",
            gradient_checkpointing=False,
            disable_dropout=True,
            model_init_kwargs={"dtype": "float32"},
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
        )
        timer = StepTimer()
        trainer = GRPOTrainer(
            model=model, reward_funcs=sentiment, args=config, train_dataset=dataset, callbacks=[timer]
        )
        # Generation and scoring seconds, where TRL has these methods (one call each per optimizer step).
        phases = {"generate": ("_generate", []), "score": ("_calculate_rewards", [])}
        for name, times in phases.values():
            method = getattr(trainer, name, None)
            if method is not None:
                setattr(trainer, name, _timed(method, times))
        trainer.train()
    logs = sorted(timer.logs, key=lambda r: r["step"])
    seen = [int(r["num_tokens"]) for r in logs]
    tokens = [b - a for a, b in zip([0, *seen[:-1]], seen)]  # num_tokens is cumulative
    result = {
        "precision": "bf16-mixed (bf16=True)" if config.bf16 else "fp32 (bf16=False)",
        "trl": trl.__version__,
        "seconds": timer.seconds,
        "trl_step_time": [r.get("step_time") for r in logs],
        "reward": [r["reward"] for r in logs],
        "tokens": tokens,
        "completion_len": [r.get("completions/mean_length") for r in logs],
    }
    for phase, (_, times) in phases.items():
        if len(times) == len(timer.seconds):
            result[f"{phase}_seconds"] = times
    return result


def _timed(method, times: list[float]):
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            times.append(time.perf_counter() - start)

    return wrapper


def child(side: str, args: argparse.Namespace) -> None:
    """Run one side and print its figures as one JSON line on stdout (everything else goes to stderr)."""
    real_stdout = sys.stdout
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # TRL prints its logs on stdout
            if args.threads:
                import torch

                torch.set_num_threads(args.threads)
            from rlxf.models.registry import resolve_model

            model = str(resolve_model(args.model))
            run = run_rlxf if side == "rlxf" else run_trl
            result = run(model, args.steps, args.precision, args.lr, args.beta)
            result.update(_environment())
    except ImportError as exc:
        if side != "trl" or "trl" not in str(exc).lower():
            raise
        result = {"error": f"TRL cannot be imported ({exc}); install it with: {TRL_INSTALL}"}
    result["wall_s"] = time.perf_counter() - start
    result["peak_rss_mib"] = _peak_rss_mib()
    print(RESULT_MARKER + json.dumps(result), file=real_stdout, flush=True)


# ---------------------------------------------------------------------------------------------- parent


def run_side(side: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run ``side`` in a fresh interpreter; its progress streams to stderr, its figures come back as JSON."""
    if side == "trl" and importlib.util.find_spec("trl") is None:
        return {"error": f"TRL is not installed; install it with: {TRL_INSTALL}"}
    command = [sys.executable, str(Path(__file__).resolve()), "--child", side]
    command += ["--model", args.model, "--steps", str(args.steps), "--precision", args.precision]
    command += ["--lr", repr(args.lr), "--beta", repr(args.beta), "--threads", str(args.threads)]
    env = dict(os.environ)
    for offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        env.setdefault(offline, "1")  # no network, ever: fail rather than reach out
    print(
        f"--- {side}: running {args.steps} steps in a child process (its log follows on stderr)", flush=True
    )
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        return {"error": f"the {side} run failed (exit code {proc.returncode}; its error is above)"}
    return json.loads(lines[-1][len(RESULT_MARKER) :])


def summarise(result: dict[str, Any]) -> None:
    """Add median / mean seconds per step over the steps after the first (warm-up) to ``result``."""
    timed = result["seconds"][1:]
    result["median_s"] = statistics.median(timed)
    result["mean_s"] = statistics.fmean(timed)
    result["steps_per_s"] = 1.0 / result["median_s"]
    for phase in ("generate", "score"):
        if f"{phase}_seconds" in result:
            result[f"median_{phase}_s"] = statistics.median(result[f"{phase}_seconds"][1:])
    result["mean_tokens"] = statistics.fmean(result["tokens"])


def report(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ok = {side: r for side, r in results.items() if "error" not in r}
    for r in ok.values():
        summarise(r)
    any_result = next(iter(ok.values()), {})
    print()
    print(
        f"GRPO on {args.model}: {PROMPTS_PER_STEP} prompts x {NUM_GENERATIONS} samples = "
        f"{PROMPTS_PER_STEP * NUM_GENERATIONS} completions per optimizer step, <= {MAX_NEW_TOKENS} new tokens, "
        f"full fine-tune, lr {args.lr:g}, beta {args.beta:g} (k3 in the loss), {args.steps} steps, "
        f"torch {any_result.get('torch', '?')}, transformers {any_result.get('transformers', '?')}, "
        f"{any_result.get('threads', '?')} threads"
    )
    for side, r in results.items():
        if "error" in r:
            print(f"{side}: NOT RUN: {r['error']}")
    if not ok:
        return {"settings": vars(args), "results": results}

    names = {"rlxf": "rlxf", "trl": f"TRL {ok['trl']['trl']}" if "trl" in ok else "TRL"}
    width = 26
    header = "".join(f"{names[s]:>{width}}" for s in ok)
    print(f"\n{'':34}{header}")

    def row(label: str, cell) -> None:
        print(f"{label:34}" + "".join(f"{cell(r):>{width}}" for r in ok.values()))

    row("precision", lambda r: r["precision"])
    row("s/step, median (steps 2..)", lambda r: f"{r['median_s']:.2f}")
    row("s/step, mean (steps 2..)", lambda r: f"{r['mean_s']:.2f}")
    row("steps/s (from the median)", lambda r: f"{r['steps_per_s']:.4f}")
    row("  generate s, median (steps 2..)", lambda r: _fmt(r.get("median_generate_s")))
    row("  score s, median (steps 2..)", lambda r: _fmt(r.get("median_score_s")))
    row("peak RSS (MiB, whole process)", lambda r: f"{r['peak_rss_mib']:.0f}")
    row("tokens/step, mean (all steps)", lambda r: f"{r['mean_tokens']:.0f}")
    row("completion length, mean", lambda r: _fmt(statistics.fmean(r["completion_len"]), ".1f"))
    row("reward, mean over steps", lambda r: f"{statistics.fmean(r['reward']):+.3f}")
    row("process wall time (s, with loading)", lambda r: f"{r['wall_s']:.0f}")
    print("(step 1 is warm-up: it is listed below but left out of the seconds per step)")

    print(f"\n{'step':>6}" + "".join(f"{names[s] + ' s / reward / tokens':>{width + 10}}" for s in ok))
    for i in range(max(len(r["seconds"]) for r in ok.values())):
        cells = []
        for r in ok.values():
            if i < len(r["seconds"]) and i < len(r["reward"]):
                cells.append(f"{r['seconds'][i]:8.2f} / {r['reward'][i]:+.3f} / {r['tokens'][i]:5d}")
            else:
                cells.append("-")
        mark = "*" if i == 0 else " "
        print(f"{i + 1:>5}{mark}" + "".join(f"{c:>{width + 10}}" for c in cells))
    print("  * warm-up step, not counted in the timings")

    summary: dict[str, Any] = {"settings": vars(args), "results": results}
    if "rlxf" in ok and "trl" in ok:
        median_ratio = ok["trl"]["median_s"] / ok["rlxf"]["median_s"]
        mean_ratio = ok["trl"]["mean_s"] / ok["rlxf"]["mean_s"]
        summary["steps_per_s_ratio_rlxf_over_trl"] = {"median": median_ratio, "mean": mean_ratio}
        print(
            f"\nsteps per second, rlxf / TRL: {median_ratio:.2f} (medians), {mean_ratio:.2f} (means); "
            "above 1: rlxf is faster"
        )
    return summary


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "n/a" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m-instruct", help="registry name or local HF folder")
    parser.add_argument("--steps", type=int, default=10, help="optimizer steps per side (>= 2; 1 is warm-up)")
    parser.add_argument("--side", choices=["rlxf", "trl", "both"], default="both")
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        default="fp32",
        help="fp32, or bf16 autocast over fp32 weights (rlxf precision=bf16-mixed, TRL bf16=True)",
    )
    parser.add_argument("--lr", type=float, default=5e-6, help="learning rate of both (AdamW, constant)")
    parser.add_argument("--beta", type=float, default=0.05, help="KL coefficient of both (k3 in the loss)")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads of both sides; 0: torch's default (the cores)"
    )
    parser.add_argument("--out", help="write every figure to this JSON file")
    parser.add_argument("--child", choices=["rlxf", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be >= 2: step 1 is warm-up and is not timed")
    if args.child:
        child(args.child, args)
        return

    sides = ["rlxf", "trl"] if args.side == "both" else [args.side]
    results = {side: run_side(side, args) for side in sides}
    summary = report(args, results)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        print(f"figures written to {args.out}")
    if any("error" in r for r in results.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
