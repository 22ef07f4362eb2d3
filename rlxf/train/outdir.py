"""The output folder of a command that is not a training run (``rlxf sample``, ``judge``, ``simulate``,
``eval``): one guard before the work, one writer after it.

* :func:`claim_output_folder` runs before any work (after the input is checked): a folder that already
  holds any of the command's output entries is refused unless ``overwrite`` is given, and then those
  entries, and only those, are deleted (the folder may hold other things of the user's). So two runs never
  mix, and a re-run in another mode leaves no stale file of the first (``ratings.jsonl`` beside
  ``preferences.jsonl``).
* :func:`write_output_folder` writes the results: ``config.yaml``, the data files, then ``summary.json``
  last, every file atomically: the presence of ``summary.json`` marks a finished command (the pipeline
  reads it so).
* :class:`CommandResult` is what such a command returns: its folder, what ``summary.json`` holds, and its
  numeric figures, read as a mapping (``result["agreement"]``), as a training run's
  :class:`~rlxf.train.run.RunResult` reads.

Training runs keep their own folder (:class:`~rlxf.train.run.RunDir`): it adds resuming from a checkpoint
to the same refuse-or-overwrite rule.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

from rlxf.config import to_yaml
from rlxf.train.atomic import write_jsonl_atomic, write_text_atomic

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"


class RunExistsError(FileExistsError):
    """The output folder already holds a command's output (or a run), and overwriting was not asked for."""


@dataclass
class CommandResult(Mapping[str, float]):
    """What ``rlxf sample``, ``judge`` and ``simulate`` return: ``out`` (the folder), ``metrics`` (the
    numeric figures) and ``summary`` (what ``summary.json`` holds); reads as the mapping of ``metrics``.
    The fields are :class:`~rlxf.train.run.RunResult`'s, which adds the trained model's folder."""

    out: Path
    metrics: dict[str, float]
    summary: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries of ``values`` that are numbers (booleans apart), as floats."""
    return {k: float(v) for k, v in values.items() if isinstance(v, Real) and not isinstance(v, bool)}


def claim_output_folder(
    out: str | Path,
    entries: Sequence[str],
    *,
    overwrite: bool,
    command: str,
    what: str | None = None,
    hint: str = "choose another --out, or pass --overwrite to replace it",
) -> Path:
    """Make sure ``out`` may receive the output of ``command`` (say ``"rlxf judge"``), before any work.

    Args:
        out: the output folder (``--out``); it need not exist, and is not created here.
        entries: the names the command writes into it (files or folders).
        overwrite: replace an earlier output: the ``entries`` present are deleted, nothing else.
        command: the command's name, for the messages.
        what: what the folder holds, for the refusal (default: "<command> output (<entries present>)").
        hint: what the user can do instead, for the refusal.

    Returns:
        ``out`` as a :class:`~pathlib.Path`.

    Raises:
        NotADirectoryError: ``out`` is a file.
        RunExistsError: ``out`` holds one of ``entries`` and ``overwrite`` is not set.
    """
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--out {path} is a file, not a folder")
    present = [name for name in entries if (path / name).exists() or (path / name).is_symlink()]
    if not present:
        return path
    if not overwrite:
        what = what or f"{command} output ({', '.join(present)})"
        raise RunExistsError(f"{path} already holds {what}: {hint}")
    logger.info("%s: replacing %s in %s", command, ", ".join(present), path)
    for name in present:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()
    return path


def write_output_folder(
    out: str | Path,
    config: Any,
    summary: Mapping[str, Any],
    files: Mapping[str, Sequence[dict[str, Any]] | str],
) -> Path:
    """Write a command's results into ``out`` (created if missing): ``config.yaml`` (``config``, a config
    dataclass), each of ``files`` (a list of records is written as JSONL, a string as text), then
    ``summary.json`` last. Returns ``out`` as a :class:`~pathlib.Path`."""
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path / CONFIG_FILE, to_yaml(config))
    for name, content in files.items():
        if isinstance(content, str):
            write_text_atomic(path / name, content)
        else:
            write_jsonl_atomic(path / name, content)
    text = json.dumps(summary, indent=2, ensure_ascii=False, default=float) + "\n"
    write_text_atomic(path / SUMMARY_FILE, text)
    return path


__all__ = ["CommandResult", "RunExistsError", "claim_output_folder", "numeric", "write_output_folder"]
