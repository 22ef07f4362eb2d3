"""The losses of online RL for language models, as pure tensor functions: PPO's clipped surrogate, the
clipped value loss, how per-token losses become one number, and the diagnostics logged beside them.

* **Clipped surrogate** (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", eq. 7), with
  ``rho_t = pi_theta(y_t | s_t) / pi_old(y_t | s_t) = exp(log p - log p_old)``::

      L_t = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t)

  ``eps_high > eps_low`` is DAPO's "clip-higher" (Yu et al. 2025, "DAPO: An Open-Source LLM
  Reinforcement Learning System at Scale", section 3.1), which leaves low-probability tokens more room
  to grow. The same loss serves PPO, GRPO, RLOO and REINFORCE++; only the advantages differ
  (:mod:`rlxf.algos.advantages`).
* **Clipped value loss** (the PPO2 code of OpenAI baselines; studied by Andrychowicz et al. 2021, "What
  Matters In On-Policy Reinforcement Learning?", section 3.5)::

      L^V_t = 1/2 * max((V_t - R_t)^2, (clip(V_t, V_old_t - eps, V_old_t + eps) - R_t)^2)

* **Aggregation** of a per-token loss ``[B, T]`` into a scalar (:data:`LossAggregation`), the choice
  that distinguishes GRPO from Dr. GRPO and DAPO::

      token-mean               sum_{i,t} L_it / sum_i |y_i|                  (DAPO, REINFORCE++)
      seq-mean-token-mean      1/B sum_i (1/|y_i| sum_t L_it)                (GRPO, Shao et al. 2024 eq. 3)
      seq-mean-token-sum-norm  1/B sum_i (1/N_max sum_t L_it)                (Dr. GRPO, Liu et al. 2025)

  :func:`aggregate_sum` splits each into a numerator and a count of units (:func:`aggregate_units`), for
  gradient accumulation.
* **Diagnostics**: :func:`explained_variance` of the value model, entropy of the policy from its logits
  (:func:`entropy_from_logits`, :func:`masked_entropy_from_logits`).

Shapes: ``[B, T]`` per completion token, ``completion_mask`` ``[B, T]`` (float or bool, 1 = real token).
Per-token outputs are 0 at padded positions.

Left out: dual-clip PPO (Ye et al. 2020), the KL-in-loss term (add ``beta * kl`` to the per-token loss
before aggregating; :mod:`rlxf.algos.kl`), entropy bonus weighting, GSPO's sequence-level ratio,
truncated importance sampling for off-policy rollout engines, and value-function whitening.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch
import torch.nn.functional as F

from rlxf.algos.advantages import masked_mean, masked_var

__all__ = [
    "LOG_RATIO_LIMIT",
    "LossAggregation",
    "aggregate",
    "aggregate_sum",
    "aggregate_units",
    "clipped_policy_loss",
    "clipped_value_loss",
    "entropy_from_logits",
    "explained_variance",
    "masked_entropy_from_logits",
]

LossAggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]

# |log rho| is clamped here before exp: exp(20) ~ 4.9e8 is finite in float32, while a stale sample whose
# log-prob moved by more than ~88 nats would give rho = inf and NaN gradients for the whole step. Inside
# any sane trust region (|log rho| << 1) the clamp never acts. verl uses the same limit.
LOG_RATIO_LIMIT = 20.0


def _check_mode(mode: str, norm_length: int | None) -> None:
    if mode not in get_args(LossAggregation):
        raise ValueError(
            f"unknown loss aggregation {mode!r}; expected one of {', '.join(get_args(LossAggregation))}"
        )
    if mode == "seq-mean-token-sum-norm" and (norm_length is None or norm_length <= 0):
        raise ValueError(
            "seq-mean-token-sum-norm divides each sequence's summed loss by a constant: give norm_length "
            f"(the maximum number of new tokens) > 0; got {norm_length}"
        )


def aggregate(
    loss: torch.Tensor, mask: torch.Tensor, mode: LossAggregation, norm_length: int | None = None
) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` to a scalar over the real tokens of ``mask`` ``[B, T]``.

    * ``"token-mean"``: ``sum_{i,t} m_it L_it / sum_{i,t} m_it``, every real token of the batch weighs
      the same, so long completions weigh more (DAPO section 3.3; REINFORCE++; TRL's ``"dapo"``).
    * ``"seq-mean-token-mean"``: the mean over each sequence's tokens, then the mean over sequences; every
      completion weighs the same, so a token of a short one weighs more (the original GRPO, eq. 3). A row
      with no real token contributes 0 and still counts as a sequence.
    * ``"seq-mean-token-sum-norm"``: each sequence's summed loss divided by the constant ``norm_length``
      (the maximum number of new tokens), then the mean over sequences (Dr. GRPO, Liu et al. 2025,
      section 3.1: no length bias from the ``1/|y_i|`` factor).
    """
    _check_mode(mode, norm_length)
    if mode == "token-mean":
        # Normaliser: per token, over all real tokens of the batch.
        return masked_mean(loss, mask)
    if mode == "seq-mean-token-mean":
        per_sequence = masked_mean(loss, mask, dim=-1)  # [B]: normaliser per sequence, its own length
        return per_sequence.mean()  # normaliser per batch: the number of sequences
    weights = mask.to(loss.dtype)
    per_sequence = torch.where(weights != 0, loss * weights, 0).sum(dim=-1)  # [B]: token sum
    per_sequence = per_sequence / norm_length  # normaliser: a constant, the same for every sequence
    return per_sequence.mean()  # normaliser per batch: the number of sequences


def aggregate_units(mask: torch.Tensor, mode: LossAggregation) -> float:
    """The normalisation units :func:`aggregate` divides by, from the mask ``[B, T]`` alone: the number
    of real tokens (the mask's sum) for ``"token-mean"``, the number of sequences ``B`` for the seq modes.
    Count them over a whole batch up front to divide each micro-batch's :func:`aggregate_sum` numerator.
    """
    _check_mode(mode, norm_length=1)
    if mode == "token-mean":
        return float(mask.to(torch.float64).sum().item())  # real tokens
    return float(mask.shape[0])  # sequences


def aggregate_sum(
    loss: torch.Tensor, mask: torch.Tensor, mode: LossAggregation, norm_length: int | None = None
) -> tuple[torch.Tensor, float]:
    """:func:`aggregate` split into ``(numerator, units)`` for gradient accumulation over micro-batches.

    ``numerator`` (a scalar tensor, with gradient) is the micro-batch's contribution *before* the batch
    normaliser; ``units`` (a float) is what that normaliser counts:

    * ``"token-mean"``: numerator ``sum_{i,t} m_it L_it``, units ``sum_{i,t} m_it`` (real tokens);
    * ``"seq-mean-token-mean"``: numerator ``sum_i mean_t L_it``, units ``B`` (sequences);
    * ``"seq-mean-token-sum-norm"``: numerator ``sum_i (sum_t L_it) / norm_length``, units ``B``.

    Split a batch into micro-batches ``k``: ``sum_k numerator_k / sum_k units_k`` equals
    ``aggregate(loss, mask, mode)`` of the whole batch exactly (up to float rounding), whatever the split,
    which is what the shared loop does with ``units`` (:mod:`rlxf.train.loop`). The per-micro-batch mean
    of :func:`aggregate` would not: for token-mean it weighs a micro-batch of short completions like one
    of long ones.
    """
    _check_mode(mode, norm_length)
    weights = mask.to(loss.dtype)
    masked_loss = torch.where(weights != 0, loss * weights, 0)  # [B, T]
    units = aggregate_units(mask, mode)
    if mode == "token-mean":
        return masked_loss.sum(), units  # units: real tokens
    if mode == "seq-mean-token-mean":
        per_sequence = masked_mean(loss, mask, dim=-1)  # [B]: normaliser per sequence, its own length
        return per_sequence.sum(), units  # units: sequences
    per_sequence = masked_loss.sum(dim=-1) / norm_length  # [B]: normaliser a constant per sequence
    return per_sequence.sum(), units  # units: sequences


def clipped_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps_low: float,
    clip_eps_high: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate per token (Schulman et al. 2017, eq. 7), as a loss to minimise::

        rho_t = exp(log p_t - log p_old_t)
        L_t   = -min(rho_t * A_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * A_t)
              =  max(-rho_t * A_t, -clip(rho_t, ...) * A_t)

    Where the clipped branch is the larger loss (``A > 0`` and ``rho > 1 + eps_high``, or ``A < 0`` and
    ``rho < 1 - eps_low``) the loss is constant in ``theta`` and the token gives no gradient.

    Args:
        logprobs: ``[B, T]`` log-probs of the sampled tokens under the current policy (with gradient).
        old_logprobs: ``[B, T]`` the same under the policy that sampled them (no gradient).
        advantages: ``[B]`` (one per completion, broadcast over its tokens: GRPO, RLOO) or ``[B, T]``.
        mask: ``[B, T]`` completion mask.
        clip_eps_low: ``eps_low``, the ratio's lower bound is ``1 - eps_low`` (0.2 in the paper).
        clip_eps_high: ``eps_high``, the upper bound is ``1 + eps_high``; ``None``: ``eps_low``
            (symmetric PPO). DAPO uses 0.2 / 0.28.

    Returns:
        ``(per_token_loss [B, T], stats)``, the loss 0 at padded positions (reduce it with
        :func:`aggregate`). ``stats`` holds detached scalars over real tokens: ``clip_frac`` (share of
        tokens where the clipped branch is taken, i.e. with zero gradient), ``clip_frac_low`` /
        ``clip_frac_high`` (its two sides), ``approx_kl`` (mean k3 estimate of KL(pi_old || pi_theta),
        ``(rho - 1) - log rho``: unbiased on samples of ``pi_old`` and never negative, unlike k1) and
        ``ratio_mean``.
    """
    eps_high = clip_eps_low if clip_eps_high is None else clip_eps_high
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # [B, 1]: one advantage per sequence, broadcast over T
    log_ratio = logprobs - old_logprobs  # [B, T]: log rho
    log_ratio = log_ratio.clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)  # keep exp finite (LOG_RATIO_LIMIT)
    ratio = torch.exp(log_ratio)  # [B, T]: rho = pi_theta / pi_old
    clipped_ratio = ratio.clamp(1.0 - clip_eps_low, 1.0 + eps_high)  # clip(rho, 1 - eps_low, 1 + eps_high)
    loss_unclipped = -ratio * advantages  # [B, T]: -rho A
    loss_clipped = -clipped_ratio * advantages  # [B, T]: -clip(rho) A
    per_token = torch.maximum(loss_unclipped, loss_clipped)  # -min(rho A, clip(rho) A)
    real = mask != 0
    per_token = torch.where(real, per_token, 0)  # [B, T]

    with torch.no_grad():
        positive = advantages > 0
        negative = advantages < 0
        clipped_high = (ratio > 1.0 + eps_high) & positive  # [B, T]: upper clip taken (no gradient)
        clipped_low = (ratio < 1.0 - clip_eps_low) & negative  # [B, T]: lower clip taken (no gradient)
        # Normaliser of every statistic: per token, over the real tokens of the batch.
        stats = {
            "clip_frac": masked_mean((clipped_high | clipped_low).to(ratio.dtype), mask),
            "clip_frac_low": masked_mean(clipped_low.to(ratio.dtype), mask),
            "clip_frac_high": masked_mean(clipped_high.to(ratio.dtype), mask),
            # k3 of KL(pi_old || pi_theta) on tokens sampled from pi_old: (rho - 1) - log rho.
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
            "ratio_mean": masked_mean(ratio, mask),
        }
    return per_token, stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> torch.Tensor:
    """PPO's clipped value loss per token (OpenAI baselines' PPO2; Andrychowicz et al. 2021, section 3.5)::

        V_clip = clip(V, V_old - eps, V_old + eps)
        L^V    = 1/2 * max((V - R)^2, (V_clip - R)^2)

    The value may move at most ``eps`` from the value at rollout time before its gradient stops (when
    moving further would not lower the loss). Andrychowicz et al. find it does not help and may hurt;
    ``clip_eps`` large switches it off in effect.

    Args:
        values: ``[B, T]`` current value predictions (with gradient).
        old_values: ``[B, T]`` the predictions at rollout time.
        returns: ``[B, T]`` the targets ``R_t`` (GAE's returns).
        mask: ``[B, T]`` completion mask.
        clip_eps: ``eps``, in the units of the reward.

    Returns:
        ``[B, T]`` the loss per token, 0 at padded positions (reduce it with :func:`aggregate`).
    """
    values_clipped = torch.maximum(torch.minimum(values, old_values + clip_eps), old_values - clip_eps)
    loss_unclipped = (values - returns) ** 2  # (V - R)^2
    loss_clipped = (values_clipped - returns) ** 2  # (V_clip - R)^2
    per_token = 0.5 * torch.maximum(loss_unclipped, loss_clipped)  # 1/2 max(...)
    return torch.where(mask != 0, per_token, 0)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``1 - Var[R - V] / Var[R]`` over the real tokens: how much of the returns' variance the value model
    explains (1: perfect; 0: no better than predicting the mean; < 0: worse). NaN when the returns are
    constant (the ratio is undefined), as in Stable-Baselines3."""
    with torch.no_grad():
        # Normaliser: per token over the batch; the biased variance, since only the ratio matters.
        variance_returns = masked_var(returns, mask, unbiased=False)
        variance_residual = masked_var(returns - values, mask, unbiased=False)
        if variance_returns.item() == 0:
            return float("nan")
        return float((1.0 - variance_residual / variance_returns).item())


def entropy_from_logits(logits: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
    """Entropy of the categorical distribution of each position: ``H = -sum_v p_v log p_v`` with
    ``p = softmax(logits)``, in float32. ``logits`` ``[..., V]`` (typically ``[B, T, V]``) gives ``[...]``.

    With ``chunk_size`` the positions are processed ``chunk_size`` at a time, so the float32 softmax over
    the vocabulary exists for one chunk only (see :func:`masked_entropy_from_logits`). Logits of ``-inf``
    (tokens a sampler masked out) count as probability 0.
    """
    if chunk_size is None:
        log_probs = F.log_softmax(logits.float(), dim=-1)  # [..., V]: float32 log p
        # -inf log p (masked tokens) would give 0 * -inf = NaN; they add nothing to the entropy.
        log_probs_finite = log_probs.clamp_min(torch.finfo(log_probs.dtype).min)
        return -(log_probs.exp() * log_probs_finite).sum(dim=-1)  # [...]: H = -sum p log p
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be > 0; got {chunk_size}")
    flat = logits.reshape(-1, logits.shape[-1])  # [N, V] (a view when logits is contiguous)
    chunks = [entropy_from_logits(flat[i : i + chunk_size]) for i in range(0, flat.shape[0], chunk_size)]
    entropy = torch.cat(chunks) if chunks else flat.new_zeros(0, dtype=torch.float32)  # [N]
    return entropy.reshape(logits.shape[:-1])  # [...]


def masked_entropy_from_logits(
    logits: torch.Tensor, mask: torch.Tensor, chunk_size: int = 128
) -> torch.Tensor:
    """Mean entropy of the policy over the real tokens: ``mean_{m} H(softmax(logits))`` (a scalar).

    ``logits`` ``[B, T, V]``, ``mask`` ``[B, T]``. Computed ``chunk_size`` positions at a time: a
    full-vocabulary float32 softmax for a whole batch (``B * T * V * 4`` bytes, about 2.5 GB for 32 x 128 tokens
    of a 150k vocabulary) never exists at once. That saving holds for a metric computed under
    ``torch.no_grad()``; with gradient (an entropy bonus), autograd keeps every chunk's intermediates for
    the backward pass.
    """
    entropy = entropy_from_logits(logits, chunk_size=chunk_size)  # [B, T]
    # Normaliser: per token, over the real tokens of the batch.
    return masked_mean(entropy, mask)
