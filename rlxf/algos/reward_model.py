"""Reward models: learn r(x, y), a score of completion ``y`` for prompt ``x``, from preferences or ratings.

**Architecture.** A causal LM with a linear head on its last token, as in InstructGPT (Ouyang et al. 2022)
and Llama 2 (Touvron et al. 2023)::

    outputs(x, y) = W h_T(x, y)        h_T = the backbone's final hidden state at the last token of x + y
    r(x, y)       = sum_k a_k outputs_k(x, y)  (- mu when centred)

The model is ``transformers.AutoModelForSequenceClassification`` (``LlamaForSequenceClassification`` for
SmolLM2) with ``num_labels = K``: one output for a plain preference model, ``ensemble_size`` outputs for an
ensemble (``a_k = 1/K``: the reward is their mean), one per aspect for ratings (``a_k`` =
``aspect_weights``). How outputs make the reward is stored in the saved ``config.json``
(:class:`~rlxf.feedback.reward_model.RewardHead`), so ``model/`` is a plain HF folder and rlxf scores it
the same way later. Inputs, the head and scoring live in :mod:`rlxf.feedback.reward_model`, shared with
``rlxf reward eval | score`` and the ``model:PATH`` reward source.

**Which token the head reads.** Every input is ``prompt + completion + EOS`` (exactly one EOS: one the
data layer or a chat template put at the end is not doubled) and the score is read at that EOS, as
OpenRLHF does: a constant closing token gives the model one position at which to sum the whole text up.
On SmolLM2's own samples labelled by VADER, a linear probe on the frozen hidden state at an appended EOS
separates held-out pairs better than one at the completion's last word (66% vs 56%); fine-tuning builds on
that. transformers reads the score at the rightmost token that is *not the pad token*, so the reward
model's pad token must differ from EOS (SmolLM2 pads with its EOS): :func:`reward_pad_token_id` picks
another special token, stored as ``config.pad_token_id`` and as the saved tokenizer's pad token. Plain
``AutoModelForSequenceClassification`` then scores ``prompt + completion + EOS`` right-padded exactly as
rlxf does (``tests/test_reward_model.py`` checks both).

**Objectives** (``objective``; ``auto`` follows the data kind):

* ``preferences`` (``prompt``, ``chosen``, ``rejected``, optional ``margin``): Bradley-Terry, per pair
  ``-log sigmoid(r_c - r_r - m)`` (:func:`bradley_terry_loss`), normalised per pair. An ensemble trains
  each of its K heads on that loss, each on its own bootstrap resample of the pairs (per-pair counts drawn
  with the seed, :func:`bootstrap_counts`); the spread (std across heads) measures uncertainty
  (Coste et al. 2024, "Reward model ensembles help mitigate overoptimization"). The backbone is shared.
* ``ratings`` (``prompt``, ``completion``, ``rating``, optional ``aspect``): squared error of the output
  of the record's aspect (:func:`rating_mse_loss`), normalised per rated example. Records without an
  aspect belong to the aspect ``default``. Ratings are regressed as given (no rescaling).

**Centring** (``center_rewards``). A BT reward is defined up to a constant. After training, the mean
reward ``mu`` over the training completions is stored in the config (``rlxf_reward_mean``) and rlxf's
scorer subtracts it. It cannot be folded into the weights exactly: the score head has no bias and the
final RMSNorm leaves no constant feature to carry one, so **plain transformers gives uncentred scores**
(``logits @ rlxf_reward_weights``; subtract ``rlxf_reward_mean`` yourself). ``center_rewards_coefficient``
is the training-time alternative (Eisenstein et al. 2023, as in TRL): it adds ``c (r_c + r_r)^2`` per pair,
which pulls the rewards themselves toward zero mean.

**Saved config keys** (``out/model/config.json``): ``id2label`` (``reward``, ``reward_0..``, or the aspect
names), ``rlxf_objective``, ``rlxf_reward_weights`` (``a_k``), ``rlxf_ensemble_size``,
``rlxf_reward_mean``, ``rlxf_max_length``, ``rlxf_chat_template`` and ``rlxf_truncation`` (how inputs
were built).

**Metrics** (TRL's names). Training: ``loss``; preferences ``accuracy`` (share of the batch's pairs with
``r_c > r_r``), ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins`` (means), and for ensembles
``rewards/ensemble_std``; ratings ``mse``. Held out (``eval/...``): ``loss``, ``accuracy``, ``ties``,
``margin/mean``; or ``mse``, ``spearman``, ``pearson`` (and ``.../<aspect>`` with several aspects).

**Validation and defaults.** Without ``eval_data`` a validation split is held out by default
(:mod:`rlxf.algos.offline`), and a preference model whose held-out accuracy is within noise of chance
(``accuracy - 0.5 < 1 / sqrt(n)`` on ``n`` pairs) ends with a warning that says so. The ``train:``
defaults are :func:`_default_reward_train`'s.

Left out: per-token (process) rewards, reward-model distillation, pairwise-judge (generative) RMs.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F

from rlxf.algos.offline import fit_and_save, read_train_eval, training_precision
from rlxf.algos.reward_eval import DEFAULT_ASPECT, preference_metrics, rating_metrics
from rlxf.config import option
from rlxf.data import ChatTemplateMode, DataError, Dataset, Truncation, tokenize_dataset
from rlxf.feedback.reward_model import (
    Objective,
    RewardHead,
    collate_rewards,
    encode_reward_record,
    reward_outputs,
    reward_pad_token_id,
    score_sequences,
)
from rlxf.models.load import ModelConfig, load_tokenizer, prepare_for_training, resolve_device
from rlxf.models.precision import weight_dtype
from rlxf.models.registry import resolve_model
from rlxf.train.loop import LossOutput, RunConfig, Trainer, TrainingConfig
from rlxf.train.run import RunResult, print_config
from rlxf.train.seed import seed_everything

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- losses


def bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-pair Bradley-Terry loss ``-log sigmoid(r_c - r_r - m)``; no reduction (the trainer sums).

    Bradley & Terry (1952) model the probability that ``y_c`` is preferred to ``y_r`` as
    ``P(y_c > y_r | x) = sigmoid(r(x, y_c) - r(x, y_r))``; the reward model minimises its negative
    log-likelihood on labelled pairs (Ouyang et al. 2022, eq. 1). Llama 2 (Touvron et al. 2023, eq. 2)
    subtracts a margin ``m`` that grows with how clearly the annotators preferred ``y_c``: the pair then
    keeps pushing until ``r_c - r_r`` exceeds ``m``. Shapes broadcast (``[batch]``, or ``[batch, heads]``
    with ``margin[:, None]``); ``logsigmoid`` keeps large differences finite.
    """
    logits = chosen_rewards - rejected_rewards
    if margin is not None:
        logits = logits - margin
    return -F.logsigmoid(logits)


def rating_mse_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example squared error ``(r(x, y) - rating)^2``; no reduction (the trainer sums)."""
    return (predicted - target).square()


def centering_penalty(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Per-pair ``(r_c + r_r)^2``: zero when the pair's rewards are centred on 0 (Eisenstein et al. 2023)."""
    return (chosen_rewards + rejected_rewards).square()


# ---------------------------------------------------------------------------------------------- config


def _default_reward_train() -> TrainingConfig:
    """A reward model's ``train:`` defaults: learning rate, epochs and schedule in one place.

    A score head that starts from random weights on a pretrained backbone needs more and larger updates
    than the shared loop's defaults (lr 1e-5, one epoch, 16 pairs a step) give on a few hundred pairs:
    lr 1e-4, 8 pairs a step, 3 epochs (TRL ``RewardConfig``'s). Measured on this project's CPU with the
    default model on 840 clean review pairs, against TRL's ``RewardTrainer`` on the same split
    (``benchmarks/reward_vs_trl.py``; figures in docs/reward-models.md, "Defaults, measured").
    """
    return TrainingConfig(learning_rate=1e-4, num_epochs=3.0, global_batch_size=8, micro_batch_size=8)


@dataclass
class RewardTrainConfig(RunConfig):
    """Options of ``rlxf reward train``."""

    train: TrainingConfig = field(default_factory=_default_reward_train)
    objective: Literal["auto", "preferences", "ratings"] = option(
        "auto", help="preferences (Bradley-Terry) or ratings (MSE); auto follows the data's kind"
    )
    max_length: int = option(1024, help="longest input in tokens (prompt + completion)")
    truncation: Truncation = option(
        "keep_end",
        help="a longer input keeps its last tokens (keep_end: the head reads the end), its first "
        "(keep_start), or is an error",
    )
    chat_template: ChatTemplateMode = option(
        "auto", help="auto: messages use the chat template, plain prompts stay raw; always; never"
    )
    margin_in_loss: bool = option(
        True, help="subtract each pair's `margin` field (when the data has one) inside the sigmoid (Llama 2)"
    )
    ensemble_size: int = option(
        1, help="preference heads on one backbone; > 1 exposes the reward's mean and std across heads"
    )
    ensemble_bootstrap: bool = option(
        True, help="train each ensemble head on its own bootstrap resample of the pairs (seeded)"
    )
    center_rewards: bool = option(
        False, help="store the mean training reward in the model; rlxf's scorer subtracts it"
    )
    center_rewards_coefficient: float = option(
        0.0, help="add c * (r_chosen + r_rejected)^2 per pair, pulling rewards toward mean 0 (TRL)"
    )
    aspect_weights: list[float | str] = option(
        default_factory=list,
        help="ratings: how aspects make the reward; numbers in sorted aspect-name order, or name=weight "
        "items; empty: the mean of the aspects",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.truncation not in get_args(Truncation):
            raise ValueError(f"truncation must be one of {get_args(Truncation)}, got {self.truncation!r}")
        if self.ensemble_size < 1:
            raise ValueError(f"ensemble_size must be >= 1, got {self.ensemble_size}")
        if self.center_rewards_coefficient < 0:
            raise ValueError("center_rewards_coefficient must be >= 0")
        if self.objective == "ratings" and self.ensemble_size > 1:
            raise ValueError(
                "ensemble_size > 1 is for preference reward models; ratings train one head per aspect"
            )
        if self.objective == "preferences" and self.aspect_weights:
            raise ValueError("aspect_weights apply to ratings; a preference reward model has no aspects")
        self.parsed_aspect_weights()  # raises on a malformed list

    def parsed_aspect_weights(self) -> list[float] | dict[str, float]:
        """``aspect_weights`` as a list of numbers (sorted aspect-name order) or a ``{name: weight}`` mapping."""
        items = self.aspect_weights
        if all(isinstance(w, int | float) for w in items):
            weights: list[float] | dict[str, float] = [float(w) for w in items]
            values = list(weights)
        else:
            weights = {}
            for item in items:
                name, sep, value = str(item).partition("=")
                try:
                    number = float(value) if sep else math.nan
                except ValueError:
                    number = math.nan
                if not name.strip() or not math.isfinite(number):
                    raise ValueError(
                        f"aspect_weights: {item!r} is not name=weight with a finite number (the items must "
                        "be all numbers, or all name=weight, e.g. helpfulness=0.7)"
                    )
                if name.strip() in weights:
                    raise ValueError(f"aspect_weights names {name.strip()!r} twice")
                weights[name.strip()] = number
            values = list(weights.values())
        if any(not math.isfinite(w) for w in values):
            raise ValueError(f"aspect_weights must be finite numbers, got {items}")
        if values and all(w == 0 for w in values):
            raise ValueError("aspect_weights are all 0: the reward would be constant")
        return weights


def resolve_objective(objective: str, ds: Dataset) -> Objective:
    """The training objective for ``ds``: its kind must be ``preferences`` or ``ratings`` (and match)."""
    if ds.kind not in ("preferences", "ratings"):
        raise DataError(
            f"holds {ds.kind} records; a reward model trains on preferences (prompt + chosen + rejected) or "
            "ratings (prompt + completion + rating)",
            path=ds.path,
            split=ds.split,
        )
    if objective != "auto" and objective != ds.kind:
        raise DataError(f"objective={objective}, but the file holds {ds.kind} records", path=ds.path)
    return ds.kind  # type: ignore[return-value]


def ratings_head(cfg: RewardTrainConfig, train_ds: Dataset) -> RewardHead:
    """One output per aspect of the training data (sorted names), weighted by ``cfg.aspect_weights``."""
    aspects = sorted({record.get("aspect", DEFAULT_ASPECT) for record in train_ds})
    given = cfg.parsed_aspect_weights()
    where = f"the training data has the aspects {aspects}"
    if isinstance(given, dict):
        unknown, missing = sorted(set(given) - set(aspects)), sorted(set(aspects) - set(given))
        if unknown or missing:
            raise DataError(
                f"{where}, but aspect_weights "
                + (f"names unknown {unknown}" if unknown else f"lacks {missing}"),
                path=train_ds.path,
            )
        weights = [given[a] for a in aspects]
    elif given:
        if len(given) != len(aspects):
            raise DataError(f"{where}, but aspect_weights has {len(given)} numbers", path=train_ds.path)
        weights = given
    else:
        weights = [1.0 / len(aspects)] * len(aspects)
    return RewardHead("ratings", aspects, weights)


# ---------------------------------------------------------------------------------------------- ensembles


def bootstrap_counts(n: int, heads: int, seed: int) -> torch.Tensor:
    """``[n, heads]``: how often each example is drawn when head ``k`` resamples ``n`` of them with
    replacement (the bootstrap, Efron 1979). Each column sums to ``n``; the expected count is 1."""
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(n, (heads, n), generator=generator)  # [heads, n]
    return torch.stack([torch.bincount(d, minlength=n) for d in draws], dim=1).float()


# ---------------------------------------------------------------------------------------------- model


def load_reward_backbone(cfg: ModelConfig, num_labels: int, dtype: str) -> tuple[Any, Any]:
    """``AutoModelForSequenceClassification`` with ``num_labels`` outputs on ``cfg``'s model (trainable).

    A causal LM's weights load into the backbone; the score head is new (initialised from the seed).
    ``config.pad_token_id`` (and the tokenizer's pad token) is :func:`reward_pad_token_id`, not the EOS,
    so transformers reads the score at the closing EOS.
    """
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    path = resolve_model(cfg.name_or_path)
    tokenizer = load_tokenizer(path)
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report lists the new head as MISSING: expected, said below
    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=num_labels,
            dtype=getattr(torch, dtype),
            output_loading_info=True,
            local_files_only=True,
        )
    finally:
        hf_logging.set_verbosity(previous)
    new = ", ".join(sorted(info["missing_keys"])) or "none"
    logger.info(f"reward model: new (randomly initialised) weights: {new}")
    pad_id = reward_pad_token_id(tokenizer)  # never the EOS the score is read at
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
    model.config.pad_token_id = pad_id
    model.to(resolve_device(cfg.device))
    model = prepare_for_training(model, cfg, task_type="SEQ_CLS")  # LoRA keeps the new head trainable
    return model, tokenizer


# ---------------------------------------------------------------------------------------------- train


def reward_train(cfg: RewardTrainConfig) -> RunResult:
    """Train a reward model on ``cfg.data``; the library function behind ``rlxf reward train``.

    Writes the run folder ``cfg.out`` (config, metrics, ``model/`` as a plain HF sequence-classification
    folder, summary with the held-out figures) and returns its :class:`~rlxf.train.run.RunResult`. All
    data is read, validated and tokenised, and the model loaded, before ``cfg.out`` is touched: bad input
    writes nothing.
    """
    print_config(cfg, "rlxf reward train")

    # 1. Data: read, validate, split and tokenise everything up front.
    train_ds, eval_ds = read_train_eval(cfg, None if cfg.objective == "auto" else cfg.objective)
    objective = resolve_objective(cfg.objective, train_ds)
    tokenizer = load_tokenizer(resolve_model(cfg.model.name_or_path))
    if objective == "ratings":
        if cfg.ensemble_size > 1:
            raise DataError("ensemble_size > 1 is for preferences; these are ratings", path=train_ds.path)
        head = ratings_head(cfg, train_ds)
    else:
        if cfg.aspect_weights:
            raise DataError("aspect_weights apply to ratings; these are preferences", path=train_ds.path)
        head = RewardHead.for_preferences(cfg.ensemble_size)
    encode = functools.partial(
        encode_reward_record,
        max_length=cfg.max_length,
        chat_template=cfg.chat_template,
        truncation=cfg.truncation,
    )
    train_examples = tokenize_dataset(train_ds, encode, tokenizer)
    eval_examples = tokenize_dataset(eval_ds, encode, tokenizer) if eval_ds is not None else []
    if objective == "ratings":
        for ds, examples in ((train_ds, train_examples), (eval_ds, eval_examples)):
            for i, example in enumerate(examples):
                aspect = example.get("aspect", DEFAULT_ASPECT)
                if aspect not in head.labels:
                    raise ds.error(
                        i, f"aspect {aspect!r} is not among the training aspects {head.labels}", "aspect"
                    )
                example["aspect_index"] = head.labels.index(aspect)
    if cfg.ensemble_size > 1 and cfg.ensemble_bootstrap:
        counts = bootstrap_counts(len(train_examples), cfg.ensemble_size, cfg.seed)  # [n, heads]
        for example, row in zip(train_examples, counts.tolist()):
            example["head_weights"] = row

    # 2. Model: fp32 master weights unless precision is pure bf16; a new head of K outputs.
    seed_everything(cfg.seed)
    model, tokenizer = load_reward_backbone(
        cfg.model, len(head.labels), weight_dtype(training_precision(cfg))
    )
    pad_id = int(model.config.pad_token_id)
    collate = functools.partial(collate_rewards, pad_token_id=pad_id)
    margin_in_loss = cfg.margin_in_loss
    coefficient = cfg.center_rewards_coefficient

    # 3. Loss: summed over the pairs (or rated examples); the loop divides by the step's count.
    def preference_loss(model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        outputs = reward_outputs(model, batch)  # [2B, K]: chosen rows, then rejected rows
        n = outputs.shape[0] // 2
        chosen, rejected = outputs[:n], outputs[n:]  # [B, K]
        margin = batch["margin"][:, None] if margin_in_loss and "margin" in batch else None
        # [B, K]: each head's -log sigmoid(r_c - r_r - m) for each pair
        losses = bradley_terry_loss(chosen, rejected, margin)
        if "head_weights" in batch:
            losses = losses * batch["head_weights"]  # bootstrap: pair i counts c_ik times for head k
        r_chosen, std_chosen = head.combine(chosen)  # [B]: the ensemble's mean reward
        r_rejected, _ = head.combine(rejected)
        per_pair = losses.mean(dim=-1)  # [B]
        if coefficient > 0:
            per_pair = per_pair + coefficient * centering_penalty(r_chosen, r_rejected)
        with torch.no_grad():
            metrics = {
                "accuracy": (r_chosen > r_rejected).float().mean().item(),
                "rewards/chosen": r_chosen.mean().item(),
                "rewards/rejected": r_rejected.mean().item(),
                "rewards/margins": (r_chosen - r_rejected).mean().item(),
            }
            if std_chosen is not None:
                metrics["rewards/ensemble_std"] = std_chosen.mean().item()
        return LossOutput(loss=per_pair.sum(), metrics=metrics)

    def ratings_loss(model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        outputs = reward_outputs(model, batch)  # [B, K]: one output per aspect
        predicted = outputs.gather(1, batch["aspect_index"][:, None]).squeeze(1)  # [B]: the record's aspect
        losses = rating_mse_loss(predicted, batch["rating"])  # [B]
        return LossOutput(loss=losses.sum(), metrics={"mse": losses.mean().item()})

    eval_rows = 2 * cfg.train.micro_batch_size  # sequences per forward pass: a batch's chosen + rejected

    def score(model: torch.nn.Module, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Per held-out example: its head outputs (chosen and rejected, or the rated completion's)."""
        if objective == "preferences":
            rows = [e["chosen_ids"] for e in examples] + [e["rejected_ids"] for e in examples]
            outputs = score_sequences(model, rows, pad_id, eval_rows)  # [2n, K]
            margin = torch.tensor([float(e.get("margin", 0.0)) for e in examples])
            return {
                "chosen": outputs[: len(examples)],
                "rejected": outputs[len(examples) :],
                "margin": margin,
            }
        outputs = score_sequences(model, [e["input_ids"] for e in examples], pad_id, eval_rows)  # [n, K]
        index = torch.tensor([e["aspect_index"] for e in examples])
        return {
            "predicted": outputs.gather(1, index[:, None]).squeeze(1),
            "target": torch.tensor([e["rating"] for e in examples]),
            "index": index,
        }

    def summarize(figures: dict[str, torch.Tensor]) -> dict[str, float]:
        """Held-out loss, accuracy, ties and margins; or MSE, Spearman and Pearson (per aspect too)."""
        if objective == "preferences":
            chosen, rejected = figures["chosen"], figures["rejected"]
            r_chosen, std = head.combine(chosen)
            r_rejected, _ = head.combine(rejected)
            margin = figures["margin"][:, None] if margin_in_loss else None
            loss = bradley_terry_loss(chosen, rejected, margin)
            metrics = {"loss": loss.mean().item(), **preference_metrics(r_chosen, r_rejected)}
            if std is not None:
                metrics["rewards/ensemble_std"] = std.mean().item()
            return metrics
        predicted, target, index = figures["predicted"], figures["target"], figures["index"]
        metrics = rating_metrics(predicted, target)
        if len(head.labels) > 1:
            for k, aspect in enumerate(head.labels):
                if (index == k).sum() > 1:
                    per_aspect = rating_metrics(predicted[index == k], target[index == k])
                    metrics.update({f"{name}/{aspect}": value for name, value in per_aspect.items()})
        return metrics

    def centre_and_describe(trainer: Trainer, final: dict[str, float]) -> None:
        """Centre (optional) and describe the head in the config, so model/ is scored as trained."""
        if cfg.center_rewards:
            trainer.model.eval()
            keys = ("chosen_ids", "rejected_ids", "input_ids")
            rows = [e[key] for e in train_examples for key in keys if key in e]  # every training completion
            with trainer.autocast():
                outputs = score_sequences(trainer.model, rows, pad_id, 2 * cfg.train.micro_batch_size)
            head.reward_mean = head.combine(outputs)[0].mean().item()
            final["reward_mean"] = head.reward_mean
            logger.info(f"centred: rlxf's scorer subtracts the mean training reward {head.reward_mean:.4f}")
        head.save_to(trainer.model.config)
        trainer.model.config.rlxf_max_length = cfg.max_length
        trainer.model.config.rlxf_chat_template = cfg.chat_template
        trainer.model.config.rlxf_truncation = cfg.truncation

    # 4. Fit, centre, save model/ and summary.json.
    preferences = objective == "preferences"
    return fit_and_save(
        cfg,
        model=model,
        tokenizer=tokenizer,
        train_examples=train_examples,
        eval_examples=eval_examples,
        collate=collate,
        units=lambda batch: int(batch["input_ids"].shape[0] // (2 if preferences else 1)),
        compute_loss=preference_loss if preferences else ratings_loss,
        score=score,
        summarize=summarize,
        desc="reward",
        command="reward train",
        judge_by="accuracy" if preferences else "mse",
        unit="pairs" if preferences else "rated examples",
        before_save=centre_and_describe,
    )
