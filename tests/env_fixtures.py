"""Small environments for the trainer's tests (importable as ``env_fixtures:Class`` from tests/)."""

from __future__ import annotations

import random


class LetterCountEnv:
    """A multi-turn toy: the observation asks for a letter; the reward of a turn is the share of that
    letter among the action's characters. Three turns; deterministic in the seed."""

    max_turns = 3

    def __init__(self, split: str = "train", max_turns: int = 3) -> None:
        self.split = split
        self.max_turns = max_turns
        self.turn = -1

    def reset(self, seed: int | None = None, options: dict | None = None):
        self.rng = random.Random(seed)
        self.turn = 0
        self.letter = self.rng.choice("aeiou" if self.split == "train" else "st")
        return f"Write words with many {self.letter}", {"letter": self.letter}

    def step(self, action: str):
        if self.turn < 0 or self.turn >= self.max_turns:
            raise RuntimeError("step after the end")
        self.turn += 1
        reward = action.count(self.letter) / max(len(action), 1)
        done = self.turn >= self.max_turns
        info = {"success": reward > 0.1} if done else {}
        return ("" if done else f"Again, with {self.letter}"), reward, False, done, info

    def close(self) -> None:
        pass
