"""Self-supervised pre-training (``rlxf pretrain``): a model from scratch, or more pre-training of one.

Objectives (``objective``), each a sum over its prediction units that the shared loop
(:mod:`rlxf.train.loop`) divides by the step's total units (per token, over the whole step):

* ``clm``, next-token prediction (GPT; Radford et al. 2018/2019). The corpus is one stream of tokens,
  documents separated by EOS, cut into blocks of ``block_size`` tokens (no padding: packed as in nanoGPT
  and GPT-2)::

      L_clm = -(1/N) sum_{blocks} sum_{t=1}^{T-1} log p(x_t | x_<t)        N = predicted tokens of the step

  Held out: ``eval/loss``, ``eval/perplexity = exp(eval/loss)`` and the same tokens' perplexity under the
  training corpus's unigram distribution (``eval/unigram_perplexity``, add-one smoothed): what a model
  that ignores context scores, so ``eval/perplexity_ratio`` < 1 is learning from context.
* ``mlm``, masked language modelling (BERT; Devlin et al. 2019, section 3.1): 15% of the tokens are chosen
  (``mlm_probability``), 80% of those become ``[MASK]``, 10% a random token, 10% stay; the model predicts
  the chosen ones (transformers' ``DataCollatorForLanguageModeling``, :mod:`rlxf.data.denoising`)::

      L_mlm = -(1/M) sum_{i chosen} log p(x_i | x_masked)                  M = chosen tokens of the step

  Blocks are ``[CLS] x_1 .. x_{T-2} [SEP]``. With ``nsp`` the examples are sentence-pair segments
  ``[CLS] A [SEP] B [SEP]``, B the true continuation of A half the time, and ``BertForPreTraining`` adds
  next-sentence prediction on ``[CLS]``: ``L = L_mlm + L_nsp`` with ``L_nsp`` the mean cross-entropy over
  pairs (here: each micro-batch's NSP sum scaled by its chosen tokens per pair, so that after the loop's
  division by M it is the pairs' mean whenever micro-batches hold as many chosen tokens per pair).
  Held out: ``eval/masked_accuracy`` and ``eval/baseline_accuracy``, the share of the same masked tokens
  equal to the corpus's most frequent token (what always guessing it scores), ``eval/nsp_accuracy``.
* ``span``, T5's span corruption (Raffel et al. 2020, section 3.1.4): spans covering ``noise_density`` of
  the tokens, ``mean_noise_span_length`` long on average, are replaced by sentinels in the encoder input;
  the decoder reproduces them after their sentinels (:mod:`rlxf.data.denoising`; raw blocks are as long as
  makes the corrupted input exactly ``block_size`` tokens)::

      L_span = -(1/K) sum_{k in targets} log p(y_k | y_<k, corrupted x)    K = target tokens of the step

  Held out: ``eval/span_accuracy`` (teacher-forced, on the noise tokens: sentinels and EOS excluded),
  ``eval/baseline_accuracy`` on the same tokens, and ``eval/encoder_gain``, the held-out loss with each
  block's targets read against another block's corrupted input minus the loss with its own (nats per
  target token): near 0, the decoder has learned the language of the spans, not where they came from.

Models. From scratch with ``arch`` (``gpt2`` / ``llama`` for ``clm``, ``bert`` for ``mlm``, ``t5`` for
``span``) at a named ``size`` or from a transformers config file (``model_config``), with a tokenizer trained
on the training documents (``tokenizer``: ``bpe`` / ``wordpiece`` / ``unigram``, ``vocab_size``) or an existing
one (``tokenizer_path``): :mod:`rlxf.models.scratch`. Without ``arch`` / ``model_config`` the run continues the
pre-training of ``model`` (a causal LM: the default model, or a local folder; LoRA with ``model.lora.r``).

Corpus (``data``): a ``.txt`` file, JSONL / CSV / Parquet with a ``text`` field, a saved ``datasets`` folder,
a folder or glob of those, or ``stdlib:docstrings`` / ``stdlib:code`` (text that ships with Python):
:mod:`rlxf.data.corpus`. It is read as a stream: documents are held out by a hash of their index
(``eval_split``; ``auto`` holds out 5%), the tokenizer trains on the rest, and both parts are tokenised once
into token files (``uint16`` / ``uint32``) cached under ``$RLXF_HOME/pretrain/`` by the corpus's files, sizes
and times and the settings that shape the tokens, so a resumed or repeated run reads the same blocks and a
corpus larger than memory trains through ``np.memmap``. (NSP needs sentence structure and reads the corpus
into memory.)

Order, determinism, resume: the loop's (epoch ``e`` visits blocks in ``randperm(seed + e)``); the masks of
MLM and span corruption are drawn from ``(seed, block index)``, so a resumed run sees the same inputs.

Left out: dynamic (per-epoch) masking, sentence-order prediction (ALBERT), ELECTRA's replaced-token
detection, packing with per-document attention masks, curriculum over block sizes, streaming from remote
storage. The preference-aware objectives (Korbak et al. 2023) are in :mod:`rlxf.algos.phf`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rlxf.algos.offline import fit_and_save, load_trainable_model, model_device, to_device, training_precision
from rlxf.algos.phf import PHF_DEFAULTS, Segment
from rlxf.algos.pretrain_corpus import (
    CorpusFiles,
    IndexedBlocks,
    corpus_texts,
    prepare_corpus,
    token_count,
    token_counts,
)
from rlxf.algos.pretrain_phf import (
    BAD,
    GOOD,
    TOKEN_LEVEL,
    Preference,
    RewardBlocks,
    ValueHeadLM,
    language_model,
    misalignment,
    phf_token_loss,
)
from rlxf.config import option
from rlxf.data import DataError
from rlxf.data.corpus import (
    TokenBlocks,
    validate_corpus,
)
from rlxf.feedback.rewards import RewardOptions, parse_reward_spec
from rlxf.models.load import load_tokenizer, resolve_device
from rlxf.models.precision import weight_dtype
from rlxf.models.registry import resolve_model
from rlxf.models.scratch import (
    ARCH_OBJECTIVE,
    Arch,
    Objective,
    Size,
    TokenizerKind,
    add_control_tokens,
    build_config,
    check_arch,
    config_from_file,
    family_of,
    fit_config_to_tokenizer,
    model_for,
    sentinel_ids,
)
from rlxf.train.loop import LossOutput, RunConfig, TrainingConfig
from rlxf.train.run import RunResult, print_config
from rlxf.train.seed import seed_everything

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
AUTO_EVAL_SHARE = 0.05  # eval_split=auto: a twentieth of the documents (a corpus has many)


def _default_pretrain_train() -> TrainingConfig:
    """Pre-training's ``train:`` defaults: a from-scratch learning rate with warm-up and cosine decay."""
    return TrainingConfig(
        learning_rate=1e-3,
        lr_schedule="cosine",
        warmup_ratio=0.05,
        weight_decay=0.1,
        global_batch_size=16,
        micro_batch_size=16,
        max_steps=600,
        eval_every=200,
    )


@dataclass
class PretrainConfig(RunConfig):
    """Options of ``rlxf pretrain`` (``data`` is the corpus; ``model`` the model to continue pre-training)."""

    train: TrainingConfig = field(default_factory=_default_pretrain_train)
    objective: Objective = option("clm", help="clm (next token), mlm (BERT masked LM), span (T5 corruption)")
    arch: Arch | None = option(
        None, help="from scratch: gpt2 or llama (clm), bert (mlm), t5 (span); unset: continue `model`"
    )
    size: Size = option("tiny", help="from scratch: tiny (CPU, minutes), small, base (GPU)")
    dropout: float | None = option(
        None, help="from scratch: every dropout of the model; unset: 0 for tiny, the architecture's otherwise"
    )
    model_config: str | None = option(
        None, help="from scratch: a transformers config.json (or its folder) instead of arch + size"
    )
    tokenizer: TokenizerKind | None = option(
        None, help="from scratch: train a bpe, wordpiece or unigram tokenizer; unset: the family's own kind"
    )
    vocab_size: int = option(8000, help="from scratch: size of the trained tokenizer's vocabulary")
    tokenizer_path: str | None = option(
        None, help="from scratch: an existing tokenizer (a folder) instead of training one"
    )
    text_field: str = option("text", help="the field holding a document's text in JSONL / CSV / Parquet")
    block_size: int = option(128, help="tokens per training example (the encoder input length for span)")
    max_eval_blocks: int = option(256, help="held-out blocks evaluated (the first ones)")
    mlm_probability: float = option(0.15, help="mlm: share of tokens chosen for prediction")
    whole_word_mask: bool = option(False, help="mlm: choose whole words, not word pieces")
    nsp: bool = option(False, help="mlm: add next-sentence prediction (BERT's sentence pairs)")
    noise_density: float = option(0.15, help="span: share of tokens corrupted")
    mean_noise_span_length: float = option(3.0, help="span: mean length of a corrupted span")
    masks_per_block: int = option(
        1, help="mlm / span: copies of each training block, each with its own mask (BERT's dupe_factor)"
    )
    # Pre-training with human feedback (Korbak et al. 2023; rlxf/algos/phf.py, rlxf/algos/pretrain_phf.py)
    preference: Preference = option(
        "none", help="clm: none (MLE), filter, conditional, unlikelihood, rwr or awr (Korbak et al. 2023)"
    )
    score: Any = option(
        "",
        help="reward spec scoring segments (pep8, offensive, sentiment, fn:..., model:...): the preference "
        "objectives' feedback, and eval/misalignment of samples at the end",
    )
    segment: Segment = option("sentence", help="what a score covers: sentence, line or document")
    threshold: float | None = option(None, help="reward threshold (good: >= it); unset: threshold_quantile")
    threshold_quantile: float = option(
        PHF_DEFAULTS.threshold_quantile,
        help="the threshold as this quantile of the training segments' scores",
    )
    alpha: float = option(
        PHF_DEFAULTS.unlikelihood_alpha, help="unlikelihood: weight of the unlikelihood term"
    )
    beta: float | None = option(
        None,
        help=f"rwr / awr temperature; unset: {PHF_DEFAULTS.rwr_beta:g} (rwr), {PHF_DEFAULTS.awr_beta:g} (awr)",
    )
    value_coef: float = option(PHF_DEFAULTS.awr_value_coef, help="awr: weight of the value head's loss")
    max_weight: float = option(PHF_DEFAULTS.max_weight, help="rwr / awr: cap on a token's weight")
    control_drop_share: float = option(
        PHF_DEFAULTS.control_drop_share, help="conditional: share of segments left without a control token"
    )
    guidance_scale: float = option(
        1.0,
        help="conditional: classifier-free guidance of the samples against the other control token "
        "(Sanchez et al. 2023); 1 = plain conditional sampling, the paper's",
    )
    misalignment_samples: int = option(
        256, help="with score: samples drawn at the end; eval/misalignment is minus their mean score; 0: none"
    )
    sample_max_new_tokens: int = option(64, help="length of those samples in tokens")

    def __post_init__(self) -> None:
        if self.eval_split == "auto":
            self.eval_split = AUTO_EVAL_SHARE  # held out per document; a corpus has many
        super().__post_init__()
        if self.arch is not None and self.model_config is not None:
            raise ValueError("give arch (+ size) or model_config, not both")
        if self.arch is not None:
            check_arch(self.arch, self.objective)
        if not self.from_scratch:
            if self.objective != "clm":
                raise ValueError(
                    f"objective={self.objective} trains from scratch: set arch="
                    f"{[a for a, o in ARCH_OBJECTIVE.items() if o == self.objective][0]} (continued pre-training "
                    "of `model` is causal: objective=clm)"
                )
            if self.tokenizer is not None or self.tokenizer_path is not None:
                raise ValueError("continued pre-training keeps the model's own tokenizer: unset tokenizer")
        elif self.model.lora.r > 0:
            raise ValueError("a model from scratch trains in full: model.lora.r must be 0")
        if self.nsp and self.objective != "mlm":
            raise ValueError("nsp goes with objective=mlm")
        if self.block_size < 8:
            raise ValueError(f"block_size must be >= 8, got {self.block_size}")
        if self.vocab_size < 64:
            raise ValueError(f"vocab_size must be >= 64, got {self.vocab_size}")
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}")
        if not 0 < self.noise_density < 1 or self.mean_noise_span_length < 1:
            raise ValueError("noise_density must be in (0, 1) and mean_noise_span_length >= 1")
        if self.masks_per_block < 1:
            raise ValueError(f"masks_per_block must be >= 1, got {self.masks_per_block}")
        if self.max_eval_blocks < 1:
            raise ValueError(f"max_eval_blocks must be >= 1, got {self.max_eval_blocks}")
        if self.preference != "none":
            if self.objective != "clm":
                raise ValueError(f"preference={self.preference} trains causal LMs: objective=clm")
            if self.score in ("", None, []):
                raise ValueError(f"preference={self.preference} needs the feedback: --score SPEC (e.g. pep8)")
        if self.beta is None:
            self.beta = PHF_DEFAULTS.awr_beta if self.preference == "awr" else PHF_DEFAULTS.rwr_beta
        if self.beta <= 0 or self.max_weight <= 0 or self.alpha < 0 or self.value_coef < 0:
            raise ValueError("beta and max_weight must be > 0, alpha and value_coef >= 0")
        if not 0 <= self.threshold_quantile <= 1 or not 0 <= self.control_drop_share < 1:
            raise ValueError("threshold_quantile must be in [0, 1] and control_drop_share in [0, 1)")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {self.guidance_scale}")
        if self.guidance_scale != 1 and self.preference != "conditional":
            raise ValueError(
                "guidance_scale guides against the other control token: it needs preference=conditional"
            )
        if self.misalignment_samples < 0 or self.sample_max_new_tokens < 1:
            raise ValueError("misalignment_samples must be >= 0 and sample_max_new_tokens >= 1")

    @property
    def from_scratch(self) -> bool:
        return self.arch is not None or self.model_config is not None


# ---------------------------------------------------------------------------------------------- losses


def clm_loss(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy of packed blocks (every position predicts the next; no padding),
    and the per-position hits of the argmax.

    ``logits`` ``[batch, T, vocab]``, ``input_ids`` ``[batch, T]``: position ``t`` predicts ``x_{t+1}``, so
    ``T - 1`` tokens per block carry a loss. The log-softmax runs in float32.
    """
    targets = input_ids[:, 1:]  # [batch, T-1]
    predicted = logits[:, :-1].float()  # [batch, T-1, vocab]
    loss = F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), targets.reshape(-1), reduction="sum")
    hits = predicted.argmax(-1) == targets  # [batch, T-1]
    return loss, hits


def masked_loss(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the labelled positions (``labels != -100``: MLM's chosen tokens, span's
    targets), the mask of those positions and the hits of the argmax there; no shift (the labels are aligned
    with the logits: an encoder's positions, or a decoder's teacher-forced targets)."""
    mask = labels != IGNORE_INDEX  # [batch, T]
    loss = F.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")
    hits = (logits.argmax(-1) == labels) & mask  # [batch, T]
    return loss, mask, hits


# ---------------------------------------------------------------------------------------------- model


def build_model(cfg: PretrainConfig, tokenizer: Any) -> torch.nn.Module:
    """A freshly initialised model for ``cfg.objective`` (seeded by ``cfg.seed``) in the training precision's
    weight dtype, on the configured device."""
    if cfg.model_config is not None:
        config = fit_config_to_tokenizer(config_from_file(cfg.model_config), tokenizer)
    else:
        config = build_config(cfg.arch, cfg.size, tokenizer, cfg.block_size, nsp=cfg.nsp, dropout=cfg.dropout)  # type: ignore[arg-type]
    seed_everything(cfg.seed)
    model = model_for(config, cfg.objective, nsp=cfg.nsp)
    dtype = torch.bfloat16 if weight_dtype(training_precision(cfg)) == "bfloat16" else torch.float32
    model.to(device=resolve_device(cfg.model.device), dtype=dtype)
    model.train()
    parameters = sum(p.numel() for p in model.parameters())
    logger.info(f"{type(model).__name__} from scratch: {parameters / 1e6:.2f}M parameters")
    return model


def _family(cfg: PretrainConfig, config: Any | None = None) -> str:
    if cfg.arch is not None:
        return family_of(cfg.arch)
    if cfg.model_config is not None:
        model_type = getattr(config_from_file(cfg.model_config), "model_type", "")
        return {"bert": "bert", "t5": "t5"}.get(model_type, "causal")
    return "causal"


# ---------------------------------------------------------------------------------------------- objectives


@dataclass
class ObjectiveParts:
    """What an objective gives the loop: its examples, collate, units, loss and held-out figures."""

    train_examples: Sequence[Any]
    eval_examples: Sequence[Any]
    collate: Any
    units: Any
    compute_loss: Any
    score: Any
    summarize: Any
    judge_by: str  # the held-out figure a run is judged by (a loss: lower is better)


def clm_objective(cfg: PretrainConfig, corpus: CorpusFiles) -> ObjectiveParts:
    """Next-token prediction on packed blocks; with ``preference`` unlikelihood / rwr / awr each block
    carries its tokens' rewards and the token loss is :func:`~rlxf.algos.pretrain_phf.phf_token_loss`."""
    blocks = TokenBlocks(corpus.train_path, cfg.block_size)
    rewards = None
    if corpus.rewards_path is not None:
        rewards = RewardBlocks(corpus.rewards_path, cfg.block_size, token_count(corpus.train_path))
    train = IndexedBlocks(blocks, rewards=rewards)
    held_out = IndexedBlocks(TokenBlocks(corpus.eval_path, cfg.block_size), limit=cfg.max_eval_blocks)
    vocab = len(corpus.tokenizer)
    # Unigram baseline: add-one smoothed token frequencies of the training corpus.
    counts = token_counts(corpus.train_path, vocab).astype(np.float64) + 1.0
    unigram_nll = torch.tensor(-np.log(counts / counts.sum()), dtype=torch.float64)  # [vocab]
    # Conditional models are evaluated after <|good|>; the control tokens themselves are not scored.
    control = (
        torch.tensor(corpus.tokenizer.convert_tokens_to_ids([GOOD, BAD]))
        if cfg.preference == "conditional"
        else torch.tensor([], dtype=torch.long)
    )

    def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack([e["ids"] for e in examples])  # [batch, T]
        # packed blocks have no padding; the mask is what the loop counts tokens (tokens_per_s) by
        batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        if "rewards" in examples[0]:
            batch["rewards"] = torch.stack([e["rewards"] for e in examples])  # [batch, T]
        return batch

    def units(batch: dict[str, torch.Tensor]) -> int:
        ids = batch["input_ids"]
        return ids.shape[0] * (ids.shape[1] - 1)  # every position but the last predicts a token

    def compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        if cfg.preference in TOKEN_LEVEL:
            loss, metrics = phf_token_loss(cfg, model, batch["input_ids"], batch["rewards"], corpus.threshold)
            return LossOutput(loss=loss, metrics=metrics)
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits  # [batch, T, vocab]
        loss, hits = clm_loss(logits, batch["input_ids"])
        return LossOutput(loss=loss, metrics={"token_accuracy": hits.float().mean().item()})

    def score(model: torch.nn.Module, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = to_device(collate(examples), model_device(model))
        logits = language_model(model)(input_ids=batch["input_ids"], use_cache=False).logits
        targets = batch["input_ids"][:, 1:]
        scored = ~torch.isin(targets, control.to(targets.device))  # [b, T-1]
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")  # [b, T-1]
        return {
            "nll": (nll.double() * scored).sum(-1),
            "tokens": scored.double().sum(-1),
            "unigram_nll": (unigram_nll.to(targets.device)[targets] * scored).sum(-1),
        }

    def summarize(figures: dict[str, torch.Tensor]) -> dict[str, float]:
        tokens = figures["tokens"].sum()
        loss = (figures["nll"].sum() / tokens).item()
        unigram = (figures["unigram_nll"].sum() / tokens).item()
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 700)),
            "unigram_perplexity": math.exp(min(unigram, 700)),
            "perplexity_ratio": math.exp(min(loss - unigram, 700)),
        }

    return ObjectiveParts(train, held_out, collate, units, compute_loss, score, summarize, "loss")


def mlm_objective(cfg: PretrainConfig, corpus: CorpusFiles) -> ObjectiveParts:
    from rlxf.data.denoising import MaskedLMCollator, make_nsp_examples, split_sentences

    tokenizer = corpus.tokenizer
    most_frequent = int(token_counts(corpus.train_path, len(tokenizer)).argmax())
    if cfg.nsp:
        # sentence pairs need the documents' sentences: read into memory
        def pairs(held_out: bool) -> list[dict[str, Any]]:
            documents = [split_sentences(text) for text in corpus_texts(cfg, held_out)]
            return make_nsp_examples(documents, tokenizer, cfg.block_size, seed=cfg.seed + int(held_out))

        train: Sequence[Any] = pairs(False)
        held_out: Sequence[Any] = pairs(True)[: cfg.max_eval_blocks]
    else:
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id

        class Wrapped(IndexedBlocks):  # [CLS] block [SEP]
            def __getitem__(self, i):  # type: ignore[override]
                example = super().__getitem__(i)
                if isinstance(example, list):
                    return example
                ids = example["ids"]
                return {"ids": torch.cat([ids.new_tensor([cls]), ids, ids.new_tensor([sep])]), "index": i}

        train = Wrapped(TokenBlocks(corpus.train_path, cfg.block_size - 2), copies=cfg.masks_per_block)
        held_out = Wrapped(TokenBlocks(corpus.eval_path, cfg.block_size - 2), cfg.max_eval_blocks)
    collate = MaskedLMCollator(tokenizer, cfg.mlm_probability, cfg.whole_word_mask, seed=cfg.seed)

    def units(batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]):
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
        return model(**inputs)

    def compute_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LossOutput:
        out = forward(model, batch)
        logits = out.prediction_logits if cfg.nsp else out.logits  # [batch, T, vocab]
        loss, mask, hits = masked_loss(logits, batch["labels"])
        metrics = {"masked_accuracy": (hits.sum() / mask.sum().clamp(min=1)).item()}
        if cfg.nsp:
            nsp_logits = out.seq_relationship_logits  # [batch, 2]
            nsp_sum = F.cross_entropy(nsp_logits.float(), batch["next_sentence_label"], reduction="sum")
            # per pair, scaled to the micro-batch's chosen tokens: the loop divides by the step's tokens
            loss = loss + nsp_sum * mask.sum() / len(nsp_logits)
            metrics["nsp_loss"] = nsp_sum.item() / len(nsp_logits)
        return LossOutput(loss=loss, metrics=metrics)

    def score(model: torch.nn.Module, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = to_device(collate(examples), model_device(model))
        out = forward(model, batch)
        logits = out.prediction_logits if cfg.nsp else out.logits
        labels = batch["labels"]
        _, mask, hits = masked_loss(logits, labels)
        masked_input = mask & (batch["input_ids"] == tokenizer.mask_token_id)  # [b, T]
        nll = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")  # [b, T]; 0 at -100
        figures = {
            "nll": nll.double().sum(-1),
            "hits": hits.sum(-1).double(),
            "masked": mask.sum(-1).double(),
            "baseline_hits": ((labels == most_frequent) & mask).sum(-1).double(),
            # BERT's 80/10/10: 10 % of the chosen tokens are shown as they are, so masked_accuracy counts
            # copies; these count only the positions whose input is [MASK] (a prediction from context)
            "mask_hits": (hits & masked_input).sum(-1).double(),
            "mask_baseline_hits": ((labels == most_frequent) & masked_input).sum(-1).double(),
            "masked_input": masked_input.sum(-1).double(),
        }
        if cfg.nsp:
            right = out.seq_relationship_logits.argmax(-1) == batch["next_sentence_label"]
            figures["nsp_hits"] = right.double()
        return figures

    def summarize(figures: dict[str, torch.Tensor]) -> dict[str, float]:
        masked = figures["masked"].sum().clamp(min=1)
        result = {
            "loss": (figures["nll"].sum() / masked).item(),
            "masked_accuracy": (figures["hits"].sum() / masked).item(),
            "baseline_accuracy": (figures["baseline_hits"].sum() / masked).item(),
            "mask_token_accuracy": (
                figures["mask_hits"].sum() / figures["masked_input"].sum().clamp(min=1)
            ).item(),
            "mask_token_baseline_accuracy": (
                figures["mask_baseline_hits"].sum() / figures["masked_input"].sum().clamp(min=1)
            ).item(),
        }
        if cfg.nsp:
            result["nsp_accuracy"] = figures["nsp_hits"].mean().item()
        return result

    return ObjectiveParts(train, held_out, collate, units, compute_loss, score, summarize, "loss")


def span_objective(cfg: PretrainConfig, corpus: CorpusFiles) -> ObjectiveParts:
    from rlxf.data.denoising import SpanCorruptionCollator, compute_input_and_target_lengths

    tokenizer = corpus.tokenizer
    raw_length, _ = compute_input_and_target_lengths(
        cfg.block_size, cfg.noise_density, cfg.mean_noise_span_length
    )
    train = IndexedBlocks(TokenBlocks(corpus.train_path, raw_length), copies=cfg.masks_per_block)
    held_out = IndexedBlocks(TokenBlocks(corpus.eval_path, raw_length), limit=cfg.max_eval_blocks)
    sentinels = sentinel_ids(tokenizer)
    not_noise = torch.tensor(sorted({*sentinels, tokenizer.eos_token_id}))  # target tokens that are markers
    most_frequent = int(token_counts(corpus.train_path, len(tokenizer)).argmax())
    collate = SpanCorruptionCollator(
        sentinel_ids=sentinels,
        eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id,
        noise_density=cfg.noise_density,
        mean_noise_span_length=cfg.mean_noise_span_length,
        seed=cfg.seed,
    )

    def units(batch: dict[str, Any]) -> int:
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def forward(model: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        return model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).logits  # [batch, K, vocab]: teacher-forced on the labels (shifted right inside the model)

    def compute_loss(model: torch.nn.Module, batch: dict[str, Any]) -> LossOutput:
        loss, mask, hits = masked_loss(forward(model, batch), batch["labels"])
        return LossOutput(loss=loss, metrics={"target_accuracy": (hits.sum() / mask.sum()).item()})

    def score(model: torch.nn.Module, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = to_device(collate(examples), model_device(model))
        labels = batch["labels"]
        logits = forward(model, batch)
        _, mask, hits = masked_loss(logits, labels)
        nll = F.cross_entropy(logits.float().transpose(1, 2), labels, reduction="none")  # [b, K]; 0 at -100
        noise = mask & ~torch.isin(labels, not_noise.to(labels.device))  # the corrupted tokens themselves
        # The same targets read against another example's encoder input (each row gets the previous row's):
        # how much the decoder's predictions rest on the encoder. A decoder that has only learned the
        # language of the spans loses nothing here (one block alone in its batch has no other: left out).
        others = len(examples) > 1
        other_input = {key: batch[key].roll(1, 0) for key in ("input_ids", "attention_mask")}
        other_logits = forward(model, {**batch, **other_input}) if others else logits
        other_nll = F.cross_entropy(other_logits.float().transpose(1, 2), labels, reduction="none")
        paired = torch.full_like(mask[:, 0], others, dtype=torch.double)  # [b]: 1 where it was compared
        return {
            "nll": nll.double().sum(-1),
            "targets": mask.sum(-1).double(),
            "hits": (hits & noise).sum(-1).double(),
            "noise": noise.sum(-1).double(),
            "baseline_hits": ((labels == most_frequent) & noise).sum(-1).double(),
            "paired_nll": nll.double().sum(-1) * paired,
            "other_input_nll": other_nll.double().sum(-1) * paired,
            "paired_targets": mask.sum(-1).double() * paired,
        }

    def summarize(figures: dict[str, torch.Tensor]) -> dict[str, float]:
        noise = figures["noise"].sum().clamp(min=1)
        return {
            "loss": (figures["nll"].sum() / figures["targets"].sum().clamp(min=1)).item(),
            "span_accuracy": (figures["hits"].sum() / noise).item(),
            "baseline_accuracy": (figures["baseline_hits"].sum() / noise).item(),
            # nats per target token: held-out loss with another example's input minus with its own
            "encoder_gain": (
                (figures["other_input_nll"].sum() - figures["paired_nll"].sum())
                / figures["paired_targets"].sum().clamp(min=1)
            ).item(),
        }

    return ObjectiveParts(train, held_out, collate, units, compute_loss, score, summarize, "loss")


OBJECTIVES = {"clm": clm_objective, "mlm": mlm_objective, "span": span_objective}


# ---------------------------------------------------------------------------------------------- command


def pretrain(cfg: PretrainConfig) -> RunResult:
    """Pre-train (``rlxf pretrain``): corpus -> tokenizer and token files -> model -> fit -> ``model/`` (a
    plain HF folder with its tokenizer). Bad input (corpus, settings) stops it before ``cfg.out`` is made."""
    print_config(cfg, "rlxf pretrain")
    stats = validate_corpus(cfg.data, cfg.text_field)  # the first bad document stops here
    logger.info(f"corpus {cfg.data}: {stats.documents} documents, {stats.characters} characters")
    if cfg.eval_data is not None:
        validate_corpus(cfg.eval_data, cfg.text_field)
    reward = parse_reward_spec(cfg.score, RewardOptions()) if cfg.score not in ("", None, []) else None
    family = _family(cfg)
    model = None
    model_tokenizer = None
    if not cfg.from_scratch:
        model, _ = load_trainable_model(cfg)
        model_tokenizer = load_tokenizer(resolve_model(cfg.model.name_or_path))
        if cfg.preference == "conditional":  # new embedding rows: the mean of the others
            add_control_tokens(model, model_tokenizer, [GOOD, BAD])
    corpus = prepare_corpus(cfg, family, model_tokenizer, reward)
    if model is None:
        model = build_model(cfg, corpus.tokenizer)
    if cfg.preference == "awr":
        model = ValueHeadLM(model)
    objective = OBJECTIVES[cfg.objective](cfg, corpus)
    if len(objective.train_examples) < cfg.train.global_batch_size:
        raise DataError(
            f"the training documents make {len(objective.train_examples)} blocks of {cfg.block_size} tokens, "
            f"fewer than train.global_batch_size={cfg.train.global_batch_size}: add text or lower either",
            path=cfg.data,
        )
    logger.info(
        f"{len(objective.train_examples)} training and {len(objective.eval_examples)} held-out examples "
        f"({corpus.train_documents} and {corpus.eval_documents} documents)"
    )

    def before_save(trainer: Any, final: dict[str, float]) -> None:
        """The misalignment of samples of the trained model, into the final metrics and summary."""
        if reward is not None and cfg.misalignment_samples and cfg.objective == "clm":
            metrics, samples = misalignment(cfg, trainer.model, corpus.tokenizer, reward)
            final.update(metrics)
            if trainer.accelerator.is_main_process:  # the samples and their scores, to read what was measured
                with open(Path(cfg.out) / "samples.jsonl", "w", encoding="utf-8") as f:
                    f.writelines(json.dumps(sample) + "\n" for sample in samples)

    return fit_and_save(
        cfg,
        model=model,
        tokenizer=corpus.tokenizer,
        train_examples=objective.train_examples,
        eval_examples=objective.eval_examples,
        collate=objective.collate,
        units=objective.units,
        compute_loss=objective.compute_loss,
        score=objective.score,
        summarize=objective.summarize,
        desc=f"pretrain ({cfg.objective}{'' if cfg.preference == 'none' else ', ' + cfg.preference})",
        command="pretrain",
        judge_by=objective.judge_by,
        unit="blocks",
        before_save=before_save,
        saved_part=language_model,
    )


__all__ = ["PretrainConfig", "clm_loss", "masked_loss", "pretrain"]
