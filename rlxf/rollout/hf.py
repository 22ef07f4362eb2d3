"""Generation with ``transformers``' ``generate``: KV cache, left padding, per-token log-probs.

rlxf draws each token itself, inside ``generate``, with one logits processor placed after the temperature,
top-k and top-p warpers (which rlxf passes in transformers' order; transformers would run its own after
any custom processor). At every step :class:`SampleAndRecord`

1. takes ``log p = log_softmax(warped scores)``: exactly the distribution the token is drawn from;
2. draws the token by inverse-CDF sampling, ``token = min{i : cumsum(p)_i > u}``, ``u ~ U[0, sum p)``
   (one uniform per row; ``torch.multinomial`` on a ``[16, 49152]`` CPU tensor costs ~12 ms a step, about
   a fifth of SmolLM2's step time, this ~0.5 ms), or the argmax when decoding greedily;
   each row's uniforms come from its own random stream, seeded by ``(seed, row)`` where ``row`` counts
   the rows (prompts x samples) from ``row_offset``: a row samples the same tokens whatever else is in its
   batch (``batch_size``, early stops of other rows) and on whichever process generates it, so a
   process that generates a shard of a step's rows (data-parallel RL) samples what one process would;
3. records ``log p(token)`` and hands ``generate`` scores that are ``-inf`` everywhere but the drawn token,
   so transformers' greedy step (``do_sample=False``) selects it.

So the log-probs come at no extra forward pass and no ``output_scores`` tuple of ``[steps, batch, vocab]``
logits is held. With ``temperature: 0`` no warper runs and the recorded log-probs are the model's own
(temperature 1) log-probs of the chosen tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    MinNewTokensLengthLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from rlxf.data.tokenize import encode_prompt
from rlxf.rollout.engine import FinishReason, GenerationEngine, RolloutBatch, SamplingConfig, pad_to_width
from rlxf.train.progress import Progress


def inverse_cdf_sample(logprobs: torch.Tensor, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of ``logprobs`` ``[batch, vocab]``, drawn from ``softmax(logprobs)``: ``[batch]``.

    ``u ~ U[0, total)`` per row, token = first index whose cumulative probability exceeds ``u``; tokens of
    probability 0 (masked by top-k / top-p) can never be chosen, since their cumulative sum equals the
    previous one. ``uniforms`` ``[batch]`` in ``[0, 1)`` are the draws; unset, they come from the global
    torch generator (``torch.manual_seed`` makes it reproducible).
    """
    cumulative = logprobs.exp().cumsum(dim=-1)  # [batch, vocab]
    if uniforms is None:
        uniforms = torch.rand(logprobs.shape[0], device=logprobs.device)
    u = uniforms.to(cumulative.device, cumulative.dtype)[:, None] * cumulative[:, -1:]  # [batch, 1]
    token = torch.searchsorted(cumulative, u, right=True).squeeze(1)
    return token.clamp_(max=logprobs.shape[-1] - 1)


# An odd 64-bit constant (2^64 / golden ratio): seeds of neighbouring (seed, row) pairs land far apart.
_SEED_MIX = 0x9E3779B97F4A7C15


def row_uniforms(seed: int, rows: Sequence[int], steps: int) -> torch.Tensor:
    """``[len(rows), steps]`` uniforms in ``[0, 1)``: row ``r``'s come from a generator seeded by
    ``(seed, r)`` alone, so they do not depend on which other rows are generated beside it."""
    out = torch.empty(len(rows), steps)
    for i, row in enumerate(rows):
        generator = torch.Generator().manual_seed((seed * _SEED_MIX + row) % 2**63)
        out[i] = torch.rand(steps, generator=generator)
    return out


class SampleAndRecord(LogitsProcessor):
    """Draws each token (or takes the argmax) and records its log-prob under the processed scores.

    ``uniforms`` ``[batch, max_new_tokens]``: the draw of each row at each generated position."""

    def __init__(self, greedy: bool, uniforms: torch.Tensor | None = None) -> None:
        self.greedy = greedy
        self.uniforms = uniforms
        self.recorded: list[torch.Tensor] = []  # one [batch] tensor of log-probs per generated token

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logprobs = torch.log_softmax(scores.float(), dim=-1)  # [batch, vocab]
        if self.greedy:
            token = logprobs.argmax(dim=-1)  # [batch]
        else:
            draws = None if self.uniforms is None else self.uniforms[:, len(self.recorded)]  # [batch]
            token = inverse_cdf_sample(logprobs, draws)  # [batch]
        self.recorded.append(logprobs.gather(1, token[:, None]).squeeze(1))
        chosen = torch.full_like(scores, float("-inf"))
        return chosen.scatter_(1, token[:, None], 0.0)  # generate's argmax now picks `token`

    def logprobs(self) -> torch.Tensor:
        """``[batch, steps]``: the log-prob of every generated token."""
        return torch.stack(self.recorded, dim=1)


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


class HFEngine(GenerationEngine):
    """Generation engine on a ``transformers`` causal LM (CPU or GPU), sharing the module with training."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        eos = model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if tokenizer.eos_token_id is not None:
            eos_ids.add(tokenizer.eos_token_id)
        if not eos_ids:
            raise ValueError("the model and tokenizer define no end-of-sequence token")
        self.eos_token_ids = sorted(eos_ids)
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        )
        self.max_context = getattr(model.config, "max_position_embeddings", None)

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model  # same process, same module: nothing to copy

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a rendered prompt, by the same rule the data layer tokenises prompts with."""
        return encode_prompt(self.tokenizer, text)

    def _generation_config(self, sampling: SamplingConfig) -> GenerationConfig:
        # Temperature / top-k / top-p are NOT set here: transformers would run them after any custom
        # processor, and SampleAndRecord must see the final scores. `_logits_processors` runs them.
        # do_sample=False: SampleAndRecord draws the token, generate's greedy step only reads it off.
        return GenerationConfig(
            max_new_tokens=sampling.max_new_tokens,
            do_sample=False,  # so transformers adds no sampling warper of its own (e.g. its top_k=50)
            eos_token_id=None if sampling.ignore_eos else self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            stop_strings=list(sampling.stop) or None,
            use_cache=True,
        )

    def _logits_processors(
        self, sampling: SamplingConfig, sampler: SampleAndRecord, prompt_ids: torch.Tensor
    ) -> LogitsProcessorList:
        """End-of-sequence masked before ``min_new_tokens`` (as vLLM's min_tokens, before any warper), the
        sampling warpers in transformers' order (temperature, top-k, top-p), then the sampler."""
        processors = LogitsProcessorList()
        if sampling.min_new_tokens and not sampling.ignore_eos:
            processors.append(
                MinNewTokensLengthLogitsProcessor(
                    prompt_ids.shape[1], sampling.min_new_tokens, self.eos_token_ids, device=prompt_ids.device
                )
            )
        if not sampling.greedy:
            if sampling.temperature != 1.0:
                processors.append(TemperatureLogitsWarper(sampling.temperature))
            if sampling.top_k > 0:
                processors.append(TopKLogitsWarper(top_k=sampling.top_k))
            if sampling.top_p < 1.0:
                processors.append(TopPLogitsWarper(top_p=sampling.top_p))
        processors.append(sampler)
        return processors

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        sampling: SamplingConfig,
        seed: int | None = None,
        progress: bool = False,
        row_offset: int = 0,
    ) -> RolloutBatch:
        """See :meth:`GenerationEngine.generate`; ``progress`` shows a bar (or log lines) over batches."""
        if not prompts:
            raise ValueError("no prompts to generate from")
        rows = [p for p in prompts for _ in range(sampling.n)]
        prompt_index = torch.arange(len(prompts)).repeat_interleave(sampling.n)
        encoded = [self.encode_prompt(text) for text in rows]
        if self.max_context is not None:
            for i, ids in enumerate(encoded):
                if len(ids) + sampling.max_new_tokens > self.max_context:
                    raise ValueError(
                        f"prompt {int(prompt_index[i])} has {len(ids)} tokens; with max_new_tokens="
                        f"{sampling.max_new_tokens} it exceeds the model's context of {self.max_context}"
                    )
        batch = self.generate_ids(
            encoded,
            dataclasses.replace(sampling, n=1),
            seed=seed,
            rows=range(row_offset, row_offset + len(rows)),
            progress=progress,
        )
        return dataclasses.replace(
            batch, prompts=rows, prompt_index=prompt_index.to(batch.prompt_index.device)
        )

    @torch.no_grad()
    def generate_ids(
        self,
        contexts: Sequence[list[int]],
        sampling: SamplingConfig,
        seed: int | None = None,
        rows: Sequence[int] | None = None,
        progress: bool = False,
        texts: Sequence[str] | None = None,
    ) -> RolloutBatch:
        """One completion of each token-id context (``sampling.n`` is not applied): what multi-turn rollouts
        need, whose contexts hold the policy's own earlier tokens (never re-tokenised).

        ``rows`` numbers each context's random stream (default ``0..len-1``): a row samples the same
        tokens whatever else is generated beside it. ``prompts`` of the result is ``texts`` (the contexts' text,
        when the caller has it) or each context decoded."""
        if not contexts:
            raise ValueError("no contexts to generate from")
        rows = list(range(len(contexts))) if rows is None else list(rows)
        if len(rows) != len(contexts):
            raise ValueError(f"{len(contexts)} contexts but {len(rows)} row numbers")
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        chunks: list[dict[str, Any]] = []
        try:
            # fork_rng: seeding here must not disturb the caller's random stream (e.g. a trainer's).
            if seed is None:  # a fresh base seed from the global generator (torch.manual_seed fixes it);
                seed = int(torch.randint(0, 2**62, ()))  # drawn outside fork_rng, so calls differ
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                bar = Progress(len(contexts), "generate", unit="sequence", mode="auto" if progress else "off")
                for start in range(0, len(contexts), sampling.batch_size):
                    stop = min(start + sampling.batch_size, len(contexts))
                    uniforms = row_uniforms(seed, rows[start:stop], sampling.max_new_tokens)
                    chunks.append(
                        self._generate_chunk(list(contexts[start:stop]), sampling, device, uniforms)
                    )
                    bar.update(stop - start)
                bar.close()
        finally:
            self.model.train(was_training)

        prompt_width = max(c["prompt_ids"].shape[1] for c in chunks)
        completion_width = max(c["completion_ids"].shape[1] for c in chunks)
        cat = lambda name, width, value, left: torch.cat(  # noqa: E731
            [pad_to_width(c[name], width, value, left) for c in chunks], dim=0
        )
        return RolloutBatch(
            prompt_ids=cat("prompt_ids", prompt_width, self.pad_token_id, True),
            prompt_mask=cat("prompt_mask", prompt_width, 0, True),
            completion_ids=cat("completion_ids", completion_width, self.pad_token_id, False),
            completion_mask=cat("completion_mask", completion_width, 0, False),
            logprobs=cat("logprobs", completion_width, 0.0, False),
            prompts=list(texts) if texts is not None else [self.tokenizer.decode(ids) for ids in contexts],
            completions=[text for c in chunks for text in c["completions"]],
            finish_reasons=[reason for c in chunks for reason in c["finish_reasons"]],
            prompt_index=torch.arange(len(contexts), device=device),
        )

    def _generate_chunk(
        self, encoded: list[list[int]], sampling: SamplingConfig, device: torch.device, uniforms: torch.Tensor
    ) -> dict:
        prompt_ids, prompt_mask = _left_pad(encoded, self.pad_token_id)  # [b, P]
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
        sampler = SampleAndRecord(greedy=sampling.greedy, uniforms=uniforms.to(device))  # uniforms: [b, T]
        sequences = self.model.generate(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            generation_config=self._generation_config(sampling),
            logits_processor=self._logits_processors(sampling, sampler, prompt_ids),
            tokenizer=self.tokenizer if sampling.stop else None,  # StopStringCriteria needs it
        )
        completion_ids = sequences[:, prompt_ids.shape[1] :]  # [b, C]
        logprobs = sampler.logprobs()  # [b, C]
        lengths, reasons, texts = self._finish(completion_ids, sampling.stop, sampling.ignore_eos)
        positions = torch.arange(completion_ids.shape[1], device=device)
        completion_mask = (positions[None, :] < lengths[:, None].to(device)).long()  # [b, C]
        logprobs = torch.where(completion_mask.bool(), logprobs, torch.zeros_like(logprobs))
        completion_ids = torch.where(completion_mask.bool(), completion_ids, self.pad_token_id)
        return {
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            "completion_ids": completion_ids,
            "completion_mask": completion_mask,
            "logprobs": logprobs,
            "completions": texts,
            "finish_reasons": reasons,
        }

    def _finish(
        self, completion_ids: torch.Tensor, stop_strings: list[str], ignore_eos: bool = False
    ) -> tuple[torch.Tensor, list[FinishReason], list[str]]:
        """Per row: kept length (tokens up to and including eos / the stop token), finish reason, text."""
        ids = completion_ids.cpu()
        width = ids.shape[1]
        is_eos = torch.isin(ids, torch.tensor([] if ignore_eos else self.eos_token_ids, dtype=torch.long))
        has_eos = is_eos.any(dim=1)
        first_eos = torch.where(
            has_eos, is_eos.int().argmax(dim=1), torch.full_like(has_eos, width, dtype=torch.long)
        )
        lengths: list[int] = []
        reasons: list[FinishReason] = []
        texts: list[str] = []
        decode = lambda row, k: self.tokenizer.decode(row[:k], skip_special_tokens=True)  # noqa: E731
        for i in range(ids.shape[0]):
            row = ids[i].tolist()
            before_eos = int(first_eos[i])
            text = decode(row, before_eos)
            hits = [text.find(s) for s in stop_strings if s in text]
            if hits:
                # The shortest prefix whose text contains a stop string ends with the token that completed it.
                lo, hi = 1, before_eos
                while lo < hi:
                    mid = (lo + hi) // 2
                    if any(s in decode(row, mid) for s in stop_strings):
                        hi = mid
                    else:
                        lo = mid + 1
                lengths.append(lo)
                reasons.append("stop")
                texts.append(text[: min(hits)])
            elif bool(has_eos[i]):
                lengths.append(before_eos + 1)  # the eos token is an action the policy took: keep it
                reasons.append("eos")
                texts.append(text)
            else:
                lengths.append(width)
                reasons.append("length")
                texts.append(text)
        return torch.tensor(lengths, dtype=torch.long), reasons, texts
