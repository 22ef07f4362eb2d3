"""rlxf: align language models from human, AI or programmatic feedback.

The loop, a package per stage (see docs/design.md): ``models`` and ``data`` feed ``rollout`` (generation),
``feedback`` scores it, ``algos`` learn from it on the shared loop in ``train``, ``eval`` reports.

The public API is every command's library function and config, by name::

    from rlxf import SFTConfig, load_config, sft

    result = sft(load_config(SFTConfig, overrides={"model": {"name_or_path": "..."}, "data": "...", "out": "..."}))

Names are imported on first use (the command table, :mod:`rlxf.commands`, says where each lives), so
``import rlxf`` imports no torch and changes nothing in the host program: no environment variable, no
logging handler (library code logs to ``logging.getLogger("rlxf")``; the ``rlxf`` command prints it).
"""

from __future__ import annotations

import importlib
from typing import Any

from rlxf.commands import exports

# The function `demo` shares its name with its module, rlxf/demo.py: bound here, after that module's first
# import (which is when Python sets `rlxf.demo` to the module), so `rlxf.demo` stays the function. The
# module imports no torch.
from rlxf.demo import demo as demo

__version__ = "0.1.0"

# Name -> "module:attr": every command's function and config, then the helpers a caller needs with them.
_EXPORTS: dict[str, str] = {
    **exports(),
    "load_config": "rlxf.config:load_config",
    "ConfigError": "rlxf.config:ConfigError",
    "DataError": "rlxf.data.errors:DataError",
    "RunResult": "rlxf.train.run:RunResult",
    "CommandResult": "rlxf.train.outdir:CommandResult",
    "parse_reward_spec": "rlxf.feedback.rewards:parse_reward_spec",
    "LabelsPending": "rlxf.feedback.label.stage:LabelsPending",
    "DemoResult": "rlxf.demo:DemoResult",
    "EvalResult": "rlxf.eval.evaluate:EvalResult",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module 'rlxf' has no attribute {name!r}")
    module, attr = target.split(":")
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # the next look-up is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
