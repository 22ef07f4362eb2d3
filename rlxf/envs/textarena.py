"""TextArena's single-player games as rlxf environments: ``rlxf rl --env textarena/GuessTheNumber-v0-raw``.

TextArena (Guertler et al. 2025, ``pip install "rlxf[textarena]"``) ships text games behind its own
interface: ``ta.make(env_id)``, ``env.reset(num_players, seed)``, ``env.get_observation() -> (player,
messages)``, ``env.step(action) -> (done, info)`` and ``env.close() -> (rewards, game_info)``. This adapter
is a :class:`~rlxf.envs.base.TextEnv` over it:

* the observation of a turn is the text of the messages TextArena sent since the last action, the
  player's own echoed action left out (the trainer has the action's tokens already); use the ``-raw``
  ids, whose observations are those new messages (the wrapped ids resend the whole history each turn);
* the reward is the player's reward from ``env.close()`` when the game ends (TextArena's rewards are
  per game), 0 on the turns before; ``info["success"]`` is ``reward > 0``; an invalid move ends a raw game
  with TextArena's own verdict in ``info``;
* ``split``: TextArena draws a game from its seed; the test split plays seeds offset by ``10**6``, so
  training and held-out games come from different seeds (TextArena does not promise that two seeds never
  give the same puzzle).

Left out: games for two or more players (rlxf's two-agent trainer is ``rlxf selfplay``) and TextArena's
online play.
"""

from __future__ import annotations

from typing import Any

from rlxf.envs.base import Observation, Split, TextEnv, check_split

TEST_SEED_OFFSET = 10**6  # the test split's seeds: far from any training step's


def _import_textarena() -> Any:
    try:
        import textarena
    except ImportError as exc:  # an optional extra
        raise ImportError(
            'TextArena environments need the textarena package: pip install "rlxf[textarena]"'
        ) from exc
    return textarena


class TextArenaEnv(TextEnv):
    """One single-player TextArena game (``env_id``, e.g. ``GuessTheNumber-v0-raw``) as a TextEnv."""

    def __init__(self, env_id: str, split: Split = "train", max_turns: int = 32) -> None:
        if not isinstance(env_id, str) or not env_id:
            raise ValueError("env_id must name a TextArena environment, e.g. GuessTheNumber-v0-raw")
        if max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {max_turns}")
        check_split(split)
        textarena = _import_textarena()
        registry = textarena.envs.registration.ENV_REGISTRY
        if env_id not in registry:
            close = [name for name in registry if name.lower().startswith(env_id.split("-")[0].lower())][:8]
            hint = f" (similar: {', '.join(close)})" if close else ""
            raise ValueError(f"TextArena has no environment {env_id!r}{hint}")
        self.env_id, self.split, self.max_turns = env_id, split, max_turns
        self._textarena = textarena
        self.env: Any = None
        self.player = 0
        self.done = True

    def _text(self, messages: Any) -> str:
        """The messages' text, the player's own actions left out (TextArena echoes them)."""
        if isinstance(messages, str):  # a wrapped (not raw) id: one string
            return messages
        return "\n".join(str(text) for sender, text, *_ in messages if sender != self.player)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[Observation, dict]:
        if options:
            raise ValueError(f"{self.env_id} takes no reset options, got {sorted(options)}")
        seed = 0 if seed is None else int(seed)
        self.env = self._textarena.make(env_id=self.env_id)
        try:
            self.env.reset(num_players=1, seed=seed + (TEST_SEED_OFFSET if self.split == "test" else 0))
        except Exception as exc:  # TextArena's own checks (e.g. a game for two players)
            raise ValueError(f"TextArena {self.env_id}: cannot start a one-player game ({exc})") from exc
        self.player, messages = self.env.get_observation()
        self.done, self.turn = False, 0
        return self._text(messages), {"env_id": self.env_id, "seed": seed}

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict]:
        if self.env is None or self.done:
            raise RuntimeError("step() before reset() or after the episode ended: call reset() first")
        if not isinstance(action, str):
            raise TypeError(f"the action must be a string, got {type(action).__name__}")
        self.turn += 1
        done, _ = self.env.step(action=action)
        if done:
            rewards, game_info = self.env.close()
            reward = float(rewards.get(self.player, 0.0))
            self.done = True
            info = {"success": reward > 0, **dict(game_info.get(self.player, {}))}
            return "", reward, True, False, info
        if self.turn >= self.max_turns:
            self.done = True
            self.env.close()
            return "", 0.0, False, True, {"success": False}
        self.player, messages = self.env.get_observation()
        return self._text(messages), 0.0, False, False, {}

    def close(self) -> None:
        self.env = None


__all__ = ["TEST_SEED_OFFSET", "TextArenaEnv"]
