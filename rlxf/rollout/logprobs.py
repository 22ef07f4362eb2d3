"""Per-token log-probs of sampled completions under a model (a forward pass over prompt + completion).

A :class:`~rlxf.rollout.engine.RolloutBatch` row is a left-padded prompt of width ``P`` followed by a
right-padded completion of width ``C``. Token ``P + t`` is predicted by the logits at position
``P + t - 1``, so only the last ``C + 1`` positions go through the output head (``logits_to_keep``; the
last of them, after the final token, is dropped): on a 49k-token vocabulary the head is a large share of a
small model's forward pass, and the prompt positions' logits are never needed. Where the model's head
is a plain linear layer it runs chunk by chunk on the last hidden states (``rlxf/models/lm_head.py``):
the batch's full-vocabulary logits are never held.

Logits are divided by the sampling temperature: the distribution a completion was drawn from is
``softmax(logits / T)``, and that is the policy a trainer optimises and an evaluation compares.

Used by the RL trainer (with gradients, :func:`completion_forward`) and by evaluation (no gradients,
micro-batch by micro-batch, :func:`batch_logprobs`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from rlxf.models.attention import cpu_attention_for
from rlxf.models.lm_head import fusable_head, hidden_states_before_head, token_logprobs
from rlxf.rollout.engine import RolloutBatch


def position_ids_of(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token (left padding), as ``generate`` numbers them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # [B, L]


def completion_forward(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    temperature: float = 1.0,
    *,
    with_entropy: bool = False,
    output_hidden_states: bool = False,
    fused_head: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None, Any]:
    """Log-probs of the completion tokens ``input_ids[:, prompt_width:]`` under ``model``.

    Returns ``(logprobs [B, C] float32, entropy [B, C] float32 without gradient or None, the model's
    output)``; gradients flow when the caller has them enabled. Where the output head is a plain linear
    layer (:func:`~rlxf.models.lm_head.fusable_head`) the head runs chunk by chunk on the last hidden
    states (:func:`~rlxf.models.lm_head.token_logprobs`), and ``output.logits`` holds those states, not
    logits; otherwise (or with ``fused_head=False``) the model's own head gives the logits.
    """
    completion_width = input_ids.shape[1] - prompt_width
    targets = input_ids[:, prompt_width:]  # [B, C]
    kwargs = dict(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_of(attention_mask),
        logits_to_keep=completion_width + 1,
        output_hidden_states=output_hidden_states,
        use_cache=False,
    )
    head = fusable_head(model) if fused_head else None
    if head is not None:
        with hidden_states_before_head(head), cpu_attention_for(model, input_ids.shape[1]):
            out = model(**kwargs)
        hidden = out.logits[:, :-1]  # [B, C, H]: the states that predict tokens P .. P+C-1
        # the softmax is kept for the backward (bf16: half the float32 logits) when gradients flow
        logprobs, entropy = token_logprobs(
            hidden, head.weight, targets, temperature, with_entropy=with_entropy, keep_probs=True
        )
        return logprobs, entropy, out
    with cpu_attention_for(model, input_ids.shape[1]):
        out = model(**kwargs)
    logits = out.logits[:, :-1].float() / temperature  # [B, C, V]: predict tokens P .. P+C-1
    # log softmax(z)_y = z_y - logsumexp(z): one gather, no [B, C, V] log-softmax tensor kept.
    logprobs = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    entropy = None
    if with_entropy:
        with torch.no_grad():
            log_p = torch.log_softmax(logits, dim=-1)  # [B, C, V]
            entropy = -(log_p.exp() * log_p).sum(-1)  # [B, C]: H = -sum_v p_v log p_v
    return logprobs, entropy, out


@torch.no_grad()
def batch_logprobs(
    model: torch.nn.Module,
    batch: RolloutBatch,
    temperature: float = 1.0,
    micro_batch_size: int = 16,
    autocast: contextlib.AbstractContextManager | None = None,
) -> torch.Tensor:
    """``[B, C]`` log-probs of ``batch``'s completions under ``model`` (0 on padding), ``micro_batch_size``
    rows per forward pass so full-vocabulary logits are held for those rows only. ``autocast``: a context
    (e.g. ``torch.autocast("cpu", dtype=torch.bfloat16)``) entered around the passes."""
    input_ids, attention_mask = batch.input_ids, batch.attention_mask
    width = batch.prompt_ids.shape[1]
    parts = []
    with autocast if autocast is not None else contextlib.nullcontext():
        for start in range(0, len(batch), micro_batch_size):
            rows = slice(start, start + micro_batch_size)
            logprobs, _, _ = completion_forward(
                model, input_ids[rows], attention_mask[rows], width, temperature
            )
            parts.append(logprobs)
    return torch.cat(parts) * batch.policy_mask  # [B, C]: 0 on padding (and on observation tokens)


__all__ = ["batch_logprobs", "completion_forward", "position_ids_of"]
