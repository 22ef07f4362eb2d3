"""Reward shaping for online RL: what the trainer does to a batch's rewards before computing advantages.

Four steps, in this order (:func:`shape_rewards`):

1. a penalty for completions cut off at the token limit (``length_penalty``, in the raw reward's units);
2. a transform (``transform``): ``logsigmoid``, ``u = log sigmoid(r - r_ref)`` (Wang et al. 2024,
   "Transforming and Combining Rewards for Alignment of Large Language Models", eq. 3), for a
   Bradley-Terry reward model: ``sigmoid(r - r_ref)`` is the probability that the completion is preferred
   to one scoring ``r_ref``, and its log rewards lifting a poor completion far more than polishing one
   that is already clearly better than the reference (the gradient ``1 - sigmoid(r - r_ref)`` fades
   there). That is where a learned reward is least trustworthy, so the policy stops pushing it there
   (less reward hacking at the same KL coefficient, as the paper reports). ``r_ref`` is ``center``, or,
   unset, the mean reward of the first step's batch (the starting policy's), kept for the whole run.
   Wang et al. take ``r_ref`` per prompt from the reference policy's samples; one value for every prompt
   is what this leaves out, saving the reference samples. ``indicator``, ``u = 1[r > r_ref]``: a graded
   score becomes a success reward ("is it positive?", "does it pass?"). With group advantages (GRPO,
   RLOO) a group whose samples all succeed has no spread and no advantage: the reward pays for getting
   past the threshold, not for scoring ever higher, and the KL-regularised optimum is the reference
   policy conditioned on success (Korbak et al. 2022, "RL with KL penalties is better viewed as Bayesian
   inference"), not the scorer's extreme. (On the way there a policy may still over-shoot, as insurance
   against a sampled failure: measured in ``examples/sentiment-grpo.yaml``.) ``r_ref`` is a threshold
   here: give ``center``;
3. normalisation: per batch, ``(r - mean_batch) / std_batch``, or running, with the mean and std of every
   reward seen so far (:class:`RunningMoments`, Chan et al. 1979's parallel merge, saved with checkpoints);
4. clipping to ``[-clip, clip]``.

This is RL trainer logic (it depends on the batch and on the run's history), so it lives beside the RL
trainer rather than with the reward sources of :mod:`rlxf.feedback`, which score one completion at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from rlxf.config import option

NORMALIZE_EPS = 1e-8  # keeps a constant batch (std 0) finite: it normalises to zeros


@dataclass
class RewardShapingConfig:
    """What the trainer does to a batch's rewards before computing advantages (:func:`shape_rewards`)."""

    normalize: Literal["none", "batch", "running"] = option(
        "none",
        help="none; batch: (r - mean) / std over the batch; running: with a mean and std over all batches so far",
    )
    clip: float | None = option(
        None, help="clip the (normalised) reward to [-clip, clip]; unset: no clipping"
    )
    length_penalty: float = option(
        0.0, help="subtracted from the reward of a completion cut off at the token limit (no EOS or stop)"
    )
    transform: Literal["none", "logsigmoid", "indicator"] = option(
        "none",
        help="logsigmoid: log sigmoid(r - center), diminishing returns above the reference reward (Wang et "
        "al. 2024), for a Bradley-Terry reward model's scores; indicator: 1 if r > center else 0, a "
        "success reward (positive share first, no push past the threshold); none: the reward as it is",
    )
    center: float | None = option(
        None,
        help="the reference reward r_ref of the transform (indicator: the threshold, required); unset "
        "with logsigmoid: the first step's mean reward",
    )

    def __post_init__(self) -> None:
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be > 0 (or unset), got {self.clip}")
        if not math.isfinite(self.length_penalty):
            raise ValueError(f"length_penalty must be a finite number, got {self.length_penalty}")
        if self.center is not None and not math.isfinite(self.center):
            raise ValueError(f"center must be a finite number (or unset), got {self.center}")
        if self.center is not None and self.transform == "none":
            raise ValueError("center is the reference reward of shaping.transform: set transform too")
        if self.transform == "indicator" and self.center is None:
            raise ValueError("transform=indicator needs its threshold: set shaping.center (e.g. 0.05)")


class RunningMoments:
    """Count, mean and sum of squared deviations of every value seen, merged batch by batch (Chan et al.
    1979), in float64: the same mean and (unbiased) std as one pass over all the values, with no drift
    from a long run's many small updates. :meth:`state_dict` is saved with a checkpoint, so a resumed run
    normalises exactly as the uninterrupted one would."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean

    def update(self, values: torch.Tensor) -> None:
        values = values.detach().double().flatten().cpu()
        n = values.numel()
        if n == 0:
            return
        batch_mean = values.mean().item()
        batch_m2 = (values - batch_mean).square().sum().item()
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta**2 * self.count * n / total
        self.count = total

    @property
    def std(self) -> float:
        """Unbiased standard deviation of the values seen (0 before two values)."""
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: Mapping[str, float]) -> None:
        self.count = int(state["count"])
        self.mean = float(state["mean"])
        self.m2 = float(state["m2"])


def logsigmoid_reward(rewards: torch.Tensor, center: float) -> torch.Tensor:
    """``log sigmoid(r - r_ref)`` (Wang et al. 2024, eq. 3), elementwise: ``[N] -> [N]``, at most 0.

    ``sigmoid(r - r_ref)`` is the Bradley-Terry probability of being preferred to a completion that scores
    ``r_ref``; the log is about ``r - r_ref`` far below the reference and flattens to 0 far above it."""
    return torch.nn.functional.logsigmoid(rewards - center)


def indicator_reward(rewards: torch.Tensor, threshold: float) -> torch.Tensor:
    """``1[r > threshold]`` elementwise, as the rewards' dtype: ``[N] -> [N]`` of 0s and 1s (a tie fails)."""
    return (rewards > threshold).to(rewards.dtype)


def shape_rewards(
    rewards: torch.Tensor,
    finish_reasons: Sequence[str],
    cfg: RewardShapingConfig,
    stats: RunningMoments | None = None,
    center: float | None = None,
) -> torch.Tensor:
    """Shaped rewards ``[N]``: length penalty, transform, normalisation, clipping (each as ``cfg`` asks).

    ``finish_reasons[i]`` is the rollout's (``"eos"``, ``"stop"`` or ``"length"``). ``stats`` is the
    running mean and std, needed (and updated with this batch) when ``cfg.normalize == "running"``.
    ``center`` is the reference reward of the transform (the caller's: ``cfg.center``, or with
    ``logsigmoid`` the first step's mean reward, which it keeps).
    """
    if rewards.dim() != 1 or len(finish_reasons) != rewards.shape[0]:
        raise ValueError(
            f"rewards {tuple(rewards.shape)} and {len(finish_reasons)} finish reasons do not match"
        )
    if cfg.normalize == "running" and stats is None:
        raise ValueError("normalize=running needs the RunningMoments to update (stats)")
    if cfg.transform != "none" and center is None:
        raise ValueError(f"transform={cfg.transform} needs the reference reward (center)")
    out = rewards.double()
    # 1. A completion that hit the token limit was cut off mid-text; penalising it (in the raw reward's
    #    units, before normalising) teaches the policy to finish within the budget rather than be rewarded
    #    for a fragment that happened to score well.
    if cfg.length_penalty:
        truncated = torch.tensor([reason == "length" for reason in finish_reasons], device=out.device)
        out = out - cfg.length_penalty * truncated
    # 2. The transform, on the raw scale (where r - r_ref is a Bradley-Terry log-odds; module docstring).
    if cfg.transform == "logsigmoid":
        out = logsigmoid_reward(out, center)
    elif cfg.transform == "indicator":
        out = indicator_reward(out, center)
    # 3. Normalising puts rewards of any source on one scale, so the learning rate and KL coefficient
    #    mean the same thing whatever the scorer. Batch: each batch is whitened on its own (a batch of
    #    one has no spread and becomes 0). Running: the statistics of all batches so far (this one
    #    included, so the first batch is not divided by an empty history) keep the scale steady from step
    #    to step while still following a reward that drifts as the policy improves.
    if cfg.normalize == "batch":
        std = out.std() if out.numel() > 1 else out.new_zeros(())
        out = (out - out.mean()) / (std + NORMALIZE_EPS)
    elif cfg.normalize == "running":
        stats.update(out)
        out = (out - stats.mean) / (stats.std + NORMALIZE_EPS)
    # 4. Clipping last bounds what the learner sees: one outlier (a reward-model spike on an odd
    #    completion) cannot dominate the batch's gradient.
    if cfg.clip is not None:
        out = out.clamp(-cfg.clip, cfg.clip)
    return out.to(rewards.dtype)
