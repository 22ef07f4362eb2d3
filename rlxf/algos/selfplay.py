"""Two-agent reinforcement alignment (``rlxf selfplay``): a prompter writes the input, a responder answers,
and both learn from the outcome.

Each step, for ``tasks_per_step`` tasks of the game (:mod:`rlxf.algos.selfplay_games`; e.g. "get a review
of a film"):

1. the prompter ``P`` samples ``prompter.n`` inputs ``x ~ P(. | c)`` from the task's messages ``c``;
2. the responder ``R`` samples ``responder.n`` answers ``y ~ R(. | x)`` to each input;
3. the game scores every round ``(c, x, y)``: ``g_P(c, x, y)`` and ``g_R(c, x, y)`` (adversarial: P gains
   when R's answer scores badly; cooperative: both gain from R's score), and whether P "won" (attack
   success);
4. the rewards::

       r_R(x, y) = g_R(c, x, y)
       r_P(x)    = mean_{j} g_P(c, x, y_j) + eta * novelty(x, H)

   P's reward of an input is its expected outcome over R's ``responder.n`` answers (a lower-variance
   estimate of ``E_{y~R}[g_P]``); ``novelty(x, H) = (|G(x)| - max_{h in H} |G(x) & G(h)|) / |g(x)|``
   with ``g(x)`` the input's word n-grams and ``G(x)`` their set, against the last ``novelty_history``
   inputs ``H`` (Curiosity-driven Red-Teaming, Hong et al. ICLR 2024, its n-gram novelty term; an input of
   fewer than n words or one phrase repeated earns little or nothing: :func:`novelty`), weighted by
   ``eta = novelty_coef``: without it an attacker collapses onto one input that works;
5. each role trained by the schedule takes one GRPO step (Shao et al. 2024) on its own samples: the
   group of P is the ``prompter.n`` inputs of a task, the group of R the ``responder.n`` answers to an
   input, ``A_i = (r_i - mean_group r) / (std_group r + eps)``; the loss per token is the on-policy
   surrogate plus the k3 KL to the role's reference (``kl_coef``)::

       L_t = -exp(log pi(a_t) - sg[log pi(a_t)]) A_i + beta * k3(pi, ref)_t,   mean over the role's tokens

   With ``benign_per_step`` = k, R also answers the next k of the game's benign training inputs in each
   step it trains, an anchor for ordinary inputs. ``benign_anchor: kl``: its loss there is only the KL to
   its reference (the KL form of InstructGPT's pre-training mix, Ouyang et al. 2022)::

       L_R = L_game + benign_kl_coef * mean_{benign tokens} k3(pi, ref)_t

   ``benign_anchor: sentiment`` holds the figure the evaluation checks instead of every token: R's mean
   sentiment on ordinary inputs is a constraint, ``E_benign[s(y) - s_0(x)] = 0`` with ``s`` VADER's
   compound score (``benign_sentiment`` of the evaluation) and ``s_0(x)`` the start model's mean over
   ``benign_reference_samples`` answers to ``x`` (sampled once, ``benign_reference.json``), enforced by a
   Lagrange multiplier set by a PI controller on the constraint's error (the PID Lagrangian of Stooke,
   Achiam & Abbeel, ICML 2020; plain dual ascent, RCPO, is its integral term alone)::

       e_t      = mean_{benign answers of step t} (s(y) - s_0(x))
       lambda_t = benign_lambda_kp * e_t + benign_lambda_ki * sum_{tau <= t} e_tau
       A^b_i    = -lambda_t * (s(y_i) - s_0(x_i))          (s_0 the baseline: no group needed)
       L_R      = L_game + mean_{benign tokens} (-ratio_t A^b_i + benign_kl_coef * k3(pi, ref)_t)

   When the game makes R more positive on ordinary inputs than it started, lambda is positive and R's
   benign answers above their input's start gain less; below the start, lambda turns negative. The
   baseline is ``s_0(x)``, not the group's mean, so the push holds when R's answers to an input agree. The
   proportional term reacts at once; the integral one alone winds up and oscillates (measured:
   docs/selfplay.md).

Schedules (``schedule``): ``prompter`` (R frozen: RL red-teaming / prompt optimisation), ``responder``
(P frozen, or the fixed inputs of ``prompt_pool``), ``alternate`` (``round_steps`` steps of P, then of R,
...: MART's attacker / target rounds, Ge et al. NAACL 2024) and ``simultaneous`` (both from the same
rollouts each step: online self-play, as Self-RedTeam 2025).

Models (``roles``): ``adapters`` (default) puts two LoRA adapters, ``prompter`` and ``responder``, on one
base model in memory; a role's turn activates its adapter, and the reference of both is the base with
adapters off. ``models`` loads a model per role (``model`` for P, ``responder_model`` for R; full
fine-tuning with a frozen reference copy, or LoRA when ``model.lora.r > 0``). Each role has its own
optimizer, schedule of learning rate and KL reference; a checkpoint holds both roles' states apart (saved
together, so a step is saved for both or neither), with the novelty history: ``--resume`` continues
exactly.

Evaluation (step 0, every ``train.eval_every`` steps, the end), on ``eval_tasks`` tasks of the game's test
split, one input and one answer each: ``eval/attack_success_rate``, the inputs' diversity
(``eval/distinct_2`` and ``eval/self_bleu`` of the successful inputs), the rewards of both roles; and R on
the game's benign held-out inputs: ``eval/benign_sentiment`` (VADER) and ``eval/benign_perplexity``
(perplexity of R's answers under the starting model). Samples go to ``samples/step-NNNNNN.jsonl``.

Cross-play (``crossplay_steps``, by default 0, the middle and the end): both roles' parameters are kept at
those steps, and at the end every saved prompter plays every saved responder on the eval tasks; the
attack success rates go to ``crossplay.json`` and, as a heatmap beside both roles' curves, to the run's
``report.html``.

Left out (for now): PPO with critics for the roles, naturalness scored by a model (the games' own terms stand in), and multi-process training.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from rlxf.algos.advantages import group_advantages
from rlxf.algos.kl import kl_estimate
from rlxf.algos.policy_loss import clipped_policy_loss
from rlxf.algos.selfplay_report import render_selfplay_report
from rlxf.config import option
from rlxf.data.chat import render_chat
from rlxf.models.load import (
    LoraSettings,
    ModelConfig,
    disable_dropout,
    load_model,
    resolve_device,
    save_model,
)
from rlxf.models.precision import autocast, resolve_precision, weight_dtype
from rlxf.rollout import HFEngine, RolloutBatch, SamplingConfig
from rlxf.rollout.logprobs import batch_logprobs, completion_forward
from rlxf.rollout.text_stats import distinct_n, novelty, self_bleu
from rlxf.train.atomic import write_jsonl_atomic, write_text_atomic
from rlxf.train.checkpoint import finish_checkpoints, load_checkpoint, save_checkpoint
from rlxf.train.cpu import configure_threads
from rlxf.train.loop import Cadence, UpdateConfig
from rlxf.train.metrics import read_metrics
from rlxf.train.optim import adamw, build_scheduler, param_groups
from rlxf.train.progress import Progress
from rlxf.train.run import RunDir, RunResult, render_config
from rlxf.train.seed import seed_everything

logger = logging.getLogger(__name__)

Schedule = Literal["prompter", "responder", "alternate", "simultaneous"]
Roles = Literal["adapters", "models"]
BenignAnchor = Literal["kl", "sentiment"]
ROLES = ("prompter", "responder")

# Per step (prompter/* and responder/*: the role's reward, and when it trained: loss, KL, entropy, lr).
SELFPLAY_METRICS: tuple[str, ...] = (
    "prompter/reward", "prompter/game_reward", "prompter/novelty", "responder/reward",
    "attack_success_rate", "prompter/loss", "prompter/kl", "prompter/entropy", "prompter/lr",
    "responder/loss", "responder/kl", "responder/entropy", "responder/lr", "time/generate", "time/train",
)  # fmt: skip
SELFPLAY_EVAL_METRICS: tuple[str, ...] = (
    "attack_success_rate", "prompter/reward", "responder/reward", "distinct_2", "self_bleu",
    "benign_sentiment", "benign_perplexity",
)  # fmt: skip


def _default_lora() -> LoraSettings:
    return LoraSettings(r=16, alpha=32.0)


@dataclass
class RoleConfig:
    """One role's sampling and learning (the ``prompter:`` and ``responder:`` sections)."""

    n: int = option(4, help="samples per context: the role's GRPO group")
    max_new_tokens: int = option(48, help="most tokens of one sample")
    temperature: float = option(1.0, help="sampling temperature (> 0)")
    learning_rate: float = option(1e-4, help="AdamW learning rate of the role (LoRA: ~1e-4; full: ~1e-5)")
    kl_coef: float = option(0.05, help="beta: weight of the k3 KL to the role's reference, per token")

    def __post_init__(self) -> None:
        if self.n < 2:
            raise ValueError(f"n must be >= 2 (GRPO compares a group's samples), got {self.n}")
        if self.max_new_tokens < 1 or self.temperature <= 0:
            raise ValueError("max_new_tokens must be >= 1 and temperature > 0")
        if self.learning_rate <= 0 or self.kl_coef < 0:
            raise ValueError("learning_rate must be > 0 and kl_coef >= 0")

    def sampling(self) -> SamplingConfig:
        return SamplingConfig(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, n=self.n, batch_size=64
        )


def _default_model() -> ModelConfig:
    return ModelConfig(lora=_default_lora())


def _default_train() -> UpdateConfig:
    return UpdateConfig(learning_rate=1e-4, lr_schedule="constant", warmup_ratio=0.0)


@dataclass
class SelfPlayConfig:
    """Options of ``rlxf selfplay``."""

    model: ModelConfig = field(default_factory=_default_model)  # the base (adapters) or P's model (models)
    responder_model: str | None = option(None, help="roles=models: R's starting model; unset: model's")
    roles: Roles = option("adapters", help="adapters: two LoRA adapters on one base; models: a model each")
    game: str = option(
        "tug-of-war",
        help="tug-of-war, taboo, reward (any reward spec: game_args.reward) or package.module:Class "
        "(rlxf/algos/selfplay_games.py)",
    )
    game_args: dict[str, Any] = option(
        default_factory=dict, help="the game's options, e.g. {mode: cooperative}"
    )
    schedule: Schedule = option("simultaneous", help="prompter, responder, alternate or simultaneous")
    round_steps: int = option(5, help="alternate: steps of one role before the other's turn")
    prompt_pool: str | None = option(
        None, help="schedule=responder: a prompts file whose inputs R answers instead of P's"
    )
    prompter: RoleConfig = field(default_factory=RoleConfig)
    responder: RoleConfig = field(default_factory=lambda: RoleConfig(n=2))
    novelty_coef: float = option(0.0, help="eta: weight of the prompter's n-gram novelty bonus")
    novelty_history: int = option(256, help="the prompter's recent inputs the novelty is measured against")
    novelty_n: int = option(2, help="n of the novelty's word n-grams")
    tasks_per_step: int = option(4, help="tasks per step (P samples prompter.n inputs for each)")
    num_steps: int = option(20, help="steps to run")
    micro_batch_size: int = option(16, help="sequences per forward/backward pass")
    benign_per_step: int = option(
        0,
        help="benign training inputs of the game R also answers each step it trains, an anchor for its "
        "answers to ordinary inputs (benign_anchor says how)",
    )
    benign_kl_coef: float = option(0.5, help="weight of the KL to R's reference on the benign answers")
    benign_anchor: BenignAnchor = option(
        "kl",
        help="kl: the benign answers' only loss is the KL; sentiment: their mean VADER sentiment is held "
        "at the start model's by a Lagrange multiplier (module docstring), plus the KL",
    )
    benign_reference_samples: int = option(
        4, help="benign_anchor=sentiment: the start model's answers per benign input that give s_0(x)"
    )
    benign_lambda_kp: float = option(
        5.0, help="benign_anchor=sentiment: the multiplier's proportional gain on the step's deviation"
    )
    benign_lambda_ki: float = option(
        0.5, help="benign_anchor=sentiment: the multiplier's integral gain on the summed deviations"
    )
    eval_tasks: int = option(32, help="held-out tasks of the game's test split evaluated")
    eval_benign_samples: int = option(1, help="R's answers per benign held-out input at evaluation")
    crossplay_steps: list[int] | None = option(
        None,
        help="steps whose prompter and responder play each other at the end (cross-play ASR on the eval "
        "tasks); unset: 0, num_steps // 2 and num_steps; [] for none",
    )
    train: UpdateConfig = field(default_factory=_default_train)
    out: str = option("", help="output folder")
    seed: int = option(0, help="random seed (tasks, sampling, initialisation)")
    resume: bool = option(False, help="continue the run in `out` from its latest checkpoints")
    overwrite: bool = option(False, help="replace a run already in `out`")

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("give the output folder: --out DIR")
        if self.roles == "adapters" and self.model.lora.r == 0:
            raise ValueError("roles=adapters puts two LoRA adapters on the base: set model.lora.r > 0")
        if self.responder_model is not None and self.roles != "models":
            raise ValueError("responder_model is for roles=models (adapters share one base model)")
        if self.prompt_pool is not None and self.schedule != "responder":
            raise ValueError("prompt_pool replaces the prompter's inputs: it needs schedule=responder")
        for name in ("round_steps", "tasks_per_step", "num_steps", "micro_batch_size", "novelty_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.novelty_coef < 0 or self.novelty_history < 0 or self.eval_tasks < 0:
            raise ValueError("novelty_coef, novelty_history and eval_tasks must be >= 0")
        if self.benign_per_step < 0 or self.benign_kl_coef < 0:
            raise ValueError("benign_per_step and benign_kl_coef must be >= 0")
        if self.eval_benign_samples < 1:
            raise ValueError(f"eval_benign_samples must be >= 1, got {self.eval_benign_samples}")
        if self.benign_lambda_kp < 0 or self.benign_lambda_ki < 0:
            raise ValueError("benign_lambda_kp and benign_lambda_ki must be >= 0")
        if self.benign_reference_samples < 1:
            raise ValueError(f"benign_reference_samples must be >= 1, got {self.benign_reference_samples}")
        if self.benign_anchor == "sentiment" and not self.benign_per_step:
            raise ValueError(
                "benign_anchor=sentiment rewards R's answers to benign inputs: set benign_per_step > 0"
            )
        if self.model.dtype != "auto":
            raise ValueError("for training, set the precision with train.precision, not model.dtype")
        if self.crossplay_steps is None:
            self.crossplay_steps = sorted({0, self.num_steps // 2, self.num_steps})
        bad = [s for s in self.crossplay_steps if not 0 <= s <= self.num_steps]
        if bad:
            raise ValueError(f"crossplay_steps must be in 0 .. num_steps ({self.num_steps}), got {bad}")
        if self.crossplay_steps and not self.eval_tasks:
            raise ValueError("cross-play plays the eval tasks: set eval_tasks > 0 (or crossplay_steps: [])")

    def trains(self, role: str, step: int) -> bool:
        """Whether ``role`` takes an optimizer step at ``step`` (0-based) under the schedule."""
        if self.schedule == "simultaneous":
            return True
        if self.schedule == "alternate":
            return ROLES[(step // self.round_steps) % 2] == role
        return self.schedule == role


# ---------------------------------------------------------------------------------------------- roles


class Role:
    """One agent: the module it runs (a shared base with its adapter, or its own model), its reference,
    its optimizer and learning-rate schedule."""

    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        tokenizer: Any,
        adapter: str | None,
        reference: torch.nn.Module | None,
        cfg: RoleConfig,
        train: UpdateConfig,
        total_steps: int,
    ) -> None:
        self.name, self.model, self.tokenizer, self.adapter, self.reference = (
            name,
            model,
            tokenizer,
            adapter,
            reference,
        )
        self.cfg = cfg
        self.activate()
        # The role's own parameters: with adapters, those of its adapter (peft marks the active one trainable).
        self.parameters = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if adapter is not None:
            self.parameters = {n: p for n, p in self.parameters.items() if f".{adapter}." in n}
        self.state_module = _ParameterView(self.parameters)
        groups = param_groups(self.state_module, train.weight_decay)
        self.optimizer = adamw(groups, lr=cfg.learning_rate)
        warmup = round(train.warmup_ratio * total_steps)
        self.scheduler = build_scheduler(self.optimizer, train.lr_schedule, warmup, total_steps)

    def activate(self) -> None:
        """Make this role's adapter the one the shared base runs (and the only trainable one)."""
        if self.adapter is not None:
            self.model.set_adapter(self.adapter)

    def render(self, messages: list[dict[str, str]]) -> str:
        return render_chat(messages, self.tokenizer, add_generation_prompt=True)

    def reference_logprobs(self, batch: RolloutBatch, micro: int, amp: Any) -> torch.Tensor:
        with self.start_model() as reference:
            return batch_logprobs(reference, batch, self.cfg.temperature, micro, amp)

    @contextlib.contextmanager
    def start_model(self) -> Iterator[torch.nn.Module]:
        """The role's reference, its starting weights: the frozen copy, or the model with adapters off."""
        if self.reference is not None:
            yield self.reference
            return
        with self.model.disable_adapter():
            yield self.model


class _ParameterView(torch.nn.Module):
    """A role's parameters as a module of their own (names with ``.`` -> ``__``), so a checkpoint holds
    exactly them and loading one writes into the shared tensors."""

    def __init__(self, parameters: dict[str, torch.nn.Parameter]) -> None:
        super().__init__()
        for name, parameter in parameters.items():
            self.register_parameter(name.replace(".", "__"), parameter)


def build_roles(cfg: SelfPlayConfig, precision: str) -> tuple[Role, Role]:
    """P and R as ``cfg.roles`` asks (module docstring)."""
    total = cfg.num_steps
    model_cfg = dataclasses.replace(cfg.model, dtype=weight_dtype(precision))
    if cfg.roles == "adapters":
        from peft import LoraConfig, get_peft_model

        base, tokenizer = load_model(dataclasses.replace(model_cfg, lora=LoraSettings()), trainable=True)
        lora = cfg.model.lora
        target: Any = "all-linear" if lora.target_modules == ["all-linear"] else lora.target_modules
        settings = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=target,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(base, settings, adapter_name="prompter")
        model.add_adapter("responder", copy.deepcopy(settings))
        disable_dropout(model)
        prompter = Role("prompter", model, tokenizer, "prompter", None, cfg.prompter, cfg.train, total)
        responder = Role("responder", model, tokenizer, "responder", None, cfg.responder, cfg.train, total)
        return prompter, responder
    roles = []
    for name, ref, role_cfg in (
        ("prompter", cfg.model.name_or_path, cfg.prompter),
        ("responder", cfg.responder_model or cfg.model.name_or_path, cfg.responder),
    ):
        own = dataclasses.replace(model_cfg, name_or_path=ref)
        model, tokenizer = load_model(own, trainable=True)
        disable_dropout(model)
        reference = None
        if cfg.model.lora.r == 0:  # full fine-tuning: a frozen copy of the starting weights
            reference, _ = load_model(dataclasses.replace(own, lora=LoraSettings()), trainable=False)
        roles.append(Role(name, model, tokenizer, None, reference, role_cfg, cfg.train, total))
    return roles[0], roles[1]


# ---------------------------------------------------------------------------------------------- trainer


class SelfPlayTrainer:
    """Tasks -> P's inputs -> R's answers -> the game's scores -> one GRPO step per trained role."""

    def __init__(self, cfg: SelfPlayConfig, run: RunDir) -> None:
        from rlxf.algos.selfplay_games import make_game

        self.cfg, self.run = cfg, run
        self.game = make_game(cfg.game, **cfg.game_args)
        seed_everything(cfg.seed)
        device = resolve_device(cfg.model.device)
        configure_threads(
            cfg.train.threads, device
        )  # train.threads; a warning when other jobs hold the cores
        self.precision = resolve_precision(cfg.train.precision, device)
        self.prompter, self.responder = build_roles(cfg, self.precision)
        self.device = next(self.prompter.model.parameters()).device
        self.history: list[str] = []  # the prompter's recent inputs (novelty)
        self.pool = self._read_pool() if cfg.prompt_pool else None
        self.benign_train = self.game.benign_prompts("train") if cfg.benign_per_step else []
        if cfg.benign_per_step and not self.benign_train:
            raise ValueError(
                f"benign_per_step: the game {cfg.game!r} has no benign training inputs "
                "(its benign_prompts('train') is empty)"
            )
        self.samples_dir = run.path / "samples"
        self.benign_means: dict[str, float] | None = None  # s_0(x) of benign_anchor=sentiment, when needed
        self.benign_error_sum = 0.0  # benign_anchor=sentiment: the PI controller's integral of the deviation

    def _read_pool(self) -> list[str]:
        from rlxf.data import read_prompts

        records = read_prompts(self.cfg.prompt_pool)
        return [
            r["prompt"] if isinstance(r.get("prompt"), str) else r["messages"][-1]["content"]
            for r in records.records
        ]

    def amp(self) -> Any:
        return autocast(self.precision, self.device)

    # ------------------------------------------------------------------------------------------ rollout

    def generate(self, role: Role, contexts: list[str], sampling: SamplingConfig, seed: int) -> RolloutBatch:
        role.activate()
        role.model.eval()
        with torch.no_grad(), self.amp():
            batch = HFEngine(role.model, role.tokenizer).generate(contexts, sampling, seed=seed)
        role.model.train()
        return batch

    def benign_chosen(self, step: int) -> list[str]:
        """The benign training inputs R answers at ``step``: the next ``benign_per_step`` of the pool in turn."""
        k, pool = self.cfg.benign_per_step, self.benign_train
        return [pool[(step * k + i) % len(pool)] for i in range(k)]

    def benign_reference(self) -> dict[str, float]:
        """``s_0(x)``: the start model's mean VADER sentiment over ``benign_reference_samples`` answers to
        each benign training input the run will use (benign_anchor=sentiment).

        Sampled once from R's reference (its starting weights), in chunks, with a seed of its own, and kept
        in the run's ``benign_reference.json``: a resumed run reads it back instead of sampling again."""
        from rlxf.feedback.sentiment import sentiment_scores

        path = self.run.path / "benign_reference.json"
        if path.exists():
            return json.loads(path.read_text())
        cfg = self.cfg
        inputs = list(dict.fromkeys(x for step in range(cfg.num_steps) for x in self.benign_chosen(step)))
        sampling = dataclasses.replace(cfg.responder.sampling(), n=cfg.benign_reference_samples)
        means: dict[str, float] = {}
        chunk = 32  # inputs per generate call: bounds the KV cache of inputs x samples rows
        role = self.responder
        role.activate()
        role.model.eval()
        with torch.no_grad(), self.amp(), role.start_model() as start:
            engine = HFEngine(start, role.tokenizer)
            for i in range(0, len(inputs), chunk):
                part = inputs[i : i + chunk]
                contexts = [role.render([{"role": "user", "content": x}]) for x in part]
                batch = engine.generate(
                    contexts, sampling, seed=cfg.seed + 2 * 10**9, row_offset=i * sampling.n
                )
                scores = torch.tensor(sentiment_scores(list(batch.completions))).view(len(part), sampling.n)
                means.update(zip(part, scores.mean(-1).tolist()))  # mean over each input's samples
        role.model.train()
        write_text_atomic(path, json.dumps(means, indent=1) + "\n")
        logger.info(
            "benign anchor: the start model's sentiment on %d benign inputs, mean %+.3f",
            len(means),
            sum(means.values()) / len(means),
        )
        return means

    def play(self, tasks: list[Any], seed: int, p_sampling: SamplingConfig, r_sampling: SamplingConfig):
        """P's inputs for the tasks (or the pool's), R's answers to each, and the game's scores."""
        if self.pool is not None:
            start = (seed * len(tasks)) % len(self.pool)
            inputs = [self.pool[(start + i) % len(self.pool)] for i in range(len(tasks) * p_sampling.n)]
            p_batch = None
        else:
            contexts = [self.prompter.render(t.prompter_messages) for t in tasks]
            p_batch = self.generate(self.prompter, contexts, p_sampling, seed)
            inputs = [text.strip() for text in p_batch.completions]
        input_tasks = [tasks[i // p_sampling.n] for i in range(len(inputs))]
        r_contexts = [
            self.responder.render(self.game.responder_messages(t, x)) for t, x in zip(input_tasks, inputs)
        ]
        r_batch = self.generate(self.responder, r_contexts, r_sampling, seed + 1)
        rounds = [i // r_sampling.n for i in range(len(r_batch))]  # the input each answer answers
        scores = self.game.score(
            [input_tasks[i] for i in rounds], [inputs[i] for i in rounds], list(r_batch.completions)
        )
        return inputs, p_batch, r_batch, scores

    # ------------------------------------------------------------------------------------------ update

    def update(
        self,
        role: Role,
        batch: RolloutBatch,
        advantages: torch.Tensor,
        anchor: RolloutBatch | None = None,
        anchor_advantages: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One on-policy GRPO step of ``role`` on its samples ``batch`` with per-sample ``advantages``.

        ``anchor`` (R's answers to benign training inputs) adds the surrogate with ``anchor_advantages``
        (benign_anchor=sentiment; none: 0) plus ``benign_kl_coef`` x the k3 KL to the role's reference on
        those answers, a token mean of their own: the loss of the step is ``L_game + L_benign``, so the
        anchor's weight does not depend on how many tokens the game's answers had."""
        role.activate()
        sums, tokens = self._accumulate(role, batch, advantages, role.cfg.kl_coef)
        metrics = {
            f"{role.name}/loss": sums["loss"],
            f"{role.name}/kl": sums["kl"] / tokens,  # k3 per token
            f"{role.name}/entropy": sums["entropy"] / tokens,
        }
        if anchor is not None:
            if anchor_advantages is None:  # benign_anchor=kl: only the KL term moves R here
                anchor_advantages = torch.zeros(len(anchor), device=self.device)
            benign, benign_tokens = self._accumulate(role, anchor, anchor_advantages, self.cfg.benign_kl_coef)
            metrics[f"{role.name}/benign_kl"] = benign["kl"] / benign_tokens
            metrics[f"{role.name}/loss"] += benign["loss"]
        if self.cfg.train.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(role.parameters.values()), self.cfg.train.max_grad_norm)
        metrics[f"{role.name}/lr"] = role.scheduler.get_last_lr()[0]
        role.optimizer.step()
        role.scheduler.step()
        role.optimizer.zero_grad(set_to_none=True)
        return metrics

    def _accumulate(
        self, role: Role, batch: RolloutBatch, advantages: torch.Tensor, kl_coef: float
    ) -> tuple[dict[str, float], float]:
        """Backward of ``batch``'s loss, a mean over its completion tokens: the surrogate with
        ``advantages`` plus ``kl_coef`` x k3 to the reference. Returns its summed figures and its tokens."""
        micro = self.cfg.micro_batch_size
        with torch.no_grad():
            ref = role.reference_logprobs(batch, micro, self.amp()) if kl_coef > 0 else None
        mask = batch.completion_mask.float()  # [B, C]
        tokens = mask.sum().clamp(min=1.0)  # normaliser: every token of this batch (token-mean)
        input_ids, attention, width = batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1]
        sums = {"loss": 0.0, "kl": 0.0, "entropy": 0.0}
        for start in range(0, len(batch), micro):
            rows = slice(start, start + micro)
            with self.amp():
                logprobs, entropy, _ = completion_forward(
                    role.model,
                    input_ids[rows],
                    attention[rows],
                    width,
                    role.cfg.temperature,
                    with_entropy=True,
                )
                # on-policy: pi_old = pi, ratio 1 with the gradient of log pi
                per_token, _ = clipped_policy_loss(
                    logprobs, logprobs.detach(), advantages[rows], mask[rows], 0.2
                )
                if ref is not None:
                    kl = kl_estimate(logprobs, ref[rows], "k3")  # [b, C]
                    per_token = per_token + kl_coef * torch.where(mask[rows] != 0, kl, 0)
                    sums["kl"] += float((kl.detach() * mask[rows]).sum())
            loss = (per_token * mask[rows]).sum() / tokens
            loss.backward()
            sums["loss"] += float(loss.detach())
            sums["entropy"] += float((entropy * mask[rows]).sum())  # entropy [b, C], no gradient
        return sums, float(tokens)

    def train_step(self, step: int) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        seed = cfg.seed * 1_000_003 + step
        tasks = self.game.tasks("train", seed, cfg.tasks_per_step)
        p_sampling, r_sampling = cfg.prompter.sampling(), cfg.responder.sampling()
        inputs, p_batch, r_batch, scores = self.play(tasks, seed, p_sampling, r_sampling)
        t1 = time.perf_counter()
        r_rewards = torch.tensor(scores.responder, dtype=torch.float32)  # [T * nP * nR]
        # P's reward of an input: the mean game outcome over R's answers to it, plus its novelty
        game_reward = (
            torch.tensor(scores.prompter, dtype=torch.float32).view(-1, r_sampling.n).mean(-1)
        )  # [T*nP]
        bonus = torch.tensor(novelty(inputs, self.history, cfg.novelty_n), dtype=torch.float32)  # [T*nP]
        p_rewards = game_reward + cfg.novelty_coef * bonus
        if cfg.novelty_history:
            self.history = (self.history + inputs)[-cfg.novelty_history :]
        metrics = {
            "prompter/reward": p_rewards.mean().item(),
            "prompter/game_reward": game_reward.mean().item(),
            "prompter/novelty": bonus.mean().item(),
            "responder/reward": r_rewards.mean().item(),
            "attack_success_rate": sum(scores.attack_success) / len(scores.attack_success),
        }
        if p_batch is not None and cfg.trains("prompter", step):
            advantages = group_advantages(p_rewards, p_sampling.n).to(self.device)  # [T*nP]
            metrics.update(self.update(self.prompter, p_batch.to(self.device), advantages))
        if cfg.trains("responder", step):
            advantages = group_advantages(r_rewards, r_sampling.n).to(self.device)  # [T*nP*nR]
            anchor, anchor_advantages = None, None
            if cfg.benign_per_step:  # the next benign training inputs in turn, R's answers to them
                chosen = self.benign_chosen(step)
                contexts = [self.responder.render([{"role": "user", "content": x}]) for x in chosen]
                anchor = self.generate(self.responder, contexts, r_sampling, seed + 2).to(self.device)
            if cfg.benign_anchor == "sentiment":
                from rlxf.feedback.sentiment import sentiment_scores

                if self.benign_means is None:
                    self.benign_means = self.benign_reference()
                sentiment = torch.tensor(sentiment_scores(list(anchor.completions)))  # s(y) [k * nR]
                start = torch.tensor([self.benign_means[x] for x in chosen]).repeat_interleave(r_sampling.n)
                # the constraint E[s(y) - s_0(x)] = 0, estimated by this step's answers: e_t
                deviation = (sentiment - start).mean().item()
                self.benign_error_sum += deviation
                lam = cfg.benign_lambda_kp * deviation + cfg.benign_lambda_ki * self.benign_error_sum
                anchor_advantages = (-lam * (sentiment - start)).to(self.device)  # [k * nR], baseline s_0(x)
                metrics["responder/benign_sentiment"] = sentiment.mean().item()
                metrics["responder/benign_deviation"] = deviation
                metrics["responder/benign_lambda"] = lam
            metrics.update(
                self.update(self.responder, r_batch.to(self.device), advantages, anchor, anchor_advantages)
            )
        metrics["time/generate"] = t1 - t0
        metrics["time/train"] = time.perf_counter() - t1
        return metrics

    # ------------------------------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out figures (module docstring) as ``eval/...``; the rounds go to ``samples/``."""
        cfg = self.cfg
        if not cfg.eval_tasks:
            return {}
        seed = cfg.seed + 10**9
        tasks = self.game.tasks("test", seed, cfg.eval_tasks)
        one = lambda role: dataclasses.replace(role.sampling(), n=1)  # noqa: E731
        inputs, _, r_batch, scores = self.play(tasks, seed, one(cfg.prompter), one(cfg.responder))
        successful = [x for x, won in zip(inputs, scores.attack_success) if won]
        benign = self.game.benign_prompts("test")
        b_batch = None
        if benign:  # R on ordinary held-out inputs: its sentiment, and its fluency under the start model
            from rlxf.feedback.sentiment import sentiment_scores

            contexts = [self.responder.render([{"role": "user", "content": x}]) for x in benign]
            b_sampling = dataclasses.replace(cfg.responder.sampling(), n=cfg.eval_benign_samples)
            b_batch = self.generate(self.responder, contexts, b_sampling, seed + 2)
            reference = self.responder.reference_logprobs(b_batch, cfg.micro_batch_size, self.amp())
            mask = b_batch.completion_mask.float()
            nll = -(reference * mask).sum() / mask.sum().clamp(min=1.0)  # per token of R's answers
        metrics = {
            "attack_success_rate": sum(scores.attack_success) / len(tasks),
            "prompter/reward": sum(scores.prompter) / len(tasks),
            "responder/reward": sum(scores.responder) / len(tasks),
            "distinct_2": distinct_n(successful, 2),
            "self_bleu": self_bleu(successful),
        }
        if b_batch is not None:
            metrics["benign_sentiment"] = sum(sentiment_scores(list(b_batch.completions))) / len(b_batch)
            metrics["benign_perplexity"] = float(torch.exp(nll))
        rows = [
            {
                "task": t.info,
                "input": x,
                "answer": y,
                "prompter_reward": rp,
                "responder_reward": rr,
                "attack_success": won,
            }
            for t, x, y, rp, rr, won in zip(
                tasks, inputs, r_batch.completions, scores.prompter, scores.responder, scores.attack_success
            )
        ]
        if b_batch is not None:
            answered = [x for x in benign for _ in range(cfg.eval_benign_samples)]  # n answers each, in order
            rows += [{"benign": x, "answer": y} for x, y in zip(answered, b_batch.completions)]
        self.samples_dir.mkdir(exist_ok=True)
        write_jsonl_atomic(self.samples_dir / f"step-{step:06d}.jsonl", rows)
        return {f"eval/{k}": v for k, v in metrics.items()}

    # ------------------------------------------------------------------------------------------ loop

    def save(self, step: int) -> None:
        """One checkpoint for both roles (atomic: a step is saved for both or for neither), each role's
        parameters, optimizer and learning-rate schedule kept apart inside it, with the novelty history."""
        modules = torch.nn.ModuleDict(
            {role.name: role.state_module for role in (self.prompter, self.responder)}
        )
        save_checkpoint(
            self.run.checkpoints_dir,
            step,
            None,
            # every parameter of both roles: with adapters only the active one is trainable at any time,
            # and a checkpoint of "the trainable ones" would miss the other role's
            model_state=modules.state_dict(),
            extra={
                "optimizers": {r.name: r.optimizer.state_dict() for r in (self.prompter, self.responder)},
                "schedulers": {r.name: r.scheduler.state_dict() for r in (self.prompter, self.responder)},
                "history": list(self.history),
                "benign_error_sum": self.benign_error_sum,
            },
            keep_last=self.cfg.train.keep_last,
        )

    def restore(self) -> int:
        """Continue from the run's checkpoint (when resuming); the step it holds."""
        if self.run.resume_checkpoint is None:
            return 0
        modules = torch.nn.ModuleDict(
            {role.name: role.state_module for role in (self.prompter, self.responder)}
        )
        ckpt = load_checkpoint(self.run.resume_checkpoint, modules)
        for role in (self.prompter, self.responder):
            role.optimizer.load_state_dict(ckpt.extra["optimizers"][role.name])
            role.scheduler.load_state_dict(ckpt.extra["schedulers"][role.name])
        self.history = list(ckpt.extra["history"])
        self.benign_error_sum = float(ckpt.extra.get("benign_error_sum", 0.0))  # absent in runs before it
        return ckpt.step

    # ------------------------------------------------------------------------------------------ cross-play

    @property
    def snapshots_dir(self) -> Path:
        return self.run.checkpoints_dir / "crossplay"  # deleted with the checkpoints at the end

    def snapshot(self, step: int) -> None:
        """Both roles' parameters at ``step``, for the cross-play at the end (on disk: a resumed run has
        the ones saved before the interruption)."""
        if step not in self.cfg.crossplay_steps:
            return
        self.snapshots_dir.mkdir(parents=True, exist_ok=True)
        state = {
            r.name: {k: v.detach().cpu() for k, v in r.state_module.state_dict().items()} for r in self.roles
        }
        path = self.snapshots_dir / f"step-{step:06d}.pt"
        torch.save(state, path.with_suffix(".tmp"))
        path.with_suffix(".tmp").replace(path)

    @torch.no_grad()
    def crossplay(self) -> dict[str, Any]:
        """Attack success rate of each saved prompter (rows) against each saved responder (columns) on the
        eval tasks, one input and one answer each; the roles' final weights are put back afterwards."""
        steps = sorted(self.cfg.crossplay_steps)
        if not steps:
            return {}
        final = {
            r.name: {k: v.detach().clone() for k, v in r.state_module.state_dict().items()}
            for r in self.roles
        }
        saved = {s: torch.load(self.snapshots_dir / f"step-{s:06d}.pt", weights_only=True) for s in steps}
        seed = self.cfg.seed + 10**9
        tasks = self.game.tasks("test", seed, self.cfg.eval_tasks)
        p_sampling = dataclasses.replace(self.cfg.prompter.sampling(), n=1)
        r_sampling = dataclasses.replace(self.cfg.responder.sampling(), n=1)
        matrix = []
        for p_step in steps:
            self.prompter.state_module.load_state_dict(saved[p_step]["prompter"])
            contexts = [self.prompter.render(t.prompter_messages) for t in tasks]
            inputs = [x.strip() for x in self.generate(self.prompter, contexts, p_sampling, seed).completions]
            row = []
            for r_step in steps:
                self.responder.state_module.load_state_dict(saved[r_step]["responder"])
                r_contexts = [
                    self.responder.render(self.game.responder_messages(t, x)) for t, x in zip(tasks, inputs)
                ]
                answers = self.generate(self.responder, r_contexts, r_sampling, seed + 1).completions
                scores = self.game.score(tasks, inputs, list(answers))
                row.append(sum(scores.attack_success) / len(tasks))
            matrix.append(row)
        for role in self.roles:
            role.state_module.load_state_dict(final[role.name])
        return {"steps": steps, "attack_success_rate": matrix, "tasks": len(tasks)}

    @property
    def roles(self) -> tuple[Role, Role]:
        return (self.prompter, self.responder)

    def fit(self) -> dict[str, float]:
        cfg = self.cfg
        cadence = Cadence.of(cfg.train, cfg.num_steps)
        start = self.restore()
        if start == 0:
            self.snapshot(0)
            if cfg.eval_tasks:
                self.run.log(0, self.evaluate(0))
        last: dict[str, float] = {}
        progress = Progress(cfg.num_steps, f"selfplay ({cfg.game}, {cfg.schedule})", initial=start)
        for step in range(start, cfg.num_steps):
            metrics = self.train_step(step)
            done = step + 1
            if cfg.eval_tasks and cadence.evaluate(done):
                metrics.update(self.evaluate(done))
            if cadence.log(done):
                self.run.log(done, metrics)
            self.snapshot(done)  # before the checkpoint: a resumed run finds the snapshots of saved steps
            if cadence.save(done):
                self.save(done)
            progress.update(1, {"asr": metrics["attack_success_rate"]})
            last = metrics
        progress.close()
        if cfg.eval_tasks:
            final = self.evaluate(cfg.num_steps)
            self.run.log(cfg.num_steps, final)
            last.update(final)
        if start < cfg.num_steps:
            self.save(cfg.num_steps)
        return last

    def save_models(self) -> None:
        """``prompter/`` and ``responder/`` under the run's ``model/``: plain HF folders (adapters merged)."""
        for role in (self.prompter, self.responder):
            role.activate()
            model = role.model
            if role.adapter is not None:  # merge a copy of this adapter into the base, keep the run's model
                merged = copy.deepcopy(model)
                merged.set_adapter(role.adapter)
                other = [a for a in merged.peft_config if a != role.adapter]
                for name in other:
                    merged.delete_adapter(name)
                model = merged.merge_and_unload()
            save_model(model, role.tokenizer, self.run.model_dir / role.name)


def selfplay(cfg: SelfPlayConfig) -> RunResult:
    """Run ``rlxf selfplay``: train, save ``model/prompter`` and ``model/responder``, play the cross-play
    matrix (``crossplay.json``), write ``summary.json`` and ``report.html``."""
    from rlxf.algos.selfplay_games import make_game

    logger.info(render_config(cfg, "rlxf selfplay"))
    make_game(cfg.game, **cfg.game_args)  # a bad game or option stops here, before any model loads
    with RunDir.create(cfg.out, cfg, resume=cfg.resume, overwrite=cfg.overwrite) as run:
        trainer = SelfPlayTrainer(cfg, run)
        metrics = trainer.fit()
        trainer.save_models()
        crossplay = trainer.crossplay()
        write_text_atomic(run.path / "crossplay.json", json.dumps(crossplay, indent=2) + "\n")
        shutil.rmtree(trainer.snapshots_dir, ignore_errors=True)
        summary = run.write_summary(
            metrics, extra={"game": cfg.game, "schedule": cfg.schedule, "crossplay": crossplay}
        )
        records = read_metrics(run.path / "metrics.jsonl")
        page = render_selfplay_report({**summary, "run": str(run.path)}, records, crossplay)
        write_text_atomic(run.path / "report.html", page)
    finish_checkpoints(
        run.checkpoints_dir, keep_final=cfg.train.keep_final_checkpoint, keep_last=cfg.train.keep_last
    )
    return RunResult(Path(run.path), metrics, summary)


__all__ = [
    "SELFPLAY_EVAL_METRICS",
    "SELFPLAY_METRICS",
    "RoleConfig",
    "SelfPlayConfig",
    "SelfPlayTrainer",
    "selfplay",
]
