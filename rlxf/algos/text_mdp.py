"""The text MDP of offline RL on language: which tokens are actions, where rewards and episode ends sit.

A token sequence ``x_0 .. x_{T-1}`` (prompt, then response; for a conversation, turns in order) is read as
a Markov decision process at the token level, as ILQL does (Snell et al. 2023, section 3; the same as
trlX's ``ILQLBatch``):

* **states**: ``s_t`` = the tokens up to and including ``x_t`` (the LM's hidden state at position ``t``);
* **actions**: ``a_t = x_{t+1}``, the token chosen in state ``s_t``, *when it is a response token*; prompt
  tokens (and a conversation's user turns, and padding) are never actions: the environment wrote them;
* **rewards**: a record's reward ``r`` is given on its **last action** (every other action gets 0); for
  multi-turn data with one reward per assistant turn (a *segment*: a run of consecutive actions), each
  segment's reward sits on that segment's last action;
* **terminal**: the episode ends after its last action (``done = 1``): nothing is bootstrapped after it;
* **transitions**: after action ``a_t`` the next decision state is ``s_{t+1}`` inside a segment, and the
  state of the next segment's first action across a user turn (the user's tokens are part of the
  transition); :func:`next_action_index`;
* **discount**: ``gamma`` per action (tokens of the environment do not count).

All arrays are aligned with the LM's next-token predictions, ``[B, T-1]``: position ``t`` is state ``s_t``
and its action ``x_{t+1}`` (what ``logits[:, t]`` predicts). :func:`build_mdp` makes a :class:`TextMDP`
from token ids, labels (``-100`` on non-actions, as :func:`rlxf.data.tokenize_sft` writes them) and
rewards; the same arrays feed ILQL (:mod:`rlxf.algos.ilql`: Bellman targets from ``rewards``, ``dones``
and ``next_state``), filtered behaviour cloning (:func:`episode_returns` ranks the records; the policy
term is the LM's log-likelihood on ``action_mask``) and advantage-weighted regression (Peng et al. 2019:
:func:`returns_to_go` are its Monte-Carlo targets).

Left out: rewards on individual tokens (a process reward per step), partial episodes (a truncated response
is treated as finished, as trlX does), discounting that counts environment tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlxf.data import IGNORE_INDEX


@dataclass
class TextMDP:
    """One batch as transitions; every tensor ``[B, T-1]`` (position ``t``: state ``s_t``, action ``x_{t+1}``)."""

    actions: torch.Tensor  # long: a_t = input_ids[:, t+1]
    action_mask: torch.Tensor  # float: 1 where a_t is an action (a response token)
    rewards: torch.Tensor  # float: r_t, non-zero only on the last action of a segment
    dones: torch.Tensor  # float: 1 on the episode's last action (no bootstrap after it)
    next_state: torch.Tensor  # long: the position of the next decision state (itself where done)

    def to(self, device: torch.device | str) -> TextMDP:
        return TextMDP(**{name: value.to(device) for name, value in self.__dict__.items()})

    @property
    def num_actions(self) -> int:
        return int(self.action_mask.sum().item())


def action_mask_of(labels: torch.Tensor) -> torch.Tensor:
    """``[B, T] -> [B, T-1]``: 1 where position ``t``'s next token ``x_{t+1}`` is an action (its label is not
    ``-100``: a response token, not prompt, user turn or padding)."""
    return (labels[:, 1:] != IGNORE_INDEX).float()


def segment_ends(action_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T-1]`` float: 1 on the last action of each run of consecutive actions (an assistant turn)."""
    following = torch.cat([action_mask[:, 1:], torch.zeros_like(action_mask[:, :1])], dim=1)
    return action_mask * (1.0 - following)


def episode_ends(action_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T-1]`` float: 1 on each row's last action (``dones``); a row without actions has none."""
    width = action_mask.shape[1]
    positions = torch.arange(width, device=action_mask.device).expand_as(action_mask)
    last = torch.where(action_mask.bool(), positions, torch.full_like(positions, -1)).max(dim=1).values  # [B]
    return (positions == last.unsqueeze(1)).float() * action_mask


def place_rewards(
    action_mask: torch.Tensor,
    rewards: torch.Tensor,
    segment_rewards: list[list[float]] | None = None,
) -> torch.Tensor:
    """``[B, T-1]`` per-action rewards: ``rewards`` ``[B]`` on each row's last action, or with
    ``segment_rewards`` (one list per row, one reward per segment in order) each segment's reward on its
    last action. A row whose number of segments differs from its list's length is a ``ValueError``."""
    if segment_rewards is None:
        return episode_ends(action_mask) * rewards.to(action_mask.dtype).unsqueeze(1)
    ends = segment_ends(action_mask)
    out = torch.zeros_like(action_mask)
    if len(segment_rewards) != action_mask.shape[0]:
        raise ValueError(f"{len(segment_rewards)} reward lists for {action_mask.shape[0]} rows")
    for row, values in enumerate(segment_rewards):
        positions = ends[row].nonzero().squeeze(1)
        if len(positions) != len(values):
            raise ValueError(f"row {row} has {len(positions)} segments but {len(values)} rewards")
        out[row, positions] = torch.tensor(values, dtype=out.dtype, device=out.device)
    return out


def next_action_index(action_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T-1]`` long: for each position, the first action position after it (the next decision state:
    ``t + 1`` inside a segment, the next segment's first action across a user turn), or the position itself
    when no action follows (the episode's end, where ``done`` stops any bootstrap)."""
    width = action_mask.shape[1]
    positions = torch.arange(width, device=action_mask.device).expand_as(action_mask)
    big = torch.full_like(positions, width)
    # the smallest action position >= t, then shifted by one to read "> t"
    candidates = torch.where(action_mask.bool(), positions, big)
    at_or_after = candidates.flip(1).cummin(dim=1).values.flip(1)  # [B, T-1]
    after = torch.cat([at_or_after[:, 1:], big[:, :1]], dim=1)
    return torch.where(after < width, after, positions)


def build_mdp(
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    rewards: torch.Tensor,
    segment_rewards: list[list[float]] | None = None,
) -> TextMDP:
    """The :class:`TextMDP` of a right-padded batch: ``input_ids`` and ``labels`` ``[B, T]``, ``rewards``
    ``[B]`` (or ``segment_rewards``, :func:`place_rewards`)."""
    mask = action_mask_of(labels)
    return TextMDP(
        actions=input_ids[:, 1:],
        action_mask=mask,
        rewards=place_rewards(mask, rewards, segment_rewards),
        dones=episode_ends(mask),
        next_state=next_action_index(mask),
    )


def returns_to_go(mdp: TextMDP, gamma: float) -> torch.Tensor:
    """``[B, T-1]``: ``G_t = sum_{k >= 0} gamma^k r_{t_k}`` over this and the following actions of the
    episode (``t_0 = t``, ``t_{k+1}`` = the next action after ``t_k``); 0 on non-actions. The Monte-Carlo
    target of AWR and of filtered BC's ranking."""
    returns = torch.zeros_like(mdp.rewards)
    following = torch.zeros(mdp.rewards.shape[0], dtype=mdp.rewards.dtype, device=mdp.rewards.device)
    for t in range(mdp.rewards.shape[1] - 1, -1, -1):  # backwards: G_t = r_t + gamma G_next
        is_action = mdp.action_mask[:, t]
        value = mdp.rewards[:, t] + gamma * following * (1.0 - mdp.dones[:, t])
        returns[:, t] = value * is_action
        following = torch.where(is_action.bool(), value, following)
    return returns


def episode_returns(mdp: TextMDP, gamma: float = 1.0) -> torch.Tensor:
    """``[B]``: each episode's return from its first action (``G`` at the first action; 0 without actions)."""
    returns = returns_to_go(mdp, gamma)
    first = mdp.action_mask.argmax(dim=1)  # the first action position (0 when there is none: G is 0 there)
    return returns.gather(1, first.unsqueeze(1)).squeeze(1)


__all__ = [
    "TextMDP",
    "action_mask_of",
    "build_mdp",
    "episode_ends",
    "episode_returns",
    "next_action_index",
    "place_rewards",
    "returns_to_go",
    "segment_ends",
]
