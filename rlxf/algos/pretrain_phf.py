"""Pre-training with human feedback inside ``rlxf pretrain`` (``preference``, causal LMs): scoring the
corpus, each objective's data and token loss, and the misalignment of samples.

The math (equations, references, defaults) is :mod:`rlxf.algos.phf`; this module applies it to a corpus:

1. **Scoring** (:func:`score_corpus`): every training document is cut into segments (``segment``:
   sentences, lines or the whole document) and each segment scored by the reward spec ``score`` (any rlxf
   reward: ``pep8``, ``offensive``, ``sentiment``, ``fn:...``, ``model:...``); the segments are the
   completions, with an empty prompt. The threshold is ``threshold`` or ``threshold_quantile`` of the
   segment scores (of the documents' mean scores for ``filter``). The scored corpus is held in memory.
2. **Data** (:func:`training_texts`): ``filter`` keeps the documents whose mean segment score passes;
   ``conditional`` prefixes each segment with ``<|good|>`` / ``<|bad|>`` (``control_drop_share`` of them with
   nothing), the two tokens added to the tokenizer as special tokens (and to a continued model's embeddings,
   initialised to the mean row); ``unlikelihood``, ``rwr`` and ``awr`` keep the text and write each token's
   segment reward beside its id (:func:`write_token_rewards`; the separator after a document carries the
   document's last segment's reward).
3. **Loss** (:func:`phf_token_loss`, per predicted token, summed; the loop divides by the step's
   predicted tokens): ``filter`` and ``conditional`` are MLE on their data; ``unlikelihood``, ``rwr`` and
   ``awr`` weight or replace each token's NLL by its reward (the reward of the token *predicted*, the value
   read where it is predicted). AWR's value head is a linear layer on the LM's last hidden state
   (:class:`ValueHeadLM`), trained with it and dropped when ``model/`` is saved.
4. **Held out**: the loss on the held-out documents as they are (``conditional``: each segment after
   ``<|good|>``, the control tokens themselves not counted), so runs compare at equal text.
5. **Misalignment** (:func:`misalignment`): ``misalignment_samples`` samples of up to
   ``sample_max_new_tokens`` tokens from the start token (``conditional``: after ``<|good|>``, both control
   tokens banned from the output, with classifier-free guidance against ``<|bad|>`` at ``guidance_scale``;
   and after ``<|bad|>`` as a check that the token is used), pure sampling (temperature 1), scored by
   ``score``: ``eval/misalignment`` is minus their mean reward (lower is better).

Left out: scoring a corpus larger than memory (the scores are kept per segment), the paper's
finetuning-with-feedback setting, prompting the samples with held-out prefixes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from rlxf.algos.phf import (
    PHF_DEFAULTS,
    Segment,
    awr_weights,
    conditional_text,
    control_drop_mask,
    resolve_threshold,
    rwr_weights,
    split_segments,
    token_segment_ids,
    unlikelihood_token_loss,
    value_loss,
    weighted_nll,
)
from rlxf.algos.rl import ValueHead

logger = logging.getLogger(__name__)

Preference = Literal["none", "filter", "conditional", "unlikelihood", "rwr", "awr"]
TOKEN_LEVEL: tuple[str, ...] = ("unlikelihood", "rwr", "awr")  # need each token's reward
GOOD, BAD = PHF_DEFAULTS.good_token, PHF_DEFAULTS.bad_token

Reward = Callable[[list[str], list[str]], list[float]]


# ---------------------------------------------------------------------------------------------- scoring


def score_segments(
    texts: Sequence[str], segment: Segment, reward: Reward, batch: int = 512
) -> list[list[float]]:
    """Each text's segment scores (``reward`` of each segment as a completion with an empty prompt),
    scored in batches of about ``batch`` segments."""
    spans = [split_segments(text, segment) for text in texts]
    pieces = [text[a:b] for text, doc_spans in zip(texts, spans) for a, b in doc_spans]
    scores: list[float] = []
    for start in range(0, len(pieces), batch):
        chunk = pieces[start : start + batch]
        scores.extend(float(s) for s in reward([""] * len(chunk), chunk))
    out, position = [], 0
    for doc_spans in spans:
        out.append(scores[position : position + len(doc_spans)])
        position += len(doc_spans)
    return out


def document_score(segment_scores: Sequence[float]) -> float:
    """A document's score for filtering: the mean of its segments' (the authors' code)."""
    return sum(segment_scores) / max(len(segment_scores), 1)


def corpus_threshold(cfg: Any, scores: list[list[float]]) -> float:
    """``cfg.threshold``, or ``cfg.threshold_quantile`` of the segment scores (the document scores for
    ``filter``)."""
    values = (
        [document_score(s) for s in scores] if cfg.preference == "filter" else [x for s in scores for x in s]
    )
    if not values:
        raise ValueError("the training documents have no segment to score")
    given = cfg.threshold
    return resolve_threshold(
        torch.tensor(values, dtype=torch.float64),
        given,
        None if given is not None else cfg.threshold_quantile,
    )


# ---------------------------------------------------------------------------------------------- data


def training_texts(cfg: Any, texts: Sequence[str], scores: list[list[float]], threshold: float) -> list[str]:
    """The training documents as the objective trains on them (see the module docstring, 2.)."""
    if cfg.preference == "filter":
        kept = [text for text, s in zip(texts, scores) if document_score(s) >= threshold]
        logger.info(f"filter: {len(kept)} of {len(texts)} documents pass the threshold {threshold:.4g}")
        return kept
    if cfg.preference == "conditional":
        out = []
        for index, (text, doc_scores) in enumerate(zip(texts, scores)):
            spans = split_segments(text, cfg.segment)
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
            drop = control_drop_mask(len(spans), cfg.control_drop_share, generator)
            out.append(conditional_text(text, spans, doc_scores, threshold, GOOD, BAD, drop))
        return out
    return list(texts)


def held_out_text(cfg: Any, text: str) -> str:
    """A held-out document as it is evaluated: conditional models read each segment after ``<|good|>``."""
    if cfg.preference != "conditional":
        return text
    spans = split_segments(text, cfg.segment)
    return conditional_text(text, spans, [0.0] * len(spans), 0.0, GOOD, BAD, [False] * len(spans))


def write_token_rewards(
    texts: Sequence[str],
    scores: list[list[float]],
    segment: Segment,
    tokenizer: Any,
    separator: int | None,
    path: Path,
) -> int:
    """Each token's segment reward (float32, in the order :func:`rlxf.data.corpus.write_token_file` writes
    the same texts' ids: no special tokens added, the separator after each document); returns the count."""
    count = 0
    with open(path, "wb") as f:
        for start in range(0, len(texts), 1000):
            chunk = texts[start : start + 1000]
            encoded = tokenizer(list(chunk), add_special_tokens=False, return_offsets_mapping=True)
            for text, offsets, doc_scores in zip(
                chunk, encoded["offset_mapping"], scores[start : start + 1000]
            ):
                ids = token_segment_ids(offsets, split_segments(text, segment))
                rewards = [doc_scores[i] for i in ids]
                if separator is not None:
                    rewards.append(doc_scores[-1] if doc_scores else 0.0)
                np.asarray(rewards, dtype=np.float32).tofile(f)
                count += len(rewards)
    return count


class RewardBlocks:
    """The token rewards of a :class:`~rlxf.data.corpus.TokenBlocks` file's blocks: ``[block_size]``
    float32 per block, from a memory map of :func:`write_token_rewards`' file."""

    def __init__(self, path: Path, block_size: int, tokens: int) -> None:
        self.path, self.block_size = Path(path), block_size
        self.values = np.memmap(self.path, dtype=np.float32, mode="r")
        if len(self.values) != tokens:
            raise ValueError(f"{path}: {len(self.values)} rewards for {tokens} tokens")

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.values[i * self.block_size : (i + 1) * self.block_size]))


# ---------------------------------------------------------------------------------------------- model


class ValueHeadLM(torch.nn.Module):
    """AWR's model: the causal LM and a value head on its last hidden state (``V(x_<=t)``); ``model/`` is
    the LM alone (:attr:`lm`)."""

    def __init__(self, lm: torch.nn.Module) -> None:
        super().__init__()
        self.lm = lm
        self.value_head = ValueHead(lm.config.hidden_size).to(next(lm.parameters()).device)
        self.config = lm.config

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.lm(input_ids=input_ids, output_hidden_states=True, use_cache=False)
        return out.logits, self.value_head(out.hidden_states[-1])  # [B, T, vocab], [B, T]


def language_model(model: torch.nn.Module) -> torch.nn.Module:
    """The LM of a model that may carry AWR's value head."""
    return model.lm if isinstance(model, ValueHeadLM) else model


# ---------------------------------------------------------------------------------------------- loss


def phf_token_loss(
    cfg: Any, model: torch.nn.Module, input_ids: torch.Tensor, rewards: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """The summed token loss of ``unlikelihood``, ``rwr`` or ``awr`` on packed blocks ``input_ids``
    ``[B, T]`` whose tokens carry ``rewards`` ``[B, T]``; position ``t`` predicts token ``t + 1``, so the
    rewards of the predicted tokens are ``rewards[:, 1:]`` and AWR's values are read at ``[:, :-1]``."""
    values = None
    if isinstance(model, ValueHeadLM):
        logits, values = model(input_ids)
    else:
        logits = model(input_ids=input_ids, use_cache=False).logits  # [B, T, vocab]
    targets = input_ids[:, 1:]  # [B, T-1]
    target_rewards = rewards[:, 1:].float()  # [B, T-1]: the reward of the token each position predicts
    logprobs = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    mask = torch.ones_like(target_rewards)  # packed blocks: every position predicts a real token
    metrics: dict[str, float] = {}
    if cfg.preference == "unlikelihood":
        bad = target_rewards < threshold  # [B, T-1]
        loss = unlikelihood_token_loss(logprobs, bad, cfg.alpha).sum()
        metrics["bad_token_share"] = bad.float().mean().item()
    elif cfg.preference == "rwr":
        weights = rwr_weights(target_rewards, cfg.beta, cfg.max_weight)
        loss = weighted_nll(-logprobs, weights, mask)
        metrics["weight_mean"] = weights.mean().item()
    else:  # awr
        predicted = values[:, :-1]  # [B, T-1]: V read where each token is predicted
        weights = awr_weights(target_rewards, predicted, cfg.beta, cfg.max_weight)
        value_sum = value_loss(predicted, target_rewards, mask)
        loss = weighted_nll(-logprobs, weights, mask) + cfg.value_coef * value_sum
        metrics["weight_mean"] = weights.mean().item()
        metrics["value_loss"] = value_sum.item() / mask.numel()
    metrics["nll"] = (-logprobs).mean().item()
    return loss, metrics


# ---------------------------------------------------------------------------------------------- samples


@torch.no_grad()
def sample_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    prefix: list[int],
    banned: list[int],
    n: int,
    max_new_tokens: int,
    seed: int,
    negative_prefix: list[int] | None = None,
    guidance_scale: float = 1.0,
) -> list[str]:
    """``n`` samples (temperature 1, no truncation) after the token ids ``prefix``, ``banned`` ids never
    generated, special tokens removed from the text. With ``guidance_scale`` != 1, each step samples from
    classifier-free guidance against ``negative_prefix`` followed by the same text (:mod:`rlxf.algos.phf`;
    transformers' ``UnbatchedClassifierFreeGuidanceLogitsProcessor``)."""
    if guidance_scale != 1 and negative_prefix is None:
        raise ValueError("guidance_scale != 1 needs the negative_prefix it guides against")
    lm = language_model(model)
    was_training = lm.training
    lm.eval()
    device = next(lm.parameters()).device
    texts: list[str] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, n, 64):
            rows = min(64, n - start)
            ids = torch.tensor([prefix] * rows, device=device)
            guidance: dict[str, Any] = {}
            if guidance_scale != 1:
                negative = torch.tensor([negative_prefix] * rows, device=device)
                guidance = {
                    "guidance_scale": guidance_scale,
                    "negative_prompt_ids": negative,
                    "negative_prompt_attention_mask": torch.ones_like(negative),
                }
            out = lm.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new_tokens,
                bad_words_ids=[[b] for b in banned] or None,
                pad_token_id=tokenizer.pad_token_id
                if tokenizer.pad_token_id is not None
                else tokenizer.eos_token_id,
                **guidance,
            )
            texts.extend(tokenizer.batch_decode(out[:, len(prefix) :], skip_special_tokens=True))
    lm.train(was_training)
    return texts


def misalignment(
    cfg: Any, model: torch.nn.Module, tokenizer: Any, reward: Reward
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """``eval/misalignment``: minus the mean reward of ``cfg.misalignment_samples`` samples (conditional:
    after ``<|good|>``, guided against ``<|bad|>`` at ``cfg.guidance_scale``; ``eval/misalignment_bad_token``
    after ``<|bad|>``, guided against ``<|good|>`` at the same scale; with guidance also
    ``eval/misalignment_unguided``, the plain samples after ``<|good|>``); their text is scored whole. Also
    the samples themselves, each ``{"prefix", "guidance_scale", "text", "score"}``, for the run folder's
    ``samples.jsonl``."""
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    n, length = cfg.misalignment_samples, cfg.sample_max_new_tokens
    samples: list[dict[str, Any]] = []

    def of(
        prefix: list[int], banned: list[int], name: str, negative: list[int] | None, scale: float
    ) -> float:
        texts = sample_texts(model, tokenizer, prefix, banned, n, length, cfg.seed, negative, scale)
        rewards = reward([""] * len(texts), texts)
        samples.extend(
            {"prefix": name, "guidance_scale": scale, "text": t, "score": float(r)}
            for t, r in zip(texts, rewards)
        )
        return -float(np.mean(rewards))

    if cfg.preference == "conditional":
        good, bad = tokenizer.convert_tokens_to_ids([GOOD, BAD])
        scale = cfg.guidance_scale
        metrics = {
            "eval/misalignment": of([start, good], [good, bad], GOOD, [start, bad], scale),
            "eval/misalignment_bad_token": of([start, bad], [good, bad], BAD, [start, good], scale),
        }
        if scale != 1:
            metrics["eval/misalignment_unguided"] = of([start, good], [good, bad], GOOD, None, 1.0)
        return metrics, samples
    return {"eval/misalignment": of([start], [], "", None, 1.0)}, samples


def save_scores_summary(folder: Path, threshold: float, scores: list[list[float]]) -> None:
    """What scoring found, kept beside the cached token files."""
    flat = [x for s in scores for x in s]
    (folder / "scores.json").write_text(
        json.dumps(
            {
                "threshold": threshold,
                "segments": len(flat),
                "documents": len(scores),
                "mean": float(np.mean(flat)) if flat else None,
                "below_threshold": float(np.mean([x < threshold for x in flat])) if flat else None,
            }
        )
    )


__all__ = [
    "TOKEN_LEVEL",
    "Preference",
    "RewardBlocks",
    "ValueHeadLM",
    "corpus_threshold",
    "held_out_text",
    "misalignment",
    "phf_token_loss",
    "score_segments",
    "training_texts",
    "write_token_rewards",
]
