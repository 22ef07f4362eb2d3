"""Online RL from feedback: PPO with a critic, GRPO, RLOO and REINFORCE++ in one trainer (``rlxf rl``).

Each step: take ``prompts_per_step`` prompts, sample ``sampling.n`` completions of each with the current
policy (the rollout engine, which also returns each token's log-prob), score them with the reward source
(:mod:`rlxf.feedback.rewards`), turn the scores into advantages with the configured estimator, and
update the policy with the clipped surrogate for ``ppo_epochs`` passes over mini-batches of the batch.

Notation: ``x`` a prompt, ``y = y_1..y_T`` a completion, ``R(x, y)`` its (shaped) reward, ``pi`` the
policy, ``pi_old`` the policy that sampled ``y``, ``ref`` the frozen reference (the starting policy),
``beta`` the KL coefficient.

Advantage estimators (``estimator``; :mod:`rlxf.algos.advantages`):

* ``ppo`` (Schulman et al. 2017; Ouyang et al. 2022): a critic ``V`` predicts the return at each token;
  token rewards ``r_t = -beta KL_t (+ R at the last token)`` and GAE (Schulman et al. 2016, eq. 16)::

      delta_t = r_t + gamma V_{t+1} - V_t,   A_t = sum_l (gamma lambda)^l delta_{t+l},   G_t = A_t + V_t

  advantages whitened over the batch; the critic regresses ``G_t`` with the clipped value loss. The critic
  is a separate network (``critic.kind=separate``, a transformers backbone initialised from the policy or
  from ``critic.init``, e.g. the reward model) or a value head on the policy's own last hidden state
  (``shared``: one backbone, the value loss weighted by ``critic.vf_coef``).
* ``grpo`` (Shao et al. 2024): ``A_i = (R_i - mean_group R) / std_group R`` over the ``n`` samples of a
  prompt, the same for every token of ``y_i``; ``scale_by_std=false`` is Dr. GRPO (Liu et al. 2025).
* ``rloo`` (Ahmadian et al. 2024): ``A_i = R_i - mean_{j != i} R_j``.
* ``reinforce++`` (Hu 2025): per-token returns ``G_t = sum_{s >= t} gamma^{s-t} r_s`` of the token rewards
  above, whitened over the batch's tokens.

Policy loss (every estimator; :func:`rlxf.algos.policy_loss.clipped_policy_loss`), per token::

    rho_t = pi(y_t | x, y_<t) / pi_old(y_t | x, y_<t)
    L_t   = -min(rho_t A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) A_t)   [+ beta KL_t when kl.placement=loss]

reduced by ``loss_aggregation``: ``token-mean`` (every real token of the mini-batch counts once),
``seq-mean-token-mean`` (per completion, then per batch: GRPO's paper) or ``seq-mean-token-sum-norm``
(sum per completion / max_new_tokens: Dr. GRPO's length-unbiased form).

KL to the reference (``kl``; :mod:`rlxf.algos.kl`): estimator ``k1`` / ``k2`` / ``k3`` per token; in the
reward (``placement=reward``: PPO / RLOO / REINFORCE++ habit; outcome-level estimators subtract
``beta * sum_t KL_t`` from ``R``) or in the loss (``placement=loss``: GRPO's habit, usually ``k3``); the
coefficient fixed or adaptive (``kl.target``: Ziegler et al. 2019). With LoRA the reference is the policy
with its adapters switched off; otherwise a frozen copy of the starting weights. The logged ``kl`` is
always the k1 estimate summed over a completion's tokens, averaged over completions: nats per completion.

Forward passes. The engine samples under the policy's current weights and returns ``log pi_old(y_t)``.
When a rollout batch is used for exactly one optimizer step (``ppo_epochs=1``, one mini-batch) the update
is on-policy: ``pi_old = pi`` and the ratio is ``exp(logp - logp.detach())`` (value 1, gradient of
``log pi``), so no "old log-prob" pass is run at all; the engine's log-probs serve the KL term when the
sampling is plain (temperature 1, no top-k / top-p), else one no-grad pass computes them. With several
updates per batch the old log-probs come from one no-grad pass of the policy in the training precision
(the engine's differ from the training forward by rounding, which would show up as spurious clipping).
Log-probs are computed micro-batch by micro-batch, from the completion positions' logits only, so the
full-vocabulary logits never exist for the whole batch.

Options. The ``train:`` section is the one every learner takes (:class:`rlxf.train.loop.UpdateConfig`:
learning rate, schedule, ``warmup_ratio`` of the ``num_steps x updates_per_step`` optimizer steps, weight
decay, clipping, precision, log / evaluate / save cadence), with RL's own defaults (lr 1e-6, constant, no
warm-up); the batch shape (``prompts_per_step``, ``mini_batch_size``, ``micro_batch_size``,
``ppo_epochs``, ``num_steps``) is RL's own. The flat keys of earlier releases (``learning_rate``,
``precision``, ``warmup_steps`` ...) still work for one release, with a deprecation message.

Precision. ``bf16-mixed`` trains fp32 weights under bf16 autocast; rollouts run under the same autocast.
Sampling seeds depend on the step alone and mini-batch order on (seed, step, epoch), so ``--resume``
continues exactly (checkpoint: policy, critic, optimizer, scheduler, KL coefficient, reward statistics).
The loop follows :class:`rlxf.train.loop.Cadence` (evaluate, log, save), as the offline learners do; a
finished run keeps ``model/`` and drops its checkpoints unless ``train.keep_final_checkpoint``.

Metrics: :data:`RL_METRICS` per step (``value/*`` with ``estimator=ppo``, ``kl`` with a reference,
``grad_norm`` with clipping), :data:`RL_EVAL_METRICS` on held-out prompts (logged as ``eval/...``) at
step 0, every ``train.eval_every`` steps and at the end, with their samples in
``samples/step-NNNNNN.jsonl``; docs/rl.md says what each means. ``gold_reward`` (a second reward spec,
never trained on) scores the same held-out samples (``eval/gold_reward/*``, a ``gold_reward`` field per
sample): the trained-on proxy and the gold reward side by side against the KL show where optimising the
proxy stops raising the gold (Gao et al. 2022, "Scaling Laws for Reward Model Overoptimization").

Data parallel (``torchrun`` / ``accelerate launch``, DDP). With ``W`` processes, process ``r`` takes the
prompts ``r*k .. (r+1)*k - 1`` of the step (``k = prompts_per_step / W``), so each prompt's group of ``n``
samples stays on one process, and generates them with the row numbers they have in the whole batch (the
engine's per-row random streams: the same tokens as one process would sample). Everything that spans the
batch is computed over the whole step's rows, gathered from every process: reward normalisation (batch or
running statistics), the whitening of PPO's and REINFORCE++'s advantages, the logged reward statistics.
In the update every normaliser (tokens or sequences of a mini-batch) is the global count, summed over the
processes, and DDP averages the gradients; so a step on ``W`` processes equals a step on one at the same
``prompts_per_step`` (a test checks weights and logged metrics). One difference: with mini-batches smaller
than the rollout batch each process shuffles its own rows, so which rows share a mini-batch depends on
``W`` (as in TRL and OpenRLHF). Only the main process writes (metrics, samples, checkpoints, the model).
FSDP and DeepSpeed are not supported by this trainer yet: generation needs the whole policy on each process.

Rollout engines (``rollout:``). ``engine=hf`` generates with transformers on the policy module itself;
``engine=vllm`` with a vLLM engine in the process (:mod:`rlxf.rollout.vllm`). ``placement=ray`` runs this
trainer as a Ray actor (:func:`rl_on_ray`) and generation on ``rollout.num_workers`` rollout actors
(:mod:`rlxf.rollout.ray_engine`). An engine holding its own copy of the weights gets them after every update
(``time/sync``), checked; Ray syncs are written to ``weight_syncs.jsonl``. Only the transformers engine's
log-probs stand in for the policy's (vLLM's kernels round differently): with vLLM a no-grad pass computes
them.

Left out: process (per-step) rewards, PPO-ptx (a pre-training loss mixed in), value-head pre-training
warm-up, entropy bonus, asynchronous / off-policy rollouts, and reward-model ensembles' uncertainty penalty
beyond what the reward source offers.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from rlxf.algos.advantages import (
    gae_advantages,
    group_advantages,
    masked_mean,
    masked_whiten,
    pack_actions,
    reinforce_pp_advantages,
    rloo_advantages,
    token_level_rewards,
    unpack_actions,
)
from rlxf.algos.kl import AdaptiveKLController, FixedKLController, KLEstimator, kl_estimate, kl_k1
from rlxf.algos.offline import auto_eval_size
from rlxf.algos.policy_loss import (
    LossAggregation,
    aggregate_sum,
    aggregate_units,
    clipped_policy_loss,
    clipped_value_loss,
    explained_variance,
)
from rlxf.algos.reward_shaping import RewardShapingConfig, RunningMoments, shape_rewards
from rlxf.config import option
from rlxf.data import ChatTemplateMode, Dataset, check_prompt_lengths, read_prompts, render_prompt, split_data
from rlxf.feedback.rewards import RewardOptions, RewardSource, parse_reward_spec
from rlxf.models.load import ModelConfig, disable_dropout, load_model, resolve_device, save_model
from rlxf.models.precision import autocast, resolve_precision, weight_dtype
from rlxf.models.reference import reference_model
from rlxf.models.registry import resolve_model
from rlxf.rollout import HFEngine, RolloutBatch, SamplingConfig
from rlxf.rollout.engine import GenerationEngine, RolloutConfig
from rlxf.rollout.episodes import EnvConfig, run_episodes
from rlxf.rollout.logprobs import batch_logprobs, completion_forward, position_ids_of
from rlxf.rollout.ray_engine import RayConfig
from rlxf.rollout.text_stats import repeats_ngram
from rlxf.rollout.vllm import VLLMConfig
from rlxf.train.atomic import write_jsonl_atomic
from rlxf.train.checkpoint import finish_checkpoints, load_checkpoint, save_checkpoint
from rlxf.train.cpu import configure_threads
from rlxf.train.distributed import build_accelerator
from rlxf.train.loop import Cadence, UpdateConfig
from rlxf.train.optim import adamw, build_scheduler, param_groups
from rlxf.train.progress import Progress
from rlxf.train.run import RunDir, RunResult, render_config
from rlxf.train.seed import seed_everything

logger = logging.getLogger(__name__)

Estimator = Literal["ppo", "grpo", "rloo", "reinforce++"]
KLPlacement = Literal["reward", "loss"]
CriticKind = Literal["separate", "shared"]

# Every metric the trainer logs per step (docs/rl.md explains each; a test checks both against the log).
# value/* only with estimator=ppo; kl only with a reference (kl.coef > 0 or kl.target); grad_norm and
# value/grad_norm only when train.max_grad_norm > 0.
# fmt: off
RL_METRICS: tuple[str, ...] = (
    "reward/mean", "reward/std", "reward/shaped_mean", "advantages/mean", "kl", "kl_coef", "entropy",
    "policy/loss", "policy/clip_frac", "policy/clip_frac_low", "policy/clip_frac_high", "policy/approx_kl",
    "policy/ratio_mean", "value/loss", "value/explained_variance", "value/grad_norm", "grad_norm", "lr",
    "response_len/mean", "response/truncated", "tokens_per_s", "time/generate", "time/score", "time/train",
    "time/experience", "time/update", "time/sync", "env/success_rate", "env/turns",
)
# fmt: on
# On held-out prompts, logged with the prefix eval/ (kl only with a reference).
# env/* and success_rate / turns only with an environment (--env).
RL_EVAL_METRICS: tuple[str, ...] = (
    "reward/mean",
    "reward/std",
    "gold_reward/mean",  # gold_reward/* only with gold_reward set
    "gold_reward/std",
    "response_len/mean",
    "repetition",
    "kl",
    "success_rate",
    "turns",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------- config


@dataclass
class KLConfig:
    """The KL penalty to the reference policy (the ``kl:`` section)."""

    coef: float = option(0.05, help="beta, the KL coefficient (its start value when target is set)")
    estimator: KLEstimator = option("k1", help="per-token estimator: k1 (log ratio), k2, k3 (Schulman 2020)")
    placement: KLPlacement = option("reward", help="reward: subtract beta*KL from the reward; loss: add it")
    target: float | None = option(None, help="adaptive beta steering KL per completion to this (nats)")
    horizon: int = option(10000, help="adaptive controller's horizon in samples (Ziegler et al. 2019)")

    def __post_init__(self) -> None:
        if self.coef < 0:
            raise ValueError(f"kl.coef must be >= 0, got {self.coef}")
        if self.target is not None and self.target <= 0:
            raise ValueError(f"kl.target must be > 0 (nats per completion), got {self.target}")
        if self.horizon < 1:
            raise ValueError(f"kl.horizon must be >= 1, got {self.horizon}")


@dataclass
class CriticConfig:
    """The value model of ``estimator=ppo`` (the ``critic:`` section; ignored by the other estimators)."""

    kind: CriticKind = option("separate", help="separate network, or a value head on the policy (shared)")
    init: str | None = option(
        None, help="model reference for a separate critic's backbone; unset: the policy"
    )
    learning_rate: float | None = option(None, help="critic learning rate; unset: the policy's")
    vf_coef: float = option(0.1, help="weight of the value loss in the total loss")
    value_clip: float = option(0.2, help="clip the new value to old +- this in the value loss; 0 disables")

    def __post_init__(self) -> None:
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ValueError(f"critic.learning_rate must be > 0, got {self.learning_rate}")
        if self.vf_coef <= 0:
            raise ValueError(f"critic.vf_coef must be > 0, got {self.vf_coef}")
        if self.value_clip < 0:
            raise ValueError(f"critic.value_clip must be >= 0, got {self.value_clip}")


def _default_sampling() -> SamplingConfig:
    return SamplingConfig(max_new_tokens=32, temperature=1.0, n=4, batch_size=64)


def _default_rl_train() -> UpdateConfig:
    """RL's defaults of the shared ``train:`` knobs: a small constant learning rate, no warm-up."""
    return UpdateConfig(learning_rate=1e-6, lr_schedule="constant", warmup_ratio=0.0)


def _warmup_steps_to_ratio(cfg: RLConfig, warmup_steps: Any) -> float:
    """The deprecated ``warmup_steps`` count as ``train.warmup_ratio``, the share of the run's optimizer
    steps; exact: the trainer's ``round(ratio x total)`` gives the count back."""
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"expected a count of optimizer steps >= 0, got {warmup_steps!r}")
    if warmup_steps >= cfg.total_updates:
        raise ValueError(
            f"{warmup_steps} warm-up steps cover all {cfg.total_updates} optimizer steps of the run "
            f"(num_steps x updates_per_step): train.warmup_ratio must be below 1"
        )
    return warmup_steps / cfg.total_updates


@dataclass
class RLConfig:
    """Options of ``rlxf rl``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: str = option("", help="prompts file (JSONL, CSV, Parquet or a datasets folder)")
    prompts_split: str | None = option(
        None, help="use only the records whose `split` field equals this (e.g. train)"
    )
    eval_prompts: str | None = option(None, help="held-out prompts file; unset: eval_split of prompts")
    eval_prompts_split: str | None = option(None, help="use only held-out records whose `split` equals this")
    eval_split: float | Literal["auto"] = option(
        "auto",
        help="share of prompts held out when eval_prompts is unset; auto: a tenth (32 to 512), none below "
        "100 prompts; 0: none",
    )
    chat_template: ChatTemplateMode = option("auto", help="auto, always or never (never: raw continuation)")
    reward: Any = option(
        "", help="reward spec: sentiment, model:PATH, fn:FILE:FUNC, judge:MODEL, URL, or a weighted list"
    )
    gold_reward: Any = option(
        None,
        help="held-out only, never trained on: a reward spec (as reward) scoring the eval samples beside "
        "it (eval/gold_reward/*), to see where the proxy stops tracking the gold (Gao et al. 2022)",
    )
    reward_options: RewardOptions = field(default_factory=RewardOptions)
    env: EnvConfig = field(default_factory=EnvConfig)
    shaping: RewardShapingConfig = field(default_factory=RewardShapingConfig)
    out: str = option("", help="output folder")
    seed: int = option(0, help="random seed (prompt order, sampling, initialisation)")
    resume: bool = option(False, help="continue the run in `out` from its latest checkpoint")
    overwrite: bool = option(False, help="replace a run already in `out`")

    estimator: Estimator = option("grpo", help="advantage estimator: ppo, grpo, rloo, reinforce++")
    sampling: SamplingConfig = field(default_factory=_default_sampling)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    eval_sampling: SamplingConfig | None = option(None, help="held-out sampling; unset: sampling with n=1")
    prompts_per_step: int = option(
        16, help="prompts per rollout batch (rows = prompts_per_step x sampling.n)"
    )
    num_steps: int = option(50, help="rollout + update steps to run")
    ppo_epochs: int = option(1, help="passes over each rollout batch")
    mini_batch_size: int = option(0, help="completions per optimizer step; 0: the whole rollout batch")
    micro_batch_size: int = option(16, help="completions per forward/backward pass (and no-grad passes)")
    train: UpdateConfig = field(default_factory=_default_rl_train)
    clip_eps: float = option(0.2, help="PPO ratio clip: 1 - clip_eps .. 1 + clip_eps_high")
    clip_eps_high: float | None = option(None, help="upper clip (DAPO clip-higher); unset: clip_eps")
    loss_aggregation: LossAggregation = option(
        "token-mean", help="token-mean, seq-mean-token-mean (GRPO), seq-mean-token-sum-norm (Dr. GRPO)"
    )
    scale_by_std: bool = option(True, help="grpo: divide by the group's reward std (false: Dr. GRPO)")
    whiten_advantages: bool = option(True, help="ppo: whiten GAE advantages over the batch")
    gamma: float = option(1.0, help="discount (ppo, reinforce++)")
    lam: float = option(0.95, help="GAE lambda (ppo)")
    kl: KLConfig = field(default_factory=KLConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)

    # The flat keys of earlier releases, kept for one release (rlxf.config: "Renamed keys").
    # fmt: off
    renamed_keys: ClassVar[dict[str, str]] = {
        "learning_rate": "train.learning_rate", "lr_schedule": "train.lr_schedule",
        "weight_decay": "train.weight_decay", "max_grad_norm": "train.max_grad_norm",
        "precision": "train.precision", "log_every": "train.log_every", "eval_every": "train.eval_every",
        "save_every": "train.save_every", "keep_last": "train.keep_last",
        "warmup_steps": "train.warmup_ratio",  # a count then, a share now: see renamed_conversions
    }
    # fmt: on
    renamed_conversions: ClassVar[dict[str, Callable[[RLConfig, Any], Any]]] = {
        "warmup_steps": _warmup_steps_to_ratio
    }

    def __post_init__(self) -> None:
        if self.env.name:
            if self.prompts or self.reward not in ("", None, []):
                raise ValueError(
                    "with an environment (--env) the episodes come from it and so do the rewards: "
                    "leave --prompts and --reward unset"
                )
            if self.rollout.engine != "hf" or self.rollout.placement != "local":
                raise ValueError(
                    "environment episodes run on the transformers engine in the training process: "
                    "rollout.engine=hf, rollout.placement=local"
                )
        elif not self.prompts:
            raise ValueError("give the prompts (--prompts FILE) or an environment (--env NAME)")
        if not self.out:
            raise ValueError("give the output folder: --out DIR")
        if not self.env.name and self.reward in ("", None, []):
            raise ValueError("give the reward: --reward SPEC (e.g. sentiment, model:runs/rm)")
        if self.gold_reward is not None:
            # The form only: parsing loads models, and in a pipeline a model:PATH may not exist yet (rl()
            # parses it, as it does `reward`, before the run folder or the policy).
            if self.env.name:
                raise ValueError(
                    "with an environment (--env) the rewards come from it: leave gold_reward unset"
                )
            spec = self.gold_reward
            if not ((isinstance(spec, str) and spec.strip()) or (isinstance(spec, list) and spec)):
                raise ValueError(
                    f"gold_reward must be a reward spec like reward's (sentiment, model:PATH, fn:FILE:FUNC, "
                    f"judge:MODEL, URL, or a weighted list) or unset, got {spec!r}"
                )
            if not self.eval_prompts and self.eval_split == 0:
                raise ValueError(_no_held_out_message(self))
        if self.model.dtype != "auto":
            raise ValueError("for training, set the precision with train.precision, not model.dtype")
        if self.eval_split != "auto" and not 0.0 <= self.eval_split < 1.0:
            raise ValueError(f"eval_split must be auto or in [0, 1), got {self.eval_split}")
        for name in ("prompts_per_step", "num_steps", "ppo_epochs", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        rows = self.rollout_batch_size
        mini = self.mini_batch_size or rows
        if rows % mini or mini % self.micro_batch_size:
            raise ValueError(
                f"the rollout batch ({self.prompts_per_step} prompts x {self.sampling.n} samples = {rows}) "
                f"must split into mini-batches of {mini}, and those into micro-batches of "
                f"{self.micro_batch_size}"
            )
        if self.estimator in ("grpo", "rloo") and self.sampling.n < 2:
            raise ValueError(
                f"estimator={self.estimator} compares the samples of a prompt: set sampling.n >= 2"
            )
        if not 0 < self.clip_eps < 1 or (self.clip_eps_high is not None and self.clip_eps_high <= 0):
            raise ValueError("clip_eps must be in (0, 1) and clip_eps_high > 0")
        if not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ValueError("gamma and lam must be in [0, 1]")
        if self.sampling.greedy:
            raise ValueError("RL needs sampled completions: sampling.temperature must be > 0")
        if (
            self.rollout.placement == "ray"
            and self.rollout.engine == "vllm"
            and self.ray.num_gpus_per_worker <= 0
        ):
            raise ValueError(
                "rollout.engine=vllm on Ray workers needs a GPU per worker: set ray.num_gpus_per_worker=1"
            )

    @property
    def rollout_batch_size(self) -> int:
        """Completions per step: ``prompts_per_step x sampling.n``."""
        return self.prompts_per_step * self.sampling.n

    @property
    def updates_per_step(self) -> int:
        """Optimizer steps per rollout batch: ``ppo_epochs x mini-batches``."""
        return self.ppo_epochs * (
            self.rollout_batch_size // (self.mini_batch_size or self.rollout_batch_size)
        )

    @property
    def total_updates(self) -> int:
        """Optimizer steps of the run, ``num_steps x updates_per_step``: what ``train.warmup_ratio`` is a
        share of."""
        return self.num_steps * self.updates_per_step


def _no_held_out_message(cfg: RLConfig) -> str:
    why = "eval_split=0" if cfg.eval_split == 0 else "eval_split=auto holds none out below 100 prompts"
    return (
        f"gold_reward is scored on held-out prompts only, and this run has none ({why}): set eval_prompts "
        f"(a held-out prompts file) or eval_split (a share of prompts, e.g. 0.1)"
    )


def load_gold_reward(cfg: RLConfig) -> RewardSource | None:
    """The source of ``cfg.gold_reward`` (None when unset), loaded as the training reward is
    (:func:`~rlxf.feedback.rewards.parse_reward_spec` with ``reward_options``: a ``model:`` reward model on
    the same device, in the same precision and batch size); a bad spec raises ``ValueError`` naming
    ``gold_reward``."""
    if cfg.gold_reward is None:
        return None
    try:
        return parse_reward_spec(cfg.gold_reward, cfg.reward_options)
    except ValueError as exc:
        raise ValueError(f"gold_reward: {exc}") from exc


def check_world_size(cfg: RLConfig, world: int) -> None:
    """Raise unless a step's prompts and each mini-batch split evenly over ``world`` processes (every
    process must run the same number of micro-batches: DDP all-reduces at the same points)."""
    if world == 1:
        return
    mini = cfg.mini_batch_size or cfg.rollout_batch_size
    if cfg.prompts_per_step % world or mini % world or (mini // world) % cfg.micro_batch_size:
        raise ValueError(
            f"on {world} processes, prompts_per_step ({cfg.prompts_per_step}) must be a multiple of {world} "
            f"(each process samples whole groups), and each mini-batch of {mini} completions must split "
            f"into {world} equal shares that are multiples of micro_batch_size ({cfg.micro_batch_size})"
        )


# ---------------------------------------------------------------------------------------------- models


class ValueHead(torch.nn.Module):
    """``V(s_t) = w . h_t + b`` on a hidden state; zero-initialised, so every value starts at 0."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.to(self.linear.weight.dtype)).squeeze(-1).float()  # [B, T]


class SeparateCritic(torch.nn.Module):
    """A critic with its own transformer backbone (``AutoModel``: the causal LM without its output head)."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = ValueHead(backbone.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor):
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).last_hidden_state  # [B, L, H]
        return self.head(hidden)  # [B, L]


@dataclass
class ForwardOut:
    logprobs: torch.Tensor  # [B, C] log pi(y_t | x, y_<t) of the completion tokens (float32)
    entropy: torch.Tensor | None  # [B, C] entropy of pi(. | x, y_<t) (no gradient), when asked
    values: torch.Tensor | None  # [B, C] V(x, y_<t) from a shared value head, when asked


def policy_forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    temperature: float,
    *,
    with_entropy: bool = False,
    value_head: ValueHead | None = None,
) -> ForwardOut:
    """Log-probs of the completion tokens ``input_ids[:, prompt_width:]`` under ``model``.

    Token ``P + t`` is predicted by the logits at ``P + t - 1``; only the ``C + 1`` last positions go
    through the output head (``logits_to_keep``), and the last of them (after the final token) is dropped.
    Logits are divided by the sampling temperature: the policy being optimised is the distribution the
    completions were sampled from.
    """
    logprobs, entropy, out = completion_forward(
        model,
        input_ids,
        attention_mask,
        prompt_width,
        temperature,
        with_entropy=with_entropy,
        output_hidden_states=value_head is not None,
    )
    values = None
    if value_head is not None:
        hidden = out.hidden_states[-1][:, prompt_width - 1 : -1]  # [B, C, H]: the states before each token
        values = value_head(hidden)
    return ForwardOut(logprobs=logprobs, entropy=entropy, values=values)


def critic_forward(critic: SeparateCritic, input_ids, attention_mask, prompt_width: int) -> torch.Tensor:
    """``V(x, y_<t)`` ``[B, C]`` of a separate critic at the positions that predict each completion token."""
    values = critic(input_ids, attention_mask, position_ids_of(attention_mask))  # [B, L]
    return values[:, prompt_width - 1 : -1]  # [B, C]


# ---------------------------------------------------------------------------------------------- data


@dataclass
class Experience:
    """One rollout batch with everything the update needs (rows grouped by prompt, ``n`` per prompt)."""

    input_ids: torch.Tensor  # [B, P+C] left-padded prompt then right-padded completion
    attention_mask: torch.Tensor  # [B, P+C]
    completion_mask: torch.Tensor  # [B, C] float, 1 on completion tokens (EOS / stop token included)
    prompt_width: int  # P
    old_logprobs: torch.Tensor | None  # [B, C] log pi_old; None when the update is on-policy
    ref_logprobs: torch.Tensor | None  # [B, C] log ref, when a KL term is used
    advantages: torch.Tensor  # [B, C]
    returns: torch.Tensor | None  # [B, C] critic targets (ppo)
    old_values: torch.Tensor | None  # [B, C] critic values at rollout (ppo)


def load_prompt_sets(cfg: RLConfig) -> tuple[Dataset, Dataset | None]:
    """The training and held-out prompt sets, validated before any model loads."""

    train = read_prompts(cfg.prompts, cfg.prompts_split)
    if cfg.eval_prompts:
        return train, read_prompts(cfg.eval_prompts, cfg.eval_prompts_split)
    if cfg.eval_split == "auto":
        n_eval = auto_eval_size(len(train))  # the offline learners' rule: a tenth, 32 to 512, none below 100
        if n_eval:
            logger.info(f"holding out {n_eval} of {len(train)} prompts for evaluation (eval_split=auto)")
            return split_data(train, n_eval, cfg.seed)
        return train, None
    if cfg.eval_split > 0:
        return split_data(train, cfg.eval_split, cfg.seed)
    return train, None


# ---------------------------------------------------------------------------------------------- trainer


class RLTrainer:
    """Rollout -> reward -> advantages -> clipped updates, ``num_steps`` times (module docstring)."""

    def __init__(
        self, cfg: RLConfig, run: RunDir, reward_source: Any, gold_source: RewardSource | None = None
    ) -> None:
        self.cfg = cfg
        self.run = run
        self.reward_source = reward_source  # None with an environment (it gives the rewards)
        seed_everything(cfg.seed)
        device = resolve_device(cfg.model.device)
        configure_threads(
            cfg.train.threads, device
        )  # train.threads; a warning when other jobs hold the cores
        self.precision = resolve_precision(cfg.train.precision, device)
        # This process's place in a torchrun / accelerate launch (rank 0 of 1 alone); accelerate's traps
        # (a launch that runs fewer processes than asked, its own accumulation or precision) and FSDP /
        # DeepSpeed, which this trainer cannot use yet, stop here. Precision stays ours (autocast).
        self.accelerator = build_accelerator(device, command="rl", sharding_ok=False)
        self.world = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        check_world_size(cfg, self.world)
        model_cfg = copy.deepcopy(cfg.model)
        model_cfg.dtype = weight_dtype(self.precision)  # type: ignore[assignment]
        self.policy, self.tokenizer = load_model(model_cfg, trainable=True)
        self.device = next(self.policy.parameters()).device
        disable_dropout(self.policy)
        self.lora = cfg.model.lora.r > 0
        # Reference: the adapter-disabled policy with LoRA; else a frozen copy of the starting weights in
        # the policy's own dtype, run under the same autocast. (Under bf16-mixed a copy stored in bf16 would
        # save memory but runs ~2x slower on CPU: its norms and softmax then compute in bf16 too.)
        self.ref_model = None
        if not self.lora and self.needs_reference:
            ref_cfg = copy.deepcopy(cfg.model)
            ref_cfg.dtype = weight_dtype(self.precision)  # type: ignore[assignment]
            ref_cfg.lora.r = 0
            self.ref_model, _ = load_model(ref_cfg, trainable=False)

        self.value_head: ValueHead | None = None
        self.critic: SeparateCritic | None = None
        if cfg.estimator == "ppo":
            if cfg.critic.kind == "shared":
                self.value_head = ValueHead(self.policy.config.hidden_size).to(self.device)
            else:
                from transformers import AutoModel

                backbone = AutoModel.from_pretrained(
                    resolve_model(cfg.critic.init or cfg.model.name_or_path),
                    dtype=torch.bfloat16 if self.precision == "bf16" else torch.float32,
                    local_files_only=True,
                )
                self.critic = SeparateCritic(backbone).to(self.device)
                disable_dropout(self.critic)
                self.critic.train()

        self.train_prompts: list[str] = []
        self.eval_prompts: list[str] = []
        if cfg.env.name:
            self.steps_per_epoch = 1  # episodes come from the environment's seeds, not a prompt set
        else:
            self.load_prompts()
        if cfg.gold_reward is not None and not self.has_eval:
            raise ValueError(_no_held_out_message(cfg))
        # The gold reward scores held-out samples only (evaluate); loaded here unless rl() passed it in.
        self.gold_source = gold_source if gold_source is not None else load_gold_reward(cfg)
        self.engine = self.build_engine()
        # What the loss's forward passes go through: DDP wrappers on several processes (their backward
        # all-reduces the gradients), the modules themselves on one. Generation, no-grad passes and
        # checkpoints use the modules (the wrappers share their parameters).
        self.train_policy = self.accelerator.prepare_model(self.policy)
        self.train_value_head = (
            self.accelerator.prepare_model(self.value_head) if self.value_head is not None else None
        )
        self.train_critic = self.accelerator.prepare_model(self.critic) if self.critic is not None else None
        self.wrapped = [
            m for m in (self.train_policy, self.train_value_head, self.train_critic) if m is not None
        ]

        # One AdamW over the policy and the critic (own learning rate), one schedule for both.
        self.modules = torch.nn.ModuleDict({"policy": self.policy})
        groups = param_groups(self.policy, cfg.train.weight_decay)
        critic_module = self.critic if self.critic is not None else self.value_head
        if critic_module is not None:
            self.modules["critic"] = critic_module
            for group in param_groups(critic_module, cfg.train.weight_decay):
                group["lr"] = cfg.critic.learning_rate or cfg.train.learning_rate
                groups.append(group)
        self.optimizer = adamw(groups, lr=cfg.train.learning_rate)
        warmup = round(cfg.train.warmup_ratio * cfg.total_updates)
        self.scheduler = build_scheduler(self.optimizer, cfg.train.lr_schedule, warmup, cfg.total_updates)
        self.kl_ctl = (
            AdaptiveKLController(cfg.kl.coef, cfg.kl.target, cfg.kl.horizon)
            if cfg.kl.target is not None
            else FixedKLController(cfg.kl.coef)
        )
        self.reward_stats = RunningMoments()
        # shaping.transform's reference reward: shaping.center, or the first step's mean (then kept).
        self.reward_center: float | None = cfg.shaping.center
        self.samples_dir = run.path / "samples"
        self.record_sync(0)  # the engine was built holding the starting weights

    def load_prompts(self) -> None:
        """The rendered training and held-out prompts, their lengths checked against the context."""
        cfg = self.cfg
        train_set, eval_set = load_prompt_sets(cfg)
        self.train_prompts = [render_prompt(r, self.tokenizer, cfg.chat_template) for r in train_set.records]
        self.eval_prompts = (
            [render_prompt(r, self.tokenizer, cfg.chat_template) for r in eval_set.records]
            if eval_set
            else []
        )
        context = getattr(self.policy.config, "max_position_embeddings", None)
        if context is not None:
            limit = context - cfg.sampling.max_new_tokens
            why = (
                f"the model's context of {context} tokens minus max_new_tokens {cfg.sampling.max_new_tokens}"
            )
            check_prompt_lengths(train_set, self.tokenizer, limit, cfg.chat_template, why=why)
            if eval_set is not None:
                check_prompt_lengths(eval_set, self.tokenizer, limit, cfg.chat_template, why=why)
        if len(self.train_prompts) < cfg.prompts_per_step:
            raise ValueError(
                f"{len(self.train_prompts)} training prompts make no batch of prompts_per_step "
                f"{cfg.prompts_per_step}"
            )
        self.steps_per_epoch = len(self.train_prompts) // cfg.prompts_per_step

    def build_engine(self) -> GenerationEngine:
        """The rollout engine ``cfg.rollout`` asks for, holding the policy's current weights: transformers'
        generate on the policy itself (``hf``, local), a vLLM engine in this process, or Ray actors."""
        cfg = self.cfg
        if cfg.rollout.placement == "ray":
            from rlxf.rollout.ray_engine import RayEngine, WorkerSpec

            spec = WorkerSpec(
                model=cfg.model,
                weight_dtype=weight_dtype(self.precision),
                precision=self.precision,
                engine=cfg.rollout.engine,
                vllm=cfg.vllm,
                threads=max(1, int(cfg.ray.num_cpus_per_worker)),
                cwd=os.getcwd(),
            )
            return RayEngine(spec, cfg.ray, cfg.rollout.num_workers, self.policy)
        if cfg.rollout.engine == "vllm":
            from rlxf.rollout.vllm import VLLMEngine

            return VLLMEngine(self.policy, self.tokenizer, cfg.vllm)
        return HFEngine(self.policy, self.tokenizer)

    def sync_engine(self, step: int) -> None:
        """Make the engine sample from the policy's current weights (a copy for vLLM and Ray engines)."""
        self.engine.sync_weights(self.policy)
        self.record_sync(step)

    def record_sync(self, step: int) -> None:
        """Ray engines: one line of ``weight_syncs.jsonl`` (the step whose weights were pushed, the SHA-256
        sent and each worker's, seconds, bytes), written by the main process."""
        if self.cfg.rollout.placement == "ray" and self.is_main:
            with open(self.run.path / "weight_syncs.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, **self.engine.last_sync}) + "\n")  # type: ignore[attr-defined]

    # ------------------------------------------------------------------------------------------ helpers

    @property
    def has_eval(self) -> bool:
        """Whether there is a held-out set: prompts, or an environment's test episodes."""
        return bool(self.eval_prompts) or bool(self.cfg.env.name and self.cfg.env.eval_episodes)

    @property
    def needs_reference(self) -> bool:
        return self.cfg.kl.coef > 0 or self.cfg.kl.target is not None

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.precision, self.device)

    @property
    def plain_sampling(self) -> bool:
        """Whether the engine's log-probs are the policy's own, so they can stand in for a forward pass:
        temperature 1 divides nothing away, no top-k / top-p truncation, and the engine is transformers'
        on the policy's weights in the training precision (vLLM computes with its own kernels)."""
        s = self.cfg.sampling
        return s.temperature == 1.0 and s.top_k == 0 and s.top_p == 1.0 and self.cfg.rollout.engine == "hf"

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def local_rows(self, rows: int) -> slice:
        """This process's share of a step's ``rows`` (rows of the whole batch, grouped by prompt)."""
        share = rows // self.world
        return slice(self.rank * share, (self.rank + 1) * share)

    def gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """``[B, ...]``: every process's ``[b, ...]`` rows in rank order, the completion axis (dim 1, if
        any) padded with 0 to the widest process's; on one process the tensor itself."""
        if self.world == 1:
            return local
        from accelerate.utils import pad_across_processes

        if local.dim() > 1:
            local = pad_across_processes(local, dim=1, pad_index=0)
        return self.accelerator.gather(local.contiguous())

    def over_global_batch(self, fn: Callable[..., torch.Tensor], *local: torch.Tensor) -> torch.Tensor:
        """``fn`` applied to the whole step's rows (gathered from every process), cut back to this process's
        rows and completion width: a statistic over the batch (whitening) is the one process's."""
        if self.world == 1:
            return fn(*local)
        rows, width = local[0].shape[0], local[0].shape[1]
        out = fn(*(self.gather_rows(t) for t in local))
        return out[self.local_rows(rows * self.world), :width]

    def mean_over_processes(self, metrics: dict[str, float], keys: Sequence[str]) -> dict[str, float]:
        """``metrics`` with ``keys`` averaged over the processes (every process holds as many rows, so the
        mean of the processes' means is the batch's mean). One all-reduce, in float64."""
        keys = [k for k in keys if k in metrics]
        if self.world == 1 or not keys:
            return metrics
        local = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.device)
        total = self.accelerator.reduce(local, reduction="sum")
        return {**metrics, **{k: v / self.world for k, v in zip(keys, total.tolist())}}

    def sum_over_processes(self, value: float) -> float:
        if self.world == 1:
            return value
        total = torch.tensor(value, dtype=torch.float64, device=self.device)
        return float(self.accelerator.reduce(total, reduction="sum"))

    def step_prompts(self, step: int) -> list[str]:
        """The prompts of ``step`` (deterministic in ``step``: epoch ``e`` visits them in ``randperm(seed+e)``)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = torch.randperm(
            len(self.train_prompts), generator=torch.Generator().manual_seed(self.cfg.seed + epoch)
        )
        size = self.cfg.prompts_per_step
        return [self.train_prompts[i] for i in order[position * size : (position + 1) * size].tolist()]

    def sample(
        self, prompts: list[str], sampling: SamplingConfig, seed: int, row_offset: int = 0
    ) -> RolloutBatch:
        self.policy.eval()
        with torch.no_grad(), self.autocast():
            batch = self.engine.generate(prompts, sampling, seed=seed, row_offset=row_offset)
        self.policy.train()
        return batch.to(self.device)

    def pad_to_global_widths(self, batch: RolloutBatch) -> RolloutBatch:
        """Pad this process's rows to the whole step's prompt and completion widths, so every forward pass
        has the shapes one process would run (bf16 kernels round differently at other shapes)."""
        if self.world == 1:
            return batch
        from accelerate.utils import pad_across_processes

        pad = self.engine.pad_token_id
        return dataclasses.replace(
            batch,
            prompt_ids=pad_across_processes(batch.prompt_ids, dim=1, pad_index=pad, pad_first=True),
            prompt_mask=pad_across_processes(batch.prompt_mask, dim=1, pad_index=0, pad_first=True),
            completion_ids=pad_across_processes(batch.completion_ids, dim=1, pad_index=pad),
            completion_mask=pad_across_processes(batch.completion_mask, dim=1, pad_index=0),
            logprobs=pad_across_processes(batch.logprobs, dim=1, pad_index=0),
            action_mask=None
            if batch.action_mask is None
            else pad_across_processes(batch.action_mask, dim=1, pad_index=0),
            turn_rewards=None
            if batch.turn_rewards is None
            else pad_across_processes(batch.turn_rewards, dim=1, pad_index=0),
        )

    def sample_episodes(
        self, step: int, sampling: SamplingConfig, groups: Sequence[int], split: str, first_row: int
    ) -> RolloutBatch:
        """Environment episodes: ``sampling.n`` of each environment seed in ``groups`` (rows grouped by
        seed, as prompts' samples are), from the ``split``'s environments."""
        seeds = [g for g in groups for _ in range(sampling.n)]
        self.policy.eval()
        with torch.no_grad(), self.autocast():
            batch = run_episodes(
                self.engine,
                lambda: self.cfg.env.make(split),
                seeds,
                sampling,
                max_episode_tokens=self.cfg.env.max_episode_tokens,
                seed=step,
                rows=range(first_row, first_row + len(seeds)),
            )
        self.policy.train()
        index = torch.arange(len(groups)).repeat_interleave(sampling.n)
        return dataclasses.replace(batch, prompt_index=index.to(self.device)).to(self.device)

    def score(self, batch: RolloutBatch) -> torch.Tensor:
        if batch.turn_rewards is not None:  # an episode's reward: the sum of its turns' rewards
            return batch.turn_rewards.sum(-1).float()  # [B]
        # batch.prompts holds each row's own prompt text (prompts x samples rows), aligned with completions.
        rewards = self.reward_source(list(batch.prompts), list(batch.completions))
        return torch.tensor(rewards, dtype=torch.float32, device=self.device)  # [B]

    def _chunks(self, n: int):
        size = self.cfg.micro_batch_size
        return [slice(i, min(i + size, n)) for i in range(0, n, size)]

    def no_grad_logprobs(self, model: torch.nn.Module, batch: RolloutBatch) -> torch.Tensor:
        """``[B, C]`` log-probs of the completions under ``model``, micro-batch by micro-batch."""
        return batch_logprobs(
            model, batch, self.cfg.sampling.temperature, self.cfg.micro_batch_size, self.autocast()
        )

    @torch.no_grad()
    def no_grad_values(self, batch: RolloutBatch) -> torch.Tensor:
        input_ids, attention_mask, width = batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1]
        parts = []
        with self.autocast():
            for s in self._chunks(len(batch)):
                if self.critic is not None:
                    parts.append(critic_forward(self.critic, input_ids[s], attention_mask[s], width))
                else:
                    out = policy_forward(
                        self.policy, input_ids[s], attention_mask[s], width, 1.0, value_head=self.value_head
                    )
                    parts.append(out.values)
        return torch.cat(parts)

    def reference_logprobs(self, batch: RolloutBatch) -> torch.Tensor:
        with reference_model(self.policy, self.ref_model) as reference:
            return self.no_grad_logprobs(reference, batch)

    # ------------------------------------------------------------------------------------------ rollout

    def make_experience(
        self, batch: RolloutBatch, rewards: torch.Tensor
    ) -> tuple[Experience, dict[str, float]]:
        """Log-probs, KL, values and advantages of a scored rollout batch."""
        cfg = self.cfg
        mask = batch.policy_mask.float()  # [B, C]: the policy's tokens (an episode's actions only)
        on_policy = cfg.updates_per_step == 1
        old_logprobs = None
        if not on_policy:
            old_logprobs = self.no_grad_logprobs(self.policy, batch)  # [B, C] in the training precision
        rollout_logprobs = old_logprobs
        ref_logprobs = None
        kl_tokens = None  # [B, C] the estimator's per-token KL of the rollout (for the reward)
        stats: dict[str, float] = {}
        if self.needs_reference:
            ref_logprobs = self.reference_logprobs(batch)
            if rollout_logprobs is None:
                rollout_logprobs = (
                    batch.logprobs.float()
                    if self.plain_sampling
                    else self.no_grad_logprobs(self.policy, batch)
                )
            k1 = kl_k1(rollout_logprobs, ref_logprobs) * mask  # [B, C]
            stats["kl"] = k1.sum(-1).mean().item()  # nats per completion: sum over tokens, mean over rows
            kl_tokens = kl_estimate(rollout_logprobs, ref_logprobs, cfg.kl.estimator) * mask

        # Shaping normalises over the whole step's rewards (and updates the running statistics with all of
        # them, identically on every process): gathered, shaped, this process's rows kept.
        all_rewards = self.gather_rows(rewards)  # [B_global]
        all_reasons = list(batch.finish_reasons)
        if self.world > 1:
            from accelerate.utils import gather_object

            all_reasons = gather_object(all_reasons)
        if cfg.shaping.transform != "none" and self.reward_center is None:
            self.reward_center = all_rewards.double().mean().item()  # the starting policy's mean reward
        shaped_all = shape_rewards(
            all_rewards, all_reasons, cfg.shaping, self.reward_stats, self.reward_center
        )  # [B_global]
        shaped = shaped_all[self.local_rows(len(shaped_all))]  # [B]
        beta = self.kl_ctl.value
        in_reward = kl_tokens is not None and cfg.kl.placement == "reward"
        n = cfg.sampling.n
        returns = old_values = None
        if cfg.estimator in ("ppo", "reinforce++"):
            token_rewards = token_level_rewards(shaped, kl_tokens if in_reward else None, beta, mask)
            if batch.turn_rewards is not None:
                # Episodes: each turn's reward at its last action; at the episode's last action, what
                # shaping changed of its total (shaped - raw) instead of the whole shaped total.
                raw = batch.turn_rewards.sum(-1)  # [B]
                token_rewards = (
                    token_rewards - token_level_rewards(raw, None, 0.0, mask) + batch.turn_rewards * mask
                )
            if cfg.estimator == "ppo":
                old_values = self.no_grad_values(batch) * mask  # [B, C]
                # GAE over the policy's tokens only (packed to the left: an observation is part of the
                # transition between two turns, not a step of its own)
                packed_rewards, packed_mask = pack_actions(token_rewards, mask)  # [B, A]
                packed_values, _ = pack_actions(old_values, mask)
                packed_adv, packed_ret = gae_advantages(
                    packed_rewards, packed_values, packed_mask, cfg.gamma, cfg.lam
                )
                advantages, returns = unpack_actions(packed_adv, mask), unpack_actions(packed_ret, mask)
                if cfg.whiten_advantages:
                    # normaliser per batch: all real tokens of the step, on every process
                    advantages = self.over_global_batch(masked_whiten, advantages, mask) * mask
            else:
                # whitened over the whole step's tokens, on every process; returns over the actions
                advantages = self.over_global_batch(
                    lambda r, m: unpack_actions(reinforce_pp_advantages(*pack_actions(r, m), cfg.gamma), m),
                    token_rewards,
                    mask,
                )
        else:
            # Outcome-level estimators: one scalar per completion, the KL penalty folded into it.
            sequence_rewards = shaped - beta * kl_tokens.sum(-1) if in_reward else shaped  # [B]
            if cfg.estimator == "grpo":
                per_sequence = group_advantages(sequence_rewards, n, cfg.scale_by_std)  # [B]
            else:
                per_sequence = rloo_advantages(sequence_rewards, n)  # [B]
            advantages = per_sequence.unsqueeze(-1) * mask  # [B, C]: the same for every token
        stats = self.mean_over_processes(stats, ["kl"])  # equal rows per process: the batch's mean
        stats["reward/shaped_mean"] = shaped_all.mean().item()
        # mean over the step's real tokens: sums over the processes, then one division
        stats["advantages/mean"] = self.sum_over_processes((advantages * mask).sum().item()) / max(
            self.sum_over_processes(mask.sum().item()), 1.0
        )
        exp = Experience(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            completion_mask=mask,
            prompt_width=batch.prompt_ids.shape[1],
            old_logprobs=old_logprobs,
            ref_logprobs=ref_logprobs if cfg.kl.placement == "loss" else None,
            advantages=advantages,
            returns=returns,
            old_values=old_values,
        )
        return exp, stats

    # ------------------------------------------------------------------------------------------ update

    def loss_terms(self, exp: Experience, rows: slice) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """Per-token policy loss (+ KL) ``[b, C]`` and value loss of one micro-batch, with statistics."""
        cfg = self.cfg
        mask = exp.completion_mask[rows]
        out = policy_forward(
            self.train_policy,
            exp.input_ids[rows],
            exp.attention_mask[rows],
            exp.prompt_width,
            cfg.sampling.temperature,
            with_entropy=True,
            value_head=self.train_value_head,
        )
        # On-policy (one update per batch): pi_old = pi, so the ratio is 1 with the gradient of log pi.
        old = exp.old_logprobs[rows] if exp.old_logprobs is not None else out.logprobs.detach()
        policy_loss, stats = clipped_policy_loss(
            out.logprobs, old, exp.advantages[rows], mask, cfg.clip_eps, cfg.clip_eps_high
        )
        stats = {f"policy/{k}": v for k, v in stats.items()}
        stats["entropy"] = masked_mean(out.entropy, mask)
        per_token = policy_loss
        if exp.ref_logprobs is not None:  # kl.placement == "loss": beta * KL_t added per token
            kl = kl_estimate(out.logprobs, exp.ref_logprobs[rows], cfg.kl.estimator)
            per_token = per_token + self.kl_ctl.value * torch.where(mask != 0, kl, 0)
        value_loss = None
        if cfg.estimator == "ppo":
            if self.critic is not None:
                values = critic_forward(
                    self.train_critic, exp.input_ids[rows], exp.attention_mask[rows], exp.prompt_width
                )
            else:
                values = out.values
            value_clip = cfg.critic.value_clip if cfg.critic.value_clip > 0 else float("inf")
            value_loss = clipped_value_loss(values, exp.old_values[rows], exp.returns[rows], mask, value_clip)
            stats["value/explained_variance"] = explained_variance(values.detach(), exp.returns[rows], mask)
        return per_token, value_loss, stats

    def no_sync(self, skip: bool) -> contextlib.AbstractContextManager:
        """Hold back DDP's gradient all-reduce (``skip``) for a micro-batch that is not a mini-batch's last."""
        stack = contextlib.ExitStack()
        if skip:
            for module in self.wrapped:
                stack.enter_context(self.accelerator.no_sync(module))
        return stack

    def backward(
        self, sub: Experience, rows: slice, units: float, value_units: float, step: int
    ) -> dict[str, Any]:
        """Forward and backward of one micro-batch of a mini-batch whose aggregate has ``units`` (policy)
        and ``value_units`` (critic) on all processes together; the micro-batch's statistics."""
        cfg = self.cfg
        mask = sub.completion_mask[rows]
        with self.autocast():
            policy_tokens, value_tokens, stats = self.loss_terms(sub, rows)
        numerator, micro_units = aggregate_sum(
            policy_tokens, mask, cfg.loss_aggregation, cfg.sampling.max_new_tokens
        )
        # This micro-batch's share of the mini-batch's mean over every process's units, times W: DDP
        # averages the processes' gradients, and the mean must be of their sum.
        loss = numerator * self.world / units
        stats["policy/loss"] = numerator.detach() / max(micro_units, 1.0)
        if value_tokens is not None:
            value_numerator, value_micro_units = aggregate_sum(value_tokens, mask, "token-mean")
            # Normaliser per token of the mini-batch: the critic regresses every token's return.
            loss = loss + cfg.critic.vf_coef * value_numerator * self.world / max(value_units, 1.0)
            stats["value/loss"] = value_numerator.detach() / max(value_micro_units, 1.0)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {step + 1}: the loss is {loss.item()} (not finite)")
        # Backward outside autocast (its ops follow the forward's dtypes), inside the mini-batch's outer
        # autocast region, so the bf16 weight copies autocast cached stay for the next micro-batch.
        with torch.autocast(self.device.type, enabled=False):
            loss.backward()
        return stats

    def update(self, exp: Experience, step: int) -> dict[str, float]:
        """``ppo_epochs`` passes of mini-batch optimizer steps over the experience; mean statistics.

        ``exp`` holds this process's rows; a mini-batch is ``mini_batch_size / W`` of them on each of the
        ``W`` processes."""
        cfg = self.cfg
        rows = len(exp.input_ids)  # this process's rows
        mini = (cfg.mini_batch_size or cfg.rollout_batch_size) // self.world  # this process's share
        sums: dict[str, float] = {}
        count = 0
        for epoch in range(cfg.ppo_epochs):
            order = torch.randperm(
                rows, generator=torch.Generator().manual_seed(cfg.seed * 7919 + step * 31 + epoch)
            )
            for start in range(0, rows, mini):
                idx = order[start : start + mini].sort().values  # [mini]
                sub = _index_experience(exp, idx)
                # Normaliser: the units (tokens or sequences) of the whole mini-batch on every process,
                # counted up front, so accumulating micro-batches (and DDP's average over processes, undone
                # by the factor W) gives the gradient of the mini-batch's aggregate exactly.
                units = self.sum_over_processes(aggregate_units(sub.completion_mask, cfg.loss_aggregation))
                value_units = self.sum_over_processes(aggregate_units(sub.completion_mask, "token-mean"))
                micro_stats: dict[str, float] = {}
                chunks = self._chunks(len(idx))
                # One autocast region for the mini-batch's micro-batches: under bf16-mixed, autocast casts
                # each float32 weight to bf16 once and reuses the copy (its cache lives until the outermost
                # region ends), instead of once per micro-batch. The weights change only after the region.
                with self.autocast():
                    for i, s in enumerate(chunks):
                        # Gradients are all-reduced once per mini-batch, on its last micro-batch.
                        with self.no_sync(i < len(chunks) - 1):
                            stats = self.backward(sub, s, units, value_units, step)
                        share = (s.stop - s.start) / len(idx)  # metrics: mean over the mini-batch's rows
                        for k, v in stats.items():
                            micro_stats[k] = micro_stats.get(k, 0.0) + float(v) * share
                if cfg.train.max_grad_norm > 0:
                    # Policy and critic are clipped apart (as with two optimizers): a large value-loss
                    # gradient early in training must not shrink the policy's step. The gradients are
                    # all-reduced already, so the norms are global.
                    micro_stats["grad_norm"] = float(
                        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.train.max_grad_norm)
                    )
                    if "critic" in self.modules:
                        micro_stats["value/grad_norm"] = float(
                            torch.nn.utils.clip_grad_norm_(
                                self.modules["critic"].parameters(), cfg.train.max_grad_norm
                            )
                        )
                micro_stats["lr"] = self.scheduler.get_last_lr()[0]
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
                for k, v in micro_stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        means = {k: v / count for k, v in sums.items()}
        # grad norms and lr are global already; the rest are means over this process's rows
        return self.mean_over_processes(
            means, [k for k in means if k not in ("grad_norm", "value/grad_norm", "lr")]
        )

    # ------------------------------------------------------------------------------------------ evaluation

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out reward, KL per completion, length and repetition on fresh samples (fixed seed), as
        ``eval/...`` metrics (:data:`RL_EVAL_METRICS`); the samples go to ``samples/step-NNNNNN.jsonl``.

        With an environment: ``env.eval_episodes`` episodes of its test split (seeds ``0..N-1``), with
        their success rate and turns, each sample holding the episode's transcript."""
        if not self.has_eval:
            return {}
        sampling = self.cfg.eval_sampling or dataclasses.replace(self.cfg.sampling, n=1)
        # Each process samples and scores a contiguous share of the held-out prompts (with their rows'
        # numbers in the whole set, so the samples are one process's); the rows are then gathered and
        # every figure is computed over all of them.
        count = self.cfg.env.eval_episodes if self.cfg.env.name else len(self.eval_prompts)
        first, last = self.rank * count // self.world, (self.rank + 1) * count // self.world
        rows: list[dict[str, Any]] = []
        if last > first:
            if self.cfg.env.name:
                batch = self.sample_episodes(
                    self.cfg.seed + 10**9, sampling, range(first, last), "test", first * sampling.n
                )
            else:
                batch = self.sample(
                    self.eval_prompts[first:last],
                    sampling,
                    seed=self.cfg.seed + 10**9,
                    row_offset=first * sampling.n,
                )
            rewards = self.score(batch)
            gold = (
                self.gold_source(list(batch.prompts), list(batch.completions))
                if self.gold_source is not None
                else None
            )
            mask = batch.policy_mask.float()  # [b, C]
            kl = None
            if self.needs_reference:
                logprobs = self.no_grad_logprobs(self.policy, batch)
                kl = (kl_k1(logprobs, self.reference_logprobs(batch)) * mask).sum(-1).tolist()  # [b] nats
            for i in range(len(batch)):
                rows.append(
                    {
                        "prompt": batch.prompts[i],
                        "completion": batch.completions[i],
                        "reward": rewards[i].item(),
                        **({"gold_reward": gold[i]} if gold is not None else {}),
                        "finish_reason": batch.finish_reasons[i],
                        "length": mask[i].sum().item(),
                        **({"kl": kl[i]} if kl is not None else {}),
                        **(batch.episodes[i] if batch.episodes is not None else {}),
                    }
                )
        if self.world > 1:
            from accelerate.utils import gather_object

            rows = gather_object(rows)  # in rank order: the prompts' order
        rewards = torch.tensor([r["reward"] for r in rows], dtype=torch.float32)
        metrics = {
            "reward/mean": rewards.mean().item(),
            "reward/std": rewards.std().item() if len(rewards) > 1 else 0.0,
            "response_len/mean": sum(r.pop("length") for r in rows) / len(rows),
            "repetition": sum(repeats_ngram(r["completion"], 3, 3) for r in rows) / len(rows),
        }
        if self.gold_source is not None:
            gold_rewards = torch.tensor([r["gold_reward"] for r in rows], dtype=torch.float32)
            metrics["gold_reward/mean"] = gold_rewards.mean().item()
            metrics["gold_reward/std"] = gold_rewards.std().item() if len(gold_rewards) > 1 else 0.0
        if self.needs_reference:
            metrics["kl"] = sum(r.pop("kl") for r in rows) / len(rows)
        if self.cfg.env.name:
            metrics["success_rate"] = sum(r["success"] for r in rows) / len(rows)
            metrics["turns"] = sum(r["turns"] for r in rows) / len(rows)
        if self.is_main:
            self.samples_dir.mkdir(exist_ok=True)
            write_jsonl_atomic(self.samples_dir / f"step-{step:06d}.jsonl", rows)
        return {f"eval/{k}": v for k, v in metrics.items()}

    # ------------------------------------------------------------------------------------------ loop

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        local_groups = self.local_rows(cfg.prompts_per_step)  # whole groups per process
        first_row = local_groups.start * cfg.sampling.n
        sample_seed = cfg.seed * 1_000_003 + step
        if cfg.env.name:  # the step's environments: seeds of its own, one group of n episodes each
            seeds = [
                sample_seed * cfg.prompts_per_step + g for g in range(local_groups.start, local_groups.stop)
            ]
            batch = self.sample_episodes(sample_seed, cfg.sampling, seeds, "train", first_row)
        else:
            prompts = self.step_prompts(step)[local_groups]
            batch = self.sample(prompts, cfg.sampling, seed=sample_seed, row_offset=first_row)
        batch = self.pad_to_global_widths(batch)
        t1 = time.perf_counter()
        rewards = self.score(batch)  # [b]: this process's rows
        t2 = time.perf_counter()
        exp, stats = self.make_experience(batch, rewards)
        t_exp = time.perf_counter()
        update_stats = self.update(exp, step)
        t3 = time.perf_counter()
        self.sync_engine(step + 1)  # the next rollouts (and held-out samples) come from the new weights
        t4 = time.perf_counter()
        if "kl" in stats:  # the step's KL, over all processes, and all its rows
            self.kl_ctl.update(stats["kl"], cfg.rollout_batch_size)
        all_rewards = self.gather_rows(rewards)  # [B]
        mask = batch.policy_mask  # [b, C]: response length counts the policy's tokens
        local = {
            "response_len/mean": mask.sum(-1).float().mean().item(),
            "response/truncated": sum(f == "length" for f in batch.finish_reasons) / len(batch),
            "time/generate": t1 - t0,
            "time/score": t2 - t1,
            "time/train": t3 - t2,
            "time/experience": t_exp - t2,
            "time/update": t3 - t_exp,
            "time/sync": t4 - t3,
        }
        if batch.episodes is not None:
            local["env/success_rate"] = sum(e["success"] for e in batch.episodes) / len(batch)
            local["env/turns"] = sum(e["turns"] for e in batch.episodes) / len(batch)
        local = self.mean_over_processes(local, list(local))  # times: the processes' mean
        tokens = self.sum_over_processes(float(batch.attention_mask.sum()))
        metrics = {
            "reward/mean": all_rewards.mean().item(),
            "reward/std": all_rewards.std().item() if len(all_rewards) > 1 else 0.0,
            **stats,
            "kl_coef": self.kl_ctl.value,
            **update_stats,
            "response_len/mean": local["response_len/mean"],
            "response/truncated": local["response/truncated"],
            "tokens_per_s": tokens / (t4 - t0),  # every process's tokens over this process's step time
            "time/generate": local["time/generate"],
            "time/score": local["time/score"],
            "time/train": local["time/train"],
            "time/experience": local["time/experience"],
            "time/update": local["time/update"],
            "time/sync": local["time/sync"],
            **{k: v for k, v in local.items() if k.startswith("env/")},
        }
        return metrics

    def fit(self) -> dict[str, float]:
        """Train to ``num_steps`` (continuing from the run's checkpoint when resuming); final metrics.

        The order is :class:`~rlxf.train.loop.Cadence`'s, as in the offline loop: after each step evaluate
        (when due), log, save (when due); at the end evaluate, log, save the final checkpoint."""
        cfg = self.cfg
        cadence = Cadence.of(cfg.train, cfg.num_steps)
        start = 0
        if self.run.resume_checkpoint is not None:
            ckpt = load_checkpoint(self.run.resume_checkpoint, self.modules, self.optimizer, self.scheduler)
            start = ckpt.step
            self.kl_ctl.load_state_dict(ckpt.extra["kl_ctl"])
            self.reward_stats.load_state_dict(ckpt.extra["reward_stats"])
            self.reward_center = ckpt.extra.get("reward_center", self.reward_center)
            self.sync_engine(start)  # the engine was built with the starting weights
        last: dict[str, float] = {}
        if start == 0 and self.has_eval:
            first_eval = self.evaluate(0)
            self.run.log(0, first_eval)
            if self.is_main:
                logger.info(_describe("step 0 (before training)", first_eval))
        progress = Progress(
            cfg.num_steps, f"rl ({cfg.estimator})", initial=start, mode="auto" if self.is_main else "off"
        )
        for step in range(start, cfg.num_steps):
            metrics = self.train_step(step)
            done = step + 1
            if self.has_eval and cadence.evaluate(done):
                metrics.update(self.evaluate(done))
            if cadence.log(done):
                self.run.log(done, metrics)
            if cadence.save(done):
                self.save(done)
            progress.update(1, {"reward": metrics["reward/mean"], "kl": metrics.get("kl", 0.0)})
            last = metrics
        progress.close()
        if self.has_eval:
            final = self.evaluate(cfg.num_steps)
            self.run.log(cfg.num_steps, final)
            last.update(final)
            if self.is_main:
                logger.info(_describe(f"step {cfg.num_steps} (after training)", final))
        if start < cfg.num_steps:
            self.save(cfg.num_steps)
        return last

    def save(self, step: int) -> None:
        """Checkpoint (the main process; every process holds the same weights and statistics)."""
        if self.is_main:
            save_checkpoint(
                self.run.checkpoints_dir,
                step,
                self.modules,
                self.optimizer,
                self.scheduler,
                extra={
                    "kl_ctl": self.kl_ctl.state_dict(),
                    "reward_stats": self.reward_stats.state_dict(),
                    "reward_center": self.reward_center,
                },
                keep_last=self.cfg.train.keep_last,
            )
        self.accelerator.wait_for_everyone()


def rl(cfg: RLConfig) -> RunResult:
    """Run ``rlxf rl``: train, save ``out/model``, write ``summary.json``, then drop the checkpoints
    (unless ``train.keep_final_checkpoint``); returns the run folder, final metrics and summary.

    With ``rollout.placement=ray`` the trainer runs as a Ray actor and starts the rollout actors
    (:func:`rl_on_ray`); the run folder is the same."""
    from accelerate import PartialState

    # The launch (torchrun / accelerate launch, or one process): cpu= as RunDir and the trainer ask.
    state = PartialState(cpu=not torch.cuda.is_available())
    if state.is_main_process:
        logger.info(render_config(cfg, "rlxf rl"))
    check_world_size(cfg, state.num_processes)  # a batch that does not split stops here
    if cfg.rollout.placement == "ray" and state.num_processes > 1:
        raise ValueError(
            "rollout.placement=ray runs the trainer as one Ray actor: start `rlxf rl` as one process, not "
            "under torchrun or accelerate launch (for data-parallel training use rollout.placement=local)"
        )
    if cfg.env.name:
        cfg.env.make("train").close()  # a bad environment (name, arguments) stops here, before any model
        reward_source = None
    else:
        _, eval_set = load_prompt_sets(cfg)  # bad prompt files stop here, before the run folder or any model
        if cfg.gold_reward is not None and eval_set is None:
            raise ValueError(_no_held_out_message(cfg))  # so does a gold reward with nothing held out
        reward_source = parse_reward_spec(cfg.reward, cfg.reward_options)  # so does a bad reward spec
    gold_source = load_gold_reward(cfg)  # and a bad gold_reward spec
    if cfg.rollout.placement == "ray":
        return rl_on_ray(cfg)
    return _train(cfg, reward_source, gold_source)


def _train(cfg: RLConfig, reward_source: Any, gold_source: RewardSource | None = None) -> RunResult:
    """The run itself, in this process (after :func:`rl`'s checks)."""
    with RunDir.create(cfg.out, cfg, resume=cfg.resume, overwrite=cfg.overwrite) as run:
        trainer = RLTrainer(cfg, run, reward_source, gold_source)
        try:
            metrics = trainer.fit()
        finally:
            trainer.engine.close()
        if trainer.is_main:
            save_model(trainer.policy, trainer.tokenizer, run.model_dir)
        summary = run.write_summary(metrics)
    if trainer.is_main:
        finish_checkpoints(
            run.checkpoints_dir, keep_final=cfg.train.keep_final_checkpoint, keep_last=cfg.train.keep_last
        )
    trainer.accelerator.wait_for_everyone()
    return RunResult(Path(run.path), metrics, summary)


class RLTrainerActor:
    """The trainer as a Ray actor (``ray.remote(RLTrainerActor)``): :func:`_train` in the actor's process,
    which starts the rollout actors itself (:class:`rlxf.rollout.ray_engine.RayEngine`)."""

    def run(self, cfg: RLConfig, cwd: str, log_level: int) -> RunResult:
        if os.path.isdir(cwd):  # relative paths of the config resolve as they did for the caller
            os.chdir(cwd)
        torch.set_num_threads(max(1, int(cfg.ray.trainer_num_cpus)))
        rlxf_logger = logging.getLogger("rlxf")
        if not rlxf_logger.handlers:  # the actor's stderr reaches the driver (Ray prefixes each line)
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(message)s"))
            rlxf_logger.addHandler(handler)
        rlxf_logger.setLevel(log_level)
        return _train(cfg, parse_reward_spec(cfg.reward, cfg.reward_options), load_gold_reward(cfg))


def rl_on_ray(cfg: RLConfig) -> RunResult:
    """``rlxf rl`` with ``rollout.placement=ray``: the trainer as a Ray actor (``ray.trainer_num_cpus``,
    ``ray.trainer_num_gpus``) and ``rollout.num_workers`` rollout actors, on the cluster at ``ray.address``
    or on a Ray started here (and shut down at the end); a Ray already initialised in this process is used
    as it is. The run folder is written by the trainer actor: on a cluster, give ``out`` (and the model,
    prompts and reward files) as paths every node reads, e.g. on shared storage."""
    from rlxf.rollout.ray_engine import start_ray

    ray_cfg = cfg.ray
    cpus = ray_cfg.trainer_num_cpus + cfg.rollout.num_workers * ray_cfg.num_cpus_per_worker
    gpus = ray_cfg.trainer_num_gpus + cfg.rollout.num_workers * ray_cfg.num_gpus_per_worker
    ray, started = start_ray(ray_cfg, cpus, gpus)
    try:
        actor = ray.remote(num_cpus=ray_cfg.trainer_num_cpus, num_gpus=ray_cfg.trainer_num_gpus)(
            RLTrainerActor
        ).remote()
        log_level = logging.getLogger("rlxf").getEffectiveLevel()
        result = ray.get(actor.run.remote(cfg, os.getcwd(), log_level))
        ray.kill(actor)
        return result
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------------------------- small helpers


def _index_experience(exp: Experience, idx: torch.Tensor) -> Experience:
    pick = lambda t: None if t is None else t[idx]  # noqa: E731
    return Experience(
        input_ids=exp.input_ids[idx],
        attention_mask=exp.attention_mask[idx],
        completion_mask=exp.completion_mask[idx],
        prompt_width=exp.prompt_width,
        old_logprobs=pick(exp.old_logprobs),
        ref_logprobs=pick(exp.ref_logprobs),
        advantages=exp.advantages[idx],
        returns=pick(exp.returns),
        old_values=pick(exp.old_values),
    )


def _describe(title: str, metrics: dict[str, float]) -> str:
    return f"{title}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items())


__all__ = [
    "RL_EVAL_METRICS",
    "RL_METRICS",
    "CriticConfig",
    "Estimator",
    "Experience",
    "KLConfig",
    "RLConfig",
    "RLTrainer",
    "ValueHead",
    "check_world_size",
    "load_gold_reward",
    "policy_forward",
    "rl",
    "rl_on_ray",
]
