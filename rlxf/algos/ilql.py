"""Implicit Language Q-Learning (ILQL) and filtered behaviour cloning: offline RL on rated completions.

Data: ``prompt`` + ``completion`` (or a ``messages`` conversation) with a number, the **reward**: the
ratings format's ``rating`` (``rlxf simulate --mode pointwise``, ``rlxf label export --format ratings``,
any ratings file), or the ``reward`` field ``rlxf reward score`` writes (``reward_field``). Each record is
an episode of the token-level MDP of :mod:`rlxf.algos.text_mdp`: the response tokens are the actions, the
record's reward sits on its last action, the episode ends there, ``gamma`` discounts per action.
Rewards are standardised over the training records (``(r - mean) / std``; ``standardize_rewards``), as
trlX does, so one set of scales (``cql_scale``, ``beta``) fits any reward's range.

**ILQL** (Snell et al. 2023, "Offline RL for Natural Language Generation with Implicit Language Q
Learning", ICLR; equations of section 4, defaults of its code and of trlX's ``ILQLConfig``). On the LM's
final hidden state sit ``num_q_heads`` Q heads ``Q_i(s, .)`` over the vocabulary, their Polyak-averaged
targets ``Q̂_i`` and a V head (:class:`~rlxf.models.ilql_heads.ILQLHeads`). A Q head is trlX's MLP with an
output row per token (``q_head: mlp``) or ``Q(s, a) = e_a . u(h) + b_a`` over the LM's output embeddings
``e_a`` (``q_head: tied``, :class:`~rlxf.models.ilql_heads.TiedQHead`: a token's value carries over to the
tokens embedded near it). Per action ``(s, a, r, s', done)`` of the data, with
``Q̂(s, a) = min_i Q̂_i(s, a)``:

* V by **expectile regression** on the target Q (IQL: Kostrikov et al. 2022, "Offline Reinforcement
  Learning with Implicit Q-Learning", eq. 5), which makes ``V`` an upper expectile ``tau`` of the data's
  action values, a soft maximum over the actions the data took, without querying unseen ones::

      L_V = L2^tau( Q̂(s, a) - V(s) ),   L2^tau(u) = |tau - 1(u < 0)| u^2            (expectile_loss)

* each Q head by the **Bellman target** through V (ILQL eq. 2; ``V(s')`` carries no gradient, and the
  bootstrap stops at the end of the episode)::

      L_Q = sum_i ( r + gamma (1 - done) V(s') - Q_i(s, a) )^2                     (bellman_target, q_loss)

* **CQL** (Kumar et al. 2020, "Conservative Q-Learning for Offline Reinforcement Learning", eq. 4; ILQL
  section 4.2): push the Q values of every token down and those of the data's token up, so that a token
  the data never showed does not get an extrapolated high value (weight ``cql_scale``)::

      L_CQL = sum_i ( logsumexp_a' Q_i(s, a') - Q_i(s, a) )                         (cql_loss)

* the **policy term** on the LM's own logits (ILQL's "AWAC" term, weight ``awac_scale``): the negative
  log-likelihood of the data's actions. With ``awac_beta = 0`` (the default) it is unweighted, as in
  trlX and the paper's code: the LM stays the behaviour policy ``pi_beta`` that decoding re-weights.
  ``awac_beta > 0`` weights each token's NLL by ``min(exp(awac_beta * (Q̂(s,a) - V(s))), awac_max_weight)``
  (AWAC: Nair et al. 2020, eq. 12; the clip as in AWR, Peng et al. 2019). ``policy_top_share < 1``
  restricts the term to the records with the top share of the rewards (``m = 1`` there, 0 elsewhere), so
  the LM decoding re-weights is filtered BC's while the heads still learn from every record::

      L_pi = -m(record) w(s, a) log pi_LM(a | s)                                    (awac_loss)

  so ``L = L_Q + L_V + cql_scale L_CQL + awac_scale L_pi``, summed over the actions of a micro-batch and
  divided by the number of actions of the whole optimizer step (the shared loop's normalisation:
  :mod:`rlxf.train.loop`), which is trlX's mean over non-terminal tokens.

* **Target heads** (Polyak averaging; Lillicrap et al. 2016), after every ``target_sync_every``-th
  optimizer step: ``Q̂_i <- (1 - polyak_alpha) Q̂_i + polyak_alpha Q_i``
  (:func:`~rlxf.models.ilql_heads.polyak_update_`). The default, 0.005 every step, is IQL's; trlX uses
  0.001 every 5 steps on long runs (its random-walk example: 0.1 every 5).

**Decoding** (ILQL section 4.3): ``pi(a|s) ∝ pi_LM(a|s) exp(beta (Q̂(s, a) - V(s)))`` on the LM's top-k
tokens, in ``rlxf generate``, ``rlxf eval`` and a pipeline's eval stage with ``ilql_beta`` / ``ilql_top_k``
(:mod:`rlxf.rollout.ilql_decoding`; the defaults are this run's ``decode_beta`` and ``decode_top_k``).
``beta = 0`` is the LM alone: behaviour cloning of all the data, the first baseline.

**Filtered behaviour cloning** (``objective: filtered_bc``), the second baseline: keep the ``bc_top_share``
of the training records with the highest reward (``%BC`` of Chen et al. 2021, "Decision Transformer";
the "filter" of Korbak et al. 2023) and train the LM on them with the same NLL on the same action mask, no
heads. Held-out records are filtered at the training records' threshold.

**The model folder.** ``model/`` is a plain Hugging Face LM folder (``AutoModelForCausalLM`` loads the LM
alone, LoRA merged); an ILQL run adds ``ilql_heads.safetensors`` (the target Q heads and V: what decoding
needs) and ``ilql.json`` (shapes, decoding defaults, reward standardisation) inside it
(:mod:`rlxf.models.ilql_heads`). ``--model RUN`` or ``RUN/model`` decodes with the heads.

Metrics (per action, means over the step): ``loss``, ``loss/q`` (both heads), ``loss/v``, ``loss/cql``,
``loss/awac``, ``q/mean`` (the online heads at the data's actions), ``v/mean``, ``advantage/mean``
(``Q̂ - V`` at the data's actions), plus the loop's ``lr``, ``grad_norm``, ``tokens_per_s``, ``epoch``;
held out (``eval/``): ``loss``, ``loss/q``, ``loss/v``, ``loss/cql``, ``nll`` (the LM's NLL per action),
``perplexity``, ``q/mean``, ``v/mean``, ``advantage/mean``. Filtered BC logs ``loss`` (the NLL per action)
and holds out ``loss`` and ``perplexity``. Names are :data:`ILQL_METRICS` and :data:`ILQL_EVAL_METRICS`.

**The trunk.** By default the heads share the LM's trunk and their losses train it, as in trlX; with
``detach_heads`` they read its features without gradient, so only the policy term trains the LM.

Left out: heads on a separate backbone, a
separate learning rate for the heads, sequence-level rewards other than on the last action of a record
(:func:`~rlxf.algos.text_mdp.place_rewards` takes one per segment; the file formats carry one per record),
AWR as an objective (:func:`~rlxf.algos.text_mdp.returns_to_go` has its targets), FSDP / DeepSpeed for
ILQL (one process or DDP), decoding with a logit mask of allowed tokens (trlX's ``logit_mask``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, get_args

import torch
import torch.nn.functional as F

from rlxf.algos.offline import (
    check_full_batch,
    fit_and_save,
    load_trainable_model,
    model_device,
    read_train_eval,
    to_device,
)
from rlxf.algos.sft import tokenize_sft_data
from rlxf.algos.text_mdp import build_mdp
from rlxf.config import option
from rlxf.data import (
    IGNORE_INDEX,
    ChatTemplateMode,
    DataError,
    Dataset,
    Truncation,
    pad_token_id,
)
from rlxf.data.collate import pad
from rlxf.data.errors import show
from rlxf.models.ilql_heads import ILQLHeads, QHeadKind, polyak_update_, save_heads
from rlxf.models.load import load_tokenizer
from rlxf.models.registry import resolve_model
from rlxf.train.distributed import check_launch
from rlxf.train.loop import LossOutput, RunConfig, TrainingConfig
from rlxf.train.run import RunResult, print_config

logger = logging.getLogger(__name__)

Objective = Literal["ilql", "filtered_bc"]

ILQL_METRICS = (
    "loss",
    "loss/q",
    "loss/v",
    "loss/cql",
    "loss/awac",
    "q/mean",
    "v/mean",
    "advantage/mean",
)
"""What a training step of ``objective: ilql`` logs besides the loop's ``lr``, ``grad_norm``,
``tokens_per_s`` and ``epoch``."""

ILQL_EVAL_METRICS = (
    "loss",
    "loss/q",
    "loss/v",
    "loss/cql",
    "nll",
    "perplexity",
    "q/mean",
    "v/mean",
    "advantage/mean",
)
"""Held-out figures of ``objective: ilql`` (logged with the ``eval/`` prefix)."""


def _default_ilql_train() -> TrainingConfig:
    """ILQL's ``train:`` defaults (the shared loop's, but for the learning rate: new heads learn from scratch)."""
    return TrainingConfig(learning_rate=5e-5)


@dataclass
class ILQLConfig(RunConfig):
    """Options of ``rlxf ilql``."""

    train: TrainingConfig = field(default_factory=_default_ilql_train)
    objective: Objective = option(
        "ilql",
        help="ilql: Q / V heads and the LM (Snell et al. 2023); filtered_bc: the LM on the top bc_top_share "
        "of the records by reward (a baseline)",
    )
    reward_field: str = option(
        "auto",
        help="the record's reward: auto = 'rating' for ratings records, else 'reward' (what rlxf reward "
        "score writes)",
    )
    aspect: str | None = option(
        None, help="ratings of several aspects: learn from this aspect's records only"
    )
    standardize_rewards: bool = option(
        True, help="rewards become (r - mean) / std over the training records (as trlX)"
    )
    gamma: float = option(0.99, help="discount per action (response token)")
    tau: float = option(0.7, help="expectile of V's regression on the target Q, in (0, 1); 0.5 is the mean")
    cql_scale: float = option(0.1, help="weight of the CQL term (logsumexp Q - Q of the data's token)")
    awac_scale: float = option(1.0, help="weight of the policy term: the LM's NLL on the data's tokens")
    awac_beta: float = option(
        0.0,
        help="0: the policy term is plain NLL (trlX); > 0: each token's NLL weighted by "
        "exp(awac_beta * (Q̂ - V)), clipped at awac_max_weight (AWAC)",
    )
    awac_max_weight: float = option(20.0, help="the largest weight of a token's NLL when awac_beta > 0")
    polyak_alpha: float = option(
        0.005, help="target heads move this share of the way to the online Q heads at each update"
    )
    target_sync_every: int = option(1, help="update the target heads every N optimizer steps")
    num_q_heads: int = option(2, help="Q heads; the target is the minimum over them (clipped double Q)")
    q_head: QHeadKind = option(
        "mlp",
        help="mlp: a Q head with its own output row per token (trlX); tied: Q(s, a) = e_a . u(h) + b_a over the "
        "LM's output embeddings e_a, so a token's value carries over to tokens embedded near it",
    )
    policy_top_share: float = option(
        1.0,
        help="the policy term learns from this share of the training records, highest reward first: 1 is "
        "ILQL's behaviour cloning of all the data; below 1 the LM is filtered BC's and the heads still learn "
        "from every record",
    )
    detach_heads: bool = option(
        False,
        help="true: the heads learn on the trunk's features without training it (only the policy term "
        "does, so the LM stays the behaviour policy); false: the Q / V / CQL losses train the trunk too (trlX)",
    )
    bc_top_share: float = option(
        0.1, help="objective filtered_bc: the share of training records, highest reward first, to train on"
    )
    decode_beta: float = option(
        1.0, help="saved in ilql.json: the default ilql_beta of rlxf generate / eval for this model"
    )
    decode_top_k: int = option(
        20, help="saved in ilql.json: the default ilql_top_k (the LM's top-k tokens the advantage re-ranks)"
    )
    max_length: int = option(512, help="longest example in tokens (prompt + completion)")
    truncation: Truncation = option(
        "keep_start",
        help="a longer example keeps its first (keep_start) or last (keep_end) tokens, or is an error",
    )
    chat_template: ChatTemplateMode = option(
        "auto",
        help="auto: messages use the chat template, plain prompts stay raw; always: a plain prompt becomes "
        "a user turn; never: raw text only",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.objective not in get_args(Objective):
            raise ValueError(f"objective must be one of {get_args(Objective)}, got {self.objective!r}")
        if not self.reward_field:
            raise ValueError("reward_field is empty (auto, rating, reward or a field of the records)")
        if not 0.0 < self.tau < 1.0:
            raise ValueError(f"tau must be in (0, 1), got {self.tau}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        for name in ("cql_scale", "awac_scale", "awac_beta", "decode_beta"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.awac_max_weight <= 0:
            raise ValueError(f"awac_max_weight must be > 0, got {self.awac_max_weight}")
        if not 0.0 < self.polyak_alpha <= 1.0:
            raise ValueError(f"polyak_alpha must be in (0, 1], got {self.polyak_alpha}")
        if self.target_sync_every < 1 or self.num_q_heads < 1:
            raise ValueError("target_sync_every and num_q_heads must be >= 1")
        if not 0.0 < self.bc_top_share <= 1.0:
            raise ValueError(f"bc_top_share must be in (0, 1], got {self.bc_top_share}")
        if not 0.0 < self.policy_top_share <= 1.0:
            raise ValueError(f"policy_top_share must be in (0, 1], got {self.policy_top_share}")
        if self.q_head not in get_args(QHeadKind):
            raise ValueError(f"q_head must be one of {get_args(QHeadKind)}, got {self.q_head!r}")
        if self.decode_top_k < 0:
            raise ValueError(f"decode_top_k must be >= 0, got {self.decode_top_k}")
        if self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")
        if self.truncation not in get_args(Truncation):
            raise ValueError(f"truncation must be one of {get_args(Truncation)}, got {self.truncation!r}")


# ---------------------------------------------------------------------------------------------- losses
# Pure functions on per-action tensors ``[N]`` (and ``[N, vocab]`` over the vocabulary); each returns the
# loss of every action, the caller sums.


def expectile_loss(diff: torch.Tensor, tau: float) -> torch.Tensor:
    """``L2^tau(u) = |tau - 1(u < 0)| u^2`` (Kostrikov et al. 2022, eq. 5): a positive ``u`` weighs ``tau``,
    a negative one ``1 - tau``; ``tau = 0.5`` is half the squared error."""
    weight = torch.where(diff < 0, 1.0 - tau, tau)
    return weight * diff.pow(2)


def value_loss(target_q: torch.Tensor, v: torch.Tensor, tau: float) -> torch.Tensor:
    """``L_V = L2^tau(Q̂(s, a) - V(s))``; the target Q carries no gradient."""
    return expectile_loss(target_q.detach() - v, tau)


def bellman_target(
    rewards: torch.Tensor, next_v: torch.Tensor, dones: torch.Tensor, gamma: float
) -> torch.Tensor:
    """``y = r + gamma (1 - done) V(s')``, without gradient: a terminal action's target is its reward."""
    return (rewards + gamma * (1.0 - dones) * next_v).detach()


def q_loss(q: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(y - Q(s, a))^2`` for one Q head at the data's actions."""
    return (target.detach() - q).pow(2)


def cql_loss(q_all: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``logsumexp_a' Q(s, a') - Q(s, a)`` (Kumar et al. 2020, eq. 4): ``q_all`` ``[N, vocab]``, ``actions``
    ``[N]`` -> ``[N]``; the cross-entropy of the Q values read as logits (trlX's form)."""
    q_all = q_all.float()
    return torch.logsumexp(q_all, dim=-1) - q_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)


def awac_weights(advantage: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """``min(exp(beta A), max_weight)``, without gradient (AWAC's weight of a token's NLL)."""
    return torch.exp(beta * advantage.detach().float()).clamp(max=max_weight)


def awac_loss(
    logits: torch.Tensor, actions: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``-w log softmax(logits)[a]`` per action: ``logits`` ``[N, vocab]``, ``actions`` ``[N]`` -> ``[N]``
    (``weights`` ``None``: 1, the plain NLL)."""
    nll = F.cross_entropy(logits.float(), actions, reduction="none")
    return nll if weights is None else weights * nll


def standardize(rewards: Sequence[float]) -> tuple[float, float]:
    """The ``(mean, std)`` that standardise ``rewards`` (population std; 1 when they are all equal, so
    constant rewards stay finite: they then teach the heads nothing but their level)."""
    n = len(rewards)
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)
    return mean, (std if std > 1e-8 else 1.0)


# ---------------------------------------------------------------------------------------------- model


class ILQLForward(NamedTuple):
    """What the network gives at the ``N`` actions of a batch (float32)."""

    logits: torch.Tensor  # [N, vocab]: the LM's logits in each action's state
    q: list[torch.Tensor]  # num_q x [N, vocab]: the online Q heads over the vocabulary
    target_q: torch.Tensor  # [N]: min_i Q̂_i(s, a) at the data's action (no gradient)
    v: torch.Tensor  # [N]: V(s)
    next_v: torch.Tensor  # [N]: V(s') of the next decision state (masked by dones in the target)


class ILQLModel(torch.nn.Module):
    """The LM (:attr:`lm`, what ``model/`` holds) and its ILQL heads (:attr:`heads`) on its final hidden state."""

    def __init__(
        self, lm: torch.nn.Module, num_q: int = 2, detach_heads: bool = False, q_head: QHeadKind = "mlp"
    ) -> None:
        super().__init__()
        self.lm = lm
        self.detach_heads = detach_heads  # the heads read the trunk's features without training it
        self.config = lm.config
        output = lm.get_output_embeddings()  # the heads read what this layer reads
        self.heads = ILQLHeads(output.in_features, output.out_features, num_q, q_head=q_head)
        self.heads.to(output.weight.device)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        actions: torch.Tensor,
        action_mask: torch.Tensor,
        next_state: torch.Tensor,
    ) -> ILQLForward:
        """``input_ids`` / ``attention_mask`` ``[B, T]``; the MDP's ``actions``, ``action_mask`` and
        ``next_state`` ``[B, T-1]`` (:class:`~rlxf.algos.text_mdp.TextMDP`)."""
        out = self.lm(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, use_cache=False
        )
        mask = action_mask.bool()  # [B, T-1]
        states = out.hidden_states[-1][:, :-1]  # [B, T-1, H]: s_t, whose action is x_{t+1}
        embedding = self.lm.get_output_embeddings().weight  # [vocab, H]: what tied Q heads read
        if self.detach_heads:  # only the policy term trains the trunk: the LM stays the behaviour policy
            states, embedding = states.detach(), embedding.detach()
        hidden = states[mask]  # [N, H]: only the states where an action is taken
        taken = actions[mask]  # [N]
        q = [head(hidden, embedding).float() for head in self.heads.q]  # num_q x [N, vocab]
        with torch.no_grad():
            target_q = self.heads.target_q_at(hidden, taken, embedding).float()  # [N]
        values = self.heads.value(states).float()  # [B, T-1]: V at every state
        return ILQLForward(
            logits=out.logits[:, :-1][mask].float(),
            q=q,
            target_q=target_q,
            v=values[mask],
            next_v=values.gather(1, next_state)[mask],
        )


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The LM of a model that may carry ILQL heads (what ``model/`` holds)."""
    return model.lm if isinstance(model, ILQLModel) else model


# ---------------------------------------------------------------------------------------------- one batch


class ILQLTerms(NamedTuple):
    """Per-action losses and values of one batch, each ``[N]``."""

    q_loss: torch.Tensor  # summed over the Q heads
    v_loss: torch.Tensor
    cql_loss: torch.Tensor  # summed over the Q heads
    awac_loss: torch.Tensor  # weighted NLL (the plain NLL when awac_beta is 0; 0 off the policy_top_share)
    nll: torch.Tensor  # the LM's NLL of the action (no gradient)
    q: torch.Tensor  # mean over the heads of Q_i(s, a) (no gradient)
    v: torch.Tensor  # (no gradient)
    advantage: torch.Tensor  # Q̂(s, a) - V(s) (no gradient)

    def total(self, cfg: ILQLConfig) -> torch.Tensor:
        """``L_Q + L_V + cql_scale L_CQL + awac_scale L_pi`` per action."""
        return self.q_loss + self.v_loss + cfg.cql_scale * self.cql_loss + cfg.awac_scale * self.awac_loss


def ilql_terms(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: ILQLConfig) -> ILQLTerms:
    """The ILQL losses of every action of a :func:`collate_ilql` batch (module docstring)."""
    out: ILQLForward = model(
        batch["input_ids"],
        batch["attention_mask"],
        batch["actions"],
        batch["action_mask"],
        batch["next_state"],
    )
    mask = batch["action_mask"].bool()
    actions, rewards, dones = batch["actions"][mask], batch["rewards"][mask], batch["dones"][mask]
    # [N]: 1 where the action's record is one the policy term learns from (policy_top_share), else 0
    policy_weight = batch["policy_weight"][mask.nonzero()[:, 0]]
    target = bellman_target(rewards, out.next_v, dones, cfg.gamma)  # [N]
    q_taken = [q.gather(-1, actions.unsqueeze(-1)).squeeze(-1) for q in out.q]  # num_q x [N]
    advantage = (out.target_q - out.v).detach()
    weights = awac_weights(advantage, cfg.awac_beta, cfg.awac_max_weight) if cfg.awac_beta > 0 else None
    nll = awac_loss(out.logits, actions)
    return ILQLTerms(
        q_loss=sum(q_loss(q, target) for q in q_taken),
        v_loss=value_loss(out.target_q, out.v, cfg.tau),
        cql_loss=sum(cql_loss(q, actions) for q in out.q),
        awac_loss=policy_weight * (nll if weights is None else weights * nll),
        nll=nll.detach(),
        q=torch.stack(q_taken).mean(0).detach(),
        v=out.v.detach(),
        advantage=advantage,
    )


def ilql_compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: ILQLConfig) -> LossOutput:
    """The loop's ``compute_loss``: the loss summed over the micro-batch's actions, metrics as means."""
    terms = ilql_terms(model, batch, cfg)
    n = max(len(terms.v), 1)
    mean = lambda t: t.detach().sum().item() / n  # noqa: E731
    metrics = {
        "loss/q": mean(terms.q_loss),
        "loss/v": mean(terms.v_loss),
        "loss/cql": mean(terms.cql_loss),
        "loss/awac": mean(terms.awac_loss),
        "q/mean": mean(terms.q),
        "v/mean": mean(terms.v),
        "advantage/mean": mean(terms.advantage),
    }
    return LossOutput(loss=terms.total(cfg).sum(), metrics=metrics)


def bc_compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
    """Filtered BC's ``compute_loss``: the LM's NLL summed over the actions (the same mask as ILQL's)."""
    return LossOutput(loss=bc_nll(model, batch).sum(), metrics={})


def bc_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[N]``: ``-log pi_LM(a | s)`` at every action of the batch."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    mask = batch["action_mask"].bool()
    return awac_loss(logits[:, :-1][mask], batch["actions"][mask])


def count_actions(batch: dict[str, Any]) -> int:
    """The normalisation units of a batch: its actions (response tokens that are predicted)."""
    return int(batch["action_mask"].sum())


# ---------------------------------------------------------------------------------------------- data


def collate_ilql(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` ``[B, T]``, each record's ``reward`` and
    ``policy_weight`` (1 unless the record says otherwise) ``[B]`` and the
    MDP arrays ``actions``, ``action_mask``, ``rewards``, ``dones``, ``next_state`` ``[B, T-1]``
    (:func:`~rlxf.algos.text_mdp.build_mdp`)."""
    input_ids = pad([f["input_ids"] for f in features], pad_id)
    labels = pad([f["labels"] for f in features], IGNORE_INDEX)
    lengths = torch.tensor([len(f["input_ids"]) for f in features])
    attention_mask = (torch.arange(input_ids.shape[1])[None, :] < lengths[:, None]).long()
    reward = torch.tensor([float(f["reward"]) for f in features], dtype=torch.float32)
    # 1 for a record the policy term learns from (ILQLConfig.policy_top_share); every record by default
    policy_weight = torch.tensor([float(f.get("policy_weight", 1.0)) for f in features])
    mdp = build_mdp(input_ids, labels, reward)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "reward": reward,
        "policy_weight": policy_weight,
        "actions": mdp.actions,
        "action_mask": mdp.action_mask,
        "rewards": mdp.rewards,
        "dones": mdp.dones,
        "next_state": mdp.next_state,
    }


def reward_field_of(ds: Dataset, cfg: ILQLConfig) -> str:
    """The field holding the reward: ``cfg.reward_field``, or for ``auto`` ``rating`` in a ratings file
    and ``reward`` (``rlxf reward score``'s) in a prompt + completion file. Other kinds are a DataError."""
    if ds.kind not in ("ratings", "sft"):
        raise DataError(
            f"holds {ds.kind} records; rlxf ilql needs prompt + completion (or messages) with a reward: "
            "ratings records (a 'rating' field) or rlxf reward score's output (a 'reward' field)",
            path=ds.path,
            split=ds.split,
        )
    if cfg.reward_field != "auto":
        return cfg.reward_field
    return "rating" if ds.kind == "ratings" else "reward"


def record_rewards(ds: Dataset, name: str) -> list[float]:
    """Every record's reward from field ``name``: a finite number (a number's text in a CSV file); the first
    record without one is a DataError naming its file, line and field."""
    rewards = []
    for i, record in enumerate(ds.records):
        value = record.get(name)
        if value is None:
            raise ds.error(
                i,
                f"no reward: the record has no {name!r} field (reward_field={name}; ratings have 'rating', "
                "rlxf reward score writes 'reward')",
                field=name,
            )
        if isinstance(value, str) and ds.path.suffix == ".csv":
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ds.error(i, f"expected a finite number as the reward, got {show(value)}", field=name)
        rewards.append(float(value))
    return rewards


def select_aspect(ds: Dataset, aspect: str | None) -> Dataset:
    """The records of one ``aspect`` (ratings of several aspects need one chosen); others unchanged."""
    aspects = sorted({str(r["aspect"]) for r in ds.records if r.get("aspect") is not None})
    if aspect is None:
        if len(aspects) > 1:
            raise DataError(
                f"holds ratings of {len(aspects)} aspects ({', '.join(aspects)}): choose one with --aspect",
                path=ds.path,
                split=ds.split,
            )
        return ds
    kept = [i for i, r in enumerate(ds.records) if r.get("aspect") == aspect]
    if not kept:
        raise DataError(
            f"no record has aspect {aspect!r} (aspects: {', '.join(aspects) or 'none'})",
            path=ds.path,
            split=ds.split,
        )
    return ds.select(kept)


def top_share(rewards: Sequence[float], share: float) -> tuple[list[int], float]:
    """The indices (in file order) of the ``ceil(share n)`` highest rewards (ties: earlier first), and the
    lowest reward kept (the threshold held-out records are filtered at)."""
    k = max(1, math.ceil(share * len(rewards)))
    order = sorted(range(len(rewards)), key=lambda i: (-rewards[i], i))[:k]
    return sorted(order), rewards[order[-1]]


@dataclass
class RatedData:
    """Training and held-out records as tokenised examples with their (standardised) rewards."""

    tokenizer: Any
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    reward_field: str
    reward_mean: float
    reward_std: float
    threshold: float | None = None  # filtered BC, or ILQL's policy term: the lowest training reward kept


def read_rated_data(cfg: ILQLConfig) -> RatedData:
    """Read, check, split, (filter) and tokenise the data; every problem is raised before any model loads."""
    train_ds, eval_ds = read_train_eval(cfg, None)
    name = reward_field_of(train_ds, cfg)
    train_ds = select_aspect(train_ds, cfg.aspect)
    train_rewards = record_rewards(train_ds, name)
    eval_rewards: list[float] = []
    if eval_ds is not None:
        eval_ds = select_aspect(eval_ds, cfg.aspect)
        eval_rewards = record_rewards(eval_ds, name)
    check_full_batch(len(train_ds), cfg, train_ds, eval_ds)
    mean, std = standardize(train_rewards) if cfg.standardize_rewards else (0.0, 1.0)
    threshold = None
    if cfg.objective == "filtered_bc":
        kept, threshold = top_share(train_rewards, cfg.bc_top_share)
        logger.info(
            f"filtered BC: {len(kept)} of {len(train_ds)} training records (the top {cfg.bc_top_share:.0%} by "
            f"{name}, >= {threshold:.4g})"
        )
        train_ds, train_rewards = train_ds.select(kept), [train_rewards[i] for i in kept]
        check_full_batch(len(train_ds), cfg, train_ds, eval_ds, what="records in the top bc_top_share")
        if eval_ds is not None:
            held = [i for i, r in enumerate(eval_rewards) if r >= threshold]
            eval_ds = eval_ds.select(held) if held else None
            eval_rewards = [eval_rewards[i] for i in held]
            if not held:
                logger.info(
                    f"no held-out record reaches the training threshold {threshold:.4g}: none held out"
                )
    tokenizer = load_tokenizer(resolve_model(cfg.model.name_or_path))
    train = tokenize_sft_data(train_ds, tokenizer, cfg)  # type: ignore[arg-type]  # same length options
    held_out = tokenize_sft_data(eval_ds, tokenizer, cfg) if eval_ds is not None else []  # type: ignore[arg-type]
    for examples, rewards in ((train, train_rewards), (held_out, eval_rewards)):
        for example, reward in zip(examples, rewards):
            example["reward"] = (reward - mean) / std
    if cfg.objective == "ilql" and cfg.policy_top_share < 1.0:
        kept, threshold = top_share(train_rewards, cfg.policy_top_share)
        logger.info(
            f"the policy term learns from {len(kept)} of {len(train)} training records (the top "
            f"{cfg.policy_top_share:.0%} by {name}, >= {threshold:.4g}); the heads from all of them"
        )
        for example in train:
            example["policy_weight"] = 0.0
        for i in kept:
            train[i]["policy_weight"] = 1.0
        for example, reward in zip(held_out, eval_rewards):  # held out at the training threshold
            example["policy_weight"] = float(reward >= threshold)
    return RatedData(tokenizer, train, held_out, name, mean, std, threshold)


# ---------------------------------------------------------------------------------------------- command


def ilql(cfg: ILQLConfig) -> RunResult:
    """ILQL (or filtered BC) of ``cfg.model`` on the rated records ``cfg.data`` (``rlxf ilql``); the run folder
    and result are :func:`~rlxf.algos.offline.fit_and_save`'s. Bad input stops it before ``cfg.out`` is
    touched and before any model loads."""
    print_config(cfg, "rlxf ilql")
    # The target heads are buffers every process keeps whole: one process or DDP, no FSDP / DeepSpeed.
    check_launch(os.environ, command="ilql", sharding_ok=False)

    # 1. Data: read, check the rewards, split, filter, tokenise.
    data = read_rated_data(cfg)
    logger.info(
        f"{len(data.train)} training and {len(data.eval)} held-out records; reward '{data.reward_field}' "
        f"mean {data.reward_mean:.4g}, std {data.reward_std:.4g}"
        + (" (standardised)" if cfg.standardize_rewards else "")
    )
    collate = functools.partial(collate_ilql, pad_id=pad_token_id(data.tokenizer))

    # 2. Model: the LM, and for ILQL its heads.
    lm, _ = load_trainable_model(cfg)
    if cfg.objective == "filtered_bc":
        return _fit_bc(cfg, lm, data, collate)
    model = ILQLModel(lm, cfg.num_q_heads, detach_heads=cfg.detach_heads, q_head=cfg.q_head)

    # 3. Losses: summed over actions; the loop divides by the step's number of actions.
    def score(model: torch.nn.Module, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Per held-out record: the sums of its actions' losses and values, and its number of actions."""
        batch = to_device(collate(examples), model_device(model))
        terms = ilql_terms(model, batch, cfg)
        rows = batch["action_mask"].bool().nonzero()[:, 0]  # the record of each action
        figures = {
            "loss": terms.total(cfg),
            "loss/q": terms.q_loss,
            "loss/v": terms.v_loss,
            "loss/cql": terms.cql_loss,
            "nll": terms.nll,
            "q/mean": terms.q,
            "v/mean": terms.v,
            "advantage/mean": terms.advantage,
        }
        sums = {}
        for name, values in figures.items():
            total = torch.zeros(len(examples), dtype=torch.float64, device=values.device)
            sums[name] = total.index_add_(0, rows, values.detach().double())
        sums["actions"] = batch["action_mask"].sum(-1).double()
        return sums

    def summarize(figures: dict[str, torch.Tensor]) -> dict[str, float]:
        """Means per held-out action; the LM's perplexity on the held-out responses."""
        actions = figures["actions"].sum()
        result = {
            name: (values.sum() / actions).item() for name, values in figures.items() if name != "actions"
        }
        result["perplexity"] = math.exp(result["nll"]) if result["nll"] < 700 else math.inf
        return result

    settings = {
        "beta": cfg.decode_beta,
        "top_k": cfg.decode_top_k,
        "gamma": cfg.gamma,
        "tau": cfg.tau,
        "reward_field": data.reward_field,
        "reward_mean": data.reward_mean,
        "reward_std": data.reward_std,
        "standardized": cfg.standardize_rewards,
        "policy_top_share": cfg.policy_top_share,
    }

    def after_step(step: int) -> None:
        if (step + 1) % cfg.target_sync_every == 0:
            model.heads.polyak_update(cfg.polyak_alpha)

    # 4. Fit, save model/ (the LM, plus the heads and ilql.json) and summary.json.
    return fit_and_save(
        cfg,
        model=model,
        tokenizer=data.tokenizer,
        train_examples=data.train,
        eval_examples=data.eval,
        collate=collate,
        units=count_actions,
        compute_loss=functools.partial(ilql_compute_loss, cfg=cfg),
        score=score,
        summarize=summarize,
        desc="ilql",
        command="ilql",
        unit="records",
        saved_part=language_model,
        save_extra=lambda trained, folder: save_heads(trained.heads, folder, settings),
        after_step=after_step,
    )


def _fit_bc(cfg: ILQLConfig, lm: torch.nn.Module, data: RatedData, collate: Any) -> RunResult:
    """Filtered BC: the LM's NLL on the kept records' actions; ``model/`` is a plain LM folder."""

    def score(model: torch.nn.Module, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = to_device(collate(examples), model_device(model))
        nll = bc_nll(model, batch)
        rows = batch["action_mask"].bool().nonzero()[:, 0]
        total = torch.zeros(len(examples), dtype=torch.float64, device=nll.device)
        return {
            "nll": total.index_add_(0, rows, nll.detach().double()),
            "actions": batch["action_mask"].sum(-1).double(),
        }

    def summarize(figures: dict[str, torch.Tensor]) -> dict[str, float]:
        mean = (figures["nll"].sum() / figures["actions"].sum()).item()
        return {"loss": mean, "perplexity": math.exp(mean) if mean < 700 else math.inf}

    return fit_and_save(
        cfg,
        model=lm,
        tokenizer=data.tokenizer,
        train_examples=data.train,
        eval_examples=data.eval,
        collate=collate,
        units=count_actions,
        compute_loss=bc_compute_loss,
        score=score,
        summarize=summarize,
        desc="filtered bc",
        command="ilql",
        unit="records",
    )


__all__ = [
    "ILQLConfig",
    "ILQLModel",
    "ILQL_EVAL_METRICS",
    "ILQL_METRICS",
    "awac_loss",
    "awac_weights",
    "bellman_target",
    "collate_ilql",
    "cql_loss",
    "expectile_loss",
    "ilql",
    "polyak_update_",
    "q_loss",
    "standardize",
    "top_share",
    "value_loss",
]
