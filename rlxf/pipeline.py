"""``rlxf run FILE.yaml``: the whole loop as a pipeline of stages, each one an rlxf command.

A pipeline file names an output folder and a list of stages; each stage is one command with its usual
options (the same keys as that command's ``--config`` file)::

    out: runs/sentiment-loop
    stages:
      - {name: samples,  kind: sample,   options: {prompts: openings.jsonl, sampling: {n: 4}}}
      - {name: feedback, kind: simulate, options: {data: "${samples}/candidates.jsonl", reward: sentiment}}
      - {name: rm,       kind: reward,   options: {data: "${feedback}/preferences.jsonl"}}
      - {name: policy,   kind: rl,       options: {prompts: openings.jsonl, reward: "model:${rm}"}}
      - {name: eval,     kind: eval,     options: {model: {name_or_path: "${policy}"}, prompts: ...}}

Stage ``NAME`` writes into ``OUT/NAME`` (the pipeline sets each stage's ``out``); ``${NAME}`` in a later
stage's options stands for that folder. A stage's ``kind`` is a command of the command table
(:mod:`rlxf.commands`, which gives its config and function): ``sample`` (``rlxf sample``), ``simulate``,
``judge``, ``label`` (``rlxf label collect``: a human labelling project, :mod:`rlxf.feedback.label`),
``sft``, ``reward`` (``rlxf reward train``), ``dpo``, ``kto``, ``ilql``, ``rl``, ``eval``. The commands
that cannot be stages, and why, are :data:`rlxf.commands.NOT_STAGES`.

Re-running is safe and cheap, as with ``make``:

* a stage that finished (its folder holds ``stage.json``, written after the command returned, with the
  options it ran with) is reused as it is;
* a stage that was interrupted continues: a training stage (a command with a ``resume`` option: ``sft``,
  ``reward``, ``dpo``, ``kto``, ``ilql``, ``rl``) resumes from its last checkpoint, any other starts its
  folder over;
* a finished stage whose options changed runs again, and so does every stage after it;
* a failing stage stops the pipeline with its error; the stages before it stay as they are;
* a ``label`` stage whose project does not have its labels yet exits with status 3 and says to come back
  when it is labelled (or, with ``wait: true``, polls until it is).

Every stage's options are checked (typed, as the command would) before the first stage runs, so a typo in
the last stage does not cost the first ones' time. Progress goes to ``logging.getLogger("rlxf.pipeline")``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rlxf.commands import STAGE_KINDS, command_for_stage, has_option
from rlxf.config import ConfigError, load_config, option
from rlxf.feedback.label.stage import LabelsPending
from rlxf.train.atomic import write_text_atomic
from rlxf.train.run import config_yaml, run_status

logger = logging.getLogger(__name__)

StageKind = Literal[STAGE_KINDS]  # type: ignore[valid-type]  # the command table's stage kinds
STAGE_FILE = "stage.json"  # written into a stage's folder once its command returned: "finished"
WAITING_FOR_LABELS = 3  # exit status of `rlxf run` while a labelling stage waits for people
_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class StageConfig:
    """One stage: an rlxf command and its options."""

    name: str = option("", help="the stage's name: its folder is OUT/NAME, later stages write ${NAME} for it")
    kind: StageKind = option("sample", help=f"the command: {', '.join(STAGE_KINDS)}")
    options: dict = option(default_factory=dict, help="the command's options (its --config keys); out is set")

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"stage name {self.name!r} must be letters, digits, '_', '-' or '.'")
        if "out" in self.options:
            raise ValueError(f"stage {self.name}: do not set `out`; the stage writes into OUT/{self.name}")


@dataclass
class PipelineConfig:
    """Options of ``rlxf run``."""

    out: str = option("", help="the pipeline's folder; stage NAME writes into OUT/NAME")
    stages: list[StageConfig] = option(default_factory=list, help="the stages, run in order")
    stop_after: str | None = option(None, help="run the stages up to and including this one, then stop")

    def __post_init__(self) -> None:
        if not self.out:
            raise ValueError("give the pipeline's output folder: out")
        if not self.stages:
            raise ValueError("the pipeline has no stages")
        names = [s.name for s in self.stages]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(repeated)}")
        if self.stop_after is not None and self.stop_after not in names:
            raise ValueError(f"stop_after {self.stop_after!r} is not a stage ({', '.join(names)})")


def substitute(value: Any, folders: dict[str, Path], where: str) -> Any:
    """``value`` with every ``${NAME}`` replaced by the folder of the earlier stage ``NAME``."""
    if isinstance(value, dict):
        return {k: substitute(v, folders, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, folders, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def folder(match: re.Match) -> str:
        name = match.group(1)
        if name not in folders:
            earlier = ", ".join(folders) or "none"
            raise ConfigError(f"{where}: ${{{name}}} is not an earlier stage (earlier stages: {earlier})")
        return str(folders[name])

    return _REFERENCE.sub(folder, value)


@dataclass
class PlannedStage:
    spec: StageConfig
    folder: Path
    options: dict[str, Any]  # the command's options with references resolved and `out` set
    config_cls: type
    run: Callable[[Any], Any]
    fingerprint: str = field(default="")  # the options as YAML: what `stage.json` remembers


def plan(cfg: PipelineConfig) -> list[PlannedStage]:
    """Resolve references and build every stage's typed config once, so bad options stop before any work."""
    root = Path(cfg.out)
    folders: dict[str, Path] = {}
    planned = []
    for i, spec in enumerate(cfg.stages):
        where = f"stages[{i}] ({spec.name}).options"
        options = substitute(spec.options, folders, where)
        folder = root / spec.name
        options["out"] = str(folder)
        entry = command_for_stage(spec.kind)
        config_cls, run = entry.config_class(), entry.library_function()
        try:
            checked = load_config(config_cls, overrides=options)
        except ConfigError as exc:
            raise ConfigError(f"stage {spec.name} ({spec.kind}): {exc}") from exc
        planned.append(PlannedStage(spec, folder, options, config_cls, run, fingerprint=config_yaml(checked)))
        folders[spec.name] = folder
    return planned


def finished_with(stage: PlannedStage) -> str | None:
    """The fingerprint a stage's folder finished with, or ``None`` if it has not finished."""
    marker = stage.folder / STAGE_FILE
    if not marker.is_file():
        return None
    return json.loads(marker.read_text(encoding="utf-8")).get("options")


def run_pipeline(cfg: PipelineConfig) -> int:
    """Run ``rlxf run`` (module docstring). Returns 0 when done, :data:`WAITING_FOR_LABELS` when waiting."""
    stages = plan(cfg)
    root = Path(cfg.out)
    root.mkdir(parents=True, exist_ok=True)
    write_text_atomic(root / "pipeline.yaml", config_yaml(cfg))
    total = len(stages)
    rerun = False  # once a stage runs again, every later one must too: its inputs changed
    started = time.monotonic()
    for number, stage in enumerate(stages, start=1):
        name, kind = stage.spec.name, stage.spec.kind
        head = f"[{number}/{total}] {name} ({kind})"
        done = finished_with(stage)
        if done == stage.fingerprint and not rerun:
            logger.info(f"{head}: finished earlier, reusing {stage.folder}")
        else:
            options, why = _how_to_run(stage, done)
            rerun = rerun or done is not None
            logger.info(f"{head}: {why}")
            stage_started = time.monotonic()
            try:
                stage.run(load_config(stage.config_cls, overrides=options))
            except LabelsPending as exc:
                logger.info(f"{head}: waiting for labels. {exc}")
                logger.info(
                    f"Come back when it is labelled: `rlxf run {cfg.out}/pipeline.yaml` continues here."
                )
                return WAITING_FOR_LABELS
            except BaseException as exc:
                if not isinstance(exc, KeyboardInterrupt):
                    logger.error(
                        f"{head} failed; earlier stages are kept. Fix it and run the pipeline again."
                    )
                raise
            marker = {
                "kind": kind,
                "options": stage.fingerprint,
                "seconds": round(time.monotonic() - stage_started, 1),
            }
            write_text_atomic(stage.folder / STAGE_FILE, json.dumps(marker, indent=2) + "\n")
            rerun = rerun or done is None and number < total and _later_finished(stages[number:])
            logger.info(f"{head}: done in {marker['seconds']:.0f} s")
        if cfg.stop_after == name:
            logger.info(f"stopping after {name} (stop_after)")
            break
    logger.info(f"pipeline done in {time.monotonic() - started:.0f} s: {root}")
    return 0


def _how_to_run(stage: PlannedStage, done: str | None) -> tuple[dict[str, Any], str]:
    """The options a stage that must run gets (``overwrite`` or ``resume`` added), and why it runs."""
    options = dict(stage.options)
    if done is not None:
        why = "its options changed" if done != stage.fingerprint else "an earlier stage ran again"
        options["overwrite"] = True
        return options, f"finished earlier, but {why}: running it again"
    resumable = has_option(stage.config_cls, "resume")  # a training run with checkpoints
    # A run that wrote its summary but was stopped before stage.json has no checkpoint left to resume
    # (a finished run keeps model/ only): it starts over below, like any stage interrupted before its end.
    if stage.folder.exists() and resumable and run_status(stage.folder) == "in_progress":
        options["resume"] = True
        return options, "interrupted earlier, resuming from its last checkpoint"
    if stage.folder.exists() and any(stage.folder.iterdir()):
        options["overwrite"] = True
        return options, "interrupted earlier, starting it over"
    return options, f"running, output in {stage.folder}"


def _later_finished(later: list[PlannedStage]) -> bool:
    """Whether a stage after a freshly run one had finished before (on the old inputs: it must run again)."""
    return any(finished_with(s) is not None for s in later)


__all__ = ["LabelsPending", "PipelineConfig", "StageConfig", "WAITING_FOR_LABELS", "plan", "run_pipeline"]
