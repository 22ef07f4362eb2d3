"""Gymnasium registration of the built-in text environments (gymnasium is an optional extra).

:func:`register_gymnasium` registers ``rlxf/Arithmetic-v0``, ``rlxf/GuessNumber-v0``, ``rlxf/Calculator-v0``
and ``rlxf/Dialogue-v0``, so ``gymnasium.make("rlxf/Arithmetic-v0", split="test")`` works (keyword arguments
go to the environment's constructor). Registering again does nothing (no "Overriding environment" warning).

``gymnasium.make`` needs a ``gymnasium.Env`` with spaces, so the entry point is :class:`GymnasiumTextEnv`,
an adapter around any :class:`~rlxf.envs.base.TextEnv` (built here on first use, since gymnasium may be
missing; ``from rlxf.envs.gym import GymnasiumTextEnv`` works when it is installed). Its observation and
action spaces are ``gymnasium.spaces.Text(max_length=4096, min_length=0, charset=string.printable)``:
``min_length=0`` because the observation after the last step is ``""``, and the built-in environments write
only printable ASCII, so gymnasium's passive environment checker (kept on) finds their observations in the
space. Text from elsewhere (a custom environment, a language model playing the dialogue's user) may fall
outside the space; the adapter passes it on unchanged (gymnasium only warns, on the first reset and step).

A first observation that is a list of chat messages becomes one string: the system messages' contents, then
the content of the last user message, joined by a blank line (what a plain-text agent needs to see). The
wrapped environment's own ``max_turns`` truncates episodes; no ``TimeLimit`` is registered.

Left out: vectorised environments (``gymnasium.make_vec``) and rendering.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import string
from typing import Any

from rlxf.envs.base import Observation, TextEnv

logger = logging.getLogger(__name__)

GYMNASIUM_IDS: dict[str, str] = {
    "rlxf/Arithmetic-v0": "arithmetic",
    "rlxf/GuessNumber-v0": "guess-number",
    "rlxf/Calculator-v0": "calculator",
    "rlxf/Dialogue-v0": "dialogue",
}

MAX_TEXT_LENGTH = 4096
CHARSET = string.printable  # letters, digits, punctuation and whitespace (including "\n")


def gymnasium_available() -> bool:
    """Whether gymnasium can be imported (checked without importing it)."""
    return importlib.util.find_spec("gymnasium") is not None


def flatten_observation(observation: Observation) -> str:
    """A text environment's observation as one string: a string as it is; a list of messages as its system
    messages' contents then the last user message's content, joined by a blank line."""
    if isinstance(observation, str):
        return observation
    system = [m["content"] for m in observation if m.get("role") == "system"]
    users = [m["content"] for m in observation if m.get("role") == "user"]
    return "\n\n".join([*system, *users[-1:]])


@functools.lru_cache(maxsize=1)
def _adapter_class() -> type:
    import gymnasium

    class GymnasiumTextEnv(gymnasium.Env):
        """A :class:`~rlxf.envs.base.TextEnv` as a ``gymnasium.Env`` with ``Text`` spaces.

        ``env``: a TextEnv, or a name or ``"package.module:ClassName"`` spec built by
        :func:`rlxf.envs.make_env` with ``kwargs``.
        """

        metadata: dict[str, Any] = {"render_modes": []}

        def __init__(self, env: TextEnv | str, **kwargs: Any) -> None:
            if isinstance(env, str):
                from rlxf.envs import make_env

                env = make_env(env, **kwargs)
            elif kwargs:
                raise ValueError(
                    f"keyword arguments {sorted(kwargs)} need an environment name, not an instance"
                )
            self.text_env = env
            space = gymnasium.spaces.Text(max_length=MAX_TEXT_LENGTH, min_length=0, charset=CHARSET)
            self.observation_space = space
            self.action_space = gymnasium.spaces.Text(
                max_length=MAX_TEXT_LENGTH, min_length=0, charset=CHARSET
            )

        @property
        def max_turns(self) -> int:
            """The wrapped environment's most actions per episode."""
            return int(getattr(self.text_env, "max_turns", 1))

        def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[str, dict]:
            """The wrapped environment's reset, its first observation flattened to a string."""
            super().reset(seed=seed)  # seeds gymnasium's np_random, as gymnasium.Env expects
            observation, info = self.text_env.reset(seed=seed, options=options)
            return flatten_observation(observation), dict(info)

        def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
            """The wrapped environment's step."""
            observation, reward, terminated, truncated, info = self.text_env.step(action)
            return (
                flatten_observation(observation),
                float(reward),
                bool(terminated),
                bool(truncated),
                dict(info),
            )

        def close(self) -> None:
            """Close the wrapped environment."""
            self.text_env.close()

    # Picklable by name: pickle finds the class as rlxf.envs.gym.GymnasiumTextEnv (the module __getattr__).
    GymnasiumTextEnv.__module__ = __name__
    GymnasiumTextEnv.__qualname__ = "GymnasiumTextEnv"
    return GymnasiumTextEnv


def __getattr__(name: str) -> Any:
    # The adapter class needs gymnasium, so it is built on first access rather than at import.
    if name == "GymnasiumTextEnv":
        return _adapter_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_gymnasium() -> None:
    """Register the built-in environments with gymnasium (``rlxf/Arithmetic-v0`` and the others, see the
    module docstring); does nothing when gymnasium is not installed, or for ids already registered."""
    if not gymnasium_available():
        logger.debug("gymnasium is not installed: the rlxf environments are not registered with it")
        return
    import gymnasium

    for env_id, name in GYMNASIUM_IDS.items():
        # gymnasium.register warns when it overrides an id: register each id once per process.
        if env_id in gymnasium.envs.registry:
            continue
        gymnasium.register(id=env_id, entry_point=f"{__name__}:GymnasiumTextEnv", kwargs={"env": name})


__all__ = ["GYMNASIUM_IDS", "flatten_observation", "gymnasium_available", "register_gymnasium"]
