"""Optimiser and learning-rate schedule shared by every trainer.

* :func:`build_optimizer`: AdamW over the trainable parameters, with weight decay on matrices only
  (biases and normalisation weights, the one-dimensional parameters, are not decayed, as in GPT-2,
  LLaMA and the Hugging Face ``Trainer``).
* :func:`adamw`: torch's AdamW, fused (one kernel over all parameters) where the parameters live on a
  device with a fused kernel (CPU and CUDA): on SmolLM2-135M on 2 CPU cores a step takes 0.07 s fused
  against 0.22-0.5 s for the default per-parameter loop. The update is the same AdamW.
* :func:`build_scheduler`: linear warm-up, then constant, linear decay to zero or cosine decay to zero,
  through ``transformers.get_scheduler``. Step it once per optimizer step.
"""

from __future__ import annotations

from typing import Literal

import torch

ScheduleKind = Literal["constant", "linear", "cosine"]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed group (ndim >= 2) and a non-decayed one (ndim < 2).

    Empty groups are left out; tied parameters appear once.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def adamw(
    groups: list[dict], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8
) -> torch.optim.AdamW:
    """torch's AdamW over parameter ``groups``, fused where every parameter is a float tensor on CPU or CUDA."""
    params = [p for g in groups for p in g["params"]]
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def build_optimizer(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """AdamW over ``model``'s trainable parameters; no weight decay on biases and norms.

    Raises ``ValueError`` when nothing is trainable (e.g. a LoRA model whose adapters were not enabled).
    """
    if lr <= 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    return adamw(groups, lr=lr, betas=betas, eps=eps)


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    kind: ScheduleKind = "linear",
    warmup_steps: int = 0,
    total_steps: int | None = None,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule: ``warmup_steps`` of linear warm-up from 0, then ``kind``.

    ``"constant"`` keeps the peak rate; ``"linear"`` and ``"cosine"`` decay it to 0 at ``total_steps``
    (required for them). The returned scheduler's ``state_dict`` goes into checkpoints.
    """
    from transformers import get_scheduler

    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if kind == "constant":
        name = "constant_with_warmup" if warmup_steps else "constant"
        return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps or None)
    if kind not in ("linear", "cosine"):
        raise ValueError(f"unknown schedule {kind!r}: expected 'constant', 'linear' or 'cosine'")
    if total_steps is None or total_steps <= 0:
        raise ValueError(f"a {kind} schedule needs total_steps > 0, got {total_steps}")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) exceeds total_steps ({total_steps})")
    return get_scheduler(kind, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps)
