"""KL divergence between the policy and the reference: per-token estimators and the penalty coefficient.

**Estimators.** Online RL keeps the policy ``p = pi_theta`` near the reference ``q = pi_ref`` with a KL
penalty ``KL(p || q) = E_{y~p}[log p(y) - log q(y)]``. The full-vocabulary sum is never formed: each
sampled token ``y_t ~ p`` gives an estimate from two numbers, its log-prob under the policy and under the
reference (Schulman 2020, "Approximating KL divergence", http://joschu.net/blog/kl-approx.html). With
``log r = log q(y) - log p(y)``::

    k1 = -log r = log p - log q             unbiased for KL(p||q); high variance, can be negative
    k2 = 1/2 * (log r)^2                    biased (its mean is 1/2 E_p[(log r)^2]); low variance;
                                            KL(p||q) up to third order in (q - p)
    k3 = (r - 1) - log r                    unbiased (E_p[r] = 1) and >= 0 per sample; low variance

k1 is the penalty of the classic RLHF reward (Ziegler et al. 2019; Stiennon et al. 2020); k3 the one of
GRPO's loss (Shao et al. 2024, eq. 4). The estimators are per token (``[B, T]`` in, ``[B, T]`` out);
summing or averaging them over a completion is the caller's choice.

**Coefficient** ``beta`` (Ziegler et al. 2019, section 2.2, eq. 2): :class:`FixedKLController` keeps it
constant; :class:`AdaptiveKLController` steers the measured KL towards a target with a proportional
controller::

    e_t         = clip(KL_t / KL_target - 1, -0.2, 0.2)
    beta_{t+1}  = beta_t * (1 + K_beta * e_t),        K_beta = n_steps / horizon

Both have ``state_dict`` / ``load_state_dict`` so that a resumed run continues with the same ``beta``.

Left out: the full-vocabulary (analytic) KL from logits, the reverse direction ``KL(q || p)`` and the
"low-variance KL" clamps some libraries apply to the *estimate*; only the log-ratio inside k3 is clamped.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol, get_args

import torch

__all__ = [
    "K3_LOG_RATIO_LIMIT",
    "AdaptiveKLController",
    "FixedKLController",
    "KLController",
    "KLEstimator",
    "kl_estimate",
    "kl_k1",
    "kl_k2",
    "kl_k3",
]

KLEstimator = Literal["k1", "k2", "k3"]

# |log r| above this is clamped inside k3. exp(20) ~ 4.9e8 is finite in float32 and bfloat16, while an
# unclamped exp(log q - log p) overflows to inf (float32 past ~88, float16 past ~11) when the policy has
# made a sampled token nearly impossible, and one inf turns the whole loss and every gradient into NaN.
# Where the clamp bites, the estimate is still huge (the penalty still pushes) but finite; its gradient
# through the clamped log-ratio is 0. verl clamps the same quantity at the same value.
K3_LOG_RATIO_LIMIT = 20.0


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log p(y) - log q(y): the log-ratio itself. Unbiased for KL(p||q) when ``y ~ p``.

    ``logprobs`` and ``ref_logprobs`` (any shape, typically ``[B, T]``) are the log-probs of the sampled
    tokens under the policy ``p`` and the reference ``q``.
    """
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = 1/2 * (log p(y) - log q(y))^2. Biased: its mean is ``1/2 E_p[(log r)^2]``, close to KL(p||q)
    when ``p`` and ``q`` are close. Non-negative. Used as a loss on samples ``y ~ p``, its gradient
    ``(log p - log q) * grad log p`` is an unbiased estimate of ``grad KL(p||q)``."""
    log_ratio = logprobs - ref_logprobs
    return 0.5 * log_ratio**2  # 1/2 (log r)^2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with ``r = q(y) / p(y) = exp(log q - log p)``.

    Unbiased for KL(p||q) when ``y ~ p`` (``E_p[r - 1] = 0``) and non-negative for every sample
    (``x - 1 >= log x``). The log-ratio is clamped to ``[-K3_LOG_RATIO_LIMIT, K3_LOG_RATIO_LIMIT]``
    before ``exp`` (overflow, see the constant) and computed in at least float32.
    """
    dtype = torch.promote_types(logprobs.dtype, torch.float32)
    log_ratio = ref_logprobs.to(dtype) - logprobs.to(dtype)  # log r = log q - log p
    # Clamp: exp(log r) must stay finite (float32 overflows past ~88; see K3_LOG_RATIO_LIMIT).
    log_ratio = log_ratio.clamp(-K3_LOG_RATIO_LIMIT, K3_LOG_RATIO_LIMIT)
    return torch.expm1(log_ratio) - log_ratio  # (r - 1) - log r; expm1 keeps r - 1 exact near r = 1


def kl_estimate(
    logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator = "k1"
) -> torch.Tensor:
    """Per-token KL(p||q) estimate by name: ``"k1"``, ``"k2"`` or ``"k3"`` (see the module)."""
    if estimator == "k1":
        return kl_k1(logprobs, ref_logprobs)
    if estimator == "k2":
        return kl_k2(logprobs, ref_logprobs)
    if estimator == "k3":
        return kl_k3(logprobs, ref_logprobs)
    raise ValueError(
        f"unknown KL estimator {estimator!r}; expected one of {', '.join(get_args(KLEstimator))}"
    )


class KLController(Protocol):
    """What a trainer needs from a KL coefficient: its value, an update per step, and exact resume."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class FixedKLController:
    """A constant KL coefficient ``beta`` (``update`` does nothing)."""

    def __init__(self, value: float) -> None:
        if value < 0:
            raise ValueError(f"the KL coefficient must be >= 0; got {value}")
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        """Nothing to do: the coefficient stays fixed."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])

    def __repr__(self) -> str:
        return f"FixedKLController(value={self.value})"


class AdaptiveKLController:
    """The adaptive KL coefficient of Ziegler et al. 2019 (section 2.2, eq. 2)::

        e_t        = clip(KL_t / target - 1, -0.2, 0.2)      proportional error, clipped
        beta_{t+1} = beta_t * (1 + K_beta * e_t)             K_beta = n_steps / horizon

    A measured KL above ``target`` raises ``beta`` (a stronger pull to the reference), below lowers it.
    The clip bounds one update's relative change to ``0.2 * n_steps / horizon``; ``horizon`` (in samples
    or steps, whichever ``n_steps`` counts) sets how fast ``beta`` moves.

    Args:
        init_kl_coef: ``beta_0``.
        target: the KL to steer towards (``KL_target`` in nats, e.g. 6.0 in the paper).
        horizon: ``H`` (10000 in the paper).
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0; got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"the KL target must be > 0; got {target}")
        if horizon <= 0:
            raise ValueError(f"the KL horizon must be > 0; got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        """One controller step after measuring ``current_kl`` over ``n_steps`` steps (or samples)."""
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)  # e_t, clipped to +-0.2
        gain = n_steps / self.horizon  # K_beta
        self.value *= 1.0 + gain * proportional_error  # beta_{t+1} = beta_t (1 + K_beta e_t)

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.value = float(state["value"])
        self.target = float(state.get("target", self.target))
        self.horizon = float(state.get("horizon", self.horizon))

    def __repr__(self) -> str:
        return f"AdaptiveKLController(value={self.value}, target={self.target}, horizon={self.horizon})"
