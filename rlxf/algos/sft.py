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

Options (:class:`SFTConfig`, on top of the shared :class:`~rlxf.train.loop.RunConfig`; the ``train:``
defaults are :func:`_default_sft_train`'s: learning rate 2e-5, which suits full fine-tuning -- LoRA usually
wants ~1e-4):

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
``eval/loss`` and ``eval/perplexity`` (``exp`` of the mean held-out loss per token). Without
``eval_data`` a validation split is held out by default, and a held-out loss that did not fall below
step 0's is a warning (:mod:`rlxf.algos.offline`).

Left out: training on prompt tokens too (TRL's ``completion_only_loss=False``), NEFTune embedding
noise, padding-free packing with block-diagonal attention, chunked / fused cross-entropy kernels,
dataset mixing. LoRA comes from ``model.lora.r > 0`` (:mod:`rlxf.models.load`); the saved model has the
adapters merged.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field
from typing import Any, get_args

import torch
import torch.nn.functional as F

from rlxf.algos.offline import (
    check_full_batch,
    fit_and_save,
    load_trainable_model,
    model_device,
    read_and_tokenize,
    to_device,
)
from rlxf.config import option
from rlxf.data import (
    IGNORE_INDEX,
    ChatTemplateMode,
    Dataset,
    Truncation,
    pad_token_id,
    tokenize_dataset,
    tokenize_sft,
)
from rlxf.data.collate import collate_sft
from rlxf.models.attention import cpu_attention_for
from rlxf.models.lm_head import fusable_head, hidden_states_before_head, token_logprobs
from rlxf.train.loop import LossOutput, RunConfig, TrainingConfig
from rlxf.train.run import RunResult, print_config

logger = logging.getLogger(__name__)


def _default_sft_train() -> TrainingConfig:
    """SFT's ``train:`` defaults (the shared loop's, but for the learning rate)."""
    return TrainingConfig(learning_rate=2e-5)


@dataclass
class SFTConfig(RunConfig):
    """Options of ``rlxf sft``."""

    train: TrainingConfig = field(default_factory=_default_sft_train)
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


def sft(cfg: SFTConfig) -> RunResult:
    """Supervised fine-tuning of ``cfg.model`` on ``cfg.data`` (``rlxf sft``); the run folder and result are
    :func:`~rlxf.algos.offline.fit_and_save`'s. Bad input stops it before ``cfg.out`` is touched.
    """
    print_config(cfg, "rlxf sft")

    # 1. Data: read, validate, split and tokenise everything up front; pack when asked.
    data = read_and_tokenize(cfg, "sft", functools.partial(tokenize_sft_data, cfg=cfg))
    train_examples = data.train
    if cfg.packing:
        train_examples = pack_examples(data.train, cfg.max_length)
        logger.info(
            f"packed {len(data.train)} examples into {len(train_examples)} rows of <= {cfg.max_length} tokens"
        )
        check_full_batch(len(train_examples), cfg, data.train_ds, data.eval_ds, what="packed rows")

    # 2. Model: the policy to fine-tune.
    model, _ = load_trainable_model(cfg)
    collate = functools.partial(collate_sft, pad_token_id=pad_token_id(data.tokenizer))

    # 3. Loss: summed over completion tokens; the loop divides by the step's completion-token count.
    def compute_loss(model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        input_ids = batch["input_ids"]
        targets = batch["labels"][:, 1:]  # [batch, seq-1]: the token that follows each position
        mask = targets != IGNORE_INDEX  # [batch, seq-1]
        kwargs = {"input_ids": input_ids, "attention_mask": batch["attention_mask"], "use_cache": False}
        head = fusable_head(model)
        with cpu_attention_for(model, input_ids.shape[1]):
            if head is not None:
                # The output head chunk by chunk on the labelled positions only (rlxf/models/lm_head.py):
                # the same sum of -log p(y_t | y_<t, x) as sft_loss, without the batch's [batch, seq, vocab]
                # logits.
                with hidden_states_before_head(head):
                    hidden = model(**kwargs).logits[:, :-1][mask]  # [N, H]
                top1 = torch.empty(int(mask.sum()), dtype=torch.long, device=hidden.device)
                logprobs, _ = token_logprobs(
                    hidden, head.weight, targets[mask], keep_probs=True, argmax_out=top1
                )
                loss, count = -logprobs.sum(), int(mask.sum())
                hits = int((top1 == targets[mask]).sum())
            else:
                logits = model(**kwargs).logits  # [batch, seq, vocab]
                loss, count = sft_loss(logits, batch["labels"])
                with torch.no_grad():  # share of completion tokens the model ranks first
                    hits = int(((logits[:, :-1].argmax(-1) == targets) & mask).sum())
        return LossOutput(loss=loss, metrics={"token_accuracy": hits / max(count, 1)})

    def score(model: torch.nn.Module, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Per held-out example: its summed completion-token loss and its completion-token count."""
        batch = to_device(collate(examples), model_device(model))
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits
        targets = batch["labels"][:, 1:]
        mask = targets != IGNORE_INDEX  # [batch, seq-1]
        # as sft_loss, on the labelled positions only, then summed per example
        losses = F.cross_entropy(logits[:, :-1][mask].float(), targets[mask], reduction="none")  # [N]
        rows = mask.nonzero()[:, 0]  # the example of each labelled position
        loss_sum = torch.zeros(len(examples), dtype=torch.float64, device=losses.device)
        loss_sum.index_add_(0, rows, losses.double())
        return {"loss_sum": loss_sum, "tokens": mask.sum(-1).double()}

    def summarize(figures: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean loss per completion token over the held-out examples, and its perplexity."""
        mean = (figures["loss_sum"].sum() / figures["tokens"].sum()).item()
        return {"loss": mean, "perplexity": math.exp(mean) if mean < 700 else math.inf}

    # 4. Fit, save model/ and summary.json.
    return fit_and_save(
        cfg,
        model=model,
        tokenizer=data.tokenizer,
        train_examples=train_examples,
        eval_examples=data.eval,
        collate=collate,
        units=count_label_tokens,
        compute_loss=compute_loss,
        score=score,
        summarize=summarize,
        desc="sft",
        command="sft",
    )
