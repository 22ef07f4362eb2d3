"""Calculator: a tool-use environment. The task is hard to do mentally (``347 * 28`` or ``512 + 89 + 734``);
the model may call a calculator by writing ``<calc>EXPRESSION</calc>`` and gives its result with
``Answer: NUMBER``.

Operands are drawn uniformly from ``max(10, (max_operand + 1) // 10) .. max_operand`` (100 .. 999 by
default); half the tasks are a product of two numbers, half a sum of three. The task's text
(``"347 * 28"``) decides its split (:func:`rlxf.envs.base.split_of`).

Each turn, in this order:

* an action with ``Answer:`` (case-insensitive) is the final answer: reward 1.0 if the integer after it
  (:func:`rlxf.envs.arithmetic.extract_answer`) is the true result, else 0.0; terminated. A calculator call
  in the same action is ignored (the model answered without waiting for the result).
* an action with ``<calc>...</calc>``: every such expression is evaluated with :func:`safe_eval` and the
  observation is one ``<result>VALUE</result>`` per call (``<result>error: ...</result>`` for an expression
  it rejects); reward 0.0, not terminated; ``info["tool_calls"]`` counts the calls of the episode.
* anything else: a reminder of the two formats, reward 0.0.

The episode is truncated, without success, after ``max_turns`` actions with no answer. The reward does not
depend on the number of tool calls (no cost per call).

Left out: tools other than arithmetic, variables or multi-line programs in a call, and partial credit.
"""

from __future__ import annotations

import ast
import math
import operator
import random
import re
from collections.abc import Callable

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
)

# Limits that keep a call cheap whatever the model writes: the expression's length (also bounds the
# parser's nesting), the exponent of a power, and the size of every intermediate integer (so products of
# huge numbers are refused before they take time or memory).
MAX_EXPRESSION_CHARS = 200
MAX_EXPONENT = 100
MAX_INT_BITS = 400  # about 120 decimal digits
MAX_CALLS_PER_ACTION = 8

_BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}

# Calculator notation a model may write, rewritten to Python's before parsing.
_THOUSANDS_COMMA = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_NOTATION = {"^": "**", "\u00d7": "*", "\u00f7": "/", "\u2212": "-"}

_CALC = re.compile(r"<calc>(.*?)</calc>", re.IGNORECASE | re.DOTALL)
_ANSWER = re.compile(r"\banswer\s*:", re.IGNORECASE)


def _check_size(value: int | float) -> int | float:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ValueError(f"result too large (more than {MAX_INT_BITS} bits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("result is not a finite number")
    return value


def _power(base: int | float, exponent: int | float) -> int | float:
    if abs(exponent) > MAX_EXPONENT:
        raise ValueError(f"exponent too large (at most {MAX_EXPONENT} in absolute value)")
    # Estimate the result's size before computing it: base.bit_length() * exponent bits.
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        if abs(base) > 1 and (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
            raise ValueError(f"result too large (more than {MAX_INT_BITS} bits)")
    if base == 0 and exponent < 0:
        raise ValueError("division by zero (0 to a negative power)")
    try:
        result = base**exponent
    except OverflowError:  # a float power past the float range
        raise ValueError("result too large") from None
    if isinstance(result, complex):  # a negative base to a fractional power
        raise ValueError("result is not a real number")
    return result


def _evaluate(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant):
        # bool is an int subclass and complex is a number: neither is arithmetic here.
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ValueError(f"only numbers are allowed, got {node.value!r}")
        return _check_size(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(left, right))
        try:
            return _check_size(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ValueError("division by zero") from None
        except OverflowError:
            raise ValueError("result too large") from None
    if isinstance(node, ast.Name):
        raise ValueError(f"names are not allowed: {node.id}")
    if isinstance(node, ast.Attribute):
        raise ValueError("attribute access is not allowed")
    if isinstance(node, ast.Call):
        raise ValueError("function calls are not allowed")
    raise ValueError(f"{type(node).__name__} is not allowed (only numbers, + - * / // % **, parentheses)")


def safe_eval(expression: str) -> int | float:
    """The value of an arithmetic expression, without ``eval``: a ValueError for anything else.

    Allowed: integer and decimal numbers, ``+ - * / // % **``, unary minus and plus, parentheses, and the
    calculator notation ``^`` (power), ``×``, ``÷`` and thousands commas (``1,234``). Refused: names,
    attribute access, calls, strings, any other syntax, an expression over 200 characters, an exponent
    over 100, an integer over 400 bits (so ``9**999999`` is refused before it is computed), division by
    zero and non-finite or complex results. ``/`` gives a float, as in Python.
    """
    if not isinstance(expression, str):
        raise ValueError(f"the expression must be a str, got {type(expression).__name__}")
    text = expression.strip()
    if not text:
        raise ValueError("empty expression")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ValueError(f"expression too long (at most {MAX_EXPRESSION_CHARS} characters)")
    text = _THOUSANDS_COMMA.sub("", text)
    for written, python in _NOTATION.items():
        text = text.replace(written, python)
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise ValueError(f"not an arithmetic expression: {expression.strip()!r}") from None
    try:
        return _evaluate(tree)
    except RecursionError:
        raise ValueError("expression nested too deeply") from None


def format_number(value: int | float) -> str:
    """A calculator's display of ``value``: integers (and whole floats) without a decimal point, other
    floats with up to 12 significant digits."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)


def _key(problem: tuple[int, ...]) -> str:
    # Two operands: a product; three: a sum.
    return " * ".join(map(str, problem)) if len(problem) == 2 else " + ".join(map(str, problem))


class CalculatorEnv(TextEnv):
    """Multiplication or a sum of three numbers, with a ``<calc>`` tool (see the module docstring).

    ``reset`` info: ``question`` (e.g. ``"347 * 28"``) and ``answer`` (int). ``step`` info: ``answer``,
    ``tool_calls`` (calls so far in the episode), ``turn``; with a final answer ``extracted``; when the
    episode ends ``success``.
    """

    def __init__(self, split: Split = "train", max_operand: int = 999, max_turns: int = 4) -> None:
        self.split = check_split(split)
        self.max_operand = check_int("max_operand", max_operand, 20)
        self.max_turns = check_int("max_turns", max_turns, 1)
        self.min_operand = max(10, (self.max_operand + 1) // 10)
        self.question = ""
        self.answer = 0
        self.tool_calls = 0

    def _draw(self, rng: random.Random) -> tuple[int, ...]:
        count = 2 if rng.random() < 0.5 else 3
        return tuple(rng.randint(self.min_operand, self.max_operand) for _ in range(count))

    def reset(self, seed: int | None = None, options: dict | None = None) -> tuple[Observation, dict]:
        """A new task with the tool's instructions; the same seed gives the same task."""
        check_options(options)
        problem = draw_in_split(seeded_rng(seed), self._draw, _key, self.split)
        self.question = _key(problem)
        self.answer = problem[0] * problem[1] if len(problem) == 2 else sum(problem)
        self.tool_calls = 0
        self._start_episode()
        observation = (
            f"What is {self.question}? You can use a calculator: write <calc>EXPRESSION</calc> and you will "
            "get the result. When you know the answer, write Answer: NUMBER."
        )
        return observation, {"question": self.question, "answer": self.answer}

    def step(self, action: str) -> tuple[Observation, float, bool, bool, dict]:
        """A final answer (scored, terminated), calculator calls (their results), or a format reminder."""
        turn = self._begin_turn(action)
        info: dict = {"answer": self.answer, "turn": turn}
        if _ANSWER.search(action):
            extracted = extract_answer(action)
            correct = extracted == self.answer
            self._end_turn(True)
            info.update(extracted=extracted, tool_calls=self.tool_calls, success=correct)
            return "", 1.0 if correct else 0.0, True, False, info
        expressions = _CALC.findall(action)
        if expressions:
            results = []
            for expression in expressions[:MAX_CALLS_PER_ACTION]:
                try:
                    results.append(f"<result>{format_number(safe_eval(expression))}</result>")
                except ValueError as error:
                    results.append(f"<result>error: {error}</result>")
            if len(expressions) > MAX_CALLS_PER_ACTION:
                results.append(f"<result>error: at most {MAX_CALLS_PER_ACTION} calls per turn</result>")
            self.tool_calls += min(len(expressions), MAX_CALLS_PER_ACTION)
            observation = "\n".join(results)
        else:
            observation = (
                "Write <calc>EXPRESSION</calc> to use the calculator, or Answer: NUMBER to give your final "
                "answer."
            )
        info["tool_calls"] = self.tool_calls
        terminated, truncated = self._end_turn(False)
        if truncated:
            info["success"] = False
            return "", 0.0, terminated, truncated, info
        return observation, 0.0, terminated, truncated, info
