"""Arithmetic: one question such as "What is 17 + 25?", answered with a number (a verifiable reward).

The task: ``a OP b`` with ``a`` and ``b`` drawn uniformly from ``1 .. max_operand`` and ``OP`` from
``operations`` (``+``, ``-``, ``*``). The question's text (``"17 + 25"``) decides its split
(:func:`rlxf.envs.base.split_of`), so train and test questions are disjoint.

Reward: 1.0 when the integer extracted from the action (:func:`extract_answer`) equals the true answer,
0.0 otherwise; ``info["success"]`` is ``reward == 1``. With ``max_turns=1`` (the default) the answer ends
the episode (terminated). With ``max_turns > 1`` a wrong answer is told "That is not correct. Try again."
and the episode goes on until a correct answer (terminated) or ``max_turns`` answers (truncated).

Left out: division (non-integer answers), longer expressions, partial credit for close answers, and
answers written in words ("forty-two").
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

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

OPERATIONS: dict[str, str] = {"+": "plus", "-": "minus", "*": "times"}

# A number: an optional minus sign (ASCII or U+2212) not glued to a preceding word (so "5-3" is 5 and 3),
# digits with optional thousands commas ("1,234"), an optional fractional part ("3.5" is a number but not
# an integer; "42.0" counts as 42). Not glued to a following word either ("42nd", "1e3" are not numbers).
_NUMBER = re.compile(r"(?<![\w.])([-\u2212]?)(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w])")
# "Answer: 12", "The answer is 12", "**Answer:** 12": the number after the last such marker wins.
_ANSWER_MARKER = re.compile(r"\banswer\s*(?::|\bis\b)", re.IGNORECASE)


def _as_integer(match: re.Match[str]) -> int | None:
    sign, digits, fraction = match.groups()
    if fraction and fraction.strip(".0"):
        return None  # a number with a non-zero fractional part is not an integer answer
    value = int(digits.replace(",", ""))
    return -value if sign else value


def extract_answer(text: str) -> int | None:
    """The integer a model's text answers with, or None.

    The first number after the last "answer:" / "answer is" (case-insensitive) if there is one, else the
    last number of the text. Numbers may have a leading minus sign and thousands commas ("1,234"); a
    number with a non-zero fractional part ("3.5") is not an integer, so it gives None when it is the one
    chosen. Examples: ``"The answer is 42."`` -> 42, ``"17 + 25 = 42"`` -> 42, ``"-3"`` -> -3,
    ``"Answer: 12, since 5+7=12"`` -> 12, ``"no number"`` -> None.
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_answer takes a str, got {type(text).__name__}")
    markers = list(_ANSWER_MARKER.finditer(text))
    if markers:
        after = _NUMBER.search(text, markers[-1].end())
        if after is not None:
            return _as_integer(after)
    # No marker, or a marker with no number after it ("the answer is below"): the text's last number.
    numbers = list(_NUMBER.finditer(text))
    return _as_integer(numbers[-1]) if numbers else None


def _key(problem: tuple[int, str, int]) -> str:
    a, op, b = problem
    return f"{a} {op} {b}"


class ArithmeticEnv(TextEnv):
    """Single-turn arithmetic question answering with a 0/1 reward (see the module docstring).

    ``reset`` info: ``question`` (e.g. ``"17 + 25"``) and ``answer`` (int). ``step`` info: ``answer``,
    ``extracted`` (the integer read from the action, or None), ``turn`` and, when the episode ends,
    ``success``.
    """

    def __init__(
        self,
        split: Split = "train",
        operations: Sequence[str] = ("+", "-", "*"),
        max_operand: int = 50,
        max_turns: int = 1,
    ) -> None:
        self.split = check_split(split)
        if isinstance(operations, str) or not isinstance(operations, Sequence) or not operations:
            raise ValueError(
                f"operations must be a non-empty sequence such as ('+', '-'), got {operations!r}"
            )
        unknown = [op for op in operations if op not in OPERATIONS]
        if unknown:
            raise ValueError(f"unknown operations {unknown}; the operations are {sorted(OPERATIONS)}")
        self.operations = tuple(dict.fromkeys(operations))  # dropping duplicates keeps the draw uniform
        self.max_operand = check_int("max_operand", max_operand, 1)
        self.max_turns = check_int("max_turns", max_turns, 1)
        # A small problem space may hold no question of the split: say so now, not at the first reset.
        size = len(self.operations) * self.max_operand**2
        if size <= 2_000:
            keys = (
                _key((a, op, b))
                for op in self.operations
                for a in range(1, self.max_operand + 1)
                for b in range(1, self.max_operand + 1)
            )
            if not any(split_of(k) == self.split for k in keys):
                raise ValueError(
                    f"no question of the {self.split!r} split with operations {list(self.operations)} and "
                    f"max_operand={self.max_operand}: raise max_operand or add operations"
                )
        self.question = ""
        self.answer = 0

    def _draw(self, rng: random.Random) -> tuple[int, str, int]:
        return rng.randint(1, self.max_operand), rng.choice(self.operations), rng.randint(1, self.max_operand)

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[Observation, dict]:
        """A new question: ``"What is A OP B? Give only the number."``; the same seed gives the same one."""
        check_options(options)
        rng = seeded_rng(seed)
        a, op, b = draw_in_split(rng, self._draw, _key, self.split)
        self.question = _key((a, op, b))
        self.answer = a + b if op == "+" else a - b if op == "-" else a * b
        self._start_episode()
        return f"What is {self.question}? Give only the number.", {
            "question": self.question,
            "answer": self.answer,
        }

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict]:
        """Score an answer: 1.0 if its integer is the true answer; a retry prompt while turns remain."""
        turn = self._begin_turn(action)
        extracted = extract_answer(action)
        correct = extracted == self.answer
        reward = 1.0 if correct else 0.0
        # A single-question episode ends with its answer, right or wrong; with retries only a correct one
        # terminates it, and running out of tries truncates it.
        terminated, truncated = self._end_turn(correct or self.max_turns == 1)
        info: dict = {"answer": self.answer, "extracted": extracted, "turn": turn}
        if terminated or truncated:
            info["success"] = correct
            return "", reward, terminated, truncated, info
        return "That is not correct. Try again.", reward, terminated, truncated, info
