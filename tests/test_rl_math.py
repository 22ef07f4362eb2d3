"""The pure tensor functions of online RL (advantages, KL estimators and controllers, policy and value
losses, aggregation, diagnostics) against numbers worked out by hand in the comments."""

from __future__ import annotations

import math

import pytest
import torch

from rlxf.algos.advantages import (
    discounted_returns,
    gae_advantages,
    group_advantages,
    last_token_index,
    masked_mean,
    masked_var,
    masked_whiten,
    reinforce_pp_advantages,
    rloo_advantages,
    token_level_rewards,
)
from rlxf.algos.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    kl_k1,
    kl_k2,
    kl_k3,
)
from rlxf.algos.policy_loss import (
    aggregate,
    aggregate_sum,
    aggregate_units,
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    masked_entropy_from_logits,
)


def t(*rows: object) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def close(actual: torch.Tensor, expected: torch.Tensor | list | float, atol: float = 1e-9) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=atol, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# masked statistics


def test_masked_mean_var_whiten_ignore_padding():
    x = t([1.0, 2.0, 100.0], [3.0, float("nan"), 7.0])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    # real values 1, 2, 3: mean 2, squared deviations 1 + 0 + 1 = 2, unbiased var 2 / 2 = 1, biased 2 / 3
    close(masked_mean(x, mask), 2.0)
    close(masked_mean(x, mask, dim=-1), [1.5, 3.0])
    close(masked_var(x, mask), 1.0)
    close(masked_var(x, mask, unbiased=False), 2.0 / 3.0)
    whitened = masked_whiten(x, mask, eps=0.0)
    close(whitened, [[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])  # (x - 2) / 1, padding 0
    close(masked_whiten(x, mask, shift_mean=False, eps=0.0), [[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    # an empty mask: 0, not NaN
    close(masked_mean(x, torch.zeros_like(mask)), 0.0)
    close(masked_mean(x, mask.float(), dim=-1), [1.5, 3.0])


def test_last_token_index():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0], [0, 0, 0]])
    assert last_token_index(mask).tolist() == [1, 2, 0, 0]


# ---------------------------------------------------------------------------------------------------------
# GAE


def test_gae_by_hand_two_lengths():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    rewards = t([0.0, 0.0, 1.0], [0.5, -1.0, 99.0])
    values = t([0.5, 0.6, 0.7], [0.2, 0.4, 77.0])  # padding holds garbage that must not leak
    mask = t([1, 1, 1], [1, 1, 0])
    advantages, returns = gae_advantages(rewards, values, mask, gamma, lam)

    # Sequence 0 (3 tokens; V after the last token is 0):
    #   delta_2 = 1 + 0.9 * 0   - 0.7 = 0.3
    #   delta_1 = 0 + 0.9 * 0.7 - 0.6 = 0.03
    #   delta_0 = 0 + 0.9 * 0.6 - 0.5 = 0.04
    #   A_2 = 0.3
    #   A_1 = 0.03 + 0.72 * 0.3   = 0.246
    #   A_0 = 0.04 + 0.72 * 0.246 = 0.21712
    #   R = A + V = 0.71712, 0.846, 1.0
    # Sequence 1 (2 tokens, then padding):
    #   delta_1 = -1  + 0.9 * 0   - 0.4 = -1.4
    #   delta_0 = 0.5 + 0.9 * 0.4 - 0.2 = 0.66
    #   A_1 = -1.4
    #   A_0 = 0.66 + 0.72 * (-1.4) = -0.348
    #   R = -0.148, -1.0, (padding) 0
    close(advantages, [[0.21712, 0.246, 0.3], [-0.348, -1.4, 0.0]])
    close(returns, [[0.71712, 0.846, 1.0], [-0.148, -1.0, 0.0]])

    # Each row alone, unpadded, gives the same numbers: padding changes nothing.
    alone_adv, alone_ret = gae_advantages(rewards[1:, :2], values[1:, :2], mask[1:, :2], gamma, lam)
    close(alone_adv, advantages[1:, :2])
    close(alone_ret, returns[1:, :2])


def test_gae_with_lambda_one_is_monte_carlo_return_minus_value():
    rewards = t([0.1, -0.2, 1.0, 0.0], [0.3, 0.5, 0.0, 0.0])
    values = t([0.4, 0.1, 0.9, 5.0], [0.2, -0.3, 5.0, 5.0])
    mask = t([1, 1, 1, 0], [1, 1, 0, 0])
    advantages, returns = gae_advantages(rewards, values, mask, gamma=0.5, lam=1.0)
    mc = discounted_returns(rewards, mask, gamma=0.5)
    # Row 0: G_2 = 1.0, G_1 = -0.2 + 0.5 * 1.0 = 0.3, G_0 = 0.1 + 0.5 * 0.3 = 0.25; row 1: 0.55, 0.5
    close(mc, [[0.25, 0.3, 1.0, 0.0], [0.55, 0.5, 0.0, 0.0]])
    close(returns, mc)
    close(advantages, (mc - values) * mask)


# ---------------------------------------------------------------------------------------------------------
# rewards, group advantages, REINFORCE++


def test_token_level_rewards_puts_the_reward_on_the_last_real_token():
    sequence_rewards = t(2.0, -1.0, 5.0)
    kl = t([0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [1.0, 1.0, 1.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    rewards = token_level_rewards(sequence_rewards, kl, kl_coef=0.5, mask=mask)
    # -0.5 * KL at each real token, + R at the last one; the empty completion gets nothing
    close(rewards, [[-0.05, -0.1, -0.15 + 2.0], [-0.2, -0.25 - 1.0, 0.0], [0.0, 0.0, 0.0]])
    no_kl = token_level_rewards(sequence_rewards, None, kl_coef=0.5, mask=mask)
    close(no_kl, [[0.0, 0.0, 2.0], [0.0, -1.0, 0.0], [0.0, 0.0, 0.0]])


def test_grpo_and_dr_grpo_by_hand_sum_to_zero_per_group():
    rewards = t(1.0, 0.0, 0.0, 1.0, 2.0, 4.0, 6.0, 8.0)
    # group 0: mean 0.5, deviations +-0.5, sample std sqrt((4 * 0.25) / 3) = sqrt(1/3)
    # group 1: mean 5, deviations -3, -1, 1, 3, sample std sqrt(20 / 3)
    s0, s1 = math.sqrt(1 / 3), math.sqrt(20 / 3)
    expected = [0.5 / s0, -0.5 / s0, -0.5 / s0, 0.5 / s0, -3 / s1, -1 / s1, 1 / s1, 3 / s1]
    grpo = group_advantages(rewards, group_size=4, eps=0.0)
    close(grpo, expected)
    stds = [s0] * 4 + [s1] * 4
    close(group_advantages(rewards, group_size=4), [a * s / (s + 1e-6) for a, s in zip(expected, stds)])
    dr = group_advantages(rewards, group_size=4, scale_by_std=False)
    close(dr, [0.5, -0.5, -0.5, 0.5, -3.0, -1.0, 1.0, 3.0])
    close(grpo.view(2, 4).sum(-1), [0.0, 0.0])
    close(dr.view(2, 4).sum(-1), [0.0, 0.0])
    random_rewards = torch.randn(12, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    close(group_advantages(random_rewards, 3).view(4, 3).sum(-1), torch.zeros(4))
    # a group whose samples all agree carries no signal: advantage 0, not NaN
    close(group_advantages(t(3.0, 3.0, 3.0), group_size=3), [0.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        group_advantages(rewards, group_size=3)


def test_rloo_by_hand_sums_to_zero_per_group():
    rewards = t(1.0, 2.0, 6.0, 0.0, 0.0, 3.0)
    # group 0: A_0 = 1 - (2 + 6) / 2 = -3; A_1 = 2 - (1 + 6) / 2 = -1.5; A_2 = 6 - (1 + 2) / 2 = 4.5
    # group 1: A_0 = 0 - (0 + 3) / 2 = -1.5; A_1 = -1.5; A_2 = 3 - 0 = 3
    advantages = rloo_advantages(rewards, group_size=3)
    close(advantages, [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
    close(advantages.view(2, 3).sum(-1), [0.0, 0.0])
    # = G / (G - 1) * (r - group mean)
    close(advantages, 1.5 * group_advantages(rewards, 3, scale_by_std=False))
    with pytest.raises(ValueError):
        rloo_advantages(rewards, group_size=1)


def test_reinforce_pp_by_hand():
    token_rewards = t([-0.1, -0.2, 1.0], [0.5, 2.0, 9.0])
    mask = t([1, 1, 1], [1, 1, 0])
    # gamma = 0.5:
    #   row 0: G_2 = 1.0; G_1 = -0.2 + 0.5 * 1.0 = 0.3; G_0 = -0.1 + 0.5 * 0.3 = 0.05
    #   row 1: G_1 = 2.0; G_0 = 0.5 + 0.5 * 2.0 = 1.5           (9.0 is padding)
    returns = discounted_returns(token_rewards, mask, gamma=0.5)
    close(returns, [[0.05, 0.3, 1.0], [1.5, 2.0, 0.0]])
    # whitened over the 5 real tokens: mean = (0.05 + 0.3 + 1.0 + 1.5 + 2.0) / 5 = 0.97
    # deviations -0.92, -0.67, 0.03, 0.53, 1.03; squares sum 0.8464 + 0.4489 + 0.0009 + 0.2809 + 1.0609
    # = 2.638; unbiased variance 2.638 / 4 = 0.6595
    std = math.sqrt(0.6595 + 1e-8)
    advantages = reinforce_pp_advantages(token_rewards, mask, gamma=0.5)
    close(advantages, [[-0.92 / std, -0.67 / std, 0.03 / std], [0.53 / std, 1.03 / std, 0.0]])
    close(masked_mean(advantages, mask), 0.0)


# ---------------------------------------------------------------------------------------------------------
# PPO clipped surrogate


def test_clipped_policy_loss_gradient_is_zero_where_clipped():
    old = torch.zeros(1, 6, dtype=torch.float64)
    # ratios 1.5, 0.5, 1.1, 1.5, 0.5, and a padded token with a huge ratio
    ratios = [1.5, 0.5, 1.1, 1.5, 0.5, 50.0]
    logprobs = torch.tensor([[math.log(r) for r in ratios]], dtype=torch.float64, requires_grad=True)
    advantages = t([1.0, -1.0, 1.0, -1.0, 1.0, 1.0])
    mask = t([1, 1, 1, 1, 1, 0])
    loss, stats = clipped_policy_loss(logprobs, old, advantages, mask, clip_eps_low=0.2)
    # per token -min(rho A, clip(rho, 0.8, 1.2) A):
    #   0: A=+1, rho 1.5 > 1.2: -min(1.5, 1.2) = -1.2           clipped, constant
    #   1: A=-1, rho 0.5 < 0.8: -min(-0.5, -0.8) = 0.8          clipped, constant
    #   2: A=+1, rho 1.1 inside: -1.1
    #   3: A=-1, rho 1.5 (clip would help, not taken): -min(-1.5, -1.2) = 1.5
    #   4: A=+1, rho 0.5: -min(0.5, 0.8) = -0.5
    close(loss, [[-1.2, 0.8, -1.1, 1.5, -0.5, 0.0]])
    loss.sum().backward()
    # d(-rho A) / d log p = -rho A where the unclipped branch is taken, 0 where clipped
    close(logprobs.grad, [[0.0, 0.0, -1.1, 1.5, -0.5, 0.0]])
    close(stats["clip_frac"], 2 / 5)
    close(stats["clip_frac_high"], 1 / 5)
    close(stats["clip_frac_low"], 1 / 5)
    close(stats["ratio_mean"], (1.5 + 0.5 + 1.1 + 1.5 + 0.5) / 5)
    k3 = [(r - 1) - math.log(r) for r in ratios[:5]]
    close(stats["approx_kl"], sum(k3) / 5)
    assert not stats["clip_frac"].requires_grad


def test_clip_higher_and_sequence_advantages():
    old = torch.zeros(2, 2, dtype=torch.float64)
    logprobs = torch.full((2, 2), math.log(1.25), dtype=torch.float64, requires_grad=True)
    mask = t([1, 1], [1, 0])
    sequence_adv = t(1.0, 2.0)  # [B], broadcast over each completion's tokens
    # symmetric eps 0.2: rho 1.25 > 1.2 with A > 0 is clipped, no gradient
    loss, stats = clipped_policy_loss(logprobs, old, sequence_adv, mask, clip_eps_low=0.2)
    loss.sum().backward()
    close(logprobs.grad, torch.zeros(2, 2))
    close(stats["clip_frac"], 1.0)
    # clip-higher eps_high 0.28: 1.25 < 1.28, inside; gradient -rho A = -1.25 A
    logprobs.grad = None
    loss, stats = clipped_policy_loss(logprobs, old, sequence_adv, mask, clip_eps_low=0.2, clip_eps_high=0.28)
    loss.sum().backward()
    close(logprobs.grad, [[-1.25, -1.25], [-2.5, 0.0]])
    close(stats["clip_frac"], 0.0)
    # [B] advantages equal the same values spread over [B, T]
    expanded, _ = clipped_policy_loss(logprobs, old, sequence_adv[:, None].expand(2, 2), mask, 0.2, 0.28)
    close(loss, expanded)


# ---------------------------------------------------------------------------------------------------------
# aggregation


def test_aggregation_by_hand_on_a_ragged_batch():
    loss = t([1.0, 2.0, 3.0], [4.0, float("nan"), 100.0])  # padding may hold anything
    mask = t([1, 1, 1], [1, 0, 0])
    # token-mean: (1 + 2 + 3 + 4) / 4 = 2.5
    close(aggregate(loss, mask, "token-mean"), 2.5)
    # seq-mean-token-mean: ((1 + 2 + 3) / 3 + 4 / 1) / 2 = (2 + 4) / 2 = 3
    close(aggregate(loss, mask, "seq-mean-token-mean"), 3.0)
    # seq-mean-token-sum-norm, N = 3: (6 / 3 + 4 / 3) / 2 = 5 / 3
    close(aggregate(loss, mask, "seq-mean-token-sum-norm", norm_length=3), 5.0 / 3.0)
    with pytest.raises(ValueError):
        aggregate(loss, mask, "seq-mean-token-sum-norm")
    with pytest.raises(ValueError):
        aggregate(loss, mask, "sum")  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"])
def test_aggregate_sum_over_micro_batches_equals_the_whole_batch(mode):
    generator = torch.Generator().manual_seed(0)
    loss = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    lengths = torch.tensor([6, 1, 3, 5, 2])
    mask = (torch.arange(6)[None, :] < lengths[:, None]).float()
    whole = aggregate(loss, mask, mode, norm_length=6)
    for splits in ([(0, 5)], [(0, 1), (1, 5)], [(0, 2), (2, 3), (3, 5)]):
        parts = [aggregate_sum(loss[a:b], mask[a:b], mode, norm_length=6) for a, b in splits]
        numerator = sum(p[0] for p in parts)
        units = sum(p[1] for p in parts)
        close(numerator / units, whole, atol=1e-12)
    if mode == "token-mean":
        assert aggregate_sum(loss, mask, mode)[1] == 17.0  # 6 + 1 + 3 + 5 + 2 real tokens
        assert aggregate_units(mask, mode) == 17.0
        # the mean of per-micro-batch means is not the same thing
        uneven = (aggregate(loss[:1], mask[:1], mode) + aggregate(loss[1:], mask[1:], mode)) / 2
        assert abs(uneven.item() - whole.item()) > 1e-3
    else:
        assert aggregate_sum(loss, mask, mode, norm_length=6)[1] == 5.0
        assert aggregate_units(mask, mode) == 5.0


# ---------------------------------------------------------------------------------------------------------
# value loss, explained variance


def test_clipped_value_loss_by_hand():
    values = torch.tensor([[1.0, 1.0, 1.0, 1.0, 7.0]], dtype=torch.float64, requires_grad=True)
    old_values = t([0.8, 1.2, 1.0, 0.8, 0.0])
    returns = t([2.0, 0.0, 1.5, 0.0, 0.0])
    mask = t([1, 1, 1, 1, 0])
    loss = clipped_value_loss(values, old_values, returns, mask, clip_eps=0.1)
    # 0: V_clip = clip(1.0, 0.7, 0.9) = 0.9; max((1 - 2)^2, (0.9 - 2)^2) = max(1, 1.21) -> 0.605
    # 1: V_clip = clip(1.0, 1.1, 1.3) = 1.1; max((1 - 0)^2, (1.1 - 0)^2) = 1.21 -> 0.605
    # 2: V = V_old, no clip; (1 - 1.5)^2 = 0.25 -> 0.125
    # 3: V_clip = 0.9; max((1 - 0)^2, (0.9 - 0)^2) = max(1, 0.81) = 1 -> 0.5   (unclipped branch)
    close(loss, [[0.605, 0.605, 0.125, 0.5, 0.0]])
    loss.sum().backward()
    # gradient (V - R) on the unclipped branch, 0 where the clipped branch (a constant in V) is taken
    close(values.grad, [[0.0, 0.0, -0.5, 1.0, 0.0]])


def test_explained_variance():
    returns = t([1.0, 3.0, 2.0], [5.0, 0.0, 0.0])
    mask = t([1, 1, 1], [1, 0, 0])
    assert explained_variance(returns.clone(), returns, mask) == pytest.approx(1.0)
    mean = masked_mean(returns, mask)  # (1 + 3 + 2 + 5) / 4 = 2.75
    assert explained_variance(torch.full_like(returns, mean.item()), returns, mask) == pytest.approx(0.0)
    # V = R / 2: residual R / 2, Var[R / 2] / Var[R] = 1/4, so 1 - 1/4 = 0.75
    assert explained_variance(returns / 2, returns, mask) == pytest.approx(0.75)
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask))


# ---------------------------------------------------------------------------------------------------------
# entropy


def test_entropy_by_hand_and_chunked_equals_direct():
    uniform = torch.zeros(1, 1, 4)
    close(entropy_from_logits(uniform), [[math.log(4)]], atol=1e-6)
    masked_out = torch.tensor([[[0.0, 0.0, float("-inf")]]])
    close(entropy_from_logits(masked_out), [[math.log(2)]], atol=1e-6)  # -inf logits: probability 0

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=generator).to(torch.bfloat16)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    direct = entropy_from_logits(logits)
    assert direct.dtype == torch.float32 and direct.shape == (3, 5)
    reference = torch.distributions.Categorical(logits=logits.float()).entropy()
    close(direct, reference, atol=1e-5)
    for chunk_size in (1, 4, 7, 100):
        close(entropy_from_logits(logits, chunk_size=chunk_size), direct, atol=1e-6)
        close(
            masked_entropy_from_logits(logits, mask, chunk_size=chunk_size),
            masked_mean(direct, mask),
            atol=1e-6,
        )
    # a non-contiguous slice (the usual logits[:, :-1]) works too
    close(
        masked_entropy_from_logits(logits[:, :-1], mask[:, :-1], chunk_size=2),
        masked_mean(direct[:, :-1], mask[:, :-1]),
    )


# ---------------------------------------------------------------------------------------------------------
# KL estimators


def _exact_expectation(estimator, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """E_{y ~ p}[estimator(log p(y), log q(y))], by enumerating the support."""
    return (p * estimator(p.log(), q.log())).sum()


P = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
Q = torch.tensor([0.4, 0.4, 0.2], dtype=torch.float64)
# KL(p || q) = 0.5 ln(0.5 / 0.4) + 0.3 ln(0.3 / 0.4) + 0.2 ln 1 = 0.5 * 0.2231436 - 0.3 * 0.2876821
#           = 0.1115718 - 0.0863046 = 0.0252672
EXACT_KL = 0.5 * math.log(1.25) + 0.3 * math.log(0.75)


def test_kl_estimators_in_exact_expectation():
    assert EXACT_KL == pytest.approx(0.0252672, abs=1e-7)
    # k1 and k3 are unbiased for KL(p || q)
    close(_exact_expectation(kl_k1, P, Q), EXACT_KL, atol=1e-12)
    close(_exact_expectation(kl_k3, P, Q), EXACT_KL, atol=1e-12)
    # k2: E = 1/2 E_p[(log p - log q)^2] = 1/2 (0.5 ln(1.25)^2 + 0.3 ln(0.75)^2)
    half_second_moment = 0.5 * (0.5 * math.log(1.25) ** 2 + 0.3 * math.log(0.75) ** 2)
    close(_exact_expectation(kl_k2, P, Q), half_second_moment, atol=1e-12)
    assert half_second_moment == pytest.approx(EXACT_KL, rel=0.03)  # biased, but close
    # when p ~ q the bias of k2 is third order: relative error shrinks with the gap
    near_q = torch.tensor([0.51, 0.29, 0.2], dtype=torch.float64)
    near_kl = (P * (P / near_q).log()).sum()
    close(_exact_expectation(kl_k2, P, near_q), near_kl.item(), atol=near_kl.item() * 0.02)
    # dispatch by name, per token
    lp, lq = t(-1.0, -2.0), t(-1.5, -1.0)
    close(kl_estimate(lp, lq, "k1"), [0.5, -1.0])
    close(kl_estimate(lp, lq, "k2"), [0.125, 0.5])
    close(kl_estimate(lp, lq, "k3"), [math.exp(-0.5) - 1 + 0.5, math.exp(1.0) - 1 - 1.0])
    with pytest.raises(ValueError):
        kl_estimate(lp, lq, "k4")  # type: ignore[arg-type]


def test_kl_estimators_monte_carlo():
    generator = torch.Generator().manual_seed(1234)
    n = 200_000
    samples = torch.multinomial(P, n, replacement=True, generator=generator)  # y ~ p
    logp, logq = P.log()[samples], Q.log()[samples]
    for estimator in (kl_k1, kl_k2, kl_k3):
        expected = _exact_expectation(estimator, P, Q)
        variance = (P * (estimator(P.log(), Q.log()) - expected) ** 2).sum()
        tolerance = 5 * math.sqrt(variance.item() / n)  # five standard errors of the sample mean
        assert abs(estimator(logp, logq).mean().item() - expected.item()) < tolerance
    # k3 has much lower variance than k1 here, and is never negative
    assert kl_k3(logp, logq).min() >= 0
    assert kl_k3(logp, logq).var() < kl_k1(logp, logq).var()


def test_k3_is_finite_for_extreme_log_ratios():
    lp = torch.tensor([-300.0, 0.0], dtype=torch.float32)
    lq = torch.tensor([0.0, -300.0], dtype=torch.float32)
    assert torch.isfinite(kl_k3(lp, lq)).all()
    half = kl_k3(lp.half(), lq.half())
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


# ---------------------------------------------------------------------------------------------------------
# KL controllers


def test_adaptive_kl_controller_moves_toward_target():
    controller = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    # KL 12 > 6: e = clip(12 / 6 - 1 = 1, -0.2, 0.2) = 0.2; K = 256 / 10000 = 0.0256
    # beta = 0.1 * (1 + 0.0256 * 0.2) = 0.1 * 1.00512
    controller.update(current_kl=12.0, n_steps=256)
    assert controller.value == pytest.approx(0.100512, abs=1e-12)
    # KL 6.6: e = 0.1 (not clipped); beta *= 1 + 0.0256 * 0.1 = 1.00256
    controller.update(current_kl=6.6, n_steps=256)
    assert controller.value == pytest.approx(0.100512 * 1.00256, abs=1e-12)
    # KL on target: no change
    before = controller.value
    controller.update(current_kl=6.0, n_steps=256)
    assert controller.value == pytest.approx(before, abs=1e-15)
    # KL 1 < 6: e = clip(1 / 6 - 1, ...) = -0.2; beta *= 1 - 0.00512
    controller.update(current_kl=1.0, n_steps=256)
    assert controller.value == pytest.approx(before * (1 - 0.00512), abs=1e-12)
    assert controller.value < before

    # exact resume: a fresh controller loaded from the state continues identically
    state = controller.state_dict()
    resumed = AdaptiveKLController(init_kl_coef=1.0, target=1.0, horizon=1.0)
    resumed.load_state_dict(state)
    for kl in (3.0, 9.0, 6.3):
        controller.update(kl, 64)
        resumed.update(kl, 64)
        assert resumed.value == controller.value
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_fixed_kl_controller():
    controller = FixedKLController(0.05)
    controller.update(current_kl=100.0, n_steps=10)
    assert controller.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(controller.state_dict())
    assert other.value == 0.05
