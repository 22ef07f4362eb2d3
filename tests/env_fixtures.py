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


def letter_game():
    """A two-agent game for the self-play tests whose scores vary on a tiny random model's text: R is
    paid the share of "e" in its answer, P the share of "a" in R's answer (adversarial-ish, deterministic)."""
    from rlxf.algos.selfplay_games import Game, GameScores, Task

    def share(text: str, letter: str) -> float:
        return text.count(letter) / max(len(text), 1)

    class LetterGame(Game):
        name = "letters"

        def tasks(self, split, seed, count):
            rng = random.Random(seed)
            return [
                Task([{"role": "user", "content": f"Ask about {rng.choice('abcdef')}"}], {"i": i})
                for i in range(count)
            ]

        def responder_messages(self, task, prompt):
            return [{"role": "user", "content": prompt}]

        def score(self, tasks, prompts, responses):
            return GameScores(
                prompter=[share(r, "a") + share(p, "o") for p, r in zip(prompts, responses)],
                responder=[share(r, "e") for r in responses],
                attack_success=[share(r, "a") > 0.05 for r in responses],
                details={},
            )

        def benign_prompts(self, split):
            return ["Tell me about the sea", "Write a review"]

    return LetterGame
