"""Optimiser groups and learning-rate schedules."""

from __future__ import annotations

import pytest
import torch

from rlxf.train.optim import build_optimizer, build_scheduler


def toy_model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))


def test_no_weight_decay_on_biases_and_norms():
    model = toy_model()
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]  # the frozen embedding is left out
    assert len(no_decay["params"]) == 3  # linear bias, norm weight and bias
    assert decay["betas"] == (0.9, 0.95)


def test_nothing_trainable_is_an_error():
    model = toy_model().requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable"):
        build_optimizer(model, lr=1e-3)


def lrs(scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def test_schedules():
    def fresh():
        return build_optimizer(toy_model(), lr=1.0)

    assert lrs(build_scheduler(fresh(), "linear", 2, 6), 6) == pytest.approx([0, 0.5, 1, 0.75, 0.5, 0.25])
    cosine = lrs(build_scheduler(fresh(), "cosine", 1, 5), 5)
    assert cosine == pytest.approx([0, 1, 0.853553, 0.5, 0.146447], abs=1e-5)
    assert lrs(build_scheduler(fresh(), "constant", 2), 4) == pytest.approx([0, 0.5, 1, 1])
    assert lrs(build_scheduler(fresh(), "constant"), 2) == [1, 1]
    with pytest.raises(ValueError, match="total_steps"):
        build_scheduler(fresh(), "cosine", 0, None)
    with pytest.raises(ValueError, match="exceeds"):
        build_scheduler(fresh(), "linear", 10, 5)
    with pytest.raises(ValueError, match="unknown schedule"):
        build_scheduler(fresh(), "step", 0, 5)
