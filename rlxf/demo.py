"""``rlxf demo``: the embedded default's main job, the whole loop on SmolLM2-135M-Instruct, on a CPU.

The seed documents' worked example: the model continues the opening of a review ("The pasta at this little
restaurant ...") and learns, from sentiment feedback, to continue it more positively. The demo runs it
the way a real RLHF project runs, with every stage a real rlxf command (an :mod:`rlxf.pipeline`):

1. **samples**: the model continues each of the 280 training openings 4 times at temperature 0.7 (two pairs
   per opening); the
   first response of a pair is drawn after a hidden positive framing, the second after a negative one
   (contrastive sampling as in RLCD, :data:`FRAMINGS`), so the pairs differ in sentiment; the records
   hold the bare opening, which is all the annotator and the reward model see;
2. **feedback**: a simulated annotator labels every pair (AlpacaFarm-style, :mod:`rlxf.feedback.simulate`):
   it prefers the more positive continuation by VADER's compound score, with 10% of its labels flipped
   and a 5% habit of picking whatever was shown first;
3. **reward model**: learned from those noisy preferences (Bradley-Terry), a tenth held out;
4. **PPO** against the *learned* reward (not VADER): actor-critic with a value head on the policy, GAE,
   the KL to the starting model in the reward. Every 6 steps it samples the 60 held-out openings and
   scores them with the learned reward (the proxy) and with VADER (``gold_reward``, never trained on):
   where the proxy keeps rising and the gold does not, the policy is exploiting the reward model
   (Gao et al. 2022; the report plots both against KL);
5. **eval** on the 60 held-out openings, with VADER as the gold judge: reward before and after, the share
   of positive completions (VADER > 0.05), win rate, KL to the starting model, naturalness against the
   starting model (sentiment-word share, perplexity under it, distinct-2; flagged past their bounds),
   and ``report.html``.

Every completion is 24 tokens (``min_new_tokens`` = ``max_new_tokens``): the reward model only ever sees
completions that ran to the limit, and an early end is its blind spot (see :func:`demo_pipeline`).

Everything lands in ``--out`` (``runs/demo``), one folder per stage; running the demo again reuses what
finished (``rlxf run`` rules), so an interrupted demo continues. ``--print-pipeline`` shows the pipeline
as YAML, ready for ``rlxf run`` and for changing. :func:`demo` returns a :class:`DemoResult`; the CLI
prints its headline.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlxf.config import load_config, option

logger = logging.getLogger(__name__)

OPENINGS = Path(__file__).parent / "assets" / "review_openings.jsonl"
FRAMINGS = [  # hidden texts before the opening while sampling (never part of a record or of training)
    "A glowing five-star review, full of praise:\n\n",
    "A scathing one-star review, full of complaints:\n\n",
]


@dataclass
class DemoConfig:
    """Options of ``rlxf demo``."""

    model: str = option("smollm2-135m-instruct", help="the policy to align (and the reward model's start)")
    out: str = option("runs/demo", help="the demo's folder: one sub-folder per stage, the report in eval/")
    seed: int = option(0, help="random seed of every stage")
    rl_steps: int = option(24, help="PPO steps (64 completions each)")
    print_pipeline: bool = option(False, help="print the demo's pipeline as YAML (for rlxf run) and stop")

    def __post_init__(self) -> None:
        if self.rl_steps < 1:
            raise ValueError(f"rl_steps must be >= 1, got {self.rl_steps}")


def demo_pipeline(cfg: DemoConfig) -> dict[str, Any]:
    """The demo as an ``rlxf run`` pipeline (see the module docstring)."""
    openings = str(OPENINGS)
    model = {"name_or_path": cfg.model}
    # Every completion of the demo is 24 tokens (min_new_tokens = max_new_tokens): the reward model learns
    # from such completions only (at temperature 0.7, 1119 of 1120 ran to the limit), and judges an early
    # end it never saw. Measured with PPO's held-out gold next to the proxy: with the end free, the policy
    # learned to stop after "!" or one short sentence, the proxy reward rose from 0.76 to 3.44 while the
    # gold (VADER) peaked at +0.30 by step 6 and fell; completions shrank from 24 tokens to 7.
    sampling = {"n": 4, "max_new_tokens": 24, "min_new_tokens": 24, "temperature": 1.0, "batch_size": 64}
    # The feedback samples are drawn cooler: at temperature 1 a 135M model often rambles, and VADER's
    # verdict on loosely connected words is close to noise. Measured (held-out accuracy on the simulated
    # labels): temperature 1 gave 0.55 (1 epoch, lr 3e-5) and 0.61 (2 epochs, lr 1e-4, overfitting);
    # temperature 0.7 gave 0.77 (1 epoch, lr 5e-5).
    return {
        "out": cfg.out,
        "stages": [
            {
                "name": "samples",
                "kind": "sample",
                "options": {
                    "model": dict(model),
                    "prompts": openings,
                    "prompts_split": "train",
                    "chat_template": "never",  # raw continuation of the opening, as in the seed documents
                    "sampling": {**sampling, "temperature": 0.7},
                    "group": 2,
                    "framings": FRAMINGS,
                    "seed": cfg.seed,
                },
            },
            {
                "name": "feedback",
                "kind": "simulate",
                "options": {
                    "data": "${samples}/candidates.jsonl",
                    "reward": "sentiment",
                    "noise": 0.1,
                    "position_bias": 0.05,
                    "annotators": 4,
                    "seed": cfg.seed,
                },
            },
            {
                "name": "reward_model",
                "kind": "reward",
                "options": {
                    "model": dict(model),
                    "data": "${feedback}/preferences.jsonl",
                    "eval_split": 0.1,
                    "chat_template": "never",
                    "seed": cfg.seed,
                    # Measured on 240 noise-free pairs of the test openings (VADER decides): lr 5e-5 gave
                    # 0.75 accuracy, 1e-4 0.78 (1 epoch), 0.80 (2 epochs; twice the time).
                    "train": {
                        "num_epochs": 1,
                        "learning_rate": 1.0e-4,
                        "global_batch_size": 16,
                        "micro_batch_size": 16,
                        "eval_every": 0,
                    },
                },
            },
            {
                "name": "ppo",
                "kind": "rl",
                "options": {
                    "model": dict(model),
                    "prompts": openings,
                    "prompts_split": "train",
                    # Every training opening trains; the held-out evaluation during training samples the
                    # test openings and scores them with the proxy (the learned reward) and the gold (VADER):
                    # the report's proxy-vs-gold curve (Gao et al. 2022).
                    "eval_split": 0,
                    "eval_prompts": openings,
                    "eval_prompts_split": "test",
                    "eval_sampling": {**sampling, "n": 2},
                    "gold_reward": "sentiment",
                    "chat_template": "never",
                    "reward": "model:${reward_model}",
                    "shaping": {"normalize": "running"},
                    # GRPO on the same reward model (4 samples per opening, 16 openings per step, k3 KL in
                    # the loss at 0.05, 36 steps, no critic) pushed the gold further, +0.864 with 99%
                    # positive, but at a KL of 22.6 nats: words 3.95x, perplexity 0.57x, distinct-2 0.74x.
                    "estimator": "ppo",
                    "sampling": {**sampling, "n": 2},
                    "prompts_per_step": 32,  # 64 completions per step
                    "num_steps": cfg.rl_steps,
                    "ppo_epochs": 1,
                    "mini_batch_size": 32,  # two optimizer steps per batch, at the compute of one
                    "micro_batch_size": 16,
                    "gamma": 1.0,
                    "lam": 0.95,
                    # The coefficient trades gold sentiment for naturalness. Measured on this reward model
                    # (held-out: VADER mean, positive share, KL nats; sentiment-word share, perplexity under
                    # the start model and distinct-2 as ratios to the start model's):
                    #   0.05: +0.744, 95%, KL 12.6; words 3.07x, perplexity 0.50x, distinct-2 0.82x
                    #   0.10: +0.600, 88%, KL 5.4;  words 2.09x, perplexity 0.59x, distinct-2 0.90x
                    #   0.15: +0.407, 70%, KL 2.9;  words 1.62x, perplexity 0.75x, distinct-2 0.98x
                    #   0.05 with shaping.transform=logsigmoid: +0.629, 91%, KL 7.7; 2.23x, 0.47x, 0.91x
                    # None gives both; the report flags what the chosen one breaks.
                    "kl": {"coef": 0.05, "estimator": "k1", "placement": "reward"},
                    "critic": {"kind": "shared", "vf_coef": 0.1, "value_clip": 0.2},
                    "train": {
                        "learning_rate": 4.0e-5,
                        "lr_schedule": "constant",
                        "save_every": 6,
                        "eval_every": 6,
                    },
                    "seed": cfg.seed,
                },
            },
            {
                "name": "eval",
                "kind": "eval",
                "options": {
                    "model": {"name_or_path": "${ppo}"},
                    "prompts": openings,
                    "prompts_split": "test",
                    "chat_template": "never",
                    "reward": "sentiment",  # the gold judge: what the learned reward stood in for
                    "reward_threshold": 0.05,  # VADER reads positive above it
                    "sampling": {**sampling, "n": 4},
                    "seed": cfg.seed,
                },
            },
        ],
    }


@dataclass
class DemoResult:
    """What :func:`demo` returns: the pipeline it ran and its headline figures."""

    out: Path
    pipeline: dict[str, Any]  # the demo as an `rlxf run` pipeline
    status: int = 0  # run_pipeline's exit status (0: every stage finished)
    seconds: float = 0.0
    eval_summary: dict[str, Any] = field(default_factory=dict)  # eval/summary.json
    reward_model_accuracy: float | None = None  # held-out accuracy on the simulated labels

    def headline(self) -> str:
        """The few lines a person reads at the end of ``rlxf demo``."""
        reward, kl = self.eval_summary["reward"], self.eval_summary["kl"]
        lines = [f"rlxf demo done in {self.seconds:.0f} s"]
        if self.reward_model_accuracy:
            lines.append(
                f"  reward model: held-out accuracy {self.reward_model_accuracy:.2f} on the simulated labels"
            )
        lines.append(
            f"  held-out gold sentiment (VADER): {reward['baseline']['mean']:+.3f} -> "
            f"{reward['policy']['mean']:+.3f} ({reward['delta']:+.3f} +- {reward['delta_se']:.3f}; "
            f"{reward['share_improved']:.0%} of openings improved)"
        )
        if "share_above" in reward["policy"]:
            lines.append(
                f"  positive completions (VADER > {reward['threshold']:g}): {reward['baseline']['share_above']:.0%}"
                f" -> {reward['policy']['share_above']:.0%}; win rate over the starting model "
                f"{self.eval_summary['win_rate']['value']:.0%}"
            )
        lines.append(f"  KL to the starting model: {kl['mean']:.2f} nats per completion")
        natural = self.eval_summary.get("naturalness") or {}
        ratios = [
            f"{label} {natural[key]['ratio']:.2f}x"
            for key, label in (
                ("lexicon_share", "sentiment-word share"),
                ("perplexity", "perplexity under the start model"),
                ("distinct_2", "distinct-2"),
            )
            if natural.get(key) and natural[key].get("ratio") is not None
        ]
        if ratios:
            lines.append("  vs the starting model: " + ", ".join(ratios))
        lines += [f"  flag: {flag}" for flag in natural.get("flags", [])]
        points = self.eval_summary.get("proxy_vs_gold") or []
        if points:
            best = max(points, key=lambda point: point["gold"])
            last = points[-1]
            lines.append(
                f"  proxy vs gold on held-out openings: gold {best['gold']:+.3f} at its best (step {best['step']}), "
                f"{last['gold']:+.3f} at the end (step {last['step']}; proxy {last['proxy']:+.2f})"
            )
        lines.append(f"  report: {self.out / 'eval' / 'report.html'}")
        return "\n".join(lines)


def demo(cfg: DemoConfig) -> DemoResult:
    """Run the demo (module docstring); with ``print_pipeline`` only build its pipeline."""
    from rlxf.pipeline import PipelineConfig, run_pipeline

    out = Path(cfg.out)
    spec = demo_pipeline(cfg)
    if cfg.print_pipeline:
        return DemoResult(out, spec)
    logger.info(
        f"rlxf demo: sentiment RLHF on {cfg.model}, on this machine, in {cfg.out}\n"
        "  samples -> simulated feedback (VADER, 10% noise) -> reward model -> PPO on the learned reward\n"
        "  -> eval on held-out openings (VADER as the gold judge) -> report.html\n"
        "  (a second run reuses finished stages; `rlxf demo --print-pipeline` shows the pipeline)"
    )
    started = time.monotonic()
    status = run_pipeline(load_config(PipelineConfig, overrides=spec))
    if status:
        return DemoResult(out, spec, status, time.monotonic() - started)
    summary = json.loads((out / "eval" / "summary.json").read_text(encoding="utf-8"))
    rm_summary = json.loads((out / "reward_model" / "summary.json").read_text(encoding="utf-8"))
    rm_accuracy = rm_summary.get("metrics", {}).get("eval/accuracy")
    return DemoResult(out, spec, status, time.monotonic() - started, summary, rm_accuracy)


__all__ = ["DemoConfig", "DemoResult", "demo", "demo_pipeline"]
