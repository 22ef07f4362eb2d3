"""Advantage estimators of online RL for language models, as pure tensor functions.

A completion is an episode: the state is the prompt plus the tokens so far, the action is the next token.
Batches are right-padded: ``completion_mask`` ``[B, T]`` (float or bool, 1 = real completion token) is
1 on a prefix of each row and 0 after it. Every function returns 0 at padded positions.

* **Masked statistics** (:func:`masked_mean`, :func:`masked_var`, :func:`masked_whiten`): moments over
  real tokens only, the building blocks of every normalisation below.
* **GAE** (Schulman et al. 2016, "High-Dimensional Continuous Control Using Generalized Advantage
  Estimation", eq. 16), for PPO with a value model::

      delta_t = r_t + gamma * V(s_{t+1}) - V(s_t),     V(s_{T_i}) = 0 after the last real token
      A_t     = sum_{l>=0} (gamma * lam)^l * delta_{t+l}
      R_t     = A_t + V(s_t)                            (the value target, "returns")

* **Group-relative advantages** (GRPO; Shao et al. 2024, "DeepSeekMath", section 4.1.2, outcome
  supervision): each prompt is sampled ``G`` times and a sample's advantage is its reward relative to
  its group, ``A_i = (r_i - mean(r)) / (std(r) + eps)``, the same for all of its tokens. Without the
  division by the std it is Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
  Perspective", section 3.1).
* **RLOO** (Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for Free!"; Ahmadian et al. 2024,
  "Back to Basics: Revisiting REINFORCE Style Optimization for Learning from Human Feedback in LLMs",
  eq. 6): the leave-one-out baseline ``A_i = r_i - 1/(G-1) * sum_{j != i} r_j``.
* **REINFORCE++** (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language
  Models", section 3): per-token discounted returns ``G_t = sum_{s>=t} gamma^{s-t} r_s`` of the shaped
  token rewards, whitened over all real tokens of the batch.
* **Reward shaping** (Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", eq. 2;
  Stiennon et al. 2020, "Learning to summarize from human feedback", eq. 1): the token reward is
  ``-beta * KL_t`` at every real token plus the sequence reward at the last real token, so that the
  undiscounted return of the first token is ``R(x, y) - beta * sum_t KL_t``.

Tensor conventions: ``[B]`` one value per completion, ``[B, T]`` one per completion token. Samples of a
prompt are contiguous: rows ``k*G .. k*G+G-1`` belong to prompt ``k``.

* **Multi-turn episodes** (:func:`pack_actions`, :func:`unpack_actions`): in an environment episode the
  completion interleaves the policy's actions with observation tokens, so its action mask has holes. The
  token-level estimators (GAE, REINFORCE++'s returns) run on the actions packed to the left of each row:
  the state after a turn's last action is the one before the next turn's first action (the observation
  is part of the transition), and the discount counts actions, not observation tokens.

Left out: left-padded masks; process
(per-step) rewards for GRPO; value bootstrapping of truncated completions (a completion cut at the length
limit is treated as terminal, as in TRL and OpenRLHF); GAE with separate ``lam`` for actor and critic;
REINFORCE++'s baseline variant (group mean subtracted before whitening).
"""

from __future__ import annotations

import torch

__all__ = [
    "discounted_returns",
    "gae_advantages",
    "group_advantages",
    "last_token_index",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "reinforce_pp_advantages",
    "rloo_advantages",
    "token_level_rewards",
]


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``, and 0 where the denominator is 0 (an empty mask), with no NaN in
    the forward pass or the gradient."""
    nonzero = denominator != 0
    return torch.where(nonzero, numerator / torch.where(nonzero, denominator, 1), 0)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the positions where ``mask`` is non-zero: ``sum(x * m) / sum(m)``.

    ``mask`` (bool or float, broadcastable to ``x``) weights each position. With ``dim`` the mean is taken
    along that dimension only (``dim=-1`` of a ``[B, T]`` tensor: one mean per sequence). An empty mask
    gives 0 rather than NaN, so an empty completion does not poison a batch.
    """
    weights = mask.to(x.dtype)
    # Padded positions may hold anything (even NaN): select instead of multiplying by 0.
    weighted = torch.where(weights != 0, x * weights, 0)
    if dim is None:
        return _safe_divide(weighted.sum(), weights.sum())
    return _safe_divide(weighted.sum(dim=dim), weights.sum(dim=dim))


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all positions where ``mask`` is non-zero (a scalar).

    ``var = mean_m((x - mean_m(x))^2)``, times ``n / (n - 1)`` with ``n = sum(mask)`` when ``unbiased``
    (Bessel's correction, as TRL's and OpenRLHF's ``masked_var``). With ``n <= 1`` the correction is
    undefined and skipped (the variance of one value is then 0).
    """
    mean = masked_mean(x, mask)
    variance = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        count = mask.to(x.dtype).sum()
        # Bessel's correction n / (n - 1); skipped when n <= 1, where it would divide by zero.
        correction = torch.where(count > 1, count / torch.where(count > 1, count - 1, 1), 1)
        variance = variance * correction
    return variance


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise ``x`` to zero mean and unit variance over the real positions of the whole tensor.

    ``(x - mean_m(x)) / sqrt(var_m(x) + eps)`` (unbiased variance); with ``shift_mean=False`` the mean is
    added back, so only the scale changes (TRL's ``whiten(..., shift_mean=False)``, used for rewards).
    Padded positions are set to 0.
    """
    mean = masked_mean(x, mask)  # scalar: one mean over every real position of the batch
    variance = masked_var(x, mask)  # scalar: unbiased, as TRL / OpenRLHF
    whitened = (x - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask != 0, whitened, 0)


def pack_actions(x: torch.Tensor, action_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's action positions moved to the left, in order: ``([B, A] values, [B, A] mask)``, where
    ``A`` is the most actions of any row; padding 0. :func:`unpack_actions` puts them back."""
    order = torch.sort((action_mask == 0).to(torch.int8), dim=1, stable=True).indices  # actions first
    width = int((action_mask != 0).sum(-1).max()) if action_mask.numel() else 0
    order = order[:, :width]  # [B, A]
    packed_mask = action_mask.gather(1, order)  # [B, A]
    return torch.where(packed_mask != 0, x.gather(1, order), 0), packed_mask


def unpack_actions(packed: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`pack_actions`: ``[B, A]`` values back at the action positions of ``[B, T]``,
    0 elsewhere."""
    order = torch.sort((action_mask == 0).to(torch.int8), dim=1, stable=True).indices[:, : packed.shape[1]]
    packed_mask = action_mask.gather(1, order)  # [B, A]
    out = torch.zeros(action_mask.shape, dtype=packed.dtype, device=packed.device)  # [B, T]
    return out.scatter(1, order, torch.where(packed_mask != 0, packed, 0))


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row of ``mask`` ``[B, T]``: ``[B]`` (long).

    The largest ``t`` with ``mask[b, t] != 0``; 0 for a row with no real token (check the mask's row
    sums where an empty completion matters).
    """
    positions = torch.arange(mask.shape[-1], device=mask.device)  # [T]
    return torch.where(mask != 0, positions, 0).amax(dim=-1)  # [B]


def token_level_rewards(
    sequence_rewards: torch.Tensor,
    kl: torch.Tensor | None,
    kl_coef: float,
    mask: torch.Tensor,
) -> torch.Tensor:
    """Shaped per-token rewards: ``r_t = -kl_coef * KL_t`` at each real token, plus the sequence reward at
    the last real token (Ziegler et al. 2019, eq. 2; Stiennon et al. 2020, eq. 1; TRL's and OpenRLHF's
    reward shaping).

    Args:
        sequence_rewards: ``[B]`` the reward of each completion (from the reward source).
        kl: ``[B, T]`` per-token KL estimates between policy and reference (:mod:`rlxf.algos.kl`), or
            ``None`` for no KL penalty in the reward (GRPO puts it in the loss instead).
        kl_coef: ``beta``, the weight of the KL penalty.
        mask: ``[B, T]`` completion mask.

    Returns:
        ``[B, T]`` token rewards, 0 at padded positions. A completion with no real token gets nothing.
    """
    real = mask != 0  # [B, T]
    dtype = sequence_rewards.dtype if sequence_rewards.is_floating_point() else torch.float32
    if kl is None:
        rewards = torch.zeros(mask.shape, dtype=dtype, device=mask.device)  # [B, T]
    else:
        rewards = torch.where(real, -kl_coef * kl.to(dtype), 0)  # [B, T]: -beta * KL_t
    last = last_token_index(mask)  # [B]
    has_token = real.any(dim=-1)  # [B]: an empty completion has no token to carry its reward
    bonus = torch.where(has_token, sequence_rewards.to(dtype), 0)  # [B]
    # r_{last} += R(x, y): the outcome reward arrives with the final action.
    return rewards.scatter_add(1, last.unsqueeze(-1), bonus.unsqueeze(-1))


def gae_advantages(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16).

    ::

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)
        A_t     = sum_{l >= 0} (gamma * lam)^l * delta_{t+l}  =  delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V(s_t)

    computed backwards with the recursion. The episode ends at the last real token: the value after it
    is 0 (terminal) and so is every ``A`` after it, which is what makes right-padded completions of
    different lengths come out right in one batched pass.

    Args:
        rewards: ``[B, T]`` token rewards (:func:`token_level_rewards`).
        values: ``[B, T]`` value estimates ``V(s_t)`` of the state before each completion token.
        mask: ``[B, T]`` completion mask, right-padded.
        gamma: discount ``gamma``.
        lam: GAE ``lambda`` (1: Monte-Carlo return minus value; 0: one-step TD error).

    Returns:
        ``(advantages, returns)``, both ``[B, T]`` and 0 at padded positions. Not whitened: PPO whitens
        advantages over the batch (:func:`masked_whiten`) where the trainer says so.
    """
    real = mask != 0  # [B, T]
    # Zero the padding, so V(s_{t+1}) = 0 after the last real token (terminal) and r = 0 there.
    values = torch.where(real, values, 0)  # [B, T]
    rewards = torch.where(real, rewards, 0)  # [B, T]
    batch, length = values.shape
    if length == 0:
        return values.clone(), values.clone()
    reversed_advantages: list[torch.Tensor] = []  # A_{T-1}, A_{T-2}, ..., A_0, each [B]
    running = torch.zeros(batch, dtype=values.dtype, device=values.device)  # [B]: A_{t+1}, 0 past the end
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t + 1 < length else torch.zeros_like(running)  # [B]: V(s_{t+1})
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # delta_t = r_t + gamma V' - V
        running = delta + gamma * lam * running  # A_t = delta_t + gamma lam A_{t+1}
        reversed_advantages.append(running)
    advantages = torch.stack(reversed_advantages[::-1], dim=1)  # [B, T]
    advantages = torch.where(real, advantages, 0)  # [B, T]
    returns = advantages + values  # [B, T]: R_t = A_t + V(s_t), the value model's target
    return advantages, returns


def discounted_returns(token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """Per-token discounted return ``G_t = sum_{s >= t} gamma^{s-t} r_s = r_t + gamma * G_{t+1}``.

    ``token_rewards`` and ``mask`` are ``[B, T]``; the sum runs to the last real token (padding counts 0).
    Returns ``[B, T]``, 0 at padded positions.
    """
    real = mask != 0  # [B, T]
    rewards = torch.where(real, token_rewards, 0)  # [B, T]
    if rewards.shape[1] == 0:
        return rewards
    reversed_returns: list[torch.Tensor] = []  # G_{T-1}, ..., G_0, each [B]
    running = torch.zeros_like(rewards[:, 0])  # [B]: G_{t+1}, 0 past the end
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running  # G_t = r_t + gamma G_{t+1}
        reversed_returns.append(running)
    returns = torch.stack(reversed_returns[::-1], dim=1)  # [B, T]
    return torch.where(real, returns, 0)


def reinforce_pp_advantages(
    token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """REINFORCE++ advantages (Hu 2025, section 3): discounted returns, whitened over the batch.

    ::

        G_t = sum_{s >= t} gamma^{s-t} r_s            r_t = -beta * KL_t (+ R(x, y) at the last token)
        A_t = (G_t - mean(G)) / sqrt(var(G) + eps)    mean and var over every real token of the batch

    No value model and no per-prompt group: the baseline is the batch's mean return, and whitening over
    the whole batch (global normalisation) keeps the advantage scale fixed from step to step.

    Args:
        token_rewards: ``[B, T]`` shaped rewards (:func:`token_level_rewards`).
        mask: ``[B, T]`` completion mask.
        gamma: discount (1.0 in the paper).

    Returns:
        ``[B, T]`` advantages, 0 at padded positions.
    """
    returns = discounted_returns(token_rewards, mask, gamma)  # [B, T]
    # Normaliser: per batch, over all real tokens (not per sequence, not per group), as in the paper.
    return masked_whiten(returns, mask)  # [B, T]


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[B]`` rewards as ``[B / G, G]``: one row per prompt (samples of a prompt are contiguous)."""
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be one value per completion, shape [B]; got {tuple(rewards.shape)}")
    if group_size < 1 or rewards.numel() % group_size != 0:
        raise ValueError(
            f"group_size must be a positive divisor of the batch size; got {group_size} for {rewards.numel()}"
        )
    return rewards.view(-1, group_size)


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale_by_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """GRPO's group-relative advantage (Shao et al. 2024, section 4.1.2, outcome supervision)::

        A_i = (r_i - mean_group(r)) / (std_group(r) + eps)

    and with ``scale_by_std=False`` Dr. GRPO's ``A_i = r_i - mean_group(r)`` (Liu et al. 2025, section
    3.1: dividing by the std up-weights prompts whose samples nearly agree, too easy or too hard).

    The std is the **sample** std (Bessel's correction, ``1 / (G - 1)``): the paper does not say which,
    and TRL, OpenRLHF and verl all use ``torch.std``'s default, so rlxf gives the numbers they give. Each
    group's advantages sum to zero either way. With ``G = 1`` every advantage is 0.

    Args:
        rewards: ``[B]`` sequence rewards; rows ``k*G .. k*G+G-1`` are the samples of prompt ``k``.
        group_size: ``G``, samples per prompt.
        scale_by_std: divide by the group's std (GRPO) or not (Dr. GRPO).
        eps: added to the std, so a group of equal rewards gets advantages 0, not NaN.

    Returns:
        ``[B]`` one advantage per completion (the trainer broadcasts it over the completion's tokens).
    """
    grouped = _grouped(rewards, group_size)  # [B / G, G]
    mean = grouped.mean(dim=1, keepdim=True)  # [B / G, 1]: per group (per prompt)
    advantages = grouped - mean  # [B / G, G]
    if scale_by_std and group_size > 1:
        std = grouped.std(dim=1, keepdim=True)  # [B / G, 1]: per group, sample std (1 / (G - 1))
        advantages = advantages / (std + eps)
    return advantages.reshape(-1)  # [B]


def rloo_advantages(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE leave-one-out (Kool et al. 2019; Ahmadian et al. 2024, eq. 6)::

        A_i = r_i - 1/(G-1) * sum_{j != i} r_j  =  G/(G-1) * (r_i - mean_group(r))

    The baseline of a sample is the mean of the *other* samples of its prompt, so it does not depend on
    the sample itself and the policy gradient stays unbiased. Each group's advantages sum to zero.

    Args:
        rewards: ``[B]`` sequence rewards, ``G`` contiguous samples per prompt.
        group_size: ``G >= 2``.

    Returns:
        ``[B]`` one advantage per completion.
    """
    if group_size < 2:
        raise ValueError(f"RLOO needs at least 2 samples per prompt (group_size >= 2); got {group_size}")
    grouped = _grouped(rewards, group_size)  # [B / G, G]
    others_sum = grouped.sum(dim=1, keepdim=True) - grouped  # [B / G, G]: sum_{j != i} r_j
    baseline = others_sum / (group_size - 1)  # per sample: mean over the G - 1 other samples
    return (grouped - baseline).reshape(-1)  # [B]
