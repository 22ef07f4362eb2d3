"""The shared training loop of the offline learners (SFT, reward models, DPO / IPO / KTO, pre-training).

A learner supplies three things and the loop does the rest:

* ``collate(examples) -> batch``: tensors for one micro-batch;
* ``units(batch) -> int``: how many *normalisation units* the batch holds (completion tokens for SFT,
  pairs for a reward model or DPO);
* ``compute_loss(model, batch) -> LossOutput``: the loss **summed** over those units, and metrics
  averaged over the micro-batch.

Normalisation. An optimizer step covers ``global_batch_size`` examples, split into micro-batches of
``micro_batch_size`` (gradient accumulation) and across processes (data parallel). The loop divides every
micro-batch's summed loss by the number of units in the *whole* step, so the gradient is that of the mean
over all units of the step, whatever the split: one batch of 8 and eight accumulated batches of 1 give
the same update (a test checks it). Averaging per-micro-batch means instead would weight a token in a
short micro-batch more than one in a long micro-batch.

Order and resume. Epoch ``e`` visits the examples in the order ``randperm(n, seed + e)``; the position of
step ``s`` follows from ``s`` alone, so a checkpoint needs only the step (plus the model, optimizer,
scheduler and RNG states). An incomplete last batch of an epoch is dropped. Resuming continues with the
exact next batch: the logged losses equal an uninterrupted run's.

Precision (``precision``): ``fp32``; ``bf16-mixed`` keeps fp32 weights and optimizer state and computes
matmuls in bf16 under autocast (the default where bf16 is native: ~2.7x faster steps on an AVX-512 BF16
CPU); ``bf16`` stores the weights in bf16 too (least memory; small updates can round away).

Held-out data. When the learner gives a :class:`HeldOut`, the loop evaluates before the first step
(logged at step 0: the untrained model's figures, what the end is compared with), every ``eval_every``
steps, and after the last step (in that step's record); :attr:`Trainer.eval_start` and
:attr:`Trainer.eval_end` hold the two ends. The held-out batches are dealt to the processes and their
per-example figures gathered before the learner's ``summarize`` makes the metrics, so two processes
evaluate half the set each and report what one process reports. Which data is held out by default is the
learners' business (:mod:`rlxf.algos.offline`).

Distribution goes through ``accelerate`` (:func:`rlxf.train.distributed.build_accelerator`): DDP under
``torchrun`` or ``accelerate launch``, FSDP2 and DeepSpeed ZeRO-1/2/3 with the configs of
``configs/accelerate/``, on GPUs or on CPU (gloo); launches accelerate would silently run as something else
are refused. A sharded model (FSDP2, DeepSpeed) is saved and checkpointed as full state dicts by the main
process (:mod:`rlxf.train.distributed`). On one CPU process accelerate adds nothing but the autocast
context.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from rlxf.config import option
from rlxf.models.load import ModelConfig
from rlxf.models.precision import Precision, autocast, resolve_precision
from rlxf.train.checkpoint import MODEL_FILE, OPTIMIZER_FILE, load_checkpoint, save_checkpoint
from rlxf.train.cpu import configure_threads
from rlxf.train.distributed import (
    LaunchError,
    build_accelerator,
    checkpoint_layout,
    configure_deepspeed,
    full_model_state,
    full_optimizer_state,
    load_sharded_state,
    plain_model,
    sharding_of,
)
from rlxf.train.metrics import read_metrics
from rlxf.train.optim import ScheduleKind, build_optimizer, build_scheduler
from rlxf.train.progress import Progress
from rlxf.train.run import RunDir

logger = logging.getLogger(__name__)


@dataclass
class UpdateConfig:
    """The ``train:`` knobs every learner shares, offline (SFT, reward models, DPO, KTO) and online (RL):
    optimizer, schedule, precision, and the log / evaluate / save cadence (:class:`Cadence`)."""

    learning_rate: float = option(1e-5, help="peak learning rate (AdamW)")
    lr_schedule: ScheduleKind = option("linear", help="after warm-up: constant, linear or cosine decay to 0")
    warmup_ratio: float = option(
        0.05, help="share of the optimizer steps spent warming the learning rate up from 0"
    )
    weight_decay: float = option(0.0, help="AdamW weight decay (not applied to biases and norms)")
    max_grad_norm: float = option(1.0, help="clip the gradient's global norm to this; 0 disables")
    precision: Precision = option(
        "auto", help="fp32, bf16-mixed (fp32 weights, bf16 compute), bf16; auto = bf16-mixed where native"
    )
    threads: int = option(
        0,
        help="torch's CPU threads (torch.set_num_threads); 0: torch's default, one per core. Fewer than "
        "the cores when other jobs hold some: threads waiting on a busy core stall every matrix product",
    )
    log_every: int = option(1, help="log metrics every N steps")
    eval_every: int = option(0, help="evaluate on held-out data every N steps (0: only at the start and end)")
    save_every: int = option(0, help="checkpoint every N steps (0: only at the end)")
    keep_last: int = option(2, help="checkpoints kept (older ones are deleted)")
    keep_final_checkpoint: bool = option(
        False,
        help="keep the final checkpoint (optimizer state included) of a finished run, to extend it later; "
        "false: a finished run keeps model/ only",
    )

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("weight_decay and max_grad_norm must be >= 0")
        for name in ("log_every", "keep_last"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.eval_every < 0 or self.save_every < 0:
            raise ValueError("eval_every and save_every must be >= 0")
        if self.threads < 0:
            raise ValueError(f"threads must be >= 0 (0: torch's default), got {self.threads}")


@dataclass
class TrainingConfig(UpdateConfig):
    """Options of the offline training loop (the ``train:`` section of sft, reward, dpo, kto): the shared
    knobs of :class:`UpdateConfig` plus how much data makes a step and how many steps make the run."""

    num_epochs: float = option(1.0, help="passes over the training data (fractions allowed)")
    max_steps: int = option(0, help="optimizer steps to run; > 0 overrides num_epochs")
    global_batch_size: int = option(
        16, help="examples per optimizer step, over all micro-batches and processes"
    )
    micro_batch_size: int = option(8, help="examples per forward/backward pass on one process")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.micro_batch_size < 1 or self.global_batch_size < 1:
            raise ValueError("global_batch_size and micro_batch_size must be >= 1")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(
                f"global_batch_size ({self.global_batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size}): their ratio is the number of accumulated micro-batches"
            )
        if self.max_steps < 0 or self.num_epochs <= 0:
            raise ValueError("max_steps must be >= 0 and num_epochs > 0")


@dataclass(frozen=True)
class Cadence:
    """When a loop logs, evaluates and saves; the same skeleton for the offline loop and RL.

    After optimizer step (offline) or rollout step (RL) ``done`` of ``total``, in this order::

        evaluate  if eval_every and done % eval_every == 0 and done < total
        log       if done % log_every == 0 or done == total
        save      if save_every and done % save_every == 0 and done < total

    Before the first step of a fresh run: evaluate (when there is held-out data) and log it at step 0. At
    the end: evaluate (always, when there is held-out data), log, save the final checkpoint, then the
    model and the summary (and :func:`~rlxf.train.checkpoint.finish_checkpoints` tidies the checkpoints).
    Evaluating before saving means a checkpoint's step has its eval logged.
    """

    log_every: int
    eval_every: int
    save_every: int
    total: int

    @classmethod
    def of(cls, cfg: UpdateConfig, total: int) -> Cadence:
        return cls(cfg.log_every, cfg.eval_every, cfg.save_every, total)

    def evaluate(self, done: int) -> bool:
        return bool(self.eval_every) and done % self.eval_every == 0 and done < self.total

    def log(self, done: int) -> bool:
        return done % self.log_every == 0 or done == self.total

    def save(self, done: int) -> bool:
        return bool(self.save_every) and done % self.save_every == 0 and done < self.total


@dataclass
class RunConfig:
    """Options every training command shares; each learner's config extends it with its own."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: str = option("", help="training data file (JSONL, CSV, Parquet or a datasets folder)")
    eval_data: str | None = option(None, help="held-out data file; if unset, eval_split of data is held out")
    eval_split: float | Literal["auto"] = option(
        "auto",
        help="share of data held out for evaluation when eval_data is unset; auto: a tenth of the records, "
        "at least 32 and at most 512, none below 100 records; 0: none",
    )
    out: str = option(
        "", help="output folder (config.yaml, metrics.jsonl, summary.json, model/, checkpoints/)"
    )
    seed: int = option(0, help="random seed (data order, initialisation, sampling)")
    resume: bool = option(False, help="continue the run in `out` from its latest checkpoint")
    overwrite: bool = option(False, help="replace a run already in `out`")
    train: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        if not self.data:
            raise ValueError("give the training data: --data FILE")
        if not self.out:
            raise ValueError("give the output folder: --out DIR")
        if self.eval_split != "auto" and not 0.0 <= self.eval_split < 1.0:
            raise ValueError(f"eval_split must be auto or a share in [0, 1), got {self.eval_split!r}")
        if self.model.dtype != "auto":
            raise ValueError(
                "for training, set the precision with train.precision (fp32, bf16-mixed, bf16), not model.dtype"
            )


@dataclass(frozen=True)
class HeldOut:
    """A learner's held-out evaluation; the loop splits it across processes.

    The loop cuts ``examples`` (in file order) into batches of ``batch_size``, deals them to the processes
    (batch ``b`` to process ``b % world``) and calls ``score(model, batch)`` on each of its own (eval mode,
    no gradient, the training autocast). ``score`` returns per-example figures: tensors whose first
    dimension is the batch's examples (a figure of the whole batch, like KTO's KL estimate, repeated for
    each). The loop gathers every batch's figures, puts them back in file order, concatenates them and
    calls ``summarize(figures)`` for the named metrics (means, correlations: anything of the whole set),
    the same on every process. Each batch is the batch one process makes, so N processes report what one
    reports, to float rounding.
    """

    examples: Sequence[Any]
    batch_size: int
    score: Callable[[torch.nn.Module, list[Any]], dict[str, torch.Tensor]]
    summarize: Callable[[dict[str, torch.Tensor]], dict[str, float]]


@dataclass
class LossOutput:
    """What a learner's ``compute_loss`` returns for one micro-batch."""

    loss: torch.Tensor  # scalar: the loss SUMMED over the micro-batch's normalisation units
    metrics: dict[str, float]  # averages over the micro-batch's examples (logged, weighted by units)


class Trainer:
    """Runs the optimisation for one learner; see the module docstring for the contract."""

    def __init__(
        self,
        cfg: TrainingConfig,
        *,
        model: torch.nn.Module,
        examples: Sequence[Any],
        collate: Callable[[list[Any]], dict[str, Any]],
        units: Callable[[dict[str, Any]], int],
        compute_loss: Callable[[torch.nn.Module, dict[str, Any]], LossOutput],
        run: RunDir,
        seed: int,
        held_out: HeldOut | None = None,
        desc: str = "train",
        command: str = "train",
        after_step: Callable[[int], None] | None = None,
    ) -> None:
        device = next(model.parameters()).device
        configure_threads(cfg.threads, device)  # train.threads; a warning when other jobs hold the cores
        self.precision = resolve_precision(cfg.precision, device)
        # Autocast is ours, not accelerate's `mixed_precision`: accelerate's state is a per-process
        # singleton, and a pipeline (or a test session) runs several trainers with different precisions.
        self.accelerator = build_accelerator(device, command=command)
        self.sharding = sharding_of(self.accelerator)
        self.cfg = cfg
        self.examples = examples
        self.collate = collate
        self.units = units
        self.compute_loss = compute_loss
        self.held_out = held_out
        self.after_step = after_step  # called with the step number after each optimizer step
        self.run = run
        self.seed = seed
        self.desc = desc
        # held-out ``eval/`` figures before the first step and after the last (None: no held-out data)
        self.eval_start: dict[str, float] | None = None
        self.eval_end: dict[str, float] | None = None

        world = self.accelerator.num_processes
        per_process = cfg.global_batch_size // world
        if cfg.global_batch_size % world or per_process % cfg.micro_batch_size:
            raise ValueError(
                f"global_batch_size {cfg.global_batch_size} must split into {world} processes x micro-batches "
                f"of {cfg.micro_batch_size}"
            )
        self.steps_per_epoch = len(examples) // cfg.global_batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"{len(examples)} training examples make no full batch of global_batch_size "
                f"{cfg.global_batch_size}: lower it or add data"
            )
        self.total_steps = cfg.max_steps or math.ceil(cfg.num_epochs * self.steps_per_epoch)
        self.warmup_steps = round(cfg.warmup_ratio * self.total_steps)

        if self.sharding != "none":
            if any(not p.requires_grad for p in model.parameters()):
                raise LaunchError(
                    f"{self.sharding} with frozen parameters (LoRA) is not supported: train LoRA with data "
                    "parallelism (configs/accelerate/ddp.yaml or torchrun)"
                )
            if self.precision == "bf16":
                raise LaunchError(
                    f"{self.sharding} keeps fp32 weights: use train.precision=bf16-mixed (or fp32), not bf16"
                )
        if self.sharding == "deepspeed":
            configure_deepspeed(
                self.accelerator, per_process_batch=per_process, max_grad_norm=cfg.max_grad_norm
            )
        # what saving a sharded model builds its unsharded copy from (FSDP2 changes the module's class)
        self.model_class = type(model)

        if world > 1:
            logger.info(f"training on {world} processes: {checkpoint_layout(self.accelerator)}")
        self.model = model  # the unwrapped module: what checkpoints, saving and evaluation see
        optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay)
        self.scheduler = build_scheduler(optimizer, cfg.lr_schedule, self.warmup_steps, self.total_steps)
        # The scheduler stays ours (stepped once per optimizer step whatever the number of processes; under
        # DeepSpeed it sets the learning rate of the optimizer the ZeRO optimizer wraps).
        self.wrapped, self.optimizer = self.accelerator.prepare(model, optimizer)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 compute for ``bf16-mixed`` (weights stay fp32); nothing otherwise."""
        return autocast(self.precision, self.accelerator.device)

    # ------------------------------------------------------------------------------------------ data

    def step_indices(self, step: int) -> list[int]:
        """Indices of the examples of optimizer step ``step`` on this process (deterministic in ``step``)."""
        epoch, position = divmod(step, self.steps_per_epoch)
        order = torch.randperm(len(self.examples), generator=torch.Generator().manual_seed(self.seed + epoch))
        size = self.cfg.global_batch_size
        step_slice = order[position * size : (position + 1) * size].tolist()
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        share = size // world
        return step_slice[rank * share : (rank + 1) * share]

    def _micro_batches(self, step: int) -> list[dict[str, Any]]:
        indices = self.step_indices(step)
        micro = self.cfg.micro_batch_size
        device = self.accelerator.device
        batches = []
        for start in range(0, len(indices), micro):
            batch = self.collate([self.examples[i] for i in indices[start : start + micro]])
            batches.append({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        return batches

    # ------------------------------------------------------------------------------------------ loop

    def train_step(self, step: int) -> dict[str, float]:
        """One optimizer step: accumulate over the micro-batches, clip, update, schedule."""
        batches = self._micro_batches(step)
        local_units = torch.tensor(float(sum(self.units(b) for b in batches)), device=self.accelerator.device)
        # Normaliser: units of the whole step over all processes. DDP averages gradients over processes,
        # so each process scales by world size to turn that average back into the global sum / units.
        total_units = self.accelerator.reduce(local_units, reduction="sum").item()
        if total_units <= 0:
            raise ValueError(f"step {step + 1}: the batch has no units to compute a loss on")
        scale = self.accelerator.num_processes / total_units

        loss_sum = 0.0
        metric_sums: dict[str, float] = {}
        tokens = 0
        self.wrapped.train()
        for i, batch in enumerate(batches):
            # Gradients are all-reduced only on the last micro-batch of the step (no_sync before it).
            last = i == len(batches) - 1
            if self.sharding == "deepspeed":
                # The engine, not accelerator.backward (which would step after every micro-batch unless in
                # accelerate's own accumulation): the step ends at the loop's last micro-batch.
                self.wrapped.set_gradient_accumulation_boundary(last)
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.wrapped):
                with self.autocast():
                    out = self.compute_loss(self.wrapped, batch)
                if not torch.isfinite(out.loss):
                    raise FloatingPointError(f"step {step + 1}: the loss is {out.loss.item()} (not finite)")
                if self.sharding == "deepspeed":
                    self.wrapped.backward(out.loss * scale)
                else:
                    self.accelerator.backward(out.loss * scale)
            batch_units = self.units(batch)
            loss_sum += out.loss.item()
            for name, value in out.metrics.items():
                metric_sums[name] = metric_sums.get(name, 0.0) + float(value) * batch_units
            if "attention_mask" in batch:
                tokens += int(batch["attention_mask"].sum())

        grad_norm = None
        lr = self.scheduler.get_last_lr()[0]
        if self.sharding == "deepspeed":
            self.wrapped.step()  # clips (gradient_clipping = max_grad_norm) and updates
            if self.cfg.max_grad_norm > 0:
                grad_norm = self.wrapped.get_global_grad_norm()  # before clipping, as clip_grad_norm_'s
        elif self.cfg.max_grad_norm > 0:
            grad_norm = self.accelerator.clip_grad_norm_(self.wrapped.parameters(), self.cfg.max_grad_norm)
        self.optimizer.step()  # under DeepSpeed accelerate's wrapper does nothing: the engine stepped
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.after_step is not None:  # e.g. ILQL's Polyak update of its target heads
            self.after_step(step)

        # Logged figures are global: sums over every process's micro-batches (each loss and metric is a
        # sum over its units, weighted as its normaliser says), then divided by the step's total units.
        names = sorted(metric_sums)
        if self.accelerator.num_processes > 1:
            # A learner may log a metric for some micro-batches only (KTO's rewards/chosen needs a desirable
            # example): every process reduces the names any of them has, a missing one as 0 (as one process
            # sums over the micro-batches that have it).
            from accelerate.utils import gather_object

            names = sorted(set().union(*gather_object([names])))
        local_sums = torch.tensor(
            [loss_sum, float(tokens), *(metric_sums.get(n, 0.0) for n in names)],
            dtype=torch.float64,
            device=self.accelerator.device,
        )
        sums = self.accelerator.reduce(local_sums, reduction="sum").tolist()
        metrics = {"loss": sums[0] / total_units}
        metrics.update({name: value / total_units for name, value in zip(names, sums[2:])})
        metrics["lr"] = lr
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)  # of the all-reduced gradients: already global
        metrics["tokens"] = sums[1]
        return metrics

    def fit(self) -> dict[str, float]:
        """Train to ``total_steps`` (continuing from the run's checkpoint when resuming); final metrics.

        The order of each step's evaluate / log / save is :class:`Cadence`'s.
        """
        start_step = 0
        if self.run.resume_checkpoint is not None:
            start_step = self._restore(self.run.resume_checkpoint)
        cadence = Cadence.of(self.cfg, self.total_steps)
        if self.held_out is not None:
            if start_step == 0:
                self.eval_start = self._evaluate()
                self.run.log(0, self.eval_start)
            else:  # the step-0 figures of the session that started the run
                self.eval_start = self._logged_eval(0)
        progress = Progress(self.total_steps, self.desc, initial=start_step)
        last: dict[str, float] = {}
        tokens_seen = 0
        started = time.perf_counter()
        for step in range(start_step, self.total_steps):
            step_start = time.perf_counter()
            metrics = self.train_step(step)
            tokens = metrics.pop("tokens")
            tokens_seen += int(tokens)
            metrics["tokens_per_s"] = tokens / max(time.perf_counter() - step_start, 1e-9)
            metrics["epoch"] = (step + 1) / self.steps_per_epoch
            done = step + 1
            if self.held_out is not None and (cadence.evaluate(done) or done == self.total_steps):
                metrics.update(self._evaluate())
            if cadence.log(done):
                self.run.log(done, metrics)
            if cadence.save(done):
                self.save(done)
            progress.update(1, {"loss": metrics["loss"]})
            last = metrics
        progress.close()
        if self.held_out is not None and start_step >= self.total_steps:
            last.update(self._evaluate())  # nothing left to train: its record is logged already
        if self.held_out is not None:
            self.eval_end = {k: v for k, v in last.items() if k.startswith("eval/")}
        if start_step < self.total_steps:
            self.save(self.total_steps)
        last["train_seconds"] = time.perf_counter() - started
        last["train_tokens"] = float(tokens_seen)
        return last

    def _logged_eval(self, step: int) -> dict[str, float] | None:
        """The ``eval/`` figures ``metrics.jsonl`` holds for ``step`` (``None`` if it holds none)."""
        for record in read_metrics(self.run.metrics_path):
            if record.get("step") == step and any(k.startswith("eval/") for k in record):
                return {k: v for k, v in record.items() if k.startswith("eval/")}
        return None

    def _evaluate(self) -> dict[str, float]:
        """The learner's held-out metrics, named ``eval/...``: this process's share of the batches, the
        figures of all of them gathered (:class:`HeldOut`)."""
        from accelerate.utils import gather_object

        held_out = self.held_out
        size = held_out.batch_size
        starts = list(range(0, len(held_out.examples), size))
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        mine = starts[rank::world]
        # A sharded model gathers its weights in every forward, which every process must join: each runs
        # as many forwards as the busiest one, scoring its first batch again for nothing when it has fewer.
        # DDP and one process run their own batches on the unwrapped model (no collective in its forward).
        rounds = math.ceil(len(starts) / world) if self.sharding != "none" else len(mine)
        scored: list[tuple[int, dict[str, torch.Tensor]]] = []
        self.wrapped.eval()
        with torch.no_grad(), self.autocast():
            for k in range(rounds):
                start = mine[k] if k < len(mine) else starts[0]
                figures = held_out.score(self.model, list(held_out.examples[start : start + size]))
                if k < len(mine):
                    scored.append((start, {name: value.detach().cpu() for name, value in figures.items()}))
        self.wrapped.train()
        if world > 1:
            scored = gather_object(scored)
        scored.sort(key=lambda item: item[0])
        names = scored[0][1].keys()
        result = held_out.summarize(
            {name: torch.cat([figures[name] for _, figures in scored]) for name in names}
        )
        return {f"eval/{k}": v for k, v in result.items()}

    # ------------------------------------------------------------------------------------------ state

    def _restore(self, path) -> int:
        """Load the checkpoint ``path`` into the model, optimizer, scheduler and generators; its step."""
        layout = checkpoint_layout(self.accelerator)
        if self.sharding == "none":
            return load_checkpoint(path, self.model, self.optimizer, self.scheduler, layout=layout).step
        checkpoint = load_checkpoint(path, None, None, self.scheduler, layout=layout)
        load_sharded_state(
            self.accelerator,
            self.wrapped,
            self.optimizer,
            checkpoint.path / MODEL_FILE,
            checkpoint.path / OPTIMIZER_FILE,
        )
        return checkpoint.step

    def save(self, step: int) -> None:
        """Checkpoint ``step``: the main process writes; a sharded model's state is gathered to it first."""
        extra = {"steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps}
        layout = checkpoint_layout(self.accelerator)
        if self.sharding == "none":
            if self.accelerator.is_main_process:
                save_checkpoint(
                    self.run.checkpoints_dir,
                    step,
                    self.model,
                    self.optimizer,
                    self.scheduler,
                    extra=extra,
                    keep_last=self.cfg.keep_last,
                    layout=layout,
                )
        else:
            model_state = full_model_state(self.accelerator, self.wrapped)
            optimizer_state = full_optimizer_state(self.accelerator, self.wrapped, self.optimizer)
            if self.accelerator.is_main_process:
                save_checkpoint(
                    self.run.checkpoints_dir,
                    step,
                    None,
                    None,
                    self.scheduler,
                    extra=extra,
                    keep_last=self.cfg.keep_last,
                    model_state=model_state,
                    optimizer_state=optimizer_state,
                    layout=layout,
                )
        self.accelerator.wait_for_everyone()

    def model_to_save(self) -> torch.nn.Module | None:
        """The trained model as ``save_model`` takes it, on the main process (``None`` on the others): the
        model itself, or for a sharded one an unsharded copy of its gathered full state dict. Every process
        must call it."""
        if self.sharding == "none":
            return self.model if self.accelerator.is_main_process else None
        state = full_model_state(self.accelerator, self.wrapped)
        if not self.accelerator.is_main_process:
            return None
        return plain_model(self.model_class, self.model.config, state, like=self.model)
