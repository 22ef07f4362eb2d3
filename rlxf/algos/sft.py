"""Supervised fine-tuning (SFT): teach the model to continue each prompt with its completion.

The objective is next-token cross-entropy on the completion tokens only. The prompt (for a
``messages`` conversation: every turn but the assistant's) is context, so its labels are -100 and it
carries no loss::

    L(theta) = -(1/N) * sum_{t in completion} log pi_theta(y_t | y_<t, x)

where ``x`` is the prompt, ``y`` the completion (ending with EOS) and ``N`` the number of completion
tokens in the whole **optimizer step** (all accumulated micro-batches, all processes). The normalisation
is per token over the step, as in TRL and the Hugging Face ``Trainer``: a long completion weighs more
than a short one, and the update does not depend on how the step is split into micro-batches.
:func:`sft_loss` returns the *sum* over a micro-batch and its token count; the shared loop
(:mod:`rlxf.train.loop`) divides by ``N``.

Options (:class:`SFTConfig`, on top of the shared :class:`~rlxf.train.loop.RunConfig`):

* ``max_length`` and ``truncation``: an example longer than ``max_length`` tokens keeps its first
  (``keep_start``) or last (``keep_end``) tokens, or stops the run before training (``error``);
* ``chat_template``: how prompts are rendered (:mod:`rlxf.data.chat`);
* ``packing``: concatenate the tokenised examples and cut the stream into rows of ``max_length`` tokens,
  so no compute is spent on padding. Each token keeps its own label (prompt tokens stay masked). The
  trade-off: inside a packed row, attention crosses example boundaries and position ids run on, so an
  example sees the tail of the one before it (the simple packing of TRL's ``ConstantLengthDataset``;
  padding-free attention with per-example position ids needs flash-attention kernels we do not assume).
  A "training example" of the loop (``global_batch_size``) is then a packed row. Evaluation always uses
  the unpacked held-out examples, so the eval loss compares across packing settings.

Metrics: ``loss`` (mean per completion token of the step), ``token_accuracy`` (share of completion
tokens the model ranks first), ``lr``, ``grad_norm``, ``tokens_per_s``, ``epoch``; with held-out data
``eval/loss`` and ``eval/perplexity`` (``exp`` of the mean held-out loss per token).

Left out: training on prompt tokens too (TRL's ``completion_only_loss=False``), NEFTune embedding
noise, padding-free packing with block-diagonal attention, chunked / fused cross-entropy kernels,
dataset mixing. LoRA comes from ``model.lora.r > 0`` (:mod:`rlxf.models.load`); the saved model has the
adapters merged.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import Any, get_args

import torch
import torch.nn.functional as F

from rlxf.config import option
from rlxf.data import (
    IGNORE_INDEX,
    ChatTemplateMode,
    Dataset,
    Truncation,
    pad_token_id,
    read_data,
    split_data,
    tokenize_dataset,
    tokenize_sft,
)
from rlxf.data.collate import collate_sft
from rlxf.models.load import load_model, load_tokenizer, resolve_device, save_model
from rlxf.models.precision import resolve_precision, weight_dtype
from rlxf.models.registry import resolve_model
from rlxf.train.loop import LossOutput, RunConfig, Trainer, TrainingConfig
from rlxf.train.run import RunDir, print_config
from rlxf.train.seed import seed_everything


@dataclass
class SFTTrainingConfig(TrainingConfig):
    """The shared loop's options, with SFT's default learning rate."""

    learning_rate: float = option(
        2e-5, help="peak learning rate (AdamW); 2e-5 suits full fine-tuning, LoRA usually wants ~1e-4"
    )


@dataclass
class SFTConfig(RunConfig):
    """Options of ``rlxf sft``."""

    train: SFTTrainingConfig = field(default_factory=SFTTrainingConfig)
    max_length: int = option(
        512, help="longest example in tokens (prompt + completion); the packed row length"
    )
    truncation: Truncation = option(
        "keep_start",
        help="a longer example keeps its first (keep_start) or last (keep_end) tokens, or is an error",
    )
    chat_template: ChatTemplateMode = option(
        "auto",
        help="auto: messages use the chat template, plain prompts stay raw; always: a plain prompt becomes "
        "a user turn; never: raw text only",
    )
    packing: bool = option(
        False,
        help="concatenate examples into rows of max_length tokens (no padding; attention crosses example "
        "boundaries inside a row)",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_length < 2:
            raise ValueError(
                f"max_length must be >= 2 (a token to predict from and one to predict), got {self.max_length}"
            )
        if self.truncation not in get_args(Truncation):
            raise ValueError(f"truncation must be one of {get_args(Truncation)}, got {self.truncation!r}")
        if self.chat_template not in get_args(ChatTemplateMode):
            raise ValueError(
                f"chat_template must be one of {get_args(ChatTemplateMode)}, got {self.chat_template!r}"
            )


# ---------------------------------------------------------------------------------------------- loss


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the labelled positions, and their count.

    ``logits`` ``[batch, seq, vocab]`` are the model's outputs for ``input_ids``; ``labels`` ``[batch, seq]``
    are ``input_ids`` with -100 wherever no loss applies (prompt, padding). Position ``t`` predicts token
    ``t + 1``, so the labels are shifted by one here::

        loss = sum_{b, t : labels[b, t+1] != -100}  -log softmax(logits[b, t])[labels[b, t+1]]
        count = #{b, t : labels[b, t+1] != -100}

    The log-softmax runs in float32, on the labelled positions only (a prompt-heavy batch does not pay
    for a float32 copy of all its logits).
    """
    targets = labels[:, 1:]  # [batch, seq-1]: the token that follows each position
    mask = targets != IGNORE_INDEX  # [batch, seq-1]
    picked = logits[:, :-1][mask]  # [N, vocab]: only positions that carry a loss
    loss = F.cross_entropy(picked.float(), targets[mask], reduction="sum")  # sum of -log p(y_t | y_<t, x)
    return loss, int(mask.sum())


def count_label_tokens(batch: dict[str, Any]) -> int:
    """The normalisation units of a batch: labelled tokens after the shift (what :func:`sft_loss` sums)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


# ---------------------------------------------------------------------------------------------- data


def pack_examples(examples: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """Concatenate tokenised examples and cut the stream into rows of ``max_length`` (the last may be shorter).

    Every token keeps its label, so prompt tokens stay masked. A row left with nothing to learn (no
    labelled token after its first) is dropped.
    """
    input_ids: list[int] = []
    labels: list[int] = []
    for example in examples:
        input_ids.extend(example["input_ids"])
        labels.extend(example["labels"])
    rows = []
    for start in range(0, len(input_ids), max_length):
        row_labels = labels[start : start + max_length]
        if any(label != IGNORE_INDEX for label in row_labels[1:]):
            rows.append(
                {
                    "input_ids": input_ids[start : start + max_length],
                    "labels": row_labels,
                    "completion_mask": [int(label != IGNORE_INDEX) for label in row_labels],
                }
            )
    return rows


def tokenize_sft_data(ds: Dataset, tokenizer: Any, cfg: SFTConfig) -> list[dict[str, Any]]:
    """Tokenise every record of ``ds`` (a :class:`~rlxf.data.DataError` at the first bad one)."""
    examples = tokenize_dataset(
        ds,
        tokenize_sft,
        tokenizer,
        max_length=cfg.max_length,
        chat_template=cfg.chat_template,
        truncation=cfg.truncation,
    )
    for i, example in enumerate(examples):
        # the first token is never predicted; an example whose only trained token it is teaches nothing
        if all(label == IGNORE_INDEX for label in example["labels"][1:]):
            field = "messages" if ds.records[i].get("messages") is not None else "completion"
            raise ds.error(i, "no completion token is left to predict after truncation", field=field)
    return examples


# ---------------------------------------------------------------------------------------------- train


def sft(cfg: SFTConfig) -> dict[str, float]:
    """Supervised fine-tuning of ``cfg.model`` on ``cfg.data``; the library function behind ``rlxf sft``.

    Writes the run folder ``cfg.out`` (config, metrics, checkpoints, the model as a plain HF folder with
    LoRA merged, summary) and returns the final metrics. All data is read, validated and tokenised
    before ``cfg.out`` is touched, so bad input writes nothing.
    """
    print_config(cfg, "rlxf sft")
    device = resolve_device(cfg.model.device)
    precision = resolve_precision(cfg.train.precision, device)

    # 1. Data: read, validate, split and tokenise everything up front.
    tokenizer = load_tokenizer(resolve_model(cfg.model.name_or_path))
    train_ds = read_data(cfg.data, kind="sft")
    eval_ds = None
    if cfg.eval_data:
        eval_ds = read_data(cfg.eval_data, kind="sft")
    elif cfg.eval_split > 0:
        train_ds, eval_ds = split_data(train_ds, cfg.eval_split, cfg.seed)
    train_examples = tokenize_sft_data(train_ds, tokenizer, cfg)
    eval_examples = tokenize_sft_data(eval_ds, tokenizer, cfg) if eval_ds is not None else []
    if cfg.packing:
        unpacked = len(train_examples)
        train_examples = pack_examples(train_examples, cfg.max_length)
        print(f"packed {unpacked} examples into {len(train_examples)} rows of <= {cfg.max_length} tokens")
    if len(train_examples) < cfg.train.global_batch_size:  # the loop would say so, but after writing `out`
        rows = "packed rows" if cfg.packing else "training examples"
        raise ValueError(
            f"{len(train_examples)} {rows} make no full batch of global_batch_size "
            f"{cfg.train.global_batch_size}: lower it or add data"
        )

    # 2. Model: fp32 master weights unless precision is pure bf16; LoRA adapters when model.lora.r > 0.
    seed_everything(cfg.seed)
    model_cfg = dataclasses.replace(cfg.model, dtype=weight_dtype(precision))
    model, _ = load_model(model_cfg, trainable=True)

    collate = functools.partial(collate_sft, pad_token_id=pad_token_id(tokenizer))

    def compute_loss(model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits  # [batch, seq, vocab]
        loss, count = sft_loss(logits, batch["labels"])
        with torch.no_grad():  # share of completion tokens the model ranks first
            targets = batch["labels"][:, 1:]
            hits = (logits[:, :-1].argmax(-1) == targets) & (targets != IGNORE_INDEX)
        return LossOutput(loss=loss, metrics={"token_accuracy": hits.sum().item() / max(count, 1)})

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        """Mean loss per completion token on the held-out examples, and its perplexity."""
        device = next(model.parameters()).device
        total, count = 0.0, 0
        micro = cfg.train.micro_batch_size
        for start in range(0, len(eval_examples), micro):
            batch = {k: v.to(device) for k, v in collate(eval_examples[start : start + micro]).items()}
            logits = model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
            ).logits
            loss, n = sft_loss(logits, batch["labels"])
            total, count = total + loss.item(), count + n
        mean = total / count
        return {"loss": mean, "perplexity": math.exp(mean) if mean < 700 else math.inf}

    # 3. Train: the shared loop normalises each step's summed loss by its completion-token count.
    with RunDir.create(cfg.out, cfg, resume=cfg.resume, overwrite=cfg.overwrite) as run:
        trainer = Trainer(
            cfg.train,
            model=model,
            examples=train_examples,
            collate=collate,
            units=count_label_tokens,
            compute_loss=compute_loss,
            run=run,
            seed=cfg.seed,
            evaluate=evaluate if eval_examples else None,
            desc="sft",
        )
        final = trainer.fit()
        if trainer.accelerator.is_main_process:
            save_model(trainer.model, tokenizer, run.model_dir)
            run.write_summary(final, num_tokens=int(final.get("train_tokens", 0)))
    return final
