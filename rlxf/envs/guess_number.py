"""Guess the number: a multi-turn game against a number between ``low`` and ``high``, with "Higher." /
"Lower." hints.

The secret is drawn uniformly from ``low .. high``. Its split is decided by a hash of the number
(``split_of("secret " + str(secret))``, about one number in five is a test secret), not by its parity, so
both splits hold small and large, odd and even numbers; a given number is a train secret or a test secret
whatever ``low`` and ``high`` are.

Each action's guess is the integer :func:`rlxf.envs.arithmetic.extract_answer` reads from it (the last
number, or the one after "answer:"). No number: "Reply with one whole number between LOW and HIGH.". A
guess below the secret: "Higher."; above: "Lower." (also for guesses outside ``low .. high``, which are
still answered truthfully).

Reward: 1.0 for the correct guess (terminated, ``info["success"]`` True), 0.0 for every other turn; no
shaping by distance or by the number of turns (a discounted or per-turn-cost variant is left to the
trainer). The episode is truncated, without success, when ``max_turns`` guesses were wrong; binary search
wins within ``ceil(log2(high - low + 2))`` turns (7 for 1 .. 100, the default budget).

Left out: lying hints, several numbers per guess, and penalties for repeated or inconsistent guesses.
"""

from __future__ import annotations

import random

from rlxf.envs.arithmetic import extract_answer
from rlxf.envs.base import (
    Observation,
    Split,
    TextEnv,
    check_int,
    check_options,
    check_split,
    draw_in_split,
    seeded_rng,
    split_of,
)


def _key(secret: int) -> str:
    return f"secret {secret}"


class GuessNumberEnv(TextEnv):
    """Guess a secret whole number in ``low .. high`` from "Higher." / "Lower." hints (see the module
    docstring).

    ``reset`` info: ``low``, ``high``, ``secret``. ``step`` info: ``guess`` (the integer read, or None),
    ``secret``, ``turn`` and, when the episode ends, ``success``.
    """

    def __init__(self, split: Split = "train", low: int = 1, high: int = 100, max_turns: int = 7) -> None:
        self.split = check_split(split)
        if isinstance(low, bool) or not isinstance(low, int):
            raise ValueError(f"low must be an integer, got {low!r}")
        if isinstance(high, bool) or not isinstance(high, int):
            raise ValueError(f"high must be an integer, got {high!r}")
        if high <= low:
            raise ValueError(f"high must be > low, got low={low}, high={high}")
        self.low, self.high = low, high
        self.max_turns = check_int("max_turns", max_turns, 1)
        # A narrow range may hold no secret of the split: say so now, not at the first reset.
        if high - low < 2_000 and not any(split_of(_key(n)) == self.split for n in range(low, high + 1)):
            raise ValueError(
                f"no secret of the {self.split!r} split between {low} and {high}: widen the range"
            )
        self.secret = low

    def _draw(self, rng: random.Random) -> int:
        return rng.randint(self.low, self.high)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[Observation, dict]:
        """A new secret number; the same seed gives the same one."""
        check_options(options)
        self.secret = draw_in_split(seeded_rng(seed), self._draw, _key, self.split)
        self._start_episode()
        return (
            f"I am thinking of a whole number between {self.low} and {self.high}. "
            "Guess it: reply with one number.",
            {"low": self.low, "high": self.high, "secret": self.secret},
        )

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict]:
        """Answer a guess: "Higher.", "Lower.", a format reminder, or the end (1.0 for the right number)."""
        turn = self._begin_turn(action)
        guess = extract_answer(action)
        correct = guess == self.secret
        terminated, truncated = self._end_turn(correct)
        info: dict = {"guess": guess, "secret": self.secret, "turn": turn}
        if terminated or truncated:
            info["success"] = correct
            return "", 1.0 if correct else 0.0, terminated, truncated, info
        if guess is None:
            hint = f"Reply with one whole number between {self.low} and {self.high}."
        else:
            hint = "Higher." if guess < self.secret else "Lower."
        return hint, 0.0, terminated, truncated, info
