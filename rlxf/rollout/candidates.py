"""``rlxf sample``: responses to be judged, in the candidates format the feedback stages read.

The first stage of the feedback loop: the policy samples ``n`` completions per prompt, and every ``group``
consecutive completions of a prompt become one candidates record ``{"prompt", "responses": [...], "id"}``
(``group: 2`` gives the pairs that ``rlxf simulate``, ``rlxf judge`` and a pairwise labelling project
compare; a larger group suits ranking). ``n`` must be a multiple of ``group``. A group with an empty (or
whitespace-only) response, or with two equal responses, is left out and counted (``dropped``).

Contrastive sampling (``framings``; RLCD, Yang et al. 2023, "RLCD: Reinforcement Learning from Contrastive
Distillation for Language Model Alignment"): response ``k`` of each group is drawn after the hidden text
``framings[k % len(framings)]`` placed before the prompt (say a positive and a negative framing), while the
record holds the bare prompt: the pairs then differ clearly on the axis the feedback judges, and the
judge (a person, an AI or a simulated annotator) still sees only prompt and responses. The framing index
is kept in ``meta``. Raw-text prompts only.

Writes ``config.yaml``, ``candidates.jsonl`` and then ``summary.json`` (counts, tokens, seconds; its
presence marks the stage finished) into ``--out`` (:mod:`rlxf.train.outdir`), logs one line and returns a
:class:`~rlxf.train.outdir.CommandResult`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import torch

from rlxf.config import option
from rlxf.data import ChatTemplateMode, check_prompt_lengths, read_prompts, render_prompt
from rlxf.models import ModelConfig, load_model
from rlxf.models.load import resolve_device
from rlxf.models.precision import Precision, autocast, resolve_precision
from rlxf.rollout.engine import SamplingConfig
from rlxf.rollout.hf import HFEngine
from rlxf.train.outdir import CommandResult, claim_output_folder, numeric, write_output_folder
from rlxf.train.run import render_config

logger = logging.getLogger(__name__)

OUTPUT_FILES = ("config.yaml", "candidates.jsonl", "summary.json")


def _default_sampling() -> SamplingConfig:
    return SamplingConfig(n=2, max_new_tokens=48, batch_size=32)


@dataclass
class SampleConfig:
    """Options of ``rlxf sample``."""

    model: ModelConfig = field(default_factory=ModelConfig)
    prompts: str = option("", help="prompts file (JSONL, CSV, Parquet or a datasets folder)")
    prompts_split: str | None = option(None, help="use only prompt records whose `split` equals this")
    max_prompts: int | None = option(None, help="sample for the first N prompts only")
    chat_template: ChatTemplateMode = option(
        "auto", help="auto: messages use the chat template, plain prompts are continued raw; always; never"
    )
    sampling: SamplingConfig = field(default_factory=_default_sampling)
    group: int = option(2, help="responses per candidates record (2: pairs); sampling.n must be a multiple")
    framings: list[str] = option(
        default_factory=list,
        help="hidden texts put before the prompt: response k of a group is drawn after framings[k % len] "
        "(contrastive sampling); the record holds the bare prompt",
    )
    precision: Precision = option("auto", help="auto (bf16-mixed where native), fp32 or bf16-mixed")
    seed: int = option(0, help="sampling seed")
    out: str = option("", help="output folder: candidates.jsonl, summary.json, config.yaml")
    overwrite: bool = option(False, help="replace the samples already in --out")

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError("give the prompts: --prompts FILE")
        if not self.out:
            raise ValueError("give an output folder: --out DIR")
        if self.group < 1:
            raise ValueError(f"group must be >= 1, got {self.group}")
        if self.sampling.n % self.group:
            raise ValueError(f"sampling.n ({self.sampling.n}) must be a multiple of group ({self.group})")
        if self.max_prompts is not None and self.max_prompts < 1:
            raise ValueError(f"max_prompts must be >= 1, got {self.max_prompts}")
        if self.precision == "bf16":
            raise ValueError("precision bf16 (pure bf16 weights) is for training; use bf16-mixed or fp32")


def sample_candidates(cfg: SampleConfig) -> CommandResult:
    """Run ``rlxf sample`` (module docstring); returns the folder and the summary it wrote."""
    started = time.monotonic()
    logger.info("%s", render_config(cfg, "rlxf sample"))
    records = read_prompts(cfg.prompts, cfg.prompts_split, cfg.max_prompts)  # checked before any model loads

    if cfg.framings:
        for i, record in enumerate(records.records):
            if not isinstance(record.get("prompt"), str):
                raise records.error(i, "framings need plain-text prompts (put before the text)", "prompt")
    out = claim_output_folder(cfg.out, OUTPUT_FILES, overwrite=cfg.overwrite, command="rlxf sample")

    precision = resolve_precision(cfg.precision, resolve_device(cfg.model.device))
    # fp32 weights, under bf16 autocast for bf16-mixed: as the trainers run.
    model, tokenizer = load_model(dataclasses.replace(cfg.model, dtype="float32"))
    device = next(model.parameters()).device
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None:
        limit = context - cfg.sampling.max_new_tokens
        why = f"the model's context ({context}) minus max_new_tokens ({cfg.sampling.max_new_tokens})"
        check_prompt_lengths(records, tokenizer, limit, cfg.chat_template, why=why)
    texts = [render_prompt(r, tokenizer, cfg.chat_template) for r in records.records]
    n, group = cfg.sampling.n, cfg.group
    sampling, rows_in = cfg.sampling, texts
    framing_of = [0] * n
    if cfg.framings:
        # One generation row per response, prompt-major, each after its own framing: row i*n + j.
        framing_of = [(j % group) % len(cfg.framings) for j in range(n)]
        rows_in = [cfg.framings[framing_of[j]] + text for text in texts for j in range(n)]
        sampling = dataclasses.replace(cfg.sampling, n=1)
    with torch.no_grad(), autocast(precision, device):
        batch = HFEngine(model, tokenizer).generate(rows_in, sampling, seed=cfg.seed, progress=True)

    rows = []
    dropped = 0
    for i, record in enumerate(records.records):
        prompt = record.get("messages", record.get("prompt"))
        for g in range(n // group):
            first = i * n + g * group
            responses = list(batch.completions[first : first + group])
            if any(not text.strip() for text in responses) or len(set(responses)) < len(responses):
                # Only whitespace (EOS first) gives a judge nothing to read; two equal responses nothing to
                # choose between.
                dropped += 1
                continue
            rows.append(
                {
                    "id": f"{i}-{g}",
                    "prompt": prompt,
                    "responses": list(batch.completions[first : first + group]),
                    "meta": {
                        "finish_reasons": list(batch.finish_reasons[first : first + group]),
                        **({"framings": framing_of[g * group : (g + 1) * group]} if cfg.framings else {}),
                    },
                }
            )
    tokens = int(batch.completion_mask.sum())
    summary = {
        "model": cfg.model.name_or_path,
        "prompts": len(texts),
        "records": len(rows),
        "dropped": dropped,
        "completions": len(batch),
        "completion_tokens": tokens,
        "truncated": sum(r == "length" for r in batch.finish_reasons) / len(batch),
        "precision": precision,
        "wall_time_s": round(time.monotonic() - started, 3),
    }
    write_output_folder(out, cfg, summary, {"candidates.jsonl": rows})
    logger.info("%d candidates records (%d completions, %d tokens) in %s", len(rows), len(batch), tokens, out)
    return CommandResult(out=out, summary=summary, metrics=numeric(summary))


__all__ = ["SampleConfig", "sample_candidates"]
