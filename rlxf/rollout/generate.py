"""``rlxf generate``: sample completions for prompts from a file or the command line.

Prompts from a file are read and validated by :mod:`rlxf.data` (a bad record stops the command before the
model loads, naming file, line and field); each is rendered with the chat template when it is a list of
messages and continued raw when it is a plain string (see :mod:`rlxf.data.chat`). The model folder of an
``rlxf ilql`` run decodes with its heads' advantage (``ilql_beta``, ``ilql_top_k``;
:mod:`rlxf.rollout.ilql_decoding`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rlxf.config import option
from rlxf.data import check_prompt_lengths, read_data
from rlxf.data.chat import ChatTemplateMode, render_prompt
from rlxf.models import ModelConfig, load_model
from rlxf.models.registry import resolve_model
from rlxf.rollout.engine import RolloutBatch, SamplingConfig
from rlxf.rollout.hf import HFEngine
from rlxf.rollout.ilql_decoding import ilql_decoding
from rlxf.train.atomic import write_jsonl_atomic


@dataclass
class GenerateConfig:
    """Options of ``rlxf generate``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompts: str | None = option(
        None, help="file of prompt records (JSONL, CSV, Parquet or a datasets folder)"
    )
    prompt: list[str] = option(default_factory=list, help="prompt text given directly (repeat for several)")
    chat_template: ChatTemplateMode = option(
        "auto", help="auto: messages use the chat template, plain prompts are continued raw; always; never"
    )
    seed: int | None = option(None, help="random seed; the same seed gives the same completions")
    out: str | None = option(None, help="write the completions to this JSONL file instead of printing them")
    ilql_beta: float | None = option(
        None,
        help="an rlxf ilql model: decode with pi_LM * exp(beta * advantage) (0: the LM alone); unset: the "
        "beta its ilql.json names",
    )
    ilql_top_k: int | None = option(
        None,
        help="an rlxf ilql model: the LM's top-k tokens the advantage re-ranks (0: all); unset: ilql.json's",
    )

    def __post_init__(self) -> None:
        if not self.prompts and not self.prompt:
            raise ValueError("give prompts: --prompts FILE or --prompt TEXT")
        if self.prompts and self.prompt:
            raise ValueError("give either --prompts FILE or --prompt TEXT, not both")
        if self.out and Path(self.out).suffix != ".jsonl":
            raise ValueError(f"out must be a .jsonl file, got {self.out}")


@dataclass
class GeneratedSample:
    """One completion, as written to the output JSONL (``prompt`` + ``completion`` is the SFT format)."""

    prompt: Any  # the prompt as given: a string or a list of messages
    completion: str
    finish_reason: str
    prompt_index: int
    sample_index: int
    num_tokens: int
    logprob: float  # sum of the completion's token log-probs under the sampling distribution


def generate(cfg: GenerateConfig) -> list[GeneratedSample]:
    """Load the model, sample ``cfg.sampling.n`` completions per prompt, write them if ``cfg.out`` is set."""
    if cfg.prompts:
        records = read_data(cfg.prompts, kind="prompts")  # validated before the model loads
    else:
        records = None
    steering = ilql_decoding(resolve_model(cfg.model.name_or_path), cfg.ilql_beta, cfg.ilql_top_k)
    model, tokenizer = load_model(cfg.model)
    if steering is not None:
        steering.attach(model)
    if records is not None:
        max_context = getattr(model.config, "max_position_embeddings", None)
        if max_context is not None:
            check_prompt_lengths(
                records,
                tokenizer,
                max_context - cfg.sampling.max_new_tokens,
                cfg.chat_template,
                why=f"the model's context ({max_context}) minus max_new_tokens ({cfg.sampling.max_new_tokens})",
            )
        raw_prompts = [r.get("messages", r.get("prompt")) for r in records.records]
        texts = [render_prompt(r, tokenizer, cfg.chat_template) for r in records.records]
    else:
        raw_prompts = list(cfg.prompt)
        texts = [render_prompt({"prompt": p}, tokenizer, cfg.chat_template) for p in cfg.prompt]

    batch = HFEngine(model, tokenizer).generate(texts, cfg.sampling, seed=cfg.seed, progress=True)
    samples = to_samples(batch, raw_prompts, cfg.sampling.n)
    if cfg.out:
        write_jsonl_atomic(cfg.out, [s.__dict__ for s in samples])
    return samples


def to_samples(batch: RolloutBatch, raw_prompts: list[Any], n: int) -> list[GeneratedSample]:
    lengths = batch.completion_mask.sum(dim=1).tolist()
    sums = batch.logprobs.sum(dim=1).tolist()
    return [
        GeneratedSample(
            prompt=raw_prompts[int(batch.prompt_index[i])],
            completion=batch.completions[i],
            finish_reason=batch.finish_reasons[i],
            prompt_index=int(batch.prompt_index[i]),
            sample_index=i % n,
            num_tokens=int(lengths[i]),
            logprob=round(float(sums[i]), 6),
        )
        for i in range(len(batch))
    ]
