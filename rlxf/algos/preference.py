"""What the preference learners against a frozen reference share: DPO / IPO (:mod:`rlxf.algos.dpo`) and KTO
(:mod:`rlxf.algos.kto`).

* :class:`PreferenceRunConfig`: the options both take -- ``beta``, where the reference log-probs come
  from (``reference``), prompt and completion lengths, chat rendering, dropout;
* :func:`sequence_logps`: ``log pi(y|x) = sum_t log pi(y_t | x, y_<t)`` over a completion's tokens (prompt
  and padding masked), the quantity both losses are built from;
* :func:`load_policy`: the policy to train, with ``log ref(y|x)`` of every completion computed once
  before training with the initial model (``reference=precompute``: :func:`score_completions`,
  :func:`attach_reference_logps`).

Reference (``reference``):

* ``precompute`` (default): the reference log-probs of every training and held-out completion are
  computed once before training with the initial policy (eval mode, no gradient, the same autocast as
  training; LoRA adapters switched off) and kept beside each example. No second copy of the weights
  during training, one forward pass per step instead of two. At step 0 policy and reference agree to
  float rounding (exactly, when a batch has the same padded width as the batch its reference was
  computed in). On ``--resume`` too: the loop loads the checkpoint later, so the reference stays the
  initial model.
* ``adapter_disabled`` (LoRA only): the reference is the policy with its adapters switched off
  (``peft``'s ``disable_adapter()``), computed at each step without gradient.

A frozen copy of the model (TRL's default) is left out: for offline data it gives the numbers
``precompute`` gives, at the cost of a second model in memory.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch

from rlxf.algos.offline import load_trainable_model
from rlxf.config import option
from rlxf.data import ChatTemplateMode, Truncation
from rlxf.data.collate import pad
from rlxf.models.attention import cpu_attention_for
from rlxf.models.lm_head import fusable_head, hidden_states_before_head, token_logprobs
from rlxf.models.precision import autocast
from rlxf.models.reference import reference_model
from rlxf.train.loop import RunConfig
from rlxf.train.progress import Progress

Reference = Literal["precompute", "adapter_disabled"]


@dataclass
class PreferenceRunConfig(RunConfig):
    """Options DPO and KTO share: beta, where the reference log-probs come from, lengths, rendering."""

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
        if self.reference not in get_args(Reference):
            raise ValueError(f"reference must be one of {get_args(Reference)}, got {self.reference!r}")
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
    (``logits_to_keep``): the prompt's logits are never needed. Where the head is a plain linear layer
    (:func:`~rlxf.models.lm_head.fusable_head`) it runs chunk by chunk on the scored positions alone.
    """
    seq_len = input_ids.shape[1]
    first = int(completion_mask.argmax(dim=-1).min())  # earliest scored token of the batch
    start = max(first - 1, 0)  # the logits at `start` predict token `start + 1`
    keep = seq_len - start
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": False}
    if _takes_logits_to_keep(type(_base_model(model))):
        kwargs["logits_to_keep"] = keep
    targets = input_ids[:, start + 1 :]  # [batch, keep-1]
    mask = completion_mask[:, start + 1 :]  # [batch, keep-1]
    head = fusable_head(model)
    if head is not None and "logits_to_keep" in kwargs:
        # The output head chunk by chunk on the scored positions only (rlxf/models/lm_head.py): no
        # [batch, keep, vocab] logits, and no head work on prompt or padding positions.
        with hidden_states_before_head(head), cpu_attention_for(model, seq_len):
            hidden = model(**kwargs).logits[:, -keep:][:, :-1]  # [batch, keep-1, H]
        scored = mask.bool()  # [batch, keep-1]
        token_logps, _ = token_logprobs(hidden[scored], head.weight, targets[scored], keep_probs=True)  # [n]
        rows = torch.arange(len(input_ids), device=input_ids.device).unsqueeze(1).expand_as(mask)[scored]
        zeros = torch.zeros(len(input_ids), dtype=token_logps.dtype, device=token_logps.device)
        return zeros.index_add(0, rows, token_logps)  # [batch]: the sum over each row's scored tokens
    with cpu_attention_for(model, seq_len):
        logits = model(**kwargs).logits[:, -keep:]  # [batch, keep, vocab]: positions start .. seq_len-1
    logits = logits[:, :-1].float()  # [batch, keep-1, vocab]: predict tokens start+1 .. seq_len-1
    token_logps = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return (token_logps * mask.to(logits.dtype)).sum(dim=-1)  # [batch]


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


def attach_reference_logps(
    model: torch.nn.Module,
    examples: Sequence[dict[str, Any]],
    completions: Mapping[str, str],
    *,
    pad_id: int,
    batch_size: int,
    precision: str,
) -> None:
    """Store ``log ref(y|x)`` in each example, once, before training (``reference=precompute``).

    ``completions`` maps a completion field of the examples to the field its reference log-prob goes
    into, e.g. ``{"chosen_ids": "ref_chosen_logps", "rejected_ids": "ref_rejected_logps"}``; every
    completion is scored after the example's ``prompt_ids`` by :func:`score_completions`.
    """
    sequences = [(f["prompt_ids"], f[key]) for key in completions for f in examples]
    logps = score_completions(model, sequences, pad_id=pad_id, batch_size=batch_size, precision=precision)
    for k, target in enumerate(completions.values()):
        for i, f in enumerate(examples):
            f[target] = logps[k * len(examples) + i]


def load_policy(
    cfg: PreferenceRunConfig, examples: Sequence[dict[str, Any]], completions: Mapping[str, str], pad_id: int
) -> torch.nn.Module:
    """The policy to train (dropout off with ``disable_dropout``); with ``reference=precompute`` the
    reference log-probs of ``examples``' completions (:func:`attach_reference_logps`) are stored first."""
    model, precision = load_trainable_model(cfg, no_dropout=cfg.disable_dropout)
    if cfg.reference == "precompute":
        attach_reference_logps(
            model,
            examples,
            completions,
            pad_id=pad_id,
            batch_size=2 * cfg.train.micro_batch_size,
            precision=precision,
        )
    return model
