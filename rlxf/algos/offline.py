"""The offline learners' shared tail: what SFT, reward models, DPO and KTO do around their own loss.

Each learner's entry function reads as data -> model -> loss -> fit::

    data = read_and_tokenize(cfg, "sft", tokenize)          # read, validate, hold out, tokenise
    model, precision = load_trainable_model(cfg)            # precision -> weight dtype, LoRA, dropout
    ... compute_loss(model, batch), held-out score(model, batch) and summarize(figures) (the learner's own) ...
    return fit_and_save(cfg, model=model, ..., desc="sft")  # train, save model/ and summary.json, tidy

**Validation by default.** Without ``eval_data``, ``eval_split="auto"`` (the default) holds out a tenth
of the training records, at least :data:`AUTO_EVAL_MIN` (32) and at most :data:`AUTO_EVAL_MAX` (512);
below :data:`AUTO_SPLIT_MIN_RECORDS` (100) records nothing is held out (a few dozen left for training
would cost more than the held-out figures tell), and an info message says so (:func:`auto_eval_size`).
A number keeps its meaning (the share held out) and ``0`` turns evaluation off. The split is
:func:`~rlxf.data.split_data`'s: the same records for the same seed and file.

**Held-out report.** The loop evaluates at step 0 and at the end (:mod:`rlxf.train.loop`); both go into
``summary.json`` as ``held_out = {"n", "unit", "start", "end", "warnings"}`` (figures without the
``eval/`` prefix) beside the final ``metrics``, and are returned in the :class:`~rlxf.train.run.RunResult`.
:func:`held_out_warning` says, through ``logging`` (the command line shows it), when a run did not learn:

* a preference reward model whose held-out accuracy is within noise of chance: with ``n`` pairs a
  model that guesses has accuracy ``0.5 +- sqrt(0.25 / n)`` (one standard deviation of a binomial
  share), so ``accuracy - 0.5 < 2 sqrt(0.25 / n) = 1 / sqrt(n)`` cannot be told apart from guessing;
* SFT, DPO, KTO (and a ratings reward model, by its MSE): a held-out loss that ended no lower than at
  step 0.

A run without held-out data says so (info): nothing then tells whether the model generalises.

**Disk.** A finished run keeps ``model/`` and no optimizer state unless ``train.keep_final_checkpoint``
(:func:`~rlxf.train.checkpoint.finish_checkpoints`).

Left out: k-fold validation, early stopping on the held-out loss, choosing the best checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlxf.data import DataError, Dataset, Kind, read_data, split_data
from rlxf.models.load import disable_dropout, load_model, load_tokenizer, resolve_device, save_model
from rlxf.models.precision import ResolvedPrecision, resolve_precision, weight_dtype
from rlxf.models.registry import resolve_model
from rlxf.train.checkpoint import finish_checkpoints
from rlxf.train.distributed import check_launch
from rlxf.train.loop import HeldOut, LossOutput, RunConfig, Trainer
from rlxf.train.run import RunDir, RunResult
from rlxf.train.seed import seed_everything

logger = logging.getLogger(__name__)

AUTO_SPLIT_MIN_RECORDS = 100  # below this, eval_split=auto holds nothing out
AUTO_EVAL_SHARE = 0.1
AUTO_EVAL_MIN = 32
AUTO_EVAL_MAX = 512

# ---------------------------------------------------------------------------------------------- data


def auto_eval_size(n: int) -> int:
    """Records ``eval_split="auto"`` holds out of ``n``: a tenth, clamped to [32, 512]; 0 below 100 records."""
    if n < AUTO_SPLIT_MIN_RECORDS:
        return 0
    return min(max(round(AUTO_EVAL_SHARE * n), AUTO_EVAL_MIN), AUTO_EVAL_MAX)


def read_train_eval(cfg: RunConfig, kind: Kind | None) -> tuple[Dataset, Dataset | None]:
    """Training data and held-out data: ``eval_data``, else ``eval_split`` of ``data``, else none.

    ``kind`` ``None`` accepts the kind the training file holds; ``eval_data`` must then hold the same.
    Raises :class:`~rlxf.data.DataError` at the first bad record, or when too few training records are
    left for one optimizer step (:func:`check_full_batch`).
    """
    train_ds = read_data(cfg.data, kind=kind)
    eval_ds = None
    if cfg.eval_data:
        eval_ds = read_data(cfg.eval_data, kind=train_ds.kind)
    elif cfg.eval_split == "auto":
        n_eval = auto_eval_size(len(train_ds))
        if n_eval:
            train_ds, eval_ds = split_data(train_ds, n_eval, cfg.seed)
            logger.info(
                f"holding out {n_eval} of {n_eval + len(train_ds)} records for validation "
                "(eval_split=auto; eval_split=0 turns it off)"
            )
        else:
            logger.info(
                f"{len(train_ds)} training records are too few to hold out a validation split "
                f"(eval_split=auto needs >= {AUTO_SPLIT_MIN_RECORDS}): training on all of them; give "
                "--eval-data FILE or an explicit eval_split to measure on held-out data"
            )
    elif cfg.eval_split > 0:
        train_ds, eval_ds = split_data(train_ds, cfg.eval_split, cfg.seed)
    check_full_batch(len(train_ds), cfg, train_ds, eval_ds)
    return train_ds, eval_ds


@dataclass
class TrainEvalData:
    """A learner's data, read, split and tokenised before the run folder is touched."""

    tokenizer: Any
    train_ds: Dataset
    eval_ds: Dataset | None
    train: list[dict[str, Any]]  # the tokenised training examples
    eval: list[dict[str, Any]]  # the tokenised held-out examples ([] without held-out data)


def read_and_tokenize(
    cfg: RunConfig, kind: Kind, tokenize: Callable[[Dataset, Any], list[dict[str, Any]]]
) -> TrainEvalData:
    """:func:`read_train_eval`, then ``tokenize(dataset, tokenizer)`` on both parts with the model's tokenizer
    (a :class:`~rlxf.data.DataError` naming the record at the first bad one)."""
    train_ds, eval_ds = read_train_eval(cfg, kind)
    tokenizer = load_tokenizer(resolve_model(cfg.model.name_or_path))
    train = tokenize(train_ds, tokenizer)  # first: a bad training record is reported before a held-out one
    held_out = tokenize(eval_ds, tokenizer) if eval_ds is not None else []
    return TrainEvalData(tokenizer, train_ds, eval_ds, train, held_out)


def check_full_batch(
    count: int, cfg: RunConfig, train_ds: Dataset, eval_ds: Dataset | None, what: str = "training records"
) -> None:
    """A :class:`~rlxf.data.DataError` when ``count`` training items make no full optimizer step."""
    if count >= cfg.train.global_batch_size:
        return
    split = eval_ds is not None and not cfg.eval_data
    held_out = f" once {len(eval_ds)} are held out" if split else ""
    raise DataError(
        f"{count} {what}{held_out} make no full batch of train.global_batch_size="
        f"{cfg.train.global_batch_size}: lower it or add data"
        + (" (or hold out less: eval_split)" if split else ""),
        path=train_ds.path,
    )


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch with its tensors moved to ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


# ---------------------------------------------------------------------------------------------- model


def training_precision(cfg: RunConfig) -> ResolvedPrecision:
    """``cfg.train.precision`` resolved for the device the model trains on."""
    return resolve_precision(cfg.train.precision, resolve_device(cfg.model.device))


def load_trainable_model(cfg: RunConfig, *, no_dropout: bool = False) -> tuple[Any, ResolvedPrecision]:
    """The causal LM to train and its precision: fp32 master weights unless the precision is pure bf16,
    LoRA adapters when ``model.lora.r > 0``, dropout off with ``no_dropout``; seeded by ``cfg.seed``."""
    precision = training_precision(cfg)
    seed_everything(cfg.seed)
    model, _ = load_model(dataclasses.replace(cfg.model, dtype=weight_dtype(precision)), trainable=True)
    if no_dropout:
        disable_dropout(model)
    return model, precision


# ---------------------------------------------------------------------------------------------- report


def chance_bound(n_pairs: int) -> float:
    """How far above 0.5 a held-out accuracy on ``n_pairs`` pairs must be to beat guessing:
    two standard deviations of a coin's share, ``2 sqrt(0.25 / n) = 1 / sqrt(n)``."""
    return 2 * math.sqrt(0.25 / n_pairs)


def held_out_warning(
    metric: str, start: float | None, end: float, n: int, unit: str = "examples"
) -> str | None:
    """The warning a run's held-out figures call for, or ``None``.

    ``metric`` ``"accuracy"`` (a preference reward model): ``end - 0.5 < chance_bound(n)`` is within noise
    of chance. Any other metric is a loss (lower is better): ``end >= start`` did not improve on step 0
    (unknown ``start``: no verdict).
    """
    if metric == "accuracy":
        bound = chance_bound(n)
        if end - 0.5 >= bound:
            return None
        return (
            f"held-out accuracy {end:.3f} on {n} {unit} is within noise of chance (0.5 + {bound:.3f}, two "
            "standard deviations of guessing): the reward model did not learn to rank them. Try more or "
            "cleaner pairs, a higher train.learning_rate, or more train.num_epochs."
        )
    if start is None or end < start:
        return None
    return (
        f"held-out {metric} {end:.4g} did not improve on {start:.4g} at step 0 ({n} {unit}): the model did "
        "not learn what the held-out data measures. Try a higher train.learning_rate or more "
        "train.num_epochs, or check the data."
    )


def _without_prefix(figures: Mapping[str, float]) -> dict[str, float]:
    return {name.removeprefix("eval/"): value for name, value in figures.items()}


def held_out_report(
    start: Mapping[str, float] | None,
    end: Mapping[str, float] | None,
    n: int,
    *,
    metric: str,
    unit: str,
) -> dict[str, Any]:
    """``summary.json``'s ``held_out`` block; its warnings are logged too."""
    report: dict[str, Any] = {"n": n, "unit": unit, "start": None, "end": None, "warnings": []}
    if not n or end is None:
        logger.info(
            "no held-out data: the run reports training figures only, and nothing tells whether the model "
            "generalises (give --eval-data FILE, or eval_split)"
        )
        return report
    report["start"] = _without_prefix(start) if start is not None else None
    report["end"] = _without_prefix(end)
    key = f"eval/{metric}"
    if key in end:
        before = start.get(key) if start is not None else None
        warning = held_out_warning(metric, before, end[key], n, unit)
        if warning:
            logger.warning(warning)
            report["warnings"].append(warning)
    return report


# ---------------------------------------------------------------------------------------------- fit


def fit_and_save(
    cfg: RunConfig,
    *,
    model: torch.nn.Module,
    tokenizer: Any,
    train_examples: Sequence[Any],
    eval_examples: Sequence[Any],
    collate: Callable[[list[Any]], dict[str, Any]],
    units: Callable[[dict[str, Any]], int],
    compute_loss: Callable[[torch.nn.Module, dict[str, Any]], LossOutput],
    score: Callable[[torch.nn.Module, list[Any]], dict[str, torch.Tensor]],
    summarize: Callable[[dict[str, torch.Tensor]], dict[str, float]],
    desc: str,
    command: str,
    eval_batch_size: int | None = None,
    judge_by: str = "loss",
    unit: str = "examples",
    before_save: Callable[[Trainer, dict[str, float]], None] | None = None,
    saved_part: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
    save_extra: Callable[[torch.nn.Module, Path], None] | None = None,
    after_step: Callable[[int], None] | None = None,
) -> RunResult:
    """Train in the run folder ``cfg.out``, save ``model/`` and ``summary.json``, tidy the checkpoints.

    The held-out evaluation (``score`` a batch of ``eval_examples``, ``summarize`` the figures of all:
    :class:`~rlxf.train.loop.HeldOut`, in batches of ``eval_batch_size``, default ``train.micro_batch_size``)
    runs only when there are ``eval_examples``; ``judge_by`` names the held-out metric the run is judged by
    (:func:`held_out_warning`), ``unit`` what an example is (``pairs``). ``before_save`` may change the
    trained model (a reward model's centring and head description) before it is saved; ``saved_part`` picks
    what of the trained module ``model/`` holds (a language model without a value head);
    ``save_extra(trained, folder)`` writes more files into ``model/`` before it takes its place (ILQL's
    heads), and ``after_step(step)`` runs after every optimizer step (ILQL's target update). ``command`` names
    the rlxf command in messages. Everything a learner can check is checked before this is called (the
    launch too: :func:`~rlxf.train.distributed.check_launch`), so bad input writes nothing.
    """
    check_launch(os.environ, command=command)  # before the run folder: a refused launch writes nothing
    held_out = None
    if eval_examples:
        size = eval_batch_size or cfg.train.micro_batch_size
        held_out = HeldOut(eval_examples, size, score, summarize)
    with RunDir.create(cfg.out, cfg, resume=cfg.resume, overwrite=cfg.overwrite) as run:
        trainer = Trainer(
            cfg.train,
            model=model,
            examples=train_examples,
            collate=collate,
            units=units,
            compute_loss=compute_loss,
            run=run,
            seed=cfg.seed,
            held_out=held_out,
            desc=desc,
            command=command,
            after_step=after_step,
        )
        final = trainer.fit()
        if before_save is not None:
            before_save(trainer, final)
        held_out = held_out_report(
            trainer.eval_start, trainer.eval_end, len(eval_examples), metric=judge_by, unit=unit
        )
        summary: dict[str, Any] = {}
        to_save = trainer.model_to_save()  # every process: a sharded model is gathered
        if trainer.accelerator.is_main_process:
            saved = saved_part(to_save) if saved_part is not None else to_save
            if save_extra is None:
                save_model(saved, tokenizer, run.model_dir)
            else:
                save_model(saved, tokenizer, run.model_dir, extra=lambda folder: save_extra(to_save, folder))
            summary = run.write_summary(
                final, num_tokens=int(final.get("train_tokens", 0)), extra={"held_out": held_out}
            )
            finish_checkpoints(run.checkpoints_dir, cfg.train.keep_final_checkpoint, cfg.train.keep_last)
        trainer.accelerator.wait_for_everyone()
    return RunResult(Path(cfg.out), final, summary)
