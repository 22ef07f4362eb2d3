"""The human-labelling stage of an ``rlxf run`` pipeline (also ``rlxf label collect``): people judge the
samples, the pipeline waits.

On its first run the stage creates a labelling project from the previous stage's candidates file (the
same settings as ``rlxf label project create``) in the database ``db``. Then, on this run and every later
one, it counts the items that have their ``labels_per_item`` answers:

* enough (``required``: the share of items, all by default) -> it exports the answers (``preferences.jsonl``
  for pairwise and ranking projects, ``ratings.jsonl`` for rating ones, aggregated as ``rlxf label
  export`` does) and ``summary.json`` into its folder, and the pipeline goes on;
* not enough -> :class:`LabelsPending` (``rlxf run`` exits with status 3 and says to come back), or, with
  ``wait: true``, it polls every ``poll_seconds`` until they are there.

A project of the same name that already exists must hold the same items (same count, same prompts and
responses): a pipeline never labels into someone else's project by accident.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlxf.config import ConfigError, option
from rlxf.feedback.label.commands import ProjectOptions, _label_extra
from rlxf.feedback.label.schema import read_candidates

logger = logging.getLogger(__name__)


class LabelsPending(Exception):
    """A labelling project does not have enough labels yet (the message says how many and where)."""


@dataclass
class LabelStageConfig(ProjectOptions):
    """Options of a pipeline's ``label`` stage (plus the project settings of ``rlxf label project create``)."""

    data: str = option("", help="candidates JSONL to label (usually ${samples}/candidates.jsonl)")
    required: float = option(1.0, help="share of items that must have labels_per_item answers to go on")
    wait: bool = option(False, help="poll until the labels are there instead of exiting with status 3")
    poll_seconds: float = option(30.0, help="with wait: seconds between two looks at the project")
    out: str = option("", help="the stage's folder: preferences.jsonl or ratings.jsonl, summary.json")
    overwrite: bool = option(False, help="replace an export already in out (the project is kept)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ConfigError("give the items: data (a candidates JSONL file)")
        if not self.name:
            raise ConfigError("give the project a name: name")
        if not self.out:
            raise ConfigError("give the stage's folder: out")
        if not 0.0 < self.required <= 1.0:
            raise ConfigError(f"required must be in (0, 1], got {self.required}")
        if self.poll_seconds <= 0:
            raise ConfigError(f"poll_seconds must be > 0, got {self.poll_seconds}")


def _progress(cfg: LabelStageConfig) -> tuple[int, int]:
    """(items with labels_per_item answers, all items) of the project, creating it on first use."""
    from sqlalchemy import func, select

    from rlxf.feedback.label.db import Answer, Item, Project, init_db, make_engine, make_sessionmaker

    candidates = read_candidates(cfg.data, cfg.kind)  # a bad line stops here, before the database
    engine = make_engine(cfg.db)
    try:
        init_db(engine)
        with make_sessionmaker(engine)() as db:
            project = db.scalar(select(Project).where(Project.name == cfg.name))
            if project is not None:
                items = db.scalars(
                    select(Item).where(Item.project_id == project.id).order_by(Item.position)
                ).all()
                same = len(items) == len(candidates) and all(
                    item.prompt == c.prompt and item.responses == c.responses
                    for item, c in zip(items, candidates)
                )
                if not same:
                    raise ValueError(
                        f"project {cfg.name!r} in {cfg.db} holds other items than {cfg.data}; choose another name"
                    )
                answers_per_item = db.execute(
                    select(Answer.item_id, func.count())
                    .join(Item, Answer.item_id == Item.id)
                    .where(Item.project_id == project.id)
                    .group_by(Answer.item_id)
                ).all()
                return sum(1 for _, n in answers_per_item if n >= project.labels_per_item), len(items)
    finally:
        engine.dispose()
    cfg.create(candidates)  # first use: the project, with the candidates as its items
    return 0, len(candidates)


def label_stage(cfg: LabelStageConfig) -> dict[str, Any]:
    """Run the stage (module docstring; ``rlxf label collect``); returns the summary it wrote."""
    from rlxf.feedback.label.commands import LabelExportConfig, label_export
    from rlxf.train.atomic import write_text_atomic

    _label_extra()
    out = Path(cfg.out)
    while True:
        done, total = _progress(cfg)
        if done >= cfg.required * total:
            break
        message = (
            f"project {cfg.name!r}: {done} of {total} items have {cfg.labels_per_item} label(s); "
            f"{cfg.required:.0%} needed. Labellers work at `rlxf label serve --db {cfg.db}`."
        )
        if not cfg.wait:
            raise LabelsPending(message)
        logger.info(f"{message} Looking again in {cfg.poll_seconds:.0f} s.")
        time.sleep(cfg.poll_seconds)
    fmt = "ratings" if cfg.kind == "rating" else "preferences"
    out.mkdir(parents=True, exist_ok=True)
    records = label_export(
        LabelExportConfig(
            db=cfg.db,
            project=cfg.name,
            format=fmt,
            out=str(out / f"{fmt}.jsonl"),
            min_labels=cfg.labels_per_item,
        )
    )
    summary = {
        "project": cfg.name,
        "db": cfg.db,
        "items": total,
        "labelled_items": done,
        "records": len(records),
    }
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


__all__ = ["LabelStageConfig", "LabelsPending", "label_stage"]
