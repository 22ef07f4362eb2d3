"""Generation with vLLM: the :class:`RolloutBatch` of the transformers engine, from a vLLM engine.

What this module implements:

* :class:`VLLMConfig`, the ``vllm:`` options: ``mode: colocate`` runs a ``vllm.LLM`` inside the training
  process, on its GPU, taking ``gpu_memory_utilization`` of that GPU's memory for its weights and KV cache
  (TRL's colocate mode); ``mode: server`` talks to a separate process started with
  ``python -m rlxf.rollout.vllm_server --model DIR --port N`` (:mod:`rlxf.rollout.vllm_server`).
* :class:`VLLMEngine`, a :class:`~rlxf.rollout.engine.GenerationEngine` with the contract of
  :class:`~rlxf.rollout.hf.HFEngine`:

  - **one vLLM request per row** (prompt x sample), each with its own seed, derived from ``(seed, row)``
    by the rule :func:`rlxf.rollout.hf.row_uniforms` seeds a row's stream with, where ``row`` counts the
    rows from ``row_offset``: a process that generates a shard of a batch samples what generating the
    whole batch gives those rows. The ``n`` copies of a prompt share its KV cache through vLLM's prefix
    caching, so n separate requests cost what one request with ``n`` samples would;
  - **log-probs** are vLLM's *processed* log-probs (``logprobs_mode="processed_logprobs"``, vLLM >=
    0.10.2; ``SamplingParams(logprobs=0)`` returns the sampled token's): the log-probs after
    temperature, top-k and top-p, the distribution each token was drawn from, as ``HFEngine`` records;
  - rows are cut and decoded by ``HFEngine``'s own rule (kept tokens up to and including eos or the token
    that completed a stop string; text with special tokens removed, cut before a stop string); the
    finish reason is vLLM's, mapped: ``length`` -> ``length``, ``stop`` on a stop string -> ``stop``,
    ``stop`` on eos or a stop token -> ``eos``.

* :meth:`VLLMEngine.sync_weights`, after every update: **every key of the policy's state dict** is cast
  to the engine's dtype and handed to vLLM's own ``model.load_weights`` (which fuses q/k/v and gate/up,
  shards for tensor parallelism and skips ``lm_head.*`` for a tied model, whose output layer *is*
  ``embed_tokens``). Tied weights are pushed under both of their names; the check counts a tied group
  once, under the name the engine keeps. A peft LoRA policy is pushed merged: each adapted weight is
  ``base + B @ A * scale`` computed on the fly, one layer at a time, under the base model's names; the
  training model is never modified (no merge / unmerge round trip). Then the push is **checked**: the
  engine reads back ``(sum, sum of squares, sum of |x|)`` in float64 of every parameter and each must
  equal that of the pushed tensors that fill it (additive over fused pieces and tensor-parallel shards,
  blind to vLLM's zero vocabulary padding); a difference is a ``RuntimeError`` naming the parameters.
  Afterwards vLLM's prefix cache is reset: its KV was computed with the old weights.

What it leaves out: weight transfer over NCCL or CUDA IPC (server mode sends safetensors bytes over HTTP,
fine on one node, slow for large models across nodes); tensor parallelism in colocate mode (one engine per
training GPU; use server mode to shard a model); pipeline parallelism, quantised engines, vLLM's sleep
mode and vLLM-side LoRA adapters (rlxf merges them); LoRA variants such as DoRA and ``lora_bias`` (refused
with an error); models whose vLLM parameter names differ from the Hugging Face names by more than fused
modules (the check names the parameter it cannot find).

vLLM is an optional extra (``pip install 'rlxf[vllm]'``, CUDA only), imported only when an engine is built.
CI has no GPU: this module is tested against the stand-in in ``tests/vllm_standin.py``, which implements
the part of vLLM's API used here (``docs/vllm.md`` says what was tested where).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from rlxf.config import option
from rlxf.data.tokenize import encode_prompt
from rlxf.rollout.engine import FinishReason, GenerationEngine, RolloutBatch, SamplingConfig
from rlxf.rollout.hf import _SEED_MIX, HFEngine, _left_pad
from rlxf.rollout.weights import policy_weights, tied_names

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'rlxf[vllm]'"

Fingerprint = list[float]
"""``[sum, sum of squares, sum of |x|]`` of a tensor's values, in float64."""


@dataclass
class VLLMConfig:
    """The vLLM rollout engine: where the engine runs and how much of the GPU it takes."""

    mode: Literal["colocate", "server"] = option(
        "colocate",
        help="colocate: a vLLM engine inside each training process, on its GPU; "
        "server: a separate `python -m rlxf.rollout.vllm_server` process, reached over HTTP",
    )
    gpu_memory_utilization: float = option(
        0.3,
        help="colocate: share of the GPU's memory vLLM takes for its weights and KV cache (training keeps "
        "the rest); a server sets its own with --gpu-memory-utilization",
    )
    tensor_parallel_size: int = option(
        1, help="GPUs one engine shards the model over; above 1 only in server mode (set on the server)"
    )
    max_model_len: int = option(
        0, help="longest prompt + completion in tokens the engine plans its KV cache for; 0 = the model's"
    )
    enable_prefix_caching: bool = option(
        True, help="share the KV cache of a prompt between its samples (reset after every weight push)"
    )
    dtype: Literal["auto", "bfloat16", "float16"] = option(
        "auto", help="the engine's weights and compute; auto = vLLM's choice for the checkpoint"
    )
    enforce_eager: bool = option(
        False, help="no CUDA graphs: slower decoding, but a faster start and less memory"
    )
    server_host: str = option("127.0.0.1", help="server mode: host of the rlxf vLLM server")
    server_port: int = option(8000, help="server mode: port of the rlxf vLLM server")
    server_timeout: float = option(
        600.0, help="server mode: seconds one request (a generation, a chunk of weights) may take"
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ValueError(
                f"vllm.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"
            )
        if self.tensor_parallel_size < 1:
            raise ValueError(f"vllm.tensor_parallel_size must be >= 1, got {self.tensor_parallel_size}")
        if self.mode == "colocate" and self.tensor_parallel_size != 1:
            raise ValueError(
                "vllm.tensor_parallel_size > 1 needs vllm.mode=server: a colocated engine runs on its "
                "training process's one GPU"
            )
        if self.max_model_len < 0:
            raise ValueError(f"vllm.max_model_len must be >= 0 (0 = the model's), got {self.max_model_len}")
        if not self.server_host:
            raise ValueError("vllm.server_host is empty")
        if not 0 < self.server_port < 65536:
            raise ValueError(f"vllm.server_port must be in 1..65535, got {self.server_port}")
        if self.server_timeout <= 0:
            raise ValueError(f"vllm.server_timeout must be > 0, got {self.server_timeout}")


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError that names the extra to install."""
    try:
        import vllm
    except ImportError as exc:
        raise ImportError(
            f"rollout.engine=vllm needs vLLM, which is not installed: {INSTALL_HINT} "
            "(vLLM runs on CUDA GPUs; rollout.engine=hf runs anywhere)"
        ) from exc
    return vllm


def llm_kwargs(config: VLLMConfig, model_dir: str | os.PathLike) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for ``config`` on the Hugging Face folder ``model_dir``."""
    kwargs: dict[str, Any] = {
        "model": str(model_dir),
        "dtype": config.dtype,
        "gpu_memory_utilization": config.gpu_memory_utilization,
        "tensor_parallel_size": config.tensor_parallel_size,
        "enable_prefix_caching": config.enable_prefix_caching,
        "enforce_eager": config.enforce_eager,
        # Log-probs after temperature / top-k / top-p: those of the distribution each token is drawn
        # from, what the RL trainer needs as its old log-probs (vLLM's default is the raw model's).
        "logprobs_mode": "processed_logprobs",
    }
    if config.max_model_len:
        kwargs["max_model_len"] = config.max_model_len
    return kwargs


def request_seed(seed: int, row: int) -> int:
    """The vLLM request seed of row ``row``: the ``(seed, row)`` mix HFEngine seeds a row's stream with."""
    return (seed * _SEED_MIX + row) % 2**63


# ---------------------------------------------------------------------------------------------------------
# What runs where the engine's model lives (this process, the server, each tensor-parallel worker), through
# `LLM.apply_model(func)`, which calls `func(model)` on every worker. Module-level functions, so that a
# multi-process engine can pickle them by name.


def load_weights_into(model: Any, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    """vLLM's own loader: Hugging Face names in; fuses, shards and skips a tied lm_head itself."""
    model.load_weights(weights)


def engine_dtype(model: Any) -> torch.dtype:
    return next(model.parameters()).dtype


def fingerprint(tensor: torch.Tensor) -> Fingerprint:
    """``[sum, sum of squares, sum of |x|]`` in float64: additive over the pieces vLLM fuses (q, k, v ->
    qkv) and the shards of tensor parallelism, and blind to the zero rows vLLM pads a vocabulary with."""
    flat = tensor.detach().reshape(-1)
    total = torch.zeros(3, dtype=torch.float64, device=flat.device)
    for chunk in flat.split(1 << 24):  # float64 copies of at most 128 MiB, even for a large embedding
        values = chunk.double()
        total += torch.stack([values.sum(), values.square().sum(), values.abs().sum()])
    return total.tolist()


def engine_fingerprints(model: Any) -> dict[str, Any]:
    """The fingerprint of every engine parameter, by the engine's names, and the fused-module table that
    maps Hugging Face names onto them (a model without fused layers has none)."""
    packed = getattr(model, "packed_modules_mapping", {})
    return {
        "params": {name: fingerprint(param) for name, param in model.named_parameters()},
        "packed": {whole: list(parts) for whole, parts in packed.items()},
    }


# ---------------------------------------------------------------------------------------------------------
# Backends: the same four calls on a vllm.LLM in this process or on the server.


@dataclass
class Completion:
    """One request's result, engine-neutral and JSON-ready (what the server sends back)."""

    token_ids: list[int]  # [T] generated tokens, eos / the token completing a stop string included
    logprobs: list[float]  # [T] processed log-prob of each generated token
    finish_reason: str  # vLLM's: "stop" or "length"
    stop_reason: int | str | None  # vLLM's: None for eos, the stop token id or the stop string


def completion_of(request_output: Any) -> Completion:
    """A vLLM ``RequestOutput`` of one sample as a :class:`Completion`."""
    (out,) = request_output.outputs  # every row is its own request with n=1
    ids = [int(t) for t in out.token_ids]
    if out.logprobs is None or len(out.logprobs) != len(ids):
        raise RuntimeError("vLLM returned no log-prob for some sampled tokens (rlxf asks with logprobs=0)")
    logprobs = [float(step[token].logprob) for step, token in zip(out.logprobs, ids)]
    return Completion(ids, logprobs, str(out.finish_reason), out.stop_reason)


class InProcessBackend:
    """A ``vllm.LLM`` in this process: colocate mode, and the server's own engine.

    ``sampling_params`` is the ``SamplingParams`` class of the vLLM that made ``llm``.
    """

    def __init__(self, llm: Any, sampling_params: Callable[..., Any]) -> None:
        self.llm = llm
        self.sampling_params = sampling_params

    def generate(
        self, prompts: list[list[int]], params: list[dict[str, Any]], progress: bool = False
    ) -> list[Completion]:
        requests = [{"prompt_token_ids": ids} for ids in prompts]  # vLLM's TokensPrompt
        sampling = [self.sampling_params(**p) for p in params]
        return [completion_of(o) for o in self.llm.generate(requests, sampling, use_tqdm=progress)]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        # In one process `weights` may be a generator: one cast tensor alive at a time, not a model copy.
        self.llm.apply_model(partial(load_weights_into, weights=weights))
        self.llm.reset_prefix_cache()  # cached KV was computed with the old weights

    def fingerprints(self) -> list[dict[str, Any]]:
        return self.llm.apply_model(engine_fingerprints)  # one per worker

    def dtype(self) -> torch.dtype:
        return self.llm.apply_model(engine_dtype)[0]


# Weights go to the server in safetensors chunks of about this size: bounded memory on both sides.
_PUSH_CHUNK_BYTES = 256 * 2**20


class ServerBackend:
    """The client of ``python -m rlxf.rollout.vllm_server`` (see that module for the endpoints)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.url = f"http://{host}:{port}"
        self.timeout = timeout

    def _call(self, path: str, body: bytes | None = None, content_type: str = "application/json") -> Any:
        request = urllib.request.Request(self.url + path, data=body, headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise RuntimeError(
                f"the vLLM server at {self.url} answered {path} with {exc.code}: "
                f"{exc.read().decode(errors='replace')}"
            ) from exc
        except (urllib.error.URLError, ConnectionError) as exc:
            raise RuntimeError(
                f"no rlxf vLLM server answers at {self.url} ({exc}); start one with "
                "`python -m rlxf.rollout.vllm_server --model DIR --port N` and set vllm.server_host / "
                "vllm.server_port"
            ) from exc

    def generate(
        self, prompts: list[list[int]], params: list[dict[str, Any]], progress: bool = False
    ) -> list[Completion]:
        reply = self._call("/generate", json.dumps({"prompts": prompts, "params": params}).encode())
        return [Completion(**c) for c in reply["completions"]]

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        from safetensors.torch import save

        chunk: dict[str, torch.Tensor] = {}
        size = 0
        for name, tensor in weights:
            # copy=True: a separate CPU tensor per name, since safetensors refuses tensors sharing memory.
            chunk[name] = tensor.detach().to("cpu", copy=True).contiguous()
            size += chunk[name].numel() * chunk[name].element_size()
            if size >= _PUSH_CHUNK_BYTES:
                self._call("/load_weights", save(chunk), "application/octet-stream")
                chunk, size = {}, 0
        if chunk:
            self._call("/load_weights", save(chunk), "application/octet-stream")
        self._call("/reset_prefix_cache", b"")

    def fingerprints(self) -> list[dict[str, Any]]:
        return self._call("/fingerprints")["workers"]

    def dtype(self) -> torch.dtype:
        return getattr(torch, self._call("/info")["dtype"])


def _combine_workers(workers: list[dict[str, Any]]) -> dict[str, Fingerprint]:
    """One fingerprint per engine parameter over the tensor-parallel workers: a parameter with the same
    fingerprint on every worker is replicated (a norm), any other is sharded and its pieces add up."""
    params = {}
    for name, first in workers[0]["params"].items():
        values = [list(w["params"][name]) for w in workers]
        same = all(v == list(first) for v in values)
        params[name] = list(first) if same else [sum(column) for column in zip(*values)]
    return params


def _matches(want: Fingerprint, got: Fingerprint) -> bool:
    # Both sides sum the same engine-dtype values in float64, only grouped differently (fused pieces,
    # shards), so they agree to ~1e-15 of the magnitude; 1e-9 leaves room and still sees a training step.
    scale = max(want[2], got[2]) + 1e-12
    squares = max(want[1], got[1]) + 1e-12
    return (
        abs(want[0] - got[0]) <= 1e-9 * scale
        and abs(want[1] - got[1]) <= 1e-9 * squares
        and abs(want[2] - got[2]) <= 1e-9 * scale
    )


def weight_problems(
    pushed: dict[str, Fingerprint],
    tied: dict[str, list[str]],
    engine: dict[str, Fingerprint],
    packed: dict[str, list[str]],
) -> list[str]:
    """What does not match between the pushed tensors (by Hugging Face name) and the engine's parameters."""
    fused = {part: whole for whole, parts in packed.items() for part in parts}
    to_engine = lambda name: ".".join(fused.get(p, p) for p in name.split("."))  # noqa: E731
    expected: dict[str, Fingerprint] = {}
    problems = []
    for name, value in pushed.items():
        target = to_engine(name)
        if target in engine:
            previous = expected.get(target, [0.0, 0.0, 0.0])
            expected[target] = [a + b for a, b in zip(previous, value)]
        elif not any(to_engine(other) in engine for other in tied.get(name, [])):
            problems.append(f"{name}: the engine has no parameter {target!r} to load it into")
        # else: a tied name the engine keeps under its partner's name (lm_head.weight -> embed_tokens)
    for target, got in engine.items():
        want = expected.get(target)
        if want is None:
            problems.append(f"{target}: no pushed key fills this engine parameter")
        elif not _matches(want, got):
            problems.append(
                f"{target}: the engine holds sum {got[0]:.8g}, sum of squares {got[1]:.8g}; "
                f"the policy pushed {want[0]:.8g}, {want[1]:.8g}"
            )
    return problems


# ---------------------------------------------------------------------------------------------------------


def _eos_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """The model's generation-config eos ids and the tokenizer's, as HFEngine takes them."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the model and tokenizer define no end-of-sequence token")
    return sorted(ids)


def _start_llm(vllm: Any, model: torch.nn.Module, tokenizer: Any, config: VLLMConfig) -> Any:
    """A ``vllm.LLM`` on a saved copy of the policy (LoRA merged); the folder goes once vLLM has read it."""
    from rlxf.models.load import save_model

    # Colocate keeps vLLM's engine core in this process, so a weight push is a plain tensor copy handed
    # to the model (nothing pickled through a worker process), as TRL's colocate mode does. A value the
    # user set wins.
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    folder = Path(tempfile.mkdtemp(prefix="rlxf-vllm-"))
    try:
        path = save_model(model, tokenizer, folder / "policy")
        return vllm.LLM(**llm_kwargs(config, path))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class VLLMEngine(GenerationEngine):
    """Generation engine on vLLM, in this process (``colocate``) or in a server process (``server``).

    ``model`` is the policy: in colocate mode the engine starts from a saved copy of it; in both modes the
    constructor ends with :meth:`sync_weights`, so generation starts from the policy's weights, checked.
    ``llm``: an already built ``vllm.LLM``-like object to use instead of building one (colocate mode; the
    tests pass a stand-in), with ``sampling_params``, the ``SamplingParams`` class of the same vLLM
    (default ``vllm.SamplingParams``).

    ``SamplingConfig.batch_size`` does not apply: vLLM schedules its own batches.
    """

    # HFEngine's rule for a row's kept length and text (it reads only `tokenizer` and `eos_token_ids`):
    # one definition, so both engines cut and decode rows alike.
    _finish = HFEngine._finish

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        config: VLLMConfig | None = None,
        *,
        llm: Any = None,
        sampling_params: Callable[..., Any] | None = None,
    ) -> None:
        self.config = config if config is not None else VLLMConfig()
        self.tokenizer = tokenizer
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_token_ids[0]
        )
        self.max_context = self.config.max_model_len or getattr(model.config, "max_position_embeddings", None)
        self.device = next(model.parameters()).device  # where batches go: the policy's device, as HFEngine
        self.backend: InProcessBackend | ServerBackend
        if self.config.mode == "server":
            if llm is not None:
                raise ValueError("llm= is for vllm.mode=colocate; in server mode the server holds the engine")
            self.backend = ServerBackend(
                self.config.server_host, self.config.server_port, self.config.server_timeout
            )
        else:
            if llm is None or sampling_params is None:
                vllm = import_vllm()
                sampling_params = sampling_params or vllm.SamplingParams
                if llm is None:
                    llm = _start_llm(vllm, model, tokenizer, self.config)
            self.backend = InProcessBackend(llm, sampling_params)
        self.dtype = self.backend.dtype()
        self.sync_weights(model)

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a rendered prompt, by the same rule the data layer tokenises prompts with."""
        return encode_prompt(self.tokenizer, text)

    def _request(self, sampling: SamplingConfig, seed: int) -> dict[str, Any]:
        """``SamplingParams`` keyword arguments of one row."""
        greedy = sampling.greedy
        return {
            "n": 1,
            "temperature": sampling.temperature,
            # Greedy rows get no top-k / top-p (they cannot change the argmax), so that their processed
            # log-probs are the model's own, as HFEngine records them, on every vLLM sampling path.
            "top_p": 1.0 if greedy else sampling.top_p,
            "top_k": sampling.top_k if sampling.top_k > 0 and not greedy else -1,  # -1 disables in any vLLM
            "max_tokens": sampling.max_new_tokens,
            "stop": list(sampling.stop),
            # The generation config's eos ids besides the tokenizer's, as HFEngine stops on (vLLM adds them
            # itself too); none when eos is ignored.
            "stop_token_ids": [] if sampling.ignore_eos else list(self.eos_token_ids),
            "ignore_eos": sampling.ignore_eos,
            "min_tokens": sampling.min_new_tokens,  # masks eos and stop_token_ids before it, as HFEngine
            "logprobs": 0,  # the sampled token's log-prob only
            "seed": seed,
        }

    def generate(
        self,
        prompts: list[str],
        sampling: SamplingConfig,
        seed: int | None = None,
        progress: bool = False,
        row_offset: int = 0,
    ) -> RolloutBatch:
        """See :meth:`GenerationEngine.generate`: row ``i`` is vLLM request ``i`` with seed
        ``request_seed(seed, row_offset + i)``. Without ``seed`` a base seed is drawn from torch's global
        generator (``torch.manual_seed`` fixes it, and the next call draws another); with one, torch's
        random state is not touched. ``progress`` shows vLLM's progress bar."""
        if not prompts:
            raise ValueError("no prompts to generate from")
        if row_offset < 0:
            raise ValueError(f"row_offset must be >= 0, got {row_offset}")
        encoded_prompts = [self.encode_prompt(text) for text in prompts]
        if self.max_context is not None:
            for i, ids in enumerate(encoded_prompts):
                if len(ids) + sampling.max_new_tokens > self.max_context:
                    raise ValueError(
                        f"prompt {i} has {len(ids)} tokens; with max_new_tokens={sampling.max_new_tokens} it "
                        f"exceeds the model's context of {self.max_context}"
                    )
        rows = [text for text in prompts for _ in range(sampling.n)]
        encoded = [ids for ids in encoded_prompts for _ in range(sampling.n)]
        prompt_index = torch.arange(len(prompts)).repeat_interleave(sampling.n)  # [B]
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()))
        params = [self._request(sampling, request_seed(seed, row_offset + i)) for i in range(len(rows))]
        completions = self.backend.generate(encoded, params, progress)

        prompt_ids, prompt_mask = _left_pad(encoded, self.pad_token_id)  # [B, P]
        width = max(len(c.token_ids) for c in completions)
        completion_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)  # [B, C]
        logprobs = torch.zeros((len(rows), width), dtype=torch.float32)  # [B, C]
        returned = torch.tensor([len(c.token_ids) for c in completions], dtype=torch.long)  # [B]
        for i, c in enumerate(completions):
            completion_ids[i, : len(c.token_ids)] = torch.tensor(c.token_ids, dtype=torch.long)
            logprobs[i, : len(c.token_ids)] = torch.tensor(c.logprobs, dtype=torch.float32)
        lengths, _, texts = self._finish(completion_ids, list(sampling.stop), sampling.ignore_eos)
        lengths = torch.minimum(lengths, returned)  # padding after a row is never kept, even if it is eos
        completion_mask = (torch.arange(width)[None, :] < lengths[:, None]).long()  # [B, C]
        keep = completion_mask.bool()
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            completion_ids=torch.where(keep, completion_ids, self.pad_token_id),
            completion_mask=completion_mask,
            logprobs=torch.where(keep, logprobs, torch.zeros_like(logprobs)),
            prompts=rows,
            completions=texts,
            finish_reasons=[finish_reason(c) for c in completions],
            prompt_index=prompt_index,
        ).to(self.device)

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push every key of ``model``'s state dict into the engine (cast to its dtype; LoRA merged), then
        check that the engine holds exactly those values; a ``RuntimeError`` names what did not take."""
        weights = policy_weights(model)
        pushed: dict[str, Fingerprint] = {}

        def stream() -> Iterator[tuple[str, torch.Tensor]]:
            for w in weights:
                tensor = w.value().to(self.dtype)  # same shape, the engine's dtype, on the policy's device
                pushed[w.name] = fingerprint(tensor)
                yield w.name, tensor

        self.backend.load_weights(stream())
        if len(pushed) != len(weights):
            raise RuntimeError(f"the engine read {len(pushed)} of the policy's {len(weights)} weights")
        workers = self.backend.fingerprints()
        problems = weight_problems(
            pushed, tied_names(weights), _combine_workers(workers), workers[0]["packed"]
        )
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise RuntimeError(
                f"sync_weights: after the push the vLLM engine does not hold the policy's weights "
                f"({len(problems)} parameters):\n  {shown}{more}"
            )
        logger.debug("pushed %d weights to the vLLM engine and checked them", len(pushed))


def finish_reason(c: Completion) -> FinishReason:
    """vLLM's finish reason in rlxf's words: ``length``; ``stop`` on a stop string; ``eos`` otherwise."""
    if c.finish_reason == "length":
        return "length"
    if c.finish_reason == "stop":
        return "stop" if isinstance(c.stop_reason, str) else "eos"
    raise RuntimeError(f"vLLM ended a request with finish_reason={c.finish_reason!r}")
