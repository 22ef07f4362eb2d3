"""The interface of rlxf's text environments, and the helpers the built-in ones share.

A text environment is a gymnasium-shaped episode whose actions are the model's text:

* ``reset(seed=..., options=...)`` -> ``(observation, info)``: the task. The observation is a string (one
  user message) or a list of chat messages (``[{"role": "system" | "user", "content": ...}]``).
* ``step(action)`` -> ``(observation, reward, terminated, truncated, info)``: ``action`` is the model's text
  for the turn, ``observation`` the next user message (``""`` once the episode has ended). On the step that
  ends an episode ``info["success"]`` is a bool: did the agent solve the task.
* ``max_turns``: the most actions in one episode; an environment sets ``truncated=True`` itself when the
  action count reaches ``max_turns`` without the episode being terminated.

Environments that draw their task from a space of problems take ``split="train" | "test"``; the two splits
are disjoint because a problem's split is a function of its content (:func:`split_of`), and
:func:`draw_in_split` keeps drawing from the seeded generator until a problem of the requested split comes
up. The same seed gives the same task: every environment holds its own ``random.Random(seed)``, never the
global random module.

Subclasses implement ``reset`` and ``step``; the ``_start_episode`` / ``_begin_turn`` / ``_end_turn``
helpers keep the turn count and raise the errors of stepping before ``reset`` or after the end.
"""

from __future__ import annotations

import hashlib
import operator
import random
from collections.abc import Callable
from typing import Any, Literal, TypeAlias, TypeVar

Observation: TypeAlias = str | list[dict[str, str]]
"""Text (one user message), or chat messages ``[{"role": "user" | "system", "content": ...}]``."""

Split: TypeAlias = Literal["train", "test"]
SPLITS: tuple[str, ...] = ("train", "test")

# One problem in five is held out for evaluation.
_TEST_SHARE_IN_TENTHS = 2

T = TypeVar("T")


def split_of(key: str) -> Split:
    """The split of a problem, from its content ``key`` (e.g. the question's text): ``"test"`` for about
    one problem in five, ``"train"`` otherwise. A hash (not the generator's draw order) decides, so a
    problem has the same split whatever the seed, the environment's settings or the Python process."""
    digest = int(hashlib.sha256(key.encode("utf-8")).hexdigest(), 16)
    return "test" if digest % 10 < _TEST_SHARE_IN_TENTHS else "train"


def check_split(split: object) -> Split:
    """``split`` if it is ``"train"`` or ``"test"``; a ValueError otherwise."""
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split  # type: ignore[return-value]


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``; a ValueError naming ``name``."""
    # bool is an int subclass: `max_turns=True` is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def draw_in_split(
    rng: random.Random,
    draw: Callable[[random.Random], T],
    key: Callable[[T], str],
    split: Split,
    max_draws: int = 10_000,
) -> T:
    """Draw problems with ``draw(rng)`` until one whose ``split_of(key(problem))`` is ``split``.

    Rejection keeps the draw uniform over the split's problems. ``max_draws`` bounds the loop for a problem
    space too small to hold a problem of the split (a RuntimeError then)."""
    for _ in range(max_draws):
        problem = draw(rng)
        if split_of(key(problem)) == split:
            return problem
    raise RuntimeError(
        f"no problem of the {split!r} split in {max_draws} draws: the environment's problem space is too small"
    )


class TextEnv:
    """Base class of text environments: a gymnasium-shaped episode whose actions are the model's text.

    Subclasses implement :meth:`reset` and :meth:`step` (see the module docstring for the contract) and set
    ``max_turns``. The protected helpers keep the episode's state: call :meth:`_start_episode` in
    ``reset``, :meth:`_begin_turn` first in ``step`` (it raises RuntimeError before ``reset`` or after the
    end) and :meth:`_end_turn` to get ``(terminated, truncated)``.
    """

    max_turns: int = 1

    # Class-level defaults, so a subclass that skips ``super().__init__()`` still has a consistent state.
    _turns: int = 0
    _started: bool = False
    _ended: bool = False

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[Observation, dict]:
        """Start an episode: the first observation (the task) and info. The same seed gives the same task."""
        raise NotImplementedError(f"{type(self).__name__} does not implement reset()")

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict]:
        """Play the model's text ``action``: ``(observation, reward, terminated, truncated, info)``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement step()")

    def close(self) -> None:
        """Release what the environment holds (nothing for the built-in ones)."""

    def __enter__(self) -> TextEnv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def turns(self) -> int:
        """Actions taken in the current episode."""
        return self._turns

    @property
    def episode_over(self) -> bool:
        """Whether the current episode has ended (terminated or truncated)."""
        return self._ended

    def _start_episode(self) -> None:
        self._turns = 0
        self._started = True
        self._ended = False

    def _begin_turn(self, action: object) -> int:
        """Check that a step is allowed now and count it; the turn's number (1 for the first action)."""
        name = type(self).__name__
        if not self._started:
            raise RuntimeError(f"{name}.step() called before reset(): call reset() to start an episode")
        if self._ended:
            raise RuntimeError(
                f"{name}.step() called after the episode ended (terminated or truncated): call reset() to "
                "start a new episode"
            )
        if not isinstance(action, str):
            raise TypeError(f"{name}.step() takes the model's text (a str), got {type(action).__name__}")
        self._turns += 1
        return self._turns

    def _end_turn(self, terminated: bool) -> tuple[bool, bool]:
        """``(terminated, truncated)`` for the turn just played: truncated when the turn budget is spent
        without the episode being terminated. Marks the episode over when either is true."""
        truncated = not terminated and self._turns >= self.max_turns
        self._ended = terminated or truncated
        return terminated, truncated


def seeded_rng(seed: int | None) -> random.Random:
    """The environment's own generator: seeded by ``seed``, or from the operating system when None."""
    if seed is None:
        return random.Random()
    if isinstance(seed, bool):
        raise ValueError(f"seed must be an integer or None, got {seed!r}")
    try:
        # operator.index accepts numpy integers too (gymnasium users pass them), and rejects floats.
        return random.Random(operator.index(seed))
    except TypeError:
        raise ValueError(f"seed must be an integer or None, got {seed!r}") from None


def check_options(options: Any) -> dict:
    """``options`` as a dict (``{}`` for None); the built-in environments take none, so any key is an error."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ValueError(f"options must be a dict or None, got {type(options).__name__}")
    if options:
        raise ValueError(f"this environment takes no reset options, got {sorted(options)}")
    return options
