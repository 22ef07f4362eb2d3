"""Direct preference optimisation (DPO) and its offline relatives: conservative DPO and IPO.

Data: preference pairs ``(x, y_w, y_l)`` -- a prompt, the chosen and the rejected completion. DPO trains
the policy ``pi`` directly on them, with no reward model and no sampling, against a frozen reference
``ref`` (the model training starts from). With sequence log-probs ``log pi(y|x) = sum_t log pi(y_t | x,
y_<t)`` over the completion's tokens (prompt and padding masked) and the log-ratio difference

    h = [log pi(y_w|x) - log ref(y_w|x)] - [log pi(y_l|x) - log ref(y_l|x)]

the loss of one pair is

* ``loss_type="sigmoid"``: DPO (Rafailov et al. 2023, "Direct Preference Optimization", eq. 7)::

      L = -log sigmoid(beta * h)

* ``label_smoothing=eps > 0``: conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences";
  TRL's ``label_smoothing``), which assumes each label is flipped with probability ``eps``::

      L = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h)

* ``loss_type="ipo"``: IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from
  Human Preferences", eq. 17), which regresses ``h`` onto a finite target instead of pushing it to
  infinity::

      L = (h - 1 / (2 * beta))^2

  Here the log-probs are **averaged** over each completion's tokens (for policy and reference alike), as
  in TRL: with sums, the target margin ``1/(2 beta)`` would mean something different for a 5-token and a
  500-token answer. The implicit rewards and ``logps/*`` metrics of an IPO run are per-token averages too.

Implicit reward (paper, section 5): ``r(x, y) = beta * (log pi(y|x) - log ref(y|x))``; ``beta * h`` is
the reward margin of the pair.

Reference (``reference``): ``log ref(y|x)`` precomputed once before training with the initial model
(default), or the LoRA policy with its adapters off (``adapter_disabled``); see
:mod:`rlxf.algos.preference`, which DPO shares with KTO.

Normalisation. ``compute_loss`` returns the loss **summed** over the pairs of a micro-batch; the shared
loop (:mod:`rlxf.train.loop`) divides by the number of pairs of the whole optimizer step, so the update
is that of the mean per pair over the step (equal to TRL's per-micro-batch mean, since every micro-batch
holds the same number of pairs). Dropout is switched off by default (``disable_dropout``, as TRL), so
policy and reference see the same network.

Metrics (TRL's names; means over the step's pairs): ``loss``, ``rewards/chosen``, ``rewards/rejected``
(implicit rewards), ``rewards/margins`` (their difference), ``rewards/accuracies`` (share of pairs with
a positive margin), ``logps/chosen``, ``logps/rejected`` (policy sequence log-probs), plus the loop's
``lr``, ``grad_norm``, ``tokens_per_s``, ``epoch``. Held-out (``eval/``): ``loss``, ``accuracy`` (share
of pairs with ``beta * h > 0``), ``rewards/margins``, ``rewards/chosen``, ``rewards/rejected``. Without
``eval_data`` a validation split is held out by default, and a held-out loss that did not fall below
step 0's (``log 2`` for DPO) is a warning (:mod:`rlxf.algos.offline`). The ``train:`` defaults are
:func:`_default_dpo_train`'s (learning rate 1e-6, TRL's, for full fine-tuning; LoRA wants ~5e-5).

Left out: online / iterative DPO (sampling new pairs), RPO's NLL term (``rpo_alpha``), the data's
optional ``margin`` field (read, not used), reference refreshing (TR-DPO), the other loss types of TRL
(hinge, robust, BCO-pair, ...). KTO, for unpaired data, is :mod:`rlxf.algos.kto`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

from rlxf.algos.offline import fit_and_save, model_device, read_and_tokenize, to_device
from rlxf.algos.preference import PreferenceRunConfig, load_policy, sequence_logps
from rlxf.config import option
from rlxf.data import Dataset, pad_token_id, tokenize_dataset, tokenize_preference
from rlxf.data.collate import collate_preferences
from rlxf.models.reference import reference_model
from rlxf.train.loop import LossOutput, TrainingConfig
from rlxf.train.run import RunResult, print_config

logger = logging.getLogger(__name__)


def _default_dpo_train() -> TrainingConfig:
    """DPO's ``train:`` defaults (the shared loop's, but for the learning rate: TRL's 1e-6)."""
    return TrainingConfig(learning_rate=1e-6)


@dataclass
class DPOConfig(PreferenceRunConfig):
    """Options of ``rlxf dpo`` (beta, reference, lengths: :class:`~rlxf.algos.preference.PreferenceRunConfig`)."""

    train: TrainingConfig = field(default_factory=_default_dpo_train)
    loss_type: Literal["sigmoid", "ipo"] = option(
        "sigmoid",
        help="sigmoid: DPO (Rafailov et al. 2023); ipo: IPO (Azar et al. 2023), on mean token log-probs",
    )
    label_smoothing: float = option(
        0.0, help="conservative DPO: assumed probability that a preference label is flipped, in [0, 0.5)"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        if self.loss_type == "ipo" and self.label_smoothing > 0:
            raise ValueError("label_smoothing (conservative DPO) applies to loss_type=sigmoid only, not ipo")


# ---------------------------------------------------------------------------------------------- losses
# Pure functions on per-sequence log-probs ``[batch]``; each returns the loss of every pair ``[batch]``.


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7); conservative DPO when ``label_smoothing = eps > 0``::

    h = (pi_c - ref_c) - (pi_r - ref_r)
    L = -(1 - eps) * log sigmoid(beta h) - eps * log sigmoid(-beta h)
    """
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    eps = label_smoothing
    return -(1 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def ipo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """IPO (Azar et al. 2023, eq. 17): ``L = (h - 1/(2 beta))^2`` (pass token-averaged log-probs)."""
    h = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return (h - 1 / (2 * beta)) ** 2


# ---------------------------------------------------------------------------------------------- data


def collate_pairs(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """:func:`~rlxf.data.collate.collate_preferences` (chosen rows, then rejected rows), plus the cached
    reference log-probs as ``ref_logps`` ``[2*batch]`` in the same row order when the features carry them."""
    batch = collate_preferences(features, pad_id)
    if "ref_chosen_logps" in features[0]:
        batch["ref_logps"] = torch.tensor(
            [f["ref_chosen_logps"] for f in features] + [f["ref_rejected_logps"] for f in features],
            dtype=torch.float32,
        )
    return batch


def count_pairs(batch: dict[str, torch.Tensor]) -> int:
    """The normalisation units of a batch: its pairs."""
    return int(batch["prompt_lengths"].shape[0])


# ---------------------------------------------------------------------------------------------- one batch


class PairOutput(NamedTuple):
    """Per-pair results of one batch, each ``[batch]``."""

    losses: torch.Tensor
    chosen_rewards: torch.Tensor  # beta * (pi_c - ref_c), detached
    rejected_rewards: torch.Tensor  # beta * (pi_r - ref_r), detached
    chosen_logps: torch.Tensor  # policy, detached
    rejected_logps: torch.Tensor


def dpo_pairs(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: DPOConfig) -> PairOutput:
    """Policy and reference log-probs of a :func:`collate_pairs` batch, and each pair's loss and rewards."""
    n = count_pairs(batch)
    args = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    if "ref_logps" in batch:
        ref = batch["ref_logps"]  # [2n]: precomputed before training
    else:
        with torch.no_grad(), reference_model(model) as reference:
            ref = sequence_logps(reference, *args)  # [2n]
    policy = sequence_logps(model, *args)  # [2n]: one forward pass over chosen and rejected rows
    if cfg.loss_type == "ipo":  # IPO works on log-probs averaged over each completion's tokens
        num_tokens = batch["completion_mask"].sum(dim=-1).clamp(min=1)
        policy, ref = policy / num_tokens, ref / num_tokens
    pi_c, pi_r, ref_c, ref_r = policy[:n], policy[n:], ref[:n], ref[n:]
    if cfg.loss_type == "ipo":
        losses = ipo_loss(pi_c, pi_r, ref_c, ref_r, cfg.beta)
    else:
        losses = dpo_loss(pi_c, pi_r, ref_c, ref_r, cfg.beta, cfg.label_smoothing)
    return PairOutput(
        losses=losses,
        chosen_rewards=cfg.beta * (pi_c - ref_c).detach(),  # implicit reward r = beta log(pi/ref)
        rejected_rewards=cfg.beta * (pi_r - ref_r).detach(),
        chosen_logps=pi_c.detach(),
        rejected_logps=pi_r.detach(),
    )


def dpo_compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: DPOConfig) -> LossOutput:
    """The loop's ``compute_loss``: the loss summed over the micro-batch's pairs, metrics as means."""
    out = dpo_pairs(model, batch, cfg)
    margins = out.chosen_rewards - out.rejected_rewards
    metrics = {
        "rewards/chosen": out.chosen_rewards.mean().item(),
        "rewards/rejected": out.rejected_rewards.mean().item(),
        "rewards/margins": margins.mean().item(),
        "rewards/accuracies": (margins > 0).float().mean().item(),
        "logps/chosen": out.chosen_logps.mean().item(),
        "logps/rejected": out.rejected_logps.mean().item(),
    }
    return LossOutput(loss=out.losses.sum(), metrics=metrics)


# ---------------------------------------------------------------------------------------------- train


def tokenize_pairs(ds: Dataset, tokenizer: Any, cfg: DPOConfig) -> list[dict[str, Any]]:
    """Tokenise every pair (a :class:`~rlxf.data.DataError` naming the record at the first bad one)."""
    return tokenize_dataset(
        ds,
        tokenize_preference,
        tokenizer,
        max_length=cfg.max_length,
        max_prompt_length=cfg.max_prompt_length,
        chat_template=cfg.chat_template,
        truncation=cfg.truncation,
    )


def dpo(cfg: DPOConfig) -> RunResult:
    """DPO / cDPO / IPO of ``cfg.model`` on the preference pairs ``cfg.data`` (``rlxf dpo``); the run folder
    and result are :func:`~rlxf.algos.offline.fit_and_save`'s. Bad input stops it before ``cfg.out`` is touched.
    """
    print_config(cfg, "rlxf dpo")

    # 1. Data: read, validate, split and tokenise everything up front.
    data = read_and_tokenize(cfg, "preferences", functools.partial(tokenize_pairs, cfg=cfg))
    same = sum(f["chosen_ids"] == f["rejected_ids"] for f in data.train)
    if same:
        logger.warning(f"{same} pairs have identical chosen and rejected tokens after truncation")
    pad_id = pad_token_id(data.tokenizer)

    # 2. Model: the policy, and the reference log-probs of every pair, once, with the initial policy.
    reference_of = {"chosen_ids": "ref_chosen_logps", "rejected_ids": "ref_rejected_logps"}
    model = load_policy(cfg, data.train + data.eval, reference_of, pad_id)

    # 3. Loss: summed over the pairs; the loop divides by the step's number of pairs.
    collate = functools.partial(collate_pairs, pad_id=pad_id)

    def score(model: torch.nn.Module, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Per held-out pair: its loss, implicit rewards and margin (beta * h)."""
        out = dpo_pairs(model, to_device(collate(examples), model_device(model)), cfg)
        return {
            "loss": out.losses.detach(),
            "rewards/chosen": out.chosen_rewards,
            "rewards/rejected": out.rejected_rewards,
        }

    def summarize(figures: dict[str, torch.Tensor]) -> dict[str, float]:
        """Held-out loss, implicit-reward accuracy and margins (means over the held-out pairs)."""
        margins = figures["rewards/chosen"].double() - figures["rewards/rejected"].double()
        return {
            "loss": figures["loss"].double().mean().item(),
            "accuracy": (margins > 0).double().mean().item(),
            "rewards/margins": margins.mean().item(),
            "rewards/chosen": figures["rewards/chosen"].double().mean().item(),
            "rewards/rejected": figures["rewards/rejected"].double().mean().item(),
        }

    # 4. Fit, save model/ and summary.json.
    return fit_and_save(
        cfg,
        model=model,
        tokenizer=data.tokenizer,
        train_examples=data.train,
        eval_examples=data.eval,
        collate=collate,
        units=count_pairs,
        compute_loss=functools.partial(dpo_compute_loss, cfg=cfg),
        score=score,
        summarize=summarize,
        desc="dpo" if cfg.loss_type == "sigmoid" else cfg.loss_type,
        command="dpo",
        unit="pairs",
    )
