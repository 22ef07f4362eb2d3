"""Checkpoints that a kill cannot corrupt, and exact resume from them.

Layout inside a run's ``checkpoints/`` folder::

    checkpoints/
      step-000100/          one complete checkpoint (older ones pruned to the last ``keep_last``)
        model.pt            model state (see "What is saved" below)
        optimizer.pt        optimizer.state_dict()
        scheduler.pt        LR scheduler state_dict()           (when a scheduler was given)
        rng.pt              Python, NumPy, torch CPU and CUDA generator states
        extra.pt            the trainer's own state: data position, counters ...
        meta.json           step, time, what the model file holds; written last
      step-000200/
      latest                text file naming the newest checkpoint folder ("step-000200")

**Atomic.** A checkpoint is written into a hidden temporary folder next to its final place (same
filesystem), every file is fsync'ed, then the folder is renamed into place in one ``os.replace``, and
only then is ``latest`` replaced (write a temporary file, then ``os.replace``). Older checkpoints are
deleted only after the new one is complete. A process killed at any moment therefore leaves either the
previous checkpoint or the new one, never a half-written folder that looks complete:
:func:`latest_checkpoint` ignores hidden temporary folders, and the next save deletes them. Saving a
step that already has a checkpoint moves the old folder aside (``.old-step-…``) before the new one takes
its place; until then the old one still counts as that step's checkpoint.

**What is saved for the model.** When every parameter is trainable, the full ``state_dict()``. When
some are frozen (LoRA through ``peft``, a frozen backbone under a value head ...), only the trainable
parameters plus the buffers: frozen weights cannot change during training, and a resumed run rebuilds
the model from the same model reference before loading, so storing them again would only cost disk
(for LoRA, the adapters are a few MB where the base is GB). :func:`load_checkpoint` checks that every
key it expected was found.

Everything is stored with ``torch.save`` and read back with ``torch.load(weights_only=True)``: the
``extra`` dict must hold tensors and plain Python values (numbers, strings, lists, dicts, tuples).

Only one process saves (under ``accelerate``, the main process, with the unwrapped model). A sharded model
(FSDP2, DeepSpeed ZeRO) is gathered first and its states given as ``model_state`` / ``optimizer_state``;
``meta.json``'s ``layout`` says which (:func:`rlxf.train.distributed.checkpoint_layout`: ``replicated``,
``fsdp2``, ``deepspeed-zero2`` ...), and :func:`load_checkpoint` refuses to resume a run in another layout
(the optimizer state of one does not fit another).

**A finished run** calls :func:`finish_checkpoints` once ``model/`` and ``summary.json`` are written: by
default every checkpoint goes (the optimizer state is twice the model's size, and ``model/`` is what a
finished run is for); with ``keep_final`` the last ``keep_last`` stay, so ``--resume`` with a larger step
budget can extend the run later.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlxf.train.atomic import TMP_PREFIX, fsync_dir, write_text_atomic
from rlxf.train.seed import rng_state, set_rng_state

STEP_PREFIX = "step-"
LATEST = "latest"
_STEP_RE = re.compile(rf"^{STEP_PREFIX}(\d+)$")
_TMP_PREFIX = TMP_PREFIX  # folders (and files) being written
_TRASH_PREFIX = ".trash-"  # folders being deleted
_OLD_PREFIX = ".old-"  # a checkpoint moved aside while the same step is saved again

MODEL_FILE = "model.pt"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng.pt"
EXTRA_FILE = "extra.pt"
META_FILE = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, or does not fit the model / optimizer it is loaded into."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` restored besides the objects it was given."""

    path: Path
    step: int
    extra: dict[str, Any] = field(default_factory=dict)


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint taken after ``step`` steps: ``step-000123``."""
    return f"{STEP_PREFIX}{step:06d}"


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (parameter names without ``module.``)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return model.module
    return model


def _trainable_names(model: torch.nn.Module) -> tuple[set[str], set[str]]:
    """Names of (trainable, frozen) parameters, tied aliases included (as ``state_dict`` lists them)."""
    trainable, frozen = set(), set()
    for name, param in model.named_parameters(remove_duplicate=False):
        (trainable if param.requires_grad else frozen).add(name)
    return trainable, frozen


def model_state_of(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], str]:
    """The model's state to checkpoint and its kind: ``"full"``, or ``"trainable"`` when some are frozen.

    ``"trainable"`` holds the trainable parameters and all buffers, not the frozen parameters.
    """
    model = _unwrap(model)
    state = model.state_dict()
    trainable, frozen = _trainable_names(model)
    if not frozen:
        return state, "full"
    return {k: v for k, v in state.items() if k not in frozen}, "trainable"


def _save_file(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def _step_of(path: Path) -> int | None:
    """The step of a checkpoint folder, also of one moved aside while the same step is re-saved."""
    name = path.name.removeprefix(_OLD_PREFIX)
    match = _STEP_RE.match(name)
    return int(match.group(1)) if match else None


def _is_complete(path: Path) -> bool:
    return _step_of(path) is not None and path.is_dir() and (path / META_FILE).is_file()


def list_checkpoints(ckpt_dir: str | Path) -> list[Path]:
    """Complete checkpoints under ``ckpt_dir``, oldest (lowest step) first. Temporary folders are ignored.

    A checkpoint moved aside (``.old-step-…``) while its step was being saved again stands in for that
    step if the kill came before the new one took its place.
    """
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    by_step: dict[int, Path] = {}
    for path in ckpt_dir.iterdir():
        step = _step_of(path)
        if step is None or not _is_complete(path):
            continue
        if step not in by_step or not path.name.startswith(_OLD_PREFIX):
            by_step[step] = path
    return [by_step[step] for step in sorted(by_step)]


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The newest complete checkpoint under ``ckpt_dir``, or ``None`` when there is none.

    The ``latest`` pointer is followed when it names a complete checkpoint; otherwise (a kill between
    the rename and the pointer update, a pointer deleted by hand) the highest complete step wins.
    """
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / LATEST
    if pointer.is_file():
        named = ckpt_dir / pointer.read_text(encoding="utf-8").strip()
        if named.parent == ckpt_dir and _is_complete(named):
            return named
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def _remove_tree(path: Path) -> None:
    """Delete a folder so that no half-deleted checkpoint is ever visible under its own name."""
    trash = path.with_name(f"{_TRASH_PREFIX}{path.name}-{os.getpid()}-{time.monotonic_ns()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _clean_stale(ckpt_dir: Path) -> None:
    """Remove temporary and half-deleted folders left by an interrupted save.

    A checkpoint moved aside for a re-save of its step goes back to its place if the new one never
    arrived, and is deleted otherwise.
    """
    for path in ckpt_dir.iterdir():
        if path.name.startswith(_OLD_PREFIX):
            home = ckpt_dir / path.name.removeprefix(_OLD_PREFIX)
            if _is_complete(home) or not _is_complete(path):
                _remove_tree(path)
            else:
                os.replace(path, home)
    for path in ckpt_dir.iterdir():
        if path.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    path.unlink()


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    extra: Mapping[str, Any] | None = None,
    *,
    keep_last: int | None = 2,
    model_state: Mapping[str, torch.Tensor] | None = None,
    optimizer_state: Any = None,
    layout: str = "replicated",
) -> Path:
    """Atomically write the checkpoint of ``step`` under ``ckpt_dir`` and return its folder.

    Args:
        ckpt_dir: the run's ``checkpoints/`` folder (created if missing).
        step: optimizer steps done so far; the folder is ``step-{step:06d}``. Saving a step that already
            has a checkpoint replaces it.
        model: the model (a ``DistributedDataParallel`` wrapper is unwrapped); see the module docstring
            for which parameters are stored.
        optimizer, scheduler: saved through their ``state_dict()`` when given.
        extra: the trainer's own state needed to continue exactly: epoch, batch index, sampler or
            ``torch.Generator`` state, counters. Tensors and plain Python values only.
        keep_last: how many complete checkpoints to keep (the new one included); ``None`` keeps all.
            Older ones are deleted only after the new one is in place.
        model_state, optimizer_state: a sharded model's gathered full state (then ``model`` and
            ``optimizer`` are ``None``), stored as they are.
        layout: how the states are laid out (module docstring), recorded in ``meta.json``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale(ckpt_dir)

    name = checkpoint_name(step)
    tmp = ckpt_dir / f"{_TMP_PREFIX}{name}-{os.getpid()}"
    tmp.mkdir()
    if model_state is not None:
        state, kind = dict(model_state), "full"
    elif model is not None:
        state, kind = model_state_of(model)
    else:
        raise ValueError("save_checkpoint needs the model or its model_state")
    _save_file(state, tmp / MODEL_FILE)
    if optimizer_state is not None:
        _save_file(optimizer_state, tmp / OPTIMIZER_FILE)
    elif optimizer is not None:
        _save_file(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    if scheduler is not None:
        _save_file(scheduler.state_dict(), tmp / SCHEDULER_FILE)
    _save_file(rng_state(), tmp / RNG_FILE)
    _save_file(dict(extra or {}), tmp / EXTRA_FILE)
    meta = {
        "step": step,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model_state": kind,
        "layout": layout,
        "files": sorted(p.name for p in tmp.iterdir()),
    }
    write_text_atomic(tmp / META_FILE, json.dumps(meta, indent=2) + "\n")
    fsync_dir(tmp)

    final = ckpt_dir / name
    aside = ckpt_dir / f"{_OLD_PREFIX}{name}"
    if final.exists():  # the same step saved again (e.g. after a resume): move the old one aside first
        os.replace(final, aside)
    os.replace(tmp, final)
    fsync_dir(ckpt_dir)
    if aside.exists():
        _remove_tree(aside)
    write_text_atomic(ckpt_dir / LATEST, name + "\n")

    if keep_last is not None:
        for old in list_checkpoints(ckpt_dir)[:-keep_last]:
            if old != final:
                _remove_tree(old)
    return final


def finish_checkpoints(checkpoints_dir: Path, keep_final: bool, keep_last: int) -> None:
    """Tidy ``checkpoints_dir`` at the end of a run (after ``model/`` and ``summary.json`` are written).

    ``keep_final``: keep the newest ``keep_last`` checkpoints (the final one among them), delete the rest.
    Otherwise delete every checkpoint, the ``latest`` pointer and the folder itself (when nothing else of
    the user's is in it): the finished run keeps ``model/`` and no optimizer state.
    """
    if keep_last < 1:
        raise ValueError(f"keep_last must be >= 1, got {keep_last}")
    checkpoints_dir = Path(checkpoints_dir)
    if not checkpoints_dir.is_dir():
        return
    _clean_stale(checkpoints_dir)
    found = list_checkpoints(checkpoints_dir)
    for old in found[:-keep_last] if keep_final else found:
        _remove_tree(old)
    if keep_final:
        return
    (checkpoints_dir / LATEST).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: something of the user's is in it, leave it be
        checkpoints_dir.rmdir()


def _load_file(path: Path, map_location: Any) -> Any:
    return torch.load(path, map_location=map_location, weights_only=True)


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    *,
    restore_rng: bool = True,
    map_location: Any = "cpu",
    layout: str = "replicated",
) -> Checkpoint:
    """Restore the objects given from a checkpoint, and return its step and ``extra`` dict.

    ``path`` is a checkpoint folder (``checkpoints/step-000123``) or a ``checkpoints/`` folder, in which
    case its :func:`latest_checkpoint` is loaded. Build the model, optimizer and scheduler exactly as
    the interrupted run did (same model reference, same options), then call this before the first step.
    With ``restore_rng`` (the default) the random generators continue where the saved run left them.
    ``layout`` is the resuming run's (module docstring): a checkpoint of another layout is refused. A
    sharded model's states are loaded by :func:`rlxf.train.distributed.load_sharded_state` (pass ``None``
    for the model and optimizer here).
    """
    path = Path(path)
    if not (path / META_FILE).is_file():
        latest = latest_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"no complete checkpoint in {path}")
        path = latest
    meta = json.loads((path / META_FILE).read_text(encoding="utf-8"))
    saved_layout = meta.get("layout", "replicated")  # checkpoints from before layouts: one process or DDP
    if saved_layout != layout:
        raise CheckpointError(
            f"{path} was written by a {saved_layout} run and this run is {layout}: the model and optimizer "
            f"states do not carry over. Resume with the launch that started the run ({saved_layout})"
        )

    if model is not None:
        target = _unwrap(model)
        state = _load_file(path / MODEL_FILE, map_location)
        if meta.get("model_state") == "trainable":
            result = target.load_state_dict(state, strict=False)
            _, frozen = _trainable_names(target)
            missing = set(result.missing_keys) - frozen
            if missing or result.unexpected_keys:
                raise CheckpointError(
                    f"{path} does not fit this model: missing trainable keys {sorted(missing)[:5]}, "
                    f"unexpected keys {sorted(result.unexpected_keys)[:5]}. Was the model built the "
                    "same way (same model reference, LoRA options, frozen layers)?"
                )
        else:
            try:
                target.load_state_dict(state)
            except RuntimeError as exc:
                raise CheckpointError(f"{path} does not fit this model: {exc}") from exc
    if optimizer is not None:
        if not (path / OPTIMIZER_FILE).is_file():
            raise CheckpointError(f"{path} has no optimizer state")
        optimizer.load_state_dict(_load_file(path / OPTIMIZER_FILE, map_location))
    if scheduler is not None:
        if not (path / SCHEDULER_FILE).is_file():
            raise CheckpointError(f"{path} has no scheduler state")
        scheduler.load_state_dict(_load_file(path / SCHEDULER_FILE, map_location))
    if restore_rng:
        set_rng_state(_load_file(path / RNG_FILE, "cpu"))
    extra = _load_file(path / EXTRA_FILE, map_location)
    return Checkpoint(path=path, step=int(meta["step"]), extra=extra)
