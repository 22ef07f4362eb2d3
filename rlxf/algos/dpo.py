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

Reference (``reference``):

* ``precompute`` (default): ``log ref(y|x)`` of every training and held-out pair is computed once before
  training with the initial policy (eval mode, no gradient, the same autocast as training; LoRA
  adapters switched off) and kept in memory beside each example. No second copy of the weights during
  training, one forward pass per step instead of two. At step 0 policy and reference agree to float
  rounding (exactly, when a batch has the same padded width as the batch its reference was computed in).
* ``adapter_disabled`` (LoRA only): the reference is the policy with its adapters switched off
  (``peft``'s ``disable_adapter()``), computed at each step without gradient.

A frozen copy of the model (TRL's default) is left out: for offline data it gives the numbers
``precompute`` gives, at the cost of a second model in memory.

Normalisation. ``compute_loss`` returns the loss **summed** over the pairs of a micro-batch; the shared
loop (:mod:`rlxf.train.loop`) divides by the number of pairs of the whole optimizer step, so the update
is that of the mean per pair over the step (equal to TRL's per-micro-batch mean, since every micro-batch
holds the same number of pairs). Dropout is switched off by default (``disable_dropout``, as TRL), so
policy and reference see the same network.

Metrics (TRL's names; means over the step's pairs): ``loss``, ``rewards/chosen``, ``rewards/rejected``
(implicit rewards), ``rewards/margins`` (their difference), ``rewards/accuracies`` (share of pairs with
a positive margin), ``logps/chosen``, ``logps/rejected`` (policy sequence log-probs), plus the loop's
``lr``, ``grad_norm``, ``tokens_per_s``, ``epoch``. Held-out (``eval/``): ``loss``, ``accuracy`` (share
of pairs with ``beta * h > 0``), ``rewards/margins``, ``rewards/chosen``, ``rewards/rejected``.

Left out: online / iterative DPO (sampling new pairs), RPO's NLL term (``rpo_alpha``), the data's
optional ``margin`` field (read, not used), reference refreshing (TR-DPO), the other loss types of TRL
(hinge, robust, BCO-pair, ...). KTO, for unpaired data, is :mod:`rlxf.algos.kto`.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F

from rlxf.config import option
from rlxf.data import (
    ChatTemplateMode,
    DataError,
    Dataset,
    Kind,
    Truncation,
    pad_token_id,
    read_data,
    split_data,
    tokenize_dataset,
    tokenize_preference,
)
from rlxf.data.collate import collate_preferences, pad
from rlxf.models.load import disable_dropout, load_model, load_tokenizer, resolve_device, save_model
from rlxf.models.precision import autocast, resolve_precision, weight_dtype
from rlxf.models.reference import reference_model
from rlxf.models.registry import resolve_model
from rlxf.train.loop import LossOutput, RunConfig, Trainer, TrainingConfig
from rlxf.train.progress import Progress
from rlxf.train.run import RunDir, print_config
from rlxf.train.seed import seed_everything

Reference = Literal["precompute", "adapter_disabled"]


@dataclass
class PreferenceTrainingConfig(TrainingConfig):
    """The shared loop's options, with the preference learners' default learning rate (TRL's)."""

    learning_rate: float = option(
        1e-6, help="peak learning rate (AdamW); 1e-6 suits full fine-tuning (TRL's default), LoRA wants ~5e-5"
    )


@dataclass
class PreferenceRunConfig(RunConfig):
    """Options DPO and KTO share: beta, where the reference log-probs come from, lengths, rendering."""

    train: PreferenceTrainingConfig = field(default_factory=PreferenceTrainingConfig)
    beta: float = option(
        0.1,
        help="strength of the KL tie to the reference (DPO's / KTO's beta; IPO's target margin is 1/(2 beta))",
    )
    reference: Reference = option(
        "precompute",
        help="precompute: reference log-probs computed once before training with the initial model; "
        "adapter_disabled: the LoRA policy with adapters off, at each step",
    )
    max_length: int | None = option(1024, help="longest prompt + completion in tokens (completions are cut)")
    max_prompt_length: int | None = option(512, help="longest prompt in tokens (cut as `truncation` says)")
    truncation: Truncation = option(
        "keep_end",
        help="a too-long prompt keeps its last (keep_end) or first (keep_start) tokens, or is an error",
    )
    chat_template: ChatTemplateMode = option(
        "auto",
        help="auto: messages use the chat template, plain prompts stay raw; always: a plain prompt becomes "
        "a user turn; never: raw text only",
    )
    disable_dropout: bool = option(True, help="switch dropout off, so policy and reference see the same net")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.reference == "adapter_disabled" and self.model.lora.r <= 0:
            raise ValueError(
                "reference=adapter_disabled needs LoRA (model.lora.r > 0): without adapters there is nothing "
                "to switch off; use reference=precompute"
            )
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.max_prompt_length is not None and self.max_prompt_length < 1:
            raise ValueError(f"max_prompt_length must be >= 1, got {self.max_prompt_length}")
        if (
            self.max_length is not None
            and self.max_prompt_length is not None
            and self.max_prompt_length >= self.max_length
        ):
            raise ValueError(
                f"max_prompt_length ({self.max_prompt_length}) must be smaller than max_length ({self.max_length})"
            )


@dataclass
class DPOConfig(PreferenceRunConfig):
    """Options of ``rlxf dpo``."""

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


# ---------------------------------------------------------------------------------------------- log-probs


@functools.cache
def _takes_logits_to_keep(cls: type) -> bool:
    return "logits_to_keep" in inspect.signature(cls.forward).parameters


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under DDP / peft wrappers."""
    model = getattr(model, "module", model)  # DDP
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def sequence_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
) -> torch.Tensor:
    """``log pi(y|x)`` of each row ``[batch]`` (float32): the sum of the completion tokens' log-probs.

    ``completion_mask[b, t] = 1`` where token ``t`` is scored (the completion), 0 at prompt and padding.
    Token ``t`` is predicted by the logits at ``t - 1``::

        log pi(y_t | y_<t) = logits[t-1, y_t] - logsumexp(logits[t-1, :])

    computed in float32 from a gather and a logsumexp, without a whole-vocabulary log-softmax tensor. Only
    the positions from the first completion token of the batch on go through the output head
    (``logits_to_keep``): the prompt's logits are never needed.
    """
    seq_len = input_ids.shape[1]
    first = int(completion_mask.argmax(dim=-1).min())  # earliest scored token of the batch
    start = max(first - 1, 0)  # the logits at `start` predict token `start + 1`
    keep = seq_len - start
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if _takes_logits_to_keep(type(_base_model(model))):
        kwargs["logits_to_keep"] = keep
    logits = model(**kwargs).logits[:, -keep:]  # [batch, keep, vocab]: positions start .. seq_len-1
    logits = logits[:, :-1].float()  # [batch, keep-1, vocab]: predict tokens start+1 .. seq_len-1
    targets = input_ids[:, start + 1 :]  # [batch, keep-1]
    mask = completion_mask[:, start + 1 :].to(logits.dtype)  # [batch, keep-1]
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (token_logps * mask).sum(dim=-1)  # [batch]


@torch.no_grad()
def score_completions(
    model: torch.nn.Module,
    sequences: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    pad_id: int,
    batch_size: int,
    precision: str,
) -> list[float]:
    """``log pi(completion | prompt)`` of ``(prompt_ids, completion_ids)`` pairs, scored by the reference
    network of ``model`` (adapters off) in eval mode without gradient.

    Sequences are scored in length-sorted chunks of ``batch_size`` (little padding) under the training
    precision's autocast, so the numbers are those the policy gives at step 0.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    out = [0.0] * len(sequences)
    progress = Progress(len(order), "reference log-probs", unit="sequence")
    with reference_model(model) as ref, autocast(precision, device):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            rows = [list(sequences[i][0]) + list(sequences[i][1]) for i in chunk]
            masks = [[0] * len(sequences[i][0]) + [1] * len(sequences[i][1]) for i in chunk]
            input_ids = pad(rows, pad_id).to(device)
            attention_mask = pad([[1] * len(r) for r in rows], 0).to(device)
            logps = sequence_logps(ref, input_ids, attention_mask, pad(masks, 0).to(device))
            for i, value in zip(chunk, logps.tolist()):
                out[i] = value
            progress.update(len(chunk))
    progress.close()
    model.train(was_training)
    return out


# ---------------------------------------------------------------------------------------------- data


def read_train_eval(cfg: RunConfig, kind: Kind) -> tuple[Dataset, Dataset | None]:
    """Training data and held-out data (``eval_data``, else ``eval_split`` of ``data``, else none)."""
    train_ds = read_data(cfg.data, kind=kind)
    eval_ds = None
    if cfg.eval_data:
        eval_ds = read_data(cfg.eval_data, kind=kind)
    elif cfg.eval_split > 0:
        train_ds, eval_ds = split_data(train_ds, cfg.eval_split, cfg.seed)
    if len(train_ds) < cfg.train.global_batch_size:
        held_out = f" once {len(eval_ds)} are held out" if eval_ds is not None and not cfg.eval_data else ""
        raise DataError(
            f"{len(train_ds)} training records{held_out} make no full batch of train.global_batch_size="
            f"{cfg.train.global_batch_size}: lower it or add data",
            path=train_ds.path,
        )
    return train_ds, eval_ds


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


def dpo(cfg: DPOConfig) -> dict[str, float]:
    """Train ``cfg.model`` on the preference pairs ``cfg.data`` with DPO / cDPO / IPO (``rlxf dpo``).

    Writes the run folder ``cfg.out`` (config, metrics, checkpoints, the model as a plain HF folder with
    LoRA merged, summary) and returns the final metrics. All data is read, validated and tokenised
    before ``cfg.out`` is touched, so bad input writes nothing.
    """
    print_config(cfg, "rlxf dpo")
    device = resolve_device(cfg.model.device)
    precision = resolve_precision(cfg.train.precision, device)

    # 1. Data: read, validate, split and tokenise everything up front.
    train_ds, eval_ds = read_train_eval(cfg, "preferences")
    tokenizer = load_tokenizer(resolve_model(cfg.model.name_or_path))
    train_examples = tokenize_pairs(train_ds, tokenizer, cfg)
    eval_examples = tokenize_pairs(eval_ds, tokenizer, cfg) if eval_ds is not None else []
    same = sum(f["chosen_ids"] == f["rejected_ids"] for f in train_examples)
    if same:
        print(
            f"note: {same} pairs have identical chosen and rejected tokens after truncation", file=sys.stderr
        )
    pad_id = pad_token_id(tokenizer)

    # 2. Policy: fp32 master weights unless precision is pure bf16; LoRA adapters when model.lora.r > 0.
    seed_everything(cfg.seed)
    model, _ = load_model(dataclasses.replace(cfg.model, dtype=weight_dtype(precision)), trainable=True)
    if cfg.disable_dropout:
        disable_dropout(model)

    # 3. Reference log-probs, once, with the initial policy: rows [chosen of every example, rejected ...].
    #    On --resume too: the loop loads the checkpoint later, so the reference stays the initial model.
    if cfg.reference == "precompute":
        examples = train_examples + eval_examples
        sequences = [(f["prompt_ids"], f[key]) for key in ("chosen_ids", "rejected_ids") for f in examples]
        logps = score_completions(
            model, sequences, pad_id=pad_id, batch_size=2 * cfg.train.micro_batch_size, precision=precision
        )
        for i, f in enumerate(examples):
            f["ref_chosen_logps"], f["ref_rejected_logps"] = logps[i], logps[len(examples) + i]

    collate = functools.partial(collate_pairs, pad_id=pad_id)
    compute_loss = functools.partial(dpo_compute_loss, cfg=cfg)

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        """Held-out loss, implicit-reward accuracy and margins (means over the held-out pairs)."""
        sums = {
            "loss": 0.0,
            "accuracy": 0.0,
            "rewards/margins": 0.0,
            "rewards/chosen": 0.0,
            "rewards/rejected": 0.0,
        }
        micro = cfg.train.micro_batch_size
        for start in range(0, len(eval_examples), micro):
            batch = {k: v.to(device) for k, v in collate(eval_examples[start : start + micro]).items()}
            out = dpo_pairs(model, batch, cfg)
            margins = out.chosen_rewards - out.rejected_rewards  # beta * h
            sums["loss"] += out.losses.sum().item()
            sums["accuracy"] += (margins > 0).sum().item()
            sums["rewards/margins"] += margins.sum().item()
            sums["rewards/chosen"] += out.chosen_rewards.sum().item()
            sums["rewards/rejected"] += out.rejected_rewards.sum().item()
        return {name: value / len(eval_examples) for name, value in sums.items()}

    # 4. Train: the loop divides each step's summed loss by its number of pairs.
    with RunDir.create(cfg.out, cfg, resume=cfg.resume, overwrite=cfg.overwrite) as run:
        trainer = Trainer(
            cfg.train,
            model=model,
            examples=train_examples,
            collate=collate,
            units=count_pairs,
            compute_loss=compute_loss,
            run=run,
            seed=cfg.seed,
            evaluate=evaluate if eval_examples else None,
            desc="dpo" if cfg.loss_type == "sigmoid" else cfg.loss_type,
        )
        final = trainer.fit()
        if trainer.accelerator.is_main_process:
            save_model(trainer.model, tokenizer, run.model_dir)
            run.write_summary(final, num_tokens=int(final.get("train_tokens", 0)))
    return final
