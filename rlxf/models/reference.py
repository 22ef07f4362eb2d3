"""The reference policy of KL-regularised learners (DPO, KTO, online RL).

With LoRA the reference is the policy with its adapters switched off: no second copy of the weights.
Without LoRA it is either a frozen copy of the starting weights (online RL, where the policy moves every
step) or, for learners that precompute reference log-probs before the first update, the model itself.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def reference_model(
    model: torch.nn.Module, frozen: torch.nn.Module | None = None
) -> Iterator[torch.nn.Module]:
    """The reference network: ``frozen`` when given; else ``model`` with its LoRA adapters switched off
    (``model`` itself when it has none). A DDP wrapper is unwrapped: a reference pass syncs no gradient."""
    if frozen is not None:
        yield frozen
        return
    model = getattr(model, "module", model)
    if hasattr(model, "disable_adapter"):  # a peft model
        with model.disable_adapter():
            yield model
    else:
        yield model
