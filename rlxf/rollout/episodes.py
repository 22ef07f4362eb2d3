"""Environment rollouts: a batch of text-environment episodes played by the policy, token-exact.

An episode (:mod:`rlxf.envs`) starts with the environment's first observation, rendered as the prompt (a
user turn through the chat template, the assistant turn opened). Then, turn after turn:

1. the policy samples an action from the whole context so far (prompt, its earlier actions, the
   observations), by token ids (:meth:`rlxf.rollout.hf.HFEngine.generate_ids`): the sampled ids are kept as
   they are, never decoded and encoded again, so the tokens trained on are the tokens sampled;
2. the action's text goes to ``env.step``, which answers with a reward, ``terminated`` / ``truncated`` and
   the next observation;
3. the observation is appended as tokens: the chat template's closing of the assistant turn, a user turn
   holding the observation and the next assistant header (:class:`TurnRenderer`).

The result is one :class:`~rlxf.rollout.engine.RolloutBatch` row per episode: the completion is every
token after the prompt; ``completion_mask`` covers them all (the model attends to the observations),
``action_mask`` only the policy's tokens (the loss, the KL and the advantages see nothing else), and
``turn_rewards`` holds each turn's reward at its last action token. An episode ends when the environment
terminates or truncates it, after ``max_turns`` actions, or when its tokens after the prompt would pass
``max_episode_tokens`` (then it is cut there and marked truncated, finish reason ``length``).

Random streams: the action of row ``r`` at turn ``k`` is drawn from the engine's stream for
``(seed * 1009 + k, r)``, so an episode samples the same tokens whatever other episodes run beside it.

Left out: observations that are images, several tool calls in one action run in parallel, environments
that act on partial actions (streaming), and vLLM / Ray engines (they take text prompts; a token-id
interface for them is future work: ``rlxf rl --env`` checks the engine up front).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from rlxf.config import option
from rlxf.rollout.engine import RolloutBatch, SamplingConfig, pad_to_width
from rlxf.rollout.hf import HFEngine

_MARKER = "rlxf-action-7f3a9c"  # an assistant turn's content, to find where the template closes a turn


@dataclass
class EnvConfig:
    """The environment of ``rlxf rl --env`` (the ``env:`` section); unset name: prompts and a reward."""

    name: str = option(
        "",
        help="a built-in environment (arithmetic, guess-number, calculator, dialogue) or package.module:Class",
    )
    args: dict[str, Any] = option(
        default_factory=dict, help="keyword arguments of the environment, e.g. {max_operand: 20}"
    )
    max_turns: int = option(0, help="most actions per episode; 0: the environment's own max_turns")
    max_episode_tokens: int = option(
        256, help="tokens after the first observation (actions + observations); an episode is cut there"
    )
    eval_episodes: int = option(64, help="held-out episodes: the test split, seeds 0 .. eval_episodes - 1")

    def __post_init__(self) -> None:
        if self.max_turns < 0:
            raise ValueError(f"env.max_turns must be >= 0, got {self.max_turns}")
        if self.max_episode_tokens < 1:
            raise ValueError(f"env.max_episode_tokens must be >= 1, got {self.max_episode_tokens}")
        if self.eval_episodes < 0:
            raise ValueError(f"env.eval_episodes must be >= 0, got {self.eval_episodes}")
        if not isinstance(self.args, dict):
            raise ValueError(f"env.args must be a mapping of keyword arguments, got {self.args!r}")
        for reserved in ("split", "max_turns"):
            if reserved in self.args:
                raise ValueError(
                    f"env.args.{reserved}: set by rlxf (split: train for training, test for evaluation; "
                    "max_turns: env.max_turns)"
                )

    def make(self, split: str) -> Any:
        """A fresh environment of the ``split`` (``train`` or ``test``)."""
        from rlxf.envs import make_env

        kwargs = dict(self.args, split=split)
        if self.max_turns:
            kwargs["max_turns"] = self.max_turns
        return make_env(self.name, **kwargs)


class TurnRenderer:
    """Observations as token ids, the way the tokenizer's chat template writes a conversation.

    * :meth:`first`: the first observation (a string: one user message; or a list of messages) rendered
      with the assistant turn opened, as the prompt's ids.
    * :meth:`after_action`: what follows an action: the rest of the template's closing of the assistant
      turn (its end-of-turn token only if the policy did not sample it), a user turn with the observation
      and the next assistant header. Found once by rendering a probe conversation; a template whose
      rendering of a longer conversation does not start with the shorter one's is an error.

    Without a chat template an observation is plain text between line breaks.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.chat = getattr(tokenizer, "chat_template", None) is not None
        self.closing = ""  # the template's text after an assistant turn's content
        self.user_prefix = self.user_suffix = ""  # around a user message, then the assistant header
        if self.chat:
            probe = [{"role": "user", "content": "question"}, {"role": "assistant", "content": _MARKER}]
            closed = self._render(probe, add_generation_prompt=False)
            observed = self._render(
                [*probe, {"role": "user", "content": _MARKER}], add_generation_prompt=True
            )
            if not observed.startswith(closed) or _MARKER not in closed:
                raise ValueError(
                    "the tokenizer's chat template does not render a conversation as an extension of its "
                    "shorter prefix; environments need a template that does (or no template)"
                )
            self.closing = closed[closed.rindex(_MARKER) + len(_MARKER) :]
            self.user_prefix, self.user_suffix = observed[len(closed) :].split(_MARKER)

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def first(self, observation: str | list[dict[str, str]]) -> tuple[str, list[int]]:
        """The prompt: its text and ids."""
        from rlxf.data.tokenize import encode_prompt

        if self.chat:
            messages = (
                [{"role": "user", "content": observation}] if isinstance(observation, str) else observation
            )
            text = self._render(list(messages), add_generation_prompt=True)
        else:
            text = (
                observation if isinstance(observation, str) else "\n".join(m["content"] for m in observation)
            )
            text = text + "\n"
        return text, encode_prompt(self.tokenizer, text)

    def after_action(self, observation: str, action_ids: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
        """The observation's ids after an action whose ids are ``action_ids``."""
        if not self.chat:
            return self._encode("\n" + observation + "\n")
        closing = self.closing
        if action_ids and action_ids[-1] in eos_ids:
            # The policy closed its turn itself: its end-of-turn token is the closing's first text.
            ended = self.tokenizer.decode([action_ids[-1]])
            if closing.startswith(ended):
                closing = closing[len(ended) :]
        return self._encode(closing + self.user_prefix + observation + self.user_suffix)


@dataclass
class _Episode:
    env: Any
    prompt: str
    prompt_ids: list[int]
    ids: list[int] = dataclasses.field(default_factory=list)  # every token after the prompt
    action: list[int] = dataclasses.field(default_factory=list)  # 1 where ids[i] was sampled by the policy
    logprobs: list[float] = dataclasses.field(default_factory=list)
    rewards: list[float] = dataclasses.field(default_factory=list)  # per token: a turn's reward at its end
    transcript: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    done: bool = False
    terminated: bool = False
    cut: bool = False  # cut by the token budget
    success: bool = False


def run_episodes(
    engine: HFEngine,
    make_env: Callable[[], Any],
    seeds: Sequence[int],
    sampling: SamplingConfig,
    *,
    max_turns: int | None = None,
    max_episode_tokens: int = 256,
    seed: int = 0,
    rows: Sequence[int] | None = None,
) -> RolloutBatch:
    """Play one episode per entry of ``seeds`` (``env.reset(seed=seeds[i])`` on a fresh ``make_env()``);
    the batch rows are the episodes in order. ``sampling.n`` is not applied (repeat a seed for a group).

    ``max_turns`` caps the environment's own ``max_turns``; ``rows`` numbers each episode's random stream
    (default ``0..len-1``). See the module docstring for the layout."""
    if not isinstance(engine, HFEngine):
        raise ValueError(
            f"environment rollouts run on the transformers engine (rollout.engine=hf), not {type(engine).__name__}"
        )
    tokenizer = engine.tokenizer
    renderer = TurnRenderer(tokenizer)
    rows = list(range(len(seeds))) if rows is None else list(rows)
    episodes: list[_Episode] = []
    for env_seed in seeds:
        env = make_env()
        observation, _ = env.reset(seed=int(env_seed))
        text, ids = renderer.first(observation)
        episodes.append(_Episode(env=env, prompt=text, prompt_ids=ids))
    limit = min(int(getattr(episodes[0].env, "max_turns", 1)), max_turns or 10**9) if episodes else 0
    turn_sampling = dataclasses.replace(sampling, n=1)
    for turn in range(limit):
        active = [i for i, e in enumerate(episodes) if not e.done]
        if not active:
            break
        batch = engine.generate_ids(
            [episodes[i].prompt_ids + episodes[i].ids for i in active],
            turn_sampling,
            seed=seed * 1009 + turn,
            rows=[rows[i] for i in active],
        )
        lengths = batch.completion_mask.sum(-1).tolist()
        for j, i in enumerate(active):
            episode = episodes[i]
            room = max_episode_tokens - len(episode.ids)
            action = batch.completion_ids[j, : int(lengths[j])].tolist()
            logprobs = batch.logprobs[j, : int(lengths[j])].tolist()
            if len(action) > room:  # the action does not fit the episode's budget: cut, not stepped
                action, logprobs = action[:room], logprobs[:room]
                episode.cut = episode.done = True
            episode.ids += action
            episode.action += [1] * len(action)
            episode.logprobs += logprobs
            episode.rewards += [0.0] * len(action)
            if episode.cut:
                episode.transcript.append({"action": tokenizer.decode(action, skip_special_tokens=True)})
                continue
            observation, reward, terminated, truncated, info = episode.env.step(batch.completions[j])
            if action:
                episode.rewards[-1] += float(reward)  # the turn's reward at its last action token
            episode.transcript.append(
                {"action": batch.completions[j], "reward": float(reward), "observation": observation}
            )
            episode.success = bool(info.get("success", episode.success))
            if terminated or truncated or turn == limit - 1:
                episode.done, episode.terminated = True, bool(terminated)
                continue
            following = renderer.after_action(str(observation), action, engine.eos_token_ids)
            if len(episode.ids) + len(following) >= max_episode_tokens:  # no room left for another action
                episode.cut = episode.done = True
                continue
            episode.ids += following
            episode.action += [0] * len(following)
            episode.logprobs += [0.0] * len(following)
            episode.rewards += [0.0] * len(following)
    for episode in episodes:
        episode.env.close()
    return _to_batch(episodes, engine.pad_token_id, tokenizer, next(engine.model.parameters()).device)


def _to_batch(episodes: list[_Episode], pad_id: int, tokenizer: Any, device: torch.device) -> RolloutBatch:
    def right(values: list[list[float]], dtype: torch.dtype, fill: float) -> torch.Tensor:
        width = max(1, max(len(v) for v in values))
        return torch.stack(
            [pad_to_width(torch.tensor([v], dtype=dtype), width, fill, left=False)[0] for v in values]
        ).to(device)

    prompt_width = max(len(e.prompt_ids) for e in episodes)
    prompt_ids = torch.stack(
        [pad_to_width(torch.tensor([e.prompt_ids]), prompt_width, pad_id, left=True)[0] for e in episodes]
    ).to(device)  # [B, P]
    prompt_mask = torch.stack(
        [
            pad_to_width(torch.ones(1, len(e.prompt_ids), dtype=torch.long), prompt_width, 0, True)[0]
            for e in episodes
        ]
    ).to(device)  # [B, P]
    completion_ids = right([e.ids for e in episodes], torch.long, pad_id)  # [B, C]
    completion_mask = right([[1] * len(e.ids) for e in episodes], torch.long, 0)  # [B, C]
    return RolloutBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        completion_ids=completion_ids,
        completion_mask=completion_mask,
        logprobs=right([e.logprobs for e in episodes], torch.float32, 0.0),
        prompts=[e.prompt for e in episodes],
        completions=[tokenizer.decode(e.ids, skip_special_tokens=True) for e in episodes],
        finish_reasons=["length" if e.cut else "eos" for e in episodes],
        prompt_index=torch.arange(len(episodes), device=device),
        action_mask=right([e.action for e in episodes], torch.long, 0),
        turn_rewards=right([e.rewards for e in episodes], torch.float32, 0.0),
        episodes=[
            {
                "turns": sum(1 for t in e.transcript),
                "success": e.success,
                "reward": sum(e.rewards),
                "truncated": not e.terminated,
                "transcript": e.transcript,
            }
            for e in episodes
        ],
    )


__all__ = ["EnvConfig", "TurnRenderer", "run_episodes"]
