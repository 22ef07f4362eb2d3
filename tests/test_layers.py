"""The import direction of docs/design.md ("Layers"), checked on the source: every module's imports are read
with ``ast`` (nothing is imported, so the test is fast and sees imports inside functions too).

    cli, commands, demo  ->  pipeline  ->  algos, eval  ->  rollout, feedback  ->  train, data, models, envs  ->  config

A layer never imports one above it; within a level, ``rollout`` never imports ``feedback`` (a judge may
generate text, a generator never scores) and ``eval`` never imports ``algos``; ``models`` and ``data`` do
not import each other; generation, scoring and evaluation never import the training loop
(``rlxf.train.loop``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rlxf"

COMMAND_LINE = ("rlxf.cli", "rlxf.commands", "rlxf.demo", "rlxf.pipeline")
LOOP = "rlxf.train.loop"

LAYERS = (
    "rlxf.envs",
    "rlxf.models",
    "rlxf.data",
    "rlxf.train",
    "rlxf.rollout",
    "rlxf.feedback",
    "rlxf.algos",
    "rlxf.eval",
)

FORBIDDEN: dict[str, tuple[str, ...]] = {
    "rlxf.config": LAYERS + COMMAND_LINE,  # typed configs: the leaf every layer builds on
    # text environments: plain Python beside data (the rollout layer plays them)
    "rlxf.envs": (
        "rlxf.models",
        "rlxf.data",
        "rlxf.train",
        "rlxf.rollout",
        "rlxf.feedback",
        "rlxf.algos",
        "rlxf.eval",
    )
    + COMMAND_LINE,
    "rlxf.models": ("rlxf.data", "rlxf.train", "rlxf.rollout", "rlxf.feedback", "rlxf.algos", "rlxf.eval")
    + COMMAND_LINE,
    "rlxf.data": ("rlxf.train", "rlxf.rollout", "rlxf.feedback", "rlxf.algos", "rlxf.eval") + COMMAND_LINE,
    "rlxf.train": ("rlxf.rollout", "rlxf.feedback", "rlxf.algos", "rlxf.eval") + COMMAND_LINE,
    "rlxf.rollout": ("rlxf.feedback", "rlxf.algos", "rlxf.eval", LOOP) + COMMAND_LINE,
    "rlxf.feedback": ("rlxf.algos", "rlxf.eval", LOOP) + COMMAND_LINE,
    "rlxf.eval": ("rlxf.algos", LOOP) + COMMAND_LINE,
    "rlxf.algos": ("rlxf.eval",) + COMMAND_LINE,
    "rlxf.pipeline": ("rlxf.cli", "rlxf.demo"),
}
"""Layer -> what none of its modules may import (a name stands for the module and everything under it)."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> list[tuple[str, int]]:
    """``(module, line)`` for every import in the file, relative imports resolved; ``from M import x``
    counts as ``M`` and as ``M.x`` (``x`` may be a submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, node.lineno))
            found += [(f"{base}.{alias.name}", node.lineno) for alias in node.names]
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "migrations" not in p.parts)


def test_the_checker_reads_imports_as_python_does(tmp_path, monkeypatch):
    """Absolute, relative, aliased and function-local imports all count (a checker that missed them would
    pass on anything)."""
    fake = tmp_path / "rlxf"
    (fake / "rollout").mkdir(parents=True)
    source = fake / "rollout" / "x.py"
    source.write_text(
        "import rlxf.train.loop as L\n"
        "from . import engine\n"
        "from ..feedback.rewards import parse_reward_spec\n"
        "def f():\n    from rlxf.algos import rl\n"
    )
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    names = {name for name, _ in imported(source)}
    assert {"rlxf.train.loop", "rlxf.rollout.engine", "rlxf.feedback.rewards", "rlxf.algos.rl"} <= names
    assert violations(source) == [
        "rlxf.rollout.x imports rlxf.train.loop (line 1)",
        "rlxf.rollout.x imports rlxf.feedback.rewards (line 3)",
        "rlxf.rollout.x imports rlxf.feedback.rewards.parse_reward_spec (line 3)",
        "rlxf.rollout.x imports rlxf.algos (line 5)",
        "rlxf.rollout.x imports rlxf.algos.rl (line 5)",
    ]


def violations(path: Path) -> list[str]:
    name = module_name(path)
    banned = [target for layer, targets in FORBIDDEN.items() if within(name, layer) for target in targets]
    return [
        f"{name} imports {target} (line {line})"
        for target, line in imported(path)
        if any(within(target, b) for b in banned)
    ]


def test_every_layer_is_checked():
    layers = {module_name(p).split(".")[1] for p in SOURCES if module_name(p).count(".") >= 1}
    assert {layer.split(".")[1] for layer in LAYERS} <= layers
    unchecked = {
        layer
        for layer in layers
        if not any(within(f"rlxf.{layer}", key) for key in FORBIDDEN) and f"rlxf.{layer}" not in COMMAND_LINE
    }
    assert unchecked <= {"__main__"}, unchecked


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_run_one_way(layer):
    found = [v for p in SOURCES if within(module_name(p), layer) for v in violations(p)]
    assert not found, "imports against docs/design.md's direction:\n" + "\n".join(found)
