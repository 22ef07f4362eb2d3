"""Which attention kernel a forward pass on the CPU uses: eager for short rows, SDPA for long ones.

transformers' eager attention (matmul, softmax, matmul) beats its SDPA kernel on the CPU for short rows
and loses badly for long ones. Measured on SmolLM2-135M under bf16 autocast on 2 cores, forward +
backward (docs/performance.md):

    rows x tokens    SDPA      eager
    16 x 40          2.11 s    1.68 s
    8 x 256          6.09 s    5.69 s
    2 x 1024         7.55 s    19.16 s

So the training and scoring passes (policy and reference log-probs, DPO / KTO / SFT losses, reward
models) switch a model that runs SDPA on the CPU to eager attention while its rows are at most
:data:`EAGER_ATTENTION_MAX_TOKENS` wide. Generation keeps SDPA (eager was slower there), and a model
on a GPU or loaded with another kernel is left alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from accelerate.utils import extract_model_from_parallel

# The widest rows that still attend eagerly (between 256, where eager still won, and 1024, where it lost).
EAGER_ATTENTION_MAX_TOKENS = 256


@contextlib.contextmanager
def cpu_attention_for(model: torch.nn.Module, width: int) -> Iterator[None]:
    """Within the block, ``model`` attends with eager attention when it runs on the CPU with SDPA and the
    rows are at most :data:`EAGER_ATTENTION_MAX_TOKENS` wide; otherwise nothing changes."""
    base = extract_model_from_parallel(model)  # DDP's or DeepSpeed's wrapper off
    config = base.config
    switch = (
        width <= EAGER_ATTENTION_MAX_TOKENS
        and config._attn_implementation == "sdpa"
        and next(base.parameters()).device.type == "cpu"
    )
    if not switch:
        yield
        return
    base.set_attn_implementation("eager")
    try:
        yield
    finally:
        base.set_attn_implementation("sdpa")


__all__ = ["EAGER_ATTENTION_MAX_TOKENS", "cpu_attention_for"]
