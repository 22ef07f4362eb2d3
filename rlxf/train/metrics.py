"""Metrics sinks: ``metrics.jsonl`` and TensorBoard event files, written together; peak memory.

``metrics.jsonl`` holds one JSON object per logged step, ``{"step": 40, "loss": 0.42, "lr": 1e-05}``,
with the names of docs/design.md ("Metrics names": ``reward/mean``, ``kl``, ``loss``, ``lr`` ...). Each line
is appended and flushed when it is logged, so a killed run loses nothing it logged. Values that are not
finite (NaN, infinity) are written as ``null`` to keep the file standard JSON.

The same values go to TensorBoard (``tensorboard --logdir RUN/tb``) under the same names.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def _to_float(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"metric {name!r} is a tensor of shape {tuple(value.shape)}, expected one number")
        value = value.item()
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"metric {name!r} must be a number, got {value!r}") from exc


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a ``metrics.jsonl`` file (a torn last line, from a kill mid-write, is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def truncate_metrics(path: str | Path, max_step: int) -> int:
    """Drop the records of ``metrics.jsonl`` whose ``step`` is above ``max_step``; return how many remain.

    Used on resume: the steps after the checkpoint will be run, and logged, again. The file is replaced
    atomically.
    """
    path = Path(path)
    kept = [r for r in read_metrics(path) if int(r.get("step", 0)) <= max_step]
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for record in kept:
            f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(kept)


class MetricsLogger:
    """Write named metrics per step to ``metrics.jsonl`` and, optionally, TensorBoard.

    Args:
        jsonl_path: the ``metrics.jsonl`` file; appended to (create the run folder first).
        tb_dir: folder for TensorBoard event files, or ``None`` for none.
        purge_step: on resume, the first step that will be logged again: TensorBoard hides the events
            an earlier session wrote at this step and after.
    """

    def __init__(
        self, jsonl_path: str | Path, tb_dir: str | Path | None = None, *, purge_step: int | None = None
    ) -> None:
        self.jsonl_path = Path(jsonl_path)
        self._file = open(self.jsonl_path, "a", encoding="utf-8")  # closed in close()
        self._writer = None
        if tb_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(tb_dir), purge_step=purge_step, flush_secs=30)
        self.last: dict[str, float] = {}

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record ``{"step": step, **metrics}``; return it as written.

        Values may be Python numbers, NumPy scalars or one-element tensors.
        """
        if self._file.closed:
            raise RuntimeError("MetricsLogger.log after close()")
        if "step" in metrics:
            raise ValueError("'step' is a reserved metric name; pass the step as the first argument")
        values = {name: _to_float(name, value) for name, value in metrics.items()}
        record: dict[str, Any] = {"step": int(step)}
        record.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._writer is not None:
            for name, value in values.items():
                self._writer.add_scalar(name, value, int(step))
        self.last.update(values)
        return record

    def flush(self) -> None:
        """Push everything logged so far to disk (TensorBoard flushes on its own every 30 s)."""
        self._file.flush()
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close both sinks; further :meth:`log` calls raise."""
        if not self._file.closed:
            self._file.close()
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def peak_memory_mb() -> dict[str, float | None]:
    """Peak memory of this process so far, in MiB: ``cpu_rss`` (resident set) and ``cuda_allocated``.

    ``cpu_rss`` comes from ``getrusage`` (``None`` where the ``resource`` module is missing, as on
    Windows); ``cuda_allocated`` is ``torch.cuda.max_memory_allocated`` summed over devices, ``None``
    without CUDA.
    """
    cpu: float | None
    try:
        import resource

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cpu = rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux
    except ImportError:
        cpu = None
    cuda: float | None = None
    if torch.cuda.is_available():
        cuda = sum(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count())) / 2**20
    return {"cpu_rss": cpu, "cuda_allocated": cuda}
