"""The pre-training corpus as ``rlxf pretrain``'s objectives read it (:mod:`rlxf.algos.pretrain`): documents
split into training and held-out ones, the tokenizer (trained on the training documents for a model from
scratch), both parts tokenised once into token files cached under ``$RLXF_HOME/pretrain/`` (keyed by the
corpus's files, sizes and times and every setting that shapes the tokens), and their blocks as the loop's
examples. With a ``preference`` the training documents are scored and shaped first
(:mod:`rlxf.algos.pretrain_phf`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rlxf.algos.pretrain_phf import (
    BAD,
    GOOD,
    TOKEN_LEVEL,
    RewardBlocks,
    corpus_threshold,
    held_out_text,
    save_scores_summary,
    score_segments,
    training_texts,
    write_token_rewards,
)
from rlxf.data.corpus import TokenBlocks, corpus_sources, is_held_out, iter_documents, write_token_file
from rlxf.models.load import load_tokenizer
from rlxf.models.registry import resolve_model, rlxf_home
from rlxf.models.scratch import train_tokenizer

logger = logging.getLogger(__name__)


@dataclass
class CorpusFiles:
    """The tokenised corpus: token files of the training and held-out documents, and the tokenizer."""

    folder: Path
    tokenizer: Any
    train_path: Path
    eval_path: Path
    train_documents: int
    eval_documents: int
    threshold: float | None = None  # the preference objectives' reward threshold
    rewards_path: Path | None = None  # unlikelihood / rwr / awr: each training token's segment reward


def _corpus_fingerprint(spec: str) -> list[Any]:
    """What identifies the corpus's content without reading it: the paths, sizes and times of the files it
    reads (every file of a saved ``datasets`` folder), or for ``stdlib:`` the Python that ships the text."""
    fingerprint: list[Any] = []
    for source in corpus_sources(spec):
        if isinstance(source, str):
            fingerprint.append([source, sys.version])
            continue
        files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
        fingerprint.extend([str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files)
    return fingerprint


def corpus_texts(cfg: Any, held_out: bool) -> Iterator[str]:
    """The training (or held-out) documents' texts, streamed: ``eval_data``'s documents are held out when
    it is given (and ``data``'s all train), else ``eval_split`` of ``data``'s by a hash of their index."""
    if cfg.eval_data is not None:
        for document in iter_documents(cfg.eval_data if held_out else cfg.data, cfg.text_field):
            yield document.text
        return
    share = float(cfg.eval_split)
    for index, document in enumerate(iter_documents(cfg.data, cfg.text_field)):
        if is_held_out(index, cfg.seed, share) == held_out:
            yield document.text


def _scratch_tokenizer(cfg: Any, family: str, texts: Iterable[str]) -> Any:
    control = [GOOD, BAD] if cfg.preference == "conditional" else []
    if cfg.tokenizer_path is not None:
        tokenizer = load_tokenizer(cfg.tokenizer_path)
        tokenizer.add_special_tokens({"additional_special_tokens": control})
        return tokenizer
    kind = cfg.tokenizer or {"causal": "bpe", "bert": "wordpiece", "t5": "unigram"}[family]
    logger.info(f"training a {kind} tokenizer ({cfg.vocab_size} tokens) on the training documents")
    return train_tokenizer(texts, kind, cfg.vocab_size, family, extra_special=control)  # type: ignore[arg-type]


def _separator_id(tokenizer: Any, family: str) -> int | None:
    """The id written between documents: EOS (causal, T5) or ``[SEP]`` (BERT)."""
    return tokenizer.sep_token_id if family == "bert" else tokenizer.eos_token_id


def prepare_corpus(cfg: Any, family: str, model_tokenizer: Any | None, reward: Any = None) -> CorpusFiles:
    """Tokenise the corpus once (or find it in the cache): the tokenizer (trained here from scratch, else
    ``model_tokenizer``) and the token files of the training and held-out documents; with a ``preference``
    the training documents are scored by ``reward`` first and shaped as the objective wants
    (:mod:`rlxf.algos.pretrain_phf`)."""
    key_parts = {
        "corpus": _corpus_fingerprint(cfg.data),
        "eval_corpus": _corpus_fingerprint(cfg.eval_data) if cfg.eval_data is not None else None,
        "preference": (
            [
                cfg.preference,
                cfg.score,
                cfg.segment,
                cfg.threshold,
                cfg.threshold_quantile,
                cfg.control_drop_share,
            ]
            if cfg.preference != "none"
            else None
        ),
        "text_field": cfg.text_field,
        "eval_split": cfg.eval_split,
        "seed": cfg.seed,
        "family": family,
        "tokenizer": (
            [cfg.tokenizer, cfg.vocab_size, cfg.tokenizer_path]
            if model_tokenizer is None
            else ["model", str(resolve_model(cfg.model.name_or_path))]
        ),
        "version": 2,  # raised when a tokenizer trained from the same options changes (2: unigram whitespace)
    }
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()[:24]
    folder = rlxf_home() / "pretrain" / key
    if not (folder / "done.json").is_file() and os.environ.get("LOCAL_RANK", "0") != "0":
        # A launched run (torchrun, accelerate): the machine's first process trains the tokenizer and writes
        # the cache; the others wait for it and read it (the same files, built once). Should the first
        # process fail, the launcher stops these too.
        logger.info(f"waiting for the first process on this machine to tokenise the corpus into {folder}")
        while not (folder / "done.json").is_file():
            time.sleep(0.5)
    if not (folder / "done.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
        try:
            threshold = None
            if cfg.preference == "none":
                train_texts: Any = lambda: corpus_texts(cfg, held_out=False)  # noqa: E731 (streamed, twice)
            else:
                documents = list(corpus_texts(cfg, held_out=False))
                logger.info(f"scoring the segments of {len(documents)} training documents with {cfg.score}")
                scores = score_segments(documents, cfg.segment, reward)
                threshold = corpus_threshold(cfg, scores)
                save_scores_summary(building, threshold, scores)
                shaped = training_texts(cfg, documents, scores, threshold)
                train_texts = lambda: iter(shaped)  # noqa: E731
            tokenizer = (
                model_tokenizer
                if model_tokenizer is not None
                else _scratch_tokenizer(cfg, family, train_texts())
            )
            tokenizer.save_pretrained(building / "tokenizer")
            separator = _separator_id(tokenizer, family)
            counts = {
                "train": write_token_file(train_texts(), tokenizer, building / "train.bin", separator),
                "eval": write_token_file(
                    (held_out_text(cfg, t) for t in corpus_texts(cfg, held_out=True)),
                    tokenizer,
                    building / "eval.bin",
                    separator,
                ),
            }
            if cfg.preference in TOKEN_LEVEL:
                write_token_rewards(
                    shaped, scores, cfg.segment, tokenizer, separator, building / "train.rewards.bin"
                )
            (building / "done.json").write_text(
                json.dumps({"key": key_parts, "tokens": counts, "threshold": threshold}, default=str)
            )
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(building, folder)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        logger.info(f"tokenised the corpus into {folder} ({counts['train']} training tokens)")
    else:
        logger.info(f"reusing the tokenised corpus in {folder}")
    tokenizer = model_tokenizer if model_tokenizer is not None else load_tokenizer(folder / "tokenizer")
    meta = {part: json.loads((folder / f"{part}.json").read_text()) for part in ("train", "eval")}
    done = json.loads((folder / "done.json").read_text())
    if done["threshold"] is not None:
        logger.info(f"reward threshold {done['threshold']:.4g} ({cfg.preference})")
    return CorpusFiles(
        folder,
        tokenizer,
        folder / "train.bin",
        folder / "eval.bin",
        meta["train"].get("documents", 0),
        meta["eval"].get("documents", 0),
        threshold=done["threshold"],
        rewards_path=folder / "train.rewards.bin" if cfg.preference in TOKEN_LEVEL else None,
    )


class IndexedBlocks(Sequence):
    """Blocks of a token file as the loop's examples: ``{"ids": [T], "index": i}`` (the index seeds the
    example's masks), at most ``limit`` of them.

    ``copies`` > 1 lists every block that many times, each copy with its own index and so its own mask
    (BERT's ``dupe_factor``, RoBERTa's ten copies; Liu et al. 2019, section 4.1): example ``i`` is block
    ``i % len(blocks)``. An epoch of the loop then covers every copy once, so a run of several passes over a
    small corpus sees new masks each pass and cannot learn a block's targets by heart.
    """

    def __init__(
        self,
        blocks: TokenBlocks,
        limit: int | None = None,
        rewards: RewardBlocks | None = None,
        copies: int = 1,
    ) -> None:
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        self.blocks = blocks
        self.rewards = rewards  # each token's reward (unlikelihood / rwr / awr), as "rewards"
        self.distinct = len(blocks) if limit is None else min(limit, len(blocks))
        self.length = self.distinct * copies

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.length))]
        if not 0 <= i < self.length:
            raise IndexError(i)
        block = i % self.distinct
        if self.rewards is not None:
            return {"ids": self.blocks[block], "index": i, "rewards": self.rewards[block]}
        return {"ids": self.blocks[block], "index": i}


def token_count(path: Path) -> int:
    return int(json.loads(path.with_suffix(".json").read_text())["tokens"])


def token_counts(path: Path, vocab_size: int) -> np.ndarray:
    """How often each id occurs in a token file (read in chunks: the file may exceed memory)."""
    meta = json.loads(path.with_suffix(".json").read_text())
    counts = np.zeros(vocab_size, dtype=np.int64)
    if not meta["tokens"]:
        return counts
    tokens = np.memmap(path, dtype=meta["dtype"], mode="r")
    for start in range(0, len(tokens), 1 << 24):
        counts += np.bincount(tokens[start : start + (1 << 24)], minlength=vocab_size)[:vocab_size]
    return counts
