"""A stand-in for the part of vLLM's API that rlxf's vLLM engine uses, on a transformers model on the CPU.

The official vllm wheel needs a CUDA GPU, so CI runs the real engine code (``rlxf/rollout/vllm.py``) and
its server against this. It imitates vLLM (>= 0.10.2) where the engine relies on it:

* ``LLM(model=folder, dtype=..., logprobs_mode=..., enable_prefix_caching=..., max_model_len=..., ...)``
  with the GPU options accepted and ignored; an unknown keyword is a TypeError, as vLLM's engine
  arguments are strict. ``dtype="auto"`` keeps the checkpoint's dtype (vLLM would pick half precision).
* ``LLM.generate(prompts=[{"prompt_token_ids": [...]}, ...], sampling_params=one or one per prompt,
  use_tqdm=...)``: a ``RequestOutput`` per prompt, in order, whose ``outputs[0]`` has ``token_ids`` (the
  eos token and the token that completed a stop string included), ``logprobs`` (a ``{token: Logprob}``
  per position holding the sampled token, for ``logprobs=0``), ``finish_reason`` (``"stop"`` or
  ``"length"``), ``stop_reason`` (None for eos, else the stop token id or the stop string) and ``text``
  (special tokens skipped, cut before a stop string).
* Sampling: a request's seed seeds its own generator; temperature, then top-k (0 or -1 disables), then
  top-p, as vLLM's sampler applies them; ``temperature=0`` is the argmax. ``logprobs_mode``:
  ``"raw_logprobs"`` (vLLM's default, the model's own) or ``"processed_logprobs"`` (after that
  processing). Eos stops unless ``ignore_eos``; ``stop_token_ids`` stop always; a stop string stops when
  the decoded output contains it.
* A prefix cache (``enable_prefix_caching``): the first step of a prompt seen before reuses the logits
  computed then, until ``reset_prefix_cache()``. vLLM reuses the prompt's KV blocks instead; in both, a
  weight push without a reset leaves the engine sampling from stale state.
* ``LLM.apply_model(func) -> [func(model)]`` (one worker), where ``model`` names its parameters as vLLM's
  Llama does (q/k/v fused into ``qkv_proj``, gate/up into ``gate_up_proj``, listed in
  ``packed_modules_mapping``; a tied ``lm_head`` listed once, as ``model.embed_tokens.weight``) and whose
  ``load_weights(iterable of (name, tensor))`` follows vLLM's loader: Hugging Face names in, ``lm_head.*``
  skipped for a tied model (vLLM's ``skip_prefixes``), ``rotary_emb.inv_freq`` skipped, an unknown name
  an error, values copied (so cast) into the engine's parameters; it returns the engine names loaded.

Not as vLLM: tokens are drawn by inverse-CDF from uniforms of the request's generator, the way rlxf's
``HFEngine`` draws a row's tokens from its stream, so that the two engines' rows can be compared token for
token; vLLM draws by its own method, so on a GPU the two engines agree in distribution, not token for
token. Test hooks: ``LLM(drop_weights=[...])`` names keys the loader silently skips (the broken push the
engine's check must catch); ``llm.model.received`` lists the ``(name, dtype)`` of every tensor pushed;
``llm.init_kwargs`` the constructor's arguments.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlxf.rollout.hf import inverse_cdf_sample

PACKED_MODULES = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}


@dataclass
class SamplingParams:
    """The fields of ``vllm.SamplingParams`` the engine sets, checked as vLLM checks them."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int | None = 16
    stop: list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: int | None = None
    seed: int | None = None
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if self.n != 1:
            raise NotImplementedError("the stand-in samples one completion per request (rlxf sends n=1)")
        if self.temperature < 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < -1:
            raise ValueError(f"top_k must be 0 (disable), or at least 1, got {self.top_k}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}.")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError(f"logprobs must be non-negative, got {self.logprobs}.")
        self.stop = list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True


def _engine_name(name: str) -> str:
    fused = {part: whole for whole, parts in PACKED_MODULES.items() for part in parts}
    return ".".join(fused.get(p, p) for p in name.split("."))


class StandInModel:
    """What ``apply_model`` hands a function: a model with vLLM's parameter names and loader."""

    packed_modules_mapping = PACKED_MODULES

    def __init__(self, hf_model: Any, drop_weights: Iterable[str] = ()) -> None:
        self.hf = hf_model
        self.drop_weights = set(drop_weights)
        self.received: list[tuple[str, torch.dtype]] = []
        self._params = dict(hf_model.named_parameters())  # a tied lm_head appears once, as embed_tokens

    @torch.no_grad()
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        loaded = set()
        tied = bool(self.hf.config.tie_word_embeddings)
        for name, tensor in weights:
            self.received.append((name, tensor.dtype))
            if (tied and name.startswith("lm_head.")) or "rotary_emb.inv_freq" in name:
                continue  # vLLM: a tied lm_head is the embedding; inv_freq is computed, not loaded
            if name in self.drop_weights:
                continue
            param = self._params.get(name)
            if param is None:
                raise ValueError(
                    f"There is no module or parameter named {name!r} in {type(self.hf).__name__}"
                )
            if param.shape != tensor.shape:
                raise ValueError(f"{name}: shape {tuple(tensor.shape)} does not fit {tuple(param.shape)}")
            param.copy_(tensor)
            loaded.add(_engine_name(name))
        return loaded

    def named_parameters(self) -> Iterator[tuple[str, torch.Tensor]]:
        pieces: dict[str, dict[str, torch.Tensor]] = {}
        for name, param in self._params.items():
            whole = _engine_name(name)
            if whole == name:
                yield name, param.detach()
            else:
                pieces.setdefault(whole, {})[name] = param.detach()
        for whole, parts in pieces.items():  # fused along the output dimension, in packed_modules order
            order = [p for group in PACKED_MODULES.values() for p in group]
            ranked = sorted(parts, key=lambda n: next(order.index(p) for p in n.split(".") if p in order))
            yield whole, torch.cat([parts[n] for n in ranked], dim=0)

    def parameters(self) -> Iterator[torch.Tensor]:
        for _, param in self.named_parameters():
            yield param


class LLM:
    """``vllm.LLM`` as far as rlxf uses it (module docstring)."""

    def __init__(
        self,
        model: str,
        *,
        tokenizer: str | None = None,
        dtype: str = "auto",
        logprobs_mode: str = "raw_logprobs",
        enable_prefix_caching: bool = True,
        max_model_len: int | None = None,
        seed: int = 0,
        gpu_memory_utilization: float = 0.9,
        tensor_parallel_size: int = 1,
        enforce_eager: bool = False,
        drop_weights: Iterable[str] = (),
    ) -> None:
        if logprobs_mode not in ("raw_logprobs", "processed_logprobs"):
            raise NotImplementedError(f"the stand-in has no logprobs_mode {logprobs_mode!r}")
        if tensor_parallel_size != 1:
            raise NotImplementedError("the stand-in runs one worker")
        if not 0.0 < gpu_memory_utilization <= 1.0:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
        self.init_kwargs = dict(
            model=model,
            dtype=dtype,
            logprobs_mode=logprobs_mode,
            enable_prefix_caching=enable_prefix_caching,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=enforce_eager,
        )
        hf = AutoModelForCausalLM.from_pretrained(
            model, dtype="auto" if dtype == "auto" else getattr(torch, dtype)
        )
        self.model = StandInModel(hf.eval(), drop_weights)
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer or model)
        self.logprobs_mode = logprobs_mode
        self.enable_prefix_caching = enable_prefix_caching
        self.max_model_len = max_model_len or hf.config.max_position_embeddings
        self._prefix_cache: dict[tuple[int, ...], torch.Tensor] = {}  # prompt -> its last position's logits
        self._generator = torch.Generator().manual_seed(seed)  # requests without a seed share the engine's

    def apply_model(self, func: Any) -> list[Any]:
        return [func(self.model)]

    def reset_prefix_cache(self) -> bool:
        self._prefix_cache.clear()
        return True

    @torch.no_grad()
    def generate(
        self, prompts: Any, sampling_params: Any = None, *, use_tqdm: bool = True
    ) -> list[RequestOutput]:
        prompts = [prompts] if isinstance(prompts, dict) else list(prompts)
        if isinstance(sampling_params, list):
            params = sampling_params
        else:
            params = [sampling_params or SamplingParams()] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        for prompt in prompts:
            if not isinstance(prompt, dict) or "prompt_token_ids" not in prompt:
                raise TypeError("the stand-in takes token-id prompts: {'prompt_token_ids': [...]}")
        return [
            self._request(str(i), [int(t) for t in p["prompt_token_ids"]], sp)
            for i, (p, sp) in enumerate(zip(prompts, params))
        ]

    def _logits(self, ids: list[int]) -> torch.Tensor:
        return self.model.hf(torch.tensor([ids])).logits[0, -1].float()  # [vocab]

    def _next_logits(self, prompt: list[int], generated: list[int]) -> torch.Tensor:
        if generated or not self.enable_prefix_caching:
            return self._logits(prompt + generated)
        key = tuple(prompt)
        if key not in self._prefix_cache:
            self._prefix_cache[key] = self._logits(prompt)
        return self._prefix_cache[key]

    def _request(self, request_id: str, prompt: list[int], params: SamplingParams) -> RequestOutput:
        if len(prompt) >= self.max_model_len:
            raise ValueError(
                f"The decoder prompt (length {len(prompt)}) is longer than the maximum model length of "
                f"{self.max_model_len}."
            )
        max_tokens = params.max_tokens or self.max_model_len - len(prompt)
        generator = self._generator if params.seed is None else torch.Generator().manual_seed(params.seed)
        uniforms = torch.rand(max_tokens, generator=generator)  # [max_tokens] one draw per step
        eos = self.tokenizer.eos_token_id
        ids: list[int] = []
        logprobs: list[dict[int, Logprob]] = []
        finish, stop_reason, text = "length", None, ""
        for step in range(max_tokens):
            if len(prompt) + len(ids) >= self.max_model_len:
                break
            logits = self._next_logits(prompt, ids)  # [vocab]
            raw = torch.log_softmax(logits, dim=-1)
            if len(ids) < params.min_tokens:  # vLLM masks eos and the stop token ids before any warper
                banned = ([] if params.ignore_eos else [eos]) + list(params.stop_token_ids or [])
                logits = logits.clone()
                logits[banned] = float("-inf")
                if params.temperature == 0.0:
                    raw = torch.log_softmax(logits, dim=-1)  # the greedy path reports what it chose from
            if params.temperature == 0.0:
                processed = raw
                token = int(raw.argmax())
            else:
                processed = torch.log_softmax(_process(logits, params), dim=-1)
                token = int(inverse_cdf_sample(processed[None], uniforms[step : step + 1])[0])
            reported = processed if self.logprobs_mode == "processed_logprobs" else raw
            ids.append(token)
            if params.logprobs is not None:
                rank = int((reported > reported[token]).sum()) + 1
                logprobs.append(
                    {token: Logprob(float(reported[token]), rank, self.tokenizer.decode([token]))}
                )
            text = self.tokenizer.decode(ids, skip_special_tokens=params.skip_special_tokens)
            if not params.ignore_eos and token == eos:
                finish = "stop"
                break
            if token in params.stop_token_ids:
                finish, stop_reason = "stop", token
                break
            hits = [(text.find(s), s) for s in params.stop if s in text]
            if hits:
                position, stop_reason = min(hits)
                finish, text = "stop", text[:position]
                break
        cumulative = sum(step[token].logprob for step, token in zip(logprobs, ids)) if logprobs else None
        output = CompletionOutput(
            index=0,
            text=text,
            token_ids=ids,
            cumulative_logprob=cumulative,
            logprobs=logprobs if params.logprobs is not None else None,
            finish_reason=finish,
            stop_reason=stop_reason,
        )
        return RequestOutput(request_id=request_id, prompt_token_ids=prompt, outputs=[output])


def _process(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Temperature, then top-k, then top-p, as vLLM's sampler applies them: ``[vocab]`` -> ``[vocab]``."""
    logits = logits / params.temperature
    if params.top_k > 0:
        kth = logits.topk(min(params.top_k, logits.shape[-1])).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        ascending, order = logits.sort()
        cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= 1.0 - params.top_p
        drop[-1] = False  # the most likely token always stays
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    return logits


def as_vllm_module() -> types.ModuleType:
    """A module to put at ``sys.modules["vllm"]``: ``import vllm`` then finds the stand-in."""
    module = types.ModuleType("vllm")
    module.LLM = LLM
    module.SamplingParams = SamplingParams
    return module


__all__ = ["LLM", "Logprob", "RequestOutput", "SamplingParams", "StandInModel", "as_vllm_module"]
