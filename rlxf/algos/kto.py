"""Kahneman-Tversky optimisation (KTO): alignment from unpaired desirable / undesirable completions.

Data: unpaired records ``(x, y, label)`` -- a prompt, a completion and whether it is desirable (no pair
needed). KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", eq. 7)
scores each completion by its implicit reward against a reference point::

    r(x, y) = log pi(y|x) - log ref(y|x)
    z_ref   = max(0, E_{x'} KL(pi(.|x') || ref(.|x')))           estimated, not back-propagated
    L(x, y) = lambda_D * (1 - sigmoid(beta * (r - z_ref)))       y desirable
            = lambda_U * (1 - sigmoid(beta * (z_ref - r)))       y undesirable

``z_ref`` is estimated from *mismatched* pairs: example ``i`` is also scored with the completion of
another example ``j`` (``y'`` answers a different prompt), and ``z_ref`` is the mean of ``log pi(y'|x) -
log ref(y'|x)`` over the micro-batch's mismatched pairs, clamped at 0 and detached -- as the paper and
TRL's ``KTOTrainer`` do. The mismatched completion of each example is fixed before training: the
examples are put in a seeded random order and each takes the completion of the next one (a rotation, so
every completion is used once as a ``y'``), like TRL's rotation by one inside blocks of the batch size.
The policy's pass over the mismatched pairs runs without gradient. Simplifications: the micro-batch's
estimate is not averaged across processes (TRL gathers it), and the ``y'`` of a micro-batch are not the
same set as its ``y`` (neither are they in TRL with random sampling).

The weights should satisfy ``lambda_D n_D / (lambda_U n_U) in [1, 4/3]`` (paper, eq. 8; ``n_D``, ``n_U``
the numbers of desirable and undesirable examples); a note says so when the data is unbalanced and
neither weight is in range.

Reference and dropout as in DPO (:mod:`rlxf.algos.preference`): reference log-probs (of ``y`` and of
``y'``) precomputed once with the initial model (default), or from the LoRA policy with its adapters off
(``reference=adapter_disabled``). ``compute_loss`` returns the loss summed over the micro-batch's
examples; the loop divides by the examples of the whole step (TRL: the mean over the batch).

Metrics (TRL's names): ``loss``, ``kl`` (the ``z_ref`` estimate), ``rewards/chosen`` and
``rewards/rejected`` (mean ``beta * r`` of desirable and undesirable examples), ``rewards/margins``
(their difference), ``logps/chosen``, ``logps/rejected``. A micro-batch without desirable (undesirable)
examples logs no ``rewards/chosen`` (``rewards/rejected``); the loop then averages that metric over all
the step's examples, which biases it towards 0 -- rare with micro-batches of several balanced examples.
Held-out metrics (``eval/``) are exact means: ``loss``, ``kl``, ``rewards/chosen``, ``rewards/rejected``,
``rewards/margins``. Without ``eval_data`` a validation split is held out by default, and a held-out
loss that did not fall below step 0's is a warning (:mod:`rlxf.algos.offline`). The ``train:`` defaults
are :func:`_default_kto_train`'s (learning rate 1e-6 for full fine-tuning, as DPO's).

Left out: TRL's ``apo_zero_unpaired`` loss, turning preference pairs into unpaired data (give
``unpaired`` records), KTO without the KL term.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rlxf.algos.offline import fit_and_save, model_device, read_and_tokenize, to_device
from rlxf.algos.preference import PreferenceRunConfig, load_policy, sequence_logps
from rlxf.config import option
from rlxf.data import ChatTemplateMode, DataError, Dataset, Truncation, pad_token_id
from rlxf.data.collate import pad
from rlxf.data.tokenize import completion_token_ids, prompt_field, prompt_token_ids
from rlxf.models.reference import reference_model
from rlxf.train.loop import LossOutput, TrainingConfig
from rlxf.train.run import RunResult, print_config

logger = logging.getLogger(__name__)


def _default_kto_train() -> TrainingConfig:
    """KTO's ``train:`` defaults (the shared loop's, but for the learning rate: 1e-6, as DPO's)."""
    return TrainingConfig(learning_rate=1e-6)


@dataclass
class KTOConfig(PreferenceRunConfig):
    """Options of ``rlxf kto`` (beta, reference, lengths: :class:`~rlxf.algos.preference.PreferenceRunConfig`)."""

    train: TrainingConfig = field(default_factory=_default_kto_train)
    desirable_weight: float = option(1.0, help="lambda_D: weight of the desirable examples' loss")
    undesirable_weight: float = option(1.0, help="lambda_U: weight of the undesirable examples' loss")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.desirable_weight <= 0 or self.undesirable_weight <= 0:
            raise ValueError("desirable_weight and undesirable_weight must be > 0")


def kto_kl_estimate(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """``z_ref``: the mean log-ratio ``log pi(y'|x) - log ref(y'|x)`` over mismatched pairs, clamped at 0
    and detached (a scalar; no gradient flows through the reference point)."""
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl: torch.Tensor | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024, eq. 7) per example ``[batch]``; ``desirable`` is a bool ``[batch]``::

    r = log pi(y|x) - log ref(y|x)
    L = lambda_D * (1 - sigmoid(beta * (r - kl)))    desirable
    L = lambda_U * (1 - sigmoid(beta * (kl - r)))    undesirable
    """
    r = policy_logps - ref_logps
    desirable_losses = desirable_weight * (1 - torch.sigmoid(beta * (r - kl)))
    undesirable_losses = undesirable_weight * (1 - torch.sigmoid(beta * (kl - r)))
    return torch.where(desirable, desirable_losses, undesirable_losses)


# ---------------------------------------------------------------------------------------------- data


def tokenize_unpaired(
    record: dict[str, Any],
    tokenizer: Any,
    max_length: int | None = None,
    max_prompt_length: int | None = None,
    chat_template: ChatTemplateMode = "auto",
    truncation: Truncation = "keep_end",
) -> dict[str, Any]:
    """``prompt_ids``, ``completion_ids`` and ``label`` of one unpaired record.

    Truncation follows :func:`rlxf.data.tokenize_preference`: a prompt longer than ``max_prompt_length``
    keeps its last (``keep_end``) or first (``keep_start``) tokens or is an error; then a completion longer
    than ``max_length - len(prompt_ids)`` keeps its first tokens (or is an error with ``truncation=error``).
    """
    prompt_ids = prompt_token_ids(record, tokenizer, chat_template)
    completion_ids = completion_token_ids(record, "completion", tokenizer, chat_template)
    if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
        if truncation == "error":
            raise DataError(
                f"the prompt has {len(prompt_ids)} tokens, more than max_prompt_length={max_prompt_length}",
                field=prompt_field(record),
            )
        keep_end = truncation == "keep_end"
        prompt_ids = prompt_ids[-max_prompt_length:] if keep_end else prompt_ids[:max_prompt_length]
    if max_length is not None:
        room = max_length - len(prompt_ids)
        if room < 1:
            raise DataError(
                f"the prompt has {len(prompt_ids)} tokens, leaving no room for a completion within "
                f"max_length={max_length}; set max_prompt_length below max_length",
                field=prompt_field(record),
            )
        if len(completion_ids) > room:
            if truncation == "error":
                raise DataError(
                    f"prompt + completion have {len(prompt_ids) + len(completion_ids)} tokens, more than "
                    f"max_length={max_length}",
                    field="completion",
                )
            completion_ids = completion_ids[:room]
    return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "label": bool(record["label"])}


def tokenize_examples(ds: Dataset, tokenizer: Any, cfg: KTOConfig, seed: int) -> list[dict[str, Any]]:
    """Tokenise every record and give each a mismatched completion ``kl_completion_ids`` (module docstring)."""
    examples = []
    for i, record in enumerate(ds.records):
        try:
            examples.append(
                tokenize_unpaired(
                    record,
                    tokenizer,
                    max_length=cfg.max_length,
                    max_prompt_length=cfg.max_prompt_length,
                    chat_template=cfg.chat_template,
                    truncation=cfg.truncation,
                )
            )
        except DataError as exc:
            raise ds.locate(i, exc) from None
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    for k, i in enumerate(order):  # example order[k] takes the completion of order[k+1]
        other = examples[order[(k + 1) % len(order)]]["completion_ids"]
        room = len(other) if cfg.max_length is None else cfg.max_length - len(examples[i]["prompt_ids"])
        examples[i]["kl_completion_ids"] = other[:room]
    return examples


def collate_unpaired(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: ``input_ids``, ``attention_mask``, ``completion_mask`` ``[batch, seq]`` of
    ``prompt + completion``; ``kl_input_ids``, ``kl_attention_mask``, ``kl_completion_mask``
    ``[batch, seq']`` of ``prompt + mismatched completion``; ``label`` (bool ``[batch]``); and the cached
    ``ref_logps``, ``ref_kl_logps`` ``[batch]`` when the features carry them."""
    batch: dict[str, torch.Tensor] = {}
    for prefix, key in (("", "completion_ids"), ("kl_", "kl_completion_ids")):
        rows = [list(f["prompt_ids"]) + list(f[key]) for f in features]
        batch[f"{prefix}input_ids"] = pad(rows, pad_id)
        batch[f"{prefix}attention_mask"] = pad([[1] * len(r) for r in rows], 0)
        batch[f"{prefix}completion_mask"] = pad(
            [[0] * len(f["prompt_ids"]) + [1] * len(f[key]) for f in features], 0
        )
    batch["label"] = torch.tensor([f["label"] for f in features], dtype=torch.bool)
    if "ref_logps" in features[0]:
        batch["ref_logps"] = torch.tensor([f["ref_logps"] for f in features], dtype=torch.float32)
        batch["ref_kl_logps"] = torch.tensor([f["ref_kl_logps"] for f in features], dtype=torch.float32)
    return batch


def count_examples(batch: dict[str, torch.Tensor]) -> int:
    """The normalisation units of a batch: its examples."""
    return int(batch["label"].shape[0])


# ---------------------------------------------------------------------------------------------- one batch


def kto_batch(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: KTOConfig
) -> dict[str, torch.Tensor]:
    """Per-example ``losses``, ``rewards`` (``beta * r``, detached), policy ``logps`` and the scalar ``kl``."""
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    kl_args = (batch["kl_input_ids"], batch["kl_attention_mask"], batch["kl_completion_mask"])
    with torch.no_grad():
        if "ref_logps" in batch:
            ref, ref_kl = batch["ref_logps"], batch["ref_kl_logps"]
        else:
            with reference_model(model) as reference:
                ref, ref_kl = sequence_logps(reference, *args), sequence_logps(reference, *kl_args)
        kl = kto_kl_estimate(sequence_logps(model, *kl_args), ref_kl)  # z_ref: no gradient
    policy = sequence_logps(model, *args)  # [batch]
    losses = kto_loss(policy, ref, batch["label"], kl, cfg.beta, cfg.desirable_weight, cfg.undesirable_weight)
    return {
        "losses": losses,
        "rewards": cfg.beta * (policy - ref).detach(),
        "logps": policy.detach(),
        "kl": kl,
    }


def kto_compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: KTOConfig) -> LossOutput:
    """The loop's ``compute_loss``: the loss summed over the micro-batch's examples, metrics as means."""
    out = kto_batch(model, batch, cfg)
    desirable = batch["label"]
    metrics = {"kl": out["kl"].item()}
    for name, mask in (("chosen", desirable), ("rejected", ~desirable)):
        if mask.any():
            metrics[f"rewards/{name}"] = out["rewards"][mask].mean().item()
            metrics[f"logps/{name}"] = out["logps"][mask].mean().item()
    if desirable.any() and (~desirable).any():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return LossOutput(loss=out["losses"].sum(), metrics=metrics)


# ---------------------------------------------------------------------------------------------- train


def check_weights(examples: list[dict[str, Any]], cfg: KTOConfig) -> None:
    """A warning when ``lambda_D n_D / (lambda_U n_U)`` is outside ``[1, 4/3]`` (paper, eq. 8), as TRL's."""
    n_d = sum(f["label"] for f in examples)
    n_u = len(examples) - n_d
    if n_d == n_u or n_d == 0 or n_u == 0:
        return
    ratio = cfg.desirable_weight * n_d / (cfg.undesirable_weight * n_u)
    if not 1.0 <= ratio <= 4 / 3:
        low, high = cfg.undesirable_weight * n_u / n_d, cfg.undesirable_weight * n_u / n_d * 4 / 3
        logger.warning(
            f"{n_d} desirable and {n_u} undesirable examples give lambda_D n_D / (lambda_U n_U) = "
            f"{ratio:.2f}, outside the [1, 4/3] the KTO paper recommends; e.g. desirable_weight in "
            f"[{low:.2f}, {high:.2f}]"
        )


def kto(cfg: KTOConfig) -> RunResult:
    """KTO of ``cfg.model`` on the unpaired data ``cfg.data`` (``rlxf kto``); the run folder and result are
    :func:`~rlxf.algos.offline.fit_and_save`'s. Bad input stops it before ``cfg.out`` is touched.
    """
    print_config(cfg, "rlxf kto")

    # 1. Data: read, validate, split, tokenise and pair with mismatched completions, all up front.
    data = read_and_tokenize(cfg, "unpaired", functools.partial(tokenize_examples, cfg=cfg, seed=cfg.seed))
    check_weights(data.train, cfg)
    pad_id = pad_token_id(data.tokenizer)

    # 2. Model: the policy, and the reference log-probs of every (x, y) and (x, y'), once.
    reference_of = {"completion_ids": "ref_logps", "kl_completion_ids": "ref_kl_logps"}
    model = load_policy(cfg, data.train + data.eval, reference_of, pad_id)

    # 3. Loss: summed over the examples; the loop divides by the step's number of examples.
    collate = functools.partial(collate_unpaired, pad_id=pad_id)

    def score(model: torch.nn.Module, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Per held-out example: its loss, implicit reward and label, and its batch's KL estimate."""
        batch = to_device(collate(examples), model_device(model))
        out = kto_batch(model, batch, cfg)
        return {
            "loss": out["losses"].detach(),
            "rewards": out["rewards"],
            "label": batch["label"],
            "kl": out["kl"].expand(len(examples)),  # the batch's z_ref, for each of its examples
        }

    def summarize(figures: dict[str, torch.Tensor]) -> dict[str, float]:
        """Held-out loss, KL estimate and implicit rewards (exact means over the held-out examples)."""
        reward, label = figures["rewards"].double(), figures["label"]
        metrics = {"loss": figures["loss"].double().mean().item(), "kl": figures["kl"].double().mean().item()}
        if label.any():
            metrics["rewards/chosen"] = reward[label].mean().item()
        if (~label).any():
            metrics["rewards/rejected"] = reward[~label].mean().item()
        if label.any() and (~label).any():
            metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        return metrics

    # 4. Fit, save model/ and summary.json.
    return fit_and_save(
        cfg,
        model=model,
        tokenizer=data.tokenizer,
        train_examples=data.train,
        eval_examples=data.eval,
        collate=collate,
        units=count_examples,
        compute_loss=functools.partial(kto_compute_loss, cfg=cfg),
        score=score,
        summarize=summarize,
        desc="kto",
        command="kto",
    )
