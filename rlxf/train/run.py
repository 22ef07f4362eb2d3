"""The output folder of a training run (``--out DIR``), as docs/design.md ("Output folder") lays it out.

::

    DIR/
      config.yaml     the fully resolved configuration, enough to re-run
      metrics.jsonl   one JSON object per logged step: {"step": 40, "loss": 0.42, ...}
      summary.json    final metrics, wall time, tokens per second, peak memory (written at the end)
      model/          the result as a plain HF folder (written by the trainer)
      checkpoints/    what --resume needs (see rlxf.train.checkpoint)
      tb/             TensorBoard event files: tensorboard --logdir DIR/tb

A trainer's life with it::

    print_config(cfg, title="rlxf sft")  # logged (logger "rlxf.train.run", level INFO)
    with RunDir.create(cfg.out, cfg, resume=cfg.resume) as run:
        if run.resume_checkpoint:
            state = load_checkpoint(run.resume_checkpoint, model, optimizer, scheduler)
        ...
        run.log(step, {"loss": loss, "lr": lr})
        save_checkpoint(run.checkpoints_dir, step, model, optimizer, scheduler, extra)
        ...
        save the model into run.model_dir
        run.write_summary({"loss": loss}, num_tokens=tokens_seen)
    finish_checkpoints(run.checkpoints_dir, keep_final=False, keep_last=2)  # no optimizer state kept

:meth:`RunDir.create` never silently mixes two runs: a folder that already holds a run (finished or
in progress) is refused unless ``resume`` (continue it from its latest checkpoint) or ``overwrite``
(delete that run's files, and only those) is asked for. Resuming a finished run needs its final
checkpoint (``train.keep_final_checkpoint``); without one it is refused too, never silently restarted.

Notes for the user (resuming from ..., options changed) go through :mod:`logging` (logger
``rlxf.train.run``); the command line shows them.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import yaml

from rlxf.config import to_yaml
from rlxf.train.atomic import write_text_atomic
from rlxf.train.checkpoint import META_FILE, latest_checkpoint
from rlxf.train.metrics import MetricsLogger, peak_memory_mb, truncate_metrics
from rlxf.train.outdir import CommandResult, RunExistsError, claim_output_folder

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
TB_DIR = "tb"
RUN_ENTRIES = (CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, MODEL_DIR, CHECKPOINTS_DIR, TB_DIR)


@dataclass
class RunResult(CommandResult):
    """What a training function (``sft``, ``reward_train``, ``dpo``, ``kto``, ``rl``) returns: a
    :class:`~rlxf.train.outdir.CommandResult` (``out`` the run folder, ``metrics`` the final metrics,
    training and held-out ``eval/...``, ``summary`` what ``summary.json`` holds; it reads as the mapping of
    its final metrics, ``result["loss"]``) whose run also trained a model."""

    @property
    def model_dir(self) -> Path:
        """The trained model as a plain HF folder."""
        return self.out / MODEL_DIR


def run_status(path: str | Path) -> Literal["none", "in_progress", "finished"]:
    """Whether ``path`` holds no run, a run that has not written its summary yet, or a finished one."""
    path = Path(path)
    if (path / SUMMARY_FILE).is_file():
        return "finished"
    if any((path / entry).exists() for entry in RUN_ENTRIES):
        return "in_progress"
    return "none"


def config_yaml(config: Any) -> str:
    """A config dataclass (or a plain mapping) as YAML, in declaration order."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return to_yaml(config)
    if isinstance(config, Mapping):
        return yaml.safe_dump(dict(config), sort_keys=False, allow_unicode=True)
    raise TypeError(f"config must be a dataclass instance or a mapping, got {type(config).__name__}")


def render_config(config: Any, title: str = "configuration") -> str:
    """The config as YAML under a title line, as shown at the start of a run."""
    body = config_yaml(config).rstrip("\n")
    rule = "─" * max(8, 60 - len(title) - 4)
    return f"── {title} {rule}\n{body}\n{'─' * (len(title) + len(rule) + 4)}"


def _note(message: str, stream: IO[str] | None) -> None:
    """A note for the user: logged at INFO, or written to ``stream`` when a caller asks for one."""
    if stream is None:
        logger.info(message)
    else:
        stream.write(message + "\n")
        stream.flush()


def print_config(config: Any, title: str = "configuration", stream: IO[str] | None = None) -> None:
    """Show the resolved config at the start of a run (YAML under a title line).

    It is logged at INFO (the command line shows it); a caller that passes ``stream`` gets it written
    there instead.
    """
    _note(render_config(config, title), stream)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}."))
    return flat


def _changed_keys(old_yaml: str, new_yaml: str) -> list[str]:
    try:
        old, new = _flatten(yaml.safe_load(old_yaml) or {}), _flatten(yaml.safe_load(new_yaml) or {})
    except yaml.YAMLError:
        return ["(previous config.yaml unreadable)"]
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(old.keys() | new.keys())
        if old.get(k) != new.get(k)
    ]


def _clear_run(path: Path) -> None:
    """Delete the run files in ``path`` (only those: the folder may hold other things of the user's)."""
    for entry in RUN_ENTRIES:
        target = path / entry
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunDir:
    """A run's output folder, open for logging. Make one with :meth:`RunDir.create`.

    Attributes:
        path, config_path, metrics_path, summary_path, model_dir, checkpoints_dir, tb_dir: where things go.
        resume_checkpoint: the checkpoint to continue from (``None`` for a fresh run).
        resume_step: its step (0 for a fresh run); ``metrics.jsonl`` holds no record after it.
        logger: the :class:`~rlxf.train.metrics.MetricsLogger` behind :meth:`log`.
    """

    def __init__(
        self,
        path: Path,
        *,
        resume_checkpoint: Path | None,
        resume_step: int,
        tensorboard: bool,
        main: bool = True,
    ):
        self.path = path
        self.main = main  # the one process of a distributed run that writes run files
        self.config_path = path / CONFIG_FILE
        self.metrics_path = path / METRICS_FILE
        self.summary_path = path / SUMMARY_FILE
        self.model_dir = path / MODEL_DIR
        self.checkpoints_dir = path / CHECKPOINTS_DIR
        self.tb_dir = path / TB_DIR
        self.resume_checkpoint = resume_checkpoint
        self.resume_step = resume_step
        self.started = time.monotonic()
        purge = resume_step + 1 if resume_checkpoint is not None else None
        self.logger = (
            MetricsLogger(self.metrics_path, self.tb_dir if tensorboard else None, purge_step=purge)
            if main
            else None
        )

    @classmethod
    def create(
        cls,
        out: str | Path,
        config: Any,
        *,
        resume: bool = False,
        overwrite: bool = False,
        tensorboard: bool = True,
        stream: IO[str] | None = None,
    ) -> RunDir:
        """Prepare ``out`` for a run of ``config`` and write ``config.yaml``.

        Args:
            out: the output folder (created if missing; other files of the user's in it are left alone).
            config: the fully resolved config (a dataclass from :mod:`rlxf.config`, or a mapping).
            resume: continue the run in ``out`` from its latest complete checkpoint: records of
                ``metrics.jsonl`` after that step are dropped (they will be logged again) and TensorBoard
                hides its events after it. Without a checkpoint an interrupted run starts over, and a
                finished one (its checkpoints deleted at the end) is refused.
            overwrite: delete the run already in ``out`` (its run files only) and start a new one.
            tensorboard: also write TensorBoard event files into ``tb/``.
            stream: where notes (resuming from ..., changed options) go; logged at INFO when unset.

        Under ``torchrun`` / ``accelerate launch`` only the main process prepares and writes the folder;
        the others wait for it, then read the checkpoint to resume from, and write nothing.

        Raises:
            RunExistsError: ``out`` holds a run and neither ``resume`` nor ``overwrite`` is set; or
                ``resume`` is set but ``out`` holds a finished run without a checkpoint to continue from.
        """
        import torch
        from accelerate import PartialState

        # This process's place in a torchrun / accelerate launch (one process: rank 0 of 1). accelerate's
        # state is one per process: cpu= as the Trainer's Accelerator will ask for it.
        state = PartialState(cpu=not torch.cuda.is_available())
        if not state.is_main_process:
            state.wait_for_everyone()  # the main process has claimed, cleared or truncated the folder
            path = Path(out)
            checkpoint = latest_checkpoint(path / CHECKPOINTS_DIR) if resume else None
            step = (
                int(json.loads((checkpoint / META_FILE).read_text(encoding="utf-8"))["step"])
                if checkpoint
                else 0
            )
            return cls(
                path, resume_checkpoint=checkpoint, resume_step=step, tensorboard=tensorboard, main=False
            )
        try:
            run = cls._create(
                out, config, resume=resume, overwrite=overwrite, tensorboard=tensorboard, stream=stream
            )
        finally:
            state.wait_for_everyone()  # the others go on once the folder is ready (or the error is raised)
        return run

    @classmethod
    def _create(
        cls,
        out: str | Path,
        config: Any,
        *,
        resume: bool,
        overwrite: bool,
        tensorboard: bool,
        stream: IO[str] | None,
    ) -> RunDir:
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run or replace it")
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(f"--out {path} is a file, not a folder")
        status = run_status(path)
        if not resume:  # the one output-folder guard of every command; resuming keeps the run's files
            what = "a finished run" if status == "finished" else "a run (in progress or interrupted)"
            hint = "pass --resume to continue it, or choose another --out (or --overwrite to replace it)"
            claim_output_folder(path, RUN_ENTRIES, overwrite=overwrite, command="a run", what=what, hint=hint)
        new_yaml = config_yaml(config)
        checkpoint = latest_checkpoint(path / CHECKPOINTS_DIR) if resume else None
        if resume and checkpoint is None and status == "finished":
            raise RunExistsError(
                f"{path} holds a finished run whose checkpoints were not kept "
                "(train.keep_final_checkpoint=false), so --resume has nothing to continue from. To train "
                f"more, start a new run from its model (--model {path / MODEL_DIR} --out OTHER_DIR), or "
                "replace it with --overwrite; set train.keep_final_checkpoint=true to keep a finished run "
                "extendable."
            )
        step = 0
        if checkpoint is not None:
            step = int(json.loads((checkpoint / META_FILE).read_text(encoding="utf-8"))["step"])
            _note(f"resuming {path} from {checkpoint.name} (step {step})", stream)
            if (path / CONFIG_FILE).is_file():
                changed = _changed_keys((path / CONFIG_FILE).read_text(encoding="utf-8"), new_yaml)
                if changed:
                    _note("options changed since the run started: " + "; ".join(changed), stream)
            (path / SUMMARY_FILE).unlink(missing_ok=True)  # the run is in progress again
            if (path / METRICS_FILE).is_file():
                truncate_metrics(path / METRICS_FILE, step)
        elif resume and status != "none":
            _note(f"no complete checkpoint in {path / CHECKPOINTS_DIR}: starting over", stream)
            _clear_run(path)
        path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path / CONFIG_FILE, new_yaml)
        run = cls(path, resume_checkpoint=checkpoint, resume_step=step, tensorboard=tensorboard)
        run.checkpoints_dir.mkdir(exist_ok=True)
        return run

    def log(self, step: int, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """Log named metrics for ``step`` to ``metrics.jsonl`` (flushed at once) and TensorBoard (the main
        process only; pass metrics that are already global)."""
        if self.logger is None:
            return {"step": step, **metrics}
        return self.logger.log(step, metrics)

    def write_summary(
        self,
        metrics: Mapping[str, Any],
        *,
        num_tokens: int | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Write ``summary.json``, which marks the run finished, and return what was written.

        It holds the final ``metrics``, ``wall_time_s`` (of this session, since :meth:`create`),
        ``num_tokens`` and ``tokens_per_s`` when ``num_tokens`` (tokens processed in this session) is
        given, ``peak_memory_mb`` (CPU resident set, CUDA allocated), ``resumed_from_step`` and the
        keys of ``extra``.
        """
        wall = time.monotonic() - self.started
        summary: dict[str, Any] = {
            "status": "finished",
            "metrics": {k: _finite_or_none(float(v)) for k, v in metrics.items()},
            "wall_time_s": round(wall, 3),
            "num_tokens": num_tokens,
            "tokens_per_s": round(num_tokens / wall, 3) if num_tokens is not None and wall > 0 else None,
            "peak_memory_mb": {k: v if v is None else round(v, 1) for k, v in peak_memory_mb().items()},
            "resumed_from_step": self.resume_step if self.resume_checkpoint is not None else None,
        }
        summary.update(extra or {})
        if self.logger is not None:
            self.logger.flush()
            write_text_atomic(self.summary_path, json.dumps(summary, indent=2) + "\n")
        return summary

    def close(self) -> None:
        """Flush and close the metrics sinks."""
        if self.logger is not None:
            self.logger.close()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
