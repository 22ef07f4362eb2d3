"""Measuring and applying a reward model: held-out metrics and ``rlxf reward eval | score``.

* :func:`preference_metrics` and :func:`rating_metrics`: ``accuracy`` / ``ties`` / ``margin/mean`` and
  ``mse`` / ``spearman`` / ``pearson`` (ranks with averaged ties, :func:`average_ranks`);
* :func:`reward_eval` and :func:`reward_score`: the library functions behind ``rlxf reward eval`` and
  ``rlxf reward score``. They return their results (and write them to ``--out`` when given); showing
  them is the command line's job (:func:`format_metrics`, :func:`records_jsonl`).

Inference itself (inputs, the head, batched scoring, :class:`RewardModel`) lives in
:mod:`rlxf.feedback.reward_model`, shared with training and with the ``model:PATH`` reward source; its
names are re-exported here so ``from rlxf.algos.reward_eval import RewardModel`` keeps working.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlxf.config import option
from rlxf.data import ChatTemplateMode, DataError, read_data, tokenize_dataset
from rlxf.feedback.reward_model import (
    Objective,
    RewardHead,
    RewardModel,
    RewardScores,
    collate_rewards,
    encode_reward_record,
    end_token_ids,
    model_folder,
    reward_outputs,
    reward_pad_token_id,
    score_sequences,
)
from rlxf.models.load import Device, DType
from rlxf.train.atomic import write_text_atomic

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_ASPECT",
    "TIE_TOLERANCE",
    "Objective",
    "RewardEvalConfig",
    "RewardHead",
    "RewardModel",
    "RewardModelOptions",
    "RewardScoreConfig",
    "RewardScores",
    "average_ranks",
    "collate_rewards",
    "encode_reward_record",
    "end_token_ids",
    "format_metrics",
    "model_folder",
    "pearson",
    "preference_metrics",
    "rating_metrics",
    "records_jsonl",
    "reward_eval",
    "reward_outputs",
    "reward_pad_token_id",
    "reward_score",
    "score_sequences",
    "spearman",
]

DEFAULT_ASPECT = "default"  # the aspect of a rated record without an `aspect` field
TIE_TOLERANCE = 1e-6  # |r_c - r_r| below this is a tie: neither right nor wrong


# ---------------------------------------------------------------------------------------------- metrics


def preference_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """``accuracy`` (share of pairs with ``r_c - r_r >= TIE_TOLERANCE``), ``ties`` (share with
    ``|r_c - r_r| < TIE_TOLERANCE``, counted apart: a model that scores everything alike is not 50% right),
    ``margin/mean`` (mean ``r_c - r_r``), ``rewards/chosen`` and ``rewards/rejected`` (means)."""
    diff = (chosen - rejected).double()
    ties = diff.abs() < TIE_TOLERANCE
    return {
        "accuracy": ((diff > 0) & ~ties).double().mean().item(),
        "ties": ties.double().mean().item(),
        "margin/mean": diff.mean().item(),
        "rewards/chosen": chosen.double().mean().item(),
        "rewards/rejected": rejected.double().mean().item(),
    }


def average_ranks(x: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``x`` (1-D); tied values share the mean of the ranks they span: [3, 1, 3] -> [2.5, 1, 2.5]."""
    values, order = torch.sort(x.double(), stable=True)
    _, group, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # rank of each group's last member
    mean_rank = last - (counts.double() - 1) / 2  # mean of first..last
    ranks = torch.empty_like(values)
    ranks[order] = mean_rank[group]
    return ranks


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation ``cov(x, y) / (std x std y)``; NaN when either is constant."""
    dx, dy = x.double() - x.double().mean(), y.double() - y.double().mean()
    denominator = (dx.square().sum() * dy.square().sum()).sqrt()
    return (dx * dy).sum().item() / denominator.item() if denominator > 0 else math.nan


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman rank correlation: Pearson on the average ranks (ties share their mean rank)."""
    return pearson(average_ranks(x), average_ranks(y))


def rating_metrics(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """``mse``, ``spearman`` and ``pearson`` of predictions against ratings."""
    return {
        "mse": (predicted.double() - target.double()).square().mean().item(),
        "spearman": spearman(predicted, target),
        "pearson": pearson(predicted, target),
    }


# ---------------------------------------------------------------------------------------------- commands


@dataclass
class RewardModelOptions:
    """Options shared by ``rlxf reward eval`` and ``rlxf reward score``."""

    model: str = option("", help="a trained reward model: its run folder or its model/ folder")
    data: str = option("", help="data file (JSONL, CSV, Parquet or a datasets folder)")
    batch_size: int = option(16, help="inputs scored per forward pass")
    max_length: int | None = option(None, help="longest input in tokens; unset: as the model was trained")
    chat_template: ChatTemplateMode | None = option(
        None, help="auto, always or never; unset: as the model was trained"
    )
    device: Device = option("auto", help="where the model runs; auto = cuda if available, else cpu")
    dtype: DType = option("auto", help="weights precision; auto = bfloat16 where native, else float32")

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("give the reward model: --model RUN_OR_MODEL_FOLDER")
        if not self.data:
            raise ValueError("give the data: --data FILE")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.max_length is not None and self.max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {self.max_length}")

    def load(self) -> RewardModel:
        return RewardModel.load(
            self.model,
            device=self.device,
            dtype=self.dtype,
            max_length=self.max_length,
            chat_template=self.chat_template,
            batch_size=self.batch_size,
        )


@dataclass
class RewardEvalConfig(RewardModelOptions):
    """Options of ``rlxf reward eval``."""

    out: str | None = option(None, help="folder to write eval.json into (only shown when unset)")


def reward_eval(cfg: RewardEvalConfig) -> dict[str, float]:
    """Measure a reward model on held-out preferences or ratings; the function behind ``rlxf reward eval``.

    Preferences: ``accuracy`` (share of pairs with ``r_c > r_r``), ``ties`` (counted apart) and
    ``margin/mean``. Ratings: ``spearman`` and ``pearson`` between the model's score and the rating, and
    ``mse`` when the model was trained on ratings (its output for the record's aspect is compared; a
    preference model's scale is arbitrary, so no ``mse`` then). Returns the metrics (plus
    ``num_examples``; :func:`format_metrics` shows them), and writes ``eval.json`` into ``cfg.out`` when set.
    """
    ds = read_data(cfg.data)
    if ds.kind not in ("preferences", "ratings"):
        raise DataError(
            f"holds {ds.kind} records; reward eval needs preferences or ratings", path=ds.path, split=ds.split
        )
    rm = cfg.load()
    features = tokenize_dataset(ds, encode_reward_record, rm.tokenizer, **_encode_options(rm))
    metrics: dict[str, float]
    if ds.kind == "preferences":
        chosen = rm.score_ids([f["chosen_ids"] for f in features])
        rejected = rm.score_ids([f["rejected_ids"] for f in features])
        metrics = preference_metrics(chosen.reward, rejected.reward)
        if chosen.std is not None:
            metrics["rewards/ensemble_std"] = torch.cat([chosen.std, rejected.std]).mean().item()
    else:
        scores = rm.score_ids([f["input_ids"] for f in features])
        target = torch.tensor([f["rating"] for f in features])
        if rm.head.objective == "ratings":
            index = []
            for i, f in enumerate(features):
                aspect = f.get("aspect", DEFAULT_ASPECT)
                if aspect not in rm.head.labels:
                    raise ds.error(
                        i, f"aspect {aspect!r} is not one the model has: {rm.head.labels}", "aspect"
                    )
                index.append(rm.head.labels.index(aspect))
            predicted = scores.outputs.gather(1, torch.tensor(index)[:, None]).squeeze(1)
            metrics = rating_metrics(predicted, target)
        else:
            metrics = {"spearman": spearman(scores.reward, target), "pearson": pearson(scores.reward, target)}
    metrics["num_examples"] = float(len(features))
    if cfg.out:
        report = {
            "model": str(model_folder(cfg.model)),
            "data": str(cfg.data),
            "kind": ds.kind,
            "metrics": metrics,
        }
        write_text_atomic(Path(cfg.out) / "eval.json", json.dumps(_finite(report), indent=2) + "\n")
    return metrics


def format_metrics(metrics: dict[str, float]) -> str:
    """One ``name  value`` line per metric, names aligned: what ``rlxf reward eval`` shows."""
    width = max((len(name) for name in metrics), default=0)
    return "\n".join(f"{name:<{width}}  {value:.6g}" for name, value in metrics.items())


@dataclass
class RewardScoreConfig(RewardModelOptions):
    """Options of ``rlxf reward score``."""

    out: str | None = option(None, help="JSONL file to write the scored records to (stdout when unset)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.out and Path(self.out).suffix != ".jsonl":
            raise ValueError(f"out must be a .jsonl file, got {self.out}")


def reward_score(cfg: RewardScoreConfig) -> list[dict[str, Any]]:
    """Score every completion of a file; the function behind ``rlxf reward score``.

    Records with ``prompt`` + ``completion`` (or ``messages``; SFT, ratings, unpaired files) get a
    ``reward`` field; preference records get ``reward_chosen`` and ``reward_rejected``. An ensemble adds
    ``reward_std`` (``reward_chosen_std`` ...). Returns the scored records, in file order, and writes them
    as JSONL to ``cfg.out`` when set (written whole, then renamed into place); without ``out`` the command
    line writes :func:`records_jsonl` of them to stdout.
    """
    ds = read_data(cfg.data)
    if ds.kind == "prompts":
        raise DataError("holds prompts only: there is no completion to score", path=ds.path, split=ds.split)
    rm = cfg.load()
    features = tokenize_dataset(ds, encode_reward_record, rm.tokenizer, **_encode_options(rm))
    records = [dict(record) for record in ds.records]
    fields = [("chosen_ids", "reward_chosen"), ("rejected_ids", "reward_rejected")]
    if ds.kind != "preferences":
        fields = [("input_ids", "reward")]
    for key, name in fields:
        scores = rm.score_ids([f[key] for f in features])
        for i, record in enumerate(records):
            record[name] = scores.reward[i].item()
            if scores.std is not None:
                record[f"{name}_std"] = scores.std[i].item()
    if cfg.out:
        write_text_atomic(Path(cfg.out), records_jsonl(records))
        logger.info(f"scored {len(records)} records into {cfg.out}")
    return records


def records_jsonl(records: list[dict[str, Any]]) -> str:
    """Records as JSONL text, one object a line (UTF-8 as is; values JSON lacks as strings)."""
    return "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in records)


def _encode_options(rm: RewardModel) -> dict[str, Any]:
    return {"max_length": rm.max_length, "chat_template": rm.chat_template, "truncation": rm.truncation}


def _finite(tree: Any) -> Any:
    """NaN and infinities as ``null`` (standard JSON), e.g. a correlation with constant scores."""
    if isinstance(tree, dict):
        return {k: _finite(v) for k, v in tree.items()}
    return None if isinstance(tree, float) and not math.isfinite(tree) else tree
