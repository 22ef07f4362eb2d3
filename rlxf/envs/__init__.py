"""Text environments: gymnasium-shaped episodes whose actions are a language model's text (pure Python).

The interface is :class:`~rlxf.envs.base.TextEnv` (``reset`` -> ``(observation, info)``, ``step(text)`` ->
``(observation, reward, terminated, truncated, info)``, ``max_turns``; see :mod:`rlxf.envs.base`). Built in:

* ``arithmetic`` (:class:`ArithmeticEnv`): one arithmetic question, reward 1 for the right number;
* ``guess-number`` (:class:`GuessNumberEnv`): guess a secret number from "Higher." / "Lower." hints;
* ``calculator`` (:class:`CalculatorEnv`): a hard product or sum, with a ``<calc>`` tool to call;
* ``dialogue`` (:class:`DialogueEnv`): a simulated user with a goal, scored by keywords each turn.

Each takes ``split="train" | "test"`` (disjoint problem sets). :func:`make_env` builds one by name or any
``"package.module:ClassName"``. When gymnasium is installed the built-ins are also registered with it as
``rlxf/Arithmetic-v0`` etc. (:mod:`rlxf.envs.gym`).
"""

from __future__ import annotations

import importlib
import inspect

from rlxf.envs.arithmetic import ArithmeticEnv, extract_answer
from rlxf.envs.base import Observation, TextEnv
from rlxf.envs.calculator import CalculatorEnv, safe_eval
from rlxf.envs.dialogue import DialogueEnv
from rlxf.envs.guess_number import GuessNumberEnv
from rlxf.envs.gym import gymnasium_available, register_gymnasium

BUILTIN_ENVS: dict[str, type[TextEnv]] = {
    "arithmetic": ArithmeticEnv,
    "guess-number": GuessNumberEnv,
    "calculator": CalculatorEnv,
    "dialogue": DialogueEnv,
}


def _resolve(spec: str) -> type:
    """The environment class a spec names: a built-in name or ``package.module:ClassName``."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"an environment spec must be a built-in name ({', '.join(BUILTIN_ENVS)}) or "
            f"'package.module:ClassName', got {spec!r}"
        )
    if spec in BUILTIN_ENVS:
        return BUILTIN_ENVS[spec]
    module_name, colon, class_name = spec.partition(":")
    if not colon or not module_name or not class_name:
        raise ValueError(
            f"unknown environment {spec!r}: use a built-in name ({', '.join(BUILTIN_ENVS)}) or "
            "'package.module:ClassName'"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"environment {spec!r}: cannot import module {module_name!r} ({error})") from error
    target = module
    for part in class_name.split("."):  # "module:Outer.Inner" reaches a nested class
        if not hasattr(target, part):
            raise ValueError(f"environment {spec!r}: module {module_name!r} has no attribute {class_name!r}")
        target = getattr(target, part)
    if not inspect.isclass(target):
        raise ValueError(f"environment {spec!r}: {class_name!r} is a {type(target).__name__}, not a class")
    if not issubclass(target, TextEnv):
        # Duck typing is enough for a class written without rlxf: it needs callable reset and step.
        missing = [name for name in ("reset", "step") if not callable(getattr(target, name, None))]
        if missing:
            raise ValueError(
                f"environment {spec!r}: {class_name} is not a TextEnv subclass and has no callable "
                f"{' or '.join(missing)}"
            )
    return target


def make_env(spec: str, **kwargs: object) -> TextEnv:
    """A new environment: ``spec`` is a built-in name (see ``BUILTIN_ENVS``), ``"package.module:ClassName"``
    (a TextEnv subclass, or a class with callable ``reset`` and ``step``) or ``"textarena/ENV_ID"`` (a
    single-player TextArena game, :mod:`rlxf.envs.textarena`); ``kwargs`` go to its constructor.

    ValueError for an unknown name, a spec that does not resolve to such a class, or a keyword argument the
    constructor does not accept (checked before constructing, naming the accepted ones)."""
    if isinstance(spec, str) and spec.startswith("textarena/"):
        from rlxf.envs.textarena import TextArenaEnv

        return TextArenaEnv(spec.removeprefix("textarena/"), **kwargs)  # type: ignore[arg-type]
    cls = _resolve(spec)
    try:
        signature = inspect.signature(cls)
    except (TypeError, ValueError):
        signature = None  # a constructor without a signature (e.g. from C): let the call check
    if signature is not None:
        parameters = signature.parameters
        takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        accepted = [
            name
            for name, p in parameters.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        ]
        unknown = [name for name in kwargs if name not in accepted]
        if unknown and not takes_any:
            raise ValueError(
                f"environment {spec!r} does not accept the argument(s) {', '.join(unknown)}; "
                f"{cls.__name__} accepts: {', '.join(accepted) or 'no arguments'}"
            )
    return cls(**kwargs)


# Registering costs importing gymnasium (and numpy), so only where it is installed.
if gymnasium_available():
    register_gymnasium()

__all__ = [
    "BUILTIN_ENVS",
    "ArithmeticEnv",
    "CalculatorEnv",
    "DialogueEnv",
    "GuessNumberEnv",
    "Observation",
    "TextEnv",
    "extract_answer",
    "make_env",
    "register_gymnasium",
    "safe_eval",
]
