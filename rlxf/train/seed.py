"""Seeding and random-number-generator state: what makes a run repeatable and a resume exact.

:func:`seed_everything` seeds every generator a training run draws from (Python's ``random``, NumPy,
torch on the CPU and on every CUDA device). :func:`rng_state` captures all of them at once, and
:func:`set_rng_state` puts them back, so a run resumed from a checkpoint draws the same numbers it
would have drawn had it never stopped (dropout masks, sampled batches, generation).

The captured state is made of plain Python values and tensors only, so it can be stored with
``torch.save`` and read back with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python's ``random``, NumPy and torch (CPU and all CUDA devices) with ``seed``.

    With ``deterministic=True`` torch is also asked to use deterministic kernels only (slower on GPU,
    and an error for operations that have none); on CPU the default kernels already are.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """The state of every random generator :func:`seed_everything` seeds, as tensors and plain values.

    Keys: ``python``, ``numpy``, ``torch`` and ``cuda`` (a list with one state per visible CUDA device,
    empty without CUDA).
    """
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators from a :func:`rng_state` dict.

    CUDA states are restored for as many devices as both the state and this machine have; a run that
    saved on GPU and resumes on CPU keeps its Python, NumPy and torch CPU streams.
    """
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        count = min(len(cuda_states), torch.cuda.device_count())
        for device, cuda_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(cuda_state, device)
