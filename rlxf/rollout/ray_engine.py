"""Rollout workers as Ray actors (``rollout.placement: ray``): the policy generates on other processes,
other GPUs or other machines, and follows the trainer's weights through Ray's object store.

What this module implements:

* :class:`RayConfig`, the ``ray:`` options: which cluster (``address``: none starts Ray on this machine,
  ``auto`` or ``ray://HEAD:10001`` joins one) and what each actor asks of it (CPUs, GPUs).
* :class:`RolloutWorker`, the actor: a copy of the policy loaded from the model reference, stored in the
  training precision's weight dtype and run under its autocast, with an engine on it: ``hf``
  (:class:`~rlxf.rollout.hf.HFEngine` on the copy) or ``vllm`` (:class:`~rlxf.rollout.vllm.VLLMEngine` on
  the actor's GPU; the copy stays on the CPU as the staging area of weight pushes).
* :class:`RayEngine`, a :class:`~rlxf.rollout.engine.GenerationEngine` for the trainer. ``generate``
  deals the prompts to the ``W`` workers in contiguous shares (whole groups of ``n`` samples stay on one
  worker), each worker generating its share with the rows' numbers in the whole batch (``row_offset``); an
  engine's per-row random streams, seeded by ``(seed, row)``, make the rows what one process generating
  the whole batch samples, whatever ``W``. The shares come back in order and are concatenated
  (:func:`~rlxf.rollout.engine.concat_rollouts`).

Weight sync (:meth:`RayEngine.sync_weights`, before the first step and after every update):

1. the trainer takes every key of the policy's state dict (:func:`~rlxf.rollout.weights.policy_weights`:
   LoRA merged, plain Hugging Face names), casts it to the workers' weight dtype, keeps one tensor per
   group of tied names, and puts the list **once** into the object store as numpy arrays (bfloat16 viewed
   as int16: numpy has no bfloat16). Workers on a node read numpy arrays from the store without a copy;
   torch tensors would be pickled, ~5x slower for a 135M model (measured in issue 13: 0.1-0.6 s against
   2-4 s);
2. every worker copies them into its model (a tied group's one tensor fills all its names) and, with
   vLLM, pushes its model into the vLLM engine, which checks that push itself;
3. every worker returns the SHA-256 of its model's state dict (:func:`state_sha256`: names, dtypes,
   shapes, bytes, in name order); the trainer hashes what it sent the same way, and a worker that differs
   stops training with a ``RuntimeError`` naming it (:func:`check_worker_hashes`): rollouts from stale or
   half-loaded weights would train silently on the wrong policy.

``last_sync`` holds the last sync's record (hashes, seconds, bytes); the RL trainer writes one per sync to
``weight_syncs.jsonl`` in its run folder.

What it leaves out: NCCL / CUDA-IPC weight transfer (the object store moves bytes through shared memory
on a node and over the network between nodes; fine for models of a few billion parameters, slow beyond),
rollout workers that score (rewards are computed in the trainer), asynchronous rollouts (workers sample
with the weights of the step that asked), and elastic workers (a worker that dies ends the run; resume
from the last checkpoint).

Ray is an optional extra (``pip install 'rlxf[ray]'``), imported only when a Ray engine is built.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rlxf.config import option
from rlxf.models.load import ModelConfig, load_model, resolve_device
from rlxf.models.precision import ResolvedPrecision, autocast
from rlxf.rollout.engine import EngineKind, GenerationEngine, RolloutBatch, SamplingConfig, concat_rollouts
from rlxf.rollout.hf import HFEngine
from rlxf.rollout.vllm import VLLMConfig
from rlxf.rollout.weights import policy_weights, tied_names

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'rlxf[ray]'"


@dataclass
class RayConfig:
    """Where Ray actors run (the ``ray:`` section; used with ``rollout.placement: ray``)."""

    address: str | None = option(
        None,
        help="unset: start Ray on this machine; auto or ray://HEAD:10001: join that running cluster",
    )
    num_cpus_per_worker: float = option(1.0, help="CPUs each rollout actor asks for (its torch threads)")
    num_gpus_per_worker: float = option(
        0.0, help="GPUs each rollout actor asks for (1 with rollout.engine=vllm)"
    )
    trainer_num_cpus: float = option(1.0, help="CPUs the trainer actor asks for (its torch threads)")
    trainer_num_gpus: float = option(0.0, help="GPUs the trainer actor asks for")

    def __post_init__(self) -> None:
        if self.address is not None and not self.address.strip():
            raise ValueError("ray.address is empty: leave it unset to start Ray on this machine")
        for name in ("num_cpus_per_worker", "trainer_num_cpus"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ray.{name} must be > 0, got {getattr(self, name)}")
        for name in ("num_gpus_per_worker", "trainer_num_gpus"):
            if getattr(self, name) < 0:
                raise ValueError(f"ray.{name} must be >= 0, got {getattr(self, name)}")


def import_ray() -> Any:
    """The ``ray`` module, or an ImportError that names the extra to install."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            f"rollout.placement=ray needs Ray, which is not installed: {INSTALL_HINT} "
            "(rollout.placement=local needs nothing more)"
        ) from exc
    return ray


def start_ray(config: RayConfig, cpus_wanted: float, gpus_wanted: float = 0.0) -> tuple[Any, bool]:
    """``(ray, started)``: Ray connected to ``config.address``, or started on this machine, with enough
    logical CPUs for ``cpus_wanted`` (the actors' requests; a CPU request is a scheduling share, not a
    pinned core). ``started`` says whether this call started it (and should shut it down). A Ray that is
    already initialised in this process is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    if config.address is not None:
        ray.init(address=config.address)
        return ray, True
    cpus = max(os.cpu_count() or 1, int(np.ceil(cpus_wanted)))
    # "local": a new Ray here, even where `ray start` left a cluster that ray.init() would otherwise join
    ray.init(address="local", num_cpus=cpus, include_dashboard=False)
    available = ray.cluster_resources().get("GPU", 0.0)
    if gpus_wanted > available:
        raise RuntimeError(f"the actors ask for {gpus_wanted:g} GPUs; this machine's Ray has {available:g}")
    return ray, True


# ---------------------------------------------------------------------------------------------------------
# Weights as they travel: (the names sharing the tensor, the array, the torch dtype's name).

Packed = list[tuple[list[str], np.ndarray, str]]


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy view of ``tensor``'s bytes: bfloat16 (which numpy lacks) as int16."""
    tensor = tensor.detach().to("cpu").contiguous()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.view(torch.int16)
    return tensor.numpy()


def _from_numpy(array: np.ndarray, dtype: str) -> torch.Tensor:
    with warnings.catch_warnings():  # arrays from the object store are read-only; they are only copied from
        warnings.simplefilter("ignore", UserWarning)
        tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def pack_weights(model: torch.nn.Module, dtype: torch.dtype) -> tuple[Packed, str]:
    """The policy's weights as they travel to the workers, and the SHA-256 a worker holding them reports.

    One entry per tensor: the names that share it (tied weights travel once), its values cast to ``dtype``
    (LoRA merged) as a numpy array, and the dtype's name."""
    weights = policy_weights(model)
    tied = tied_names(weights)
    packed: Packed = []
    named: list[tuple[str, torch.Tensor]] = []
    seen: set[str] = set()
    for w in weights:
        if w.name in seen:
            continue
        names = tied.get(w.name, [w.name])
        seen.update(names)
        tensor = w.value().detach().to(dtype)
        packed.append((names, _as_numpy(tensor), str(dtype).removeprefix("torch.")))
        named.extend((name, tensor) for name in names)
    return packed, state_sha256(named)


def state_sha256(named: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 over ``(name, dtype, shape, bytes)`` of every tensor, in name order: equal iff two state
    dicts hold the same names with bit-identical values."""
    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{str(tensor.dtype)}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def check_worker_hashes(sent: str, workers: Sequence[str]) -> None:
    """Raise unless every worker reports the hash of the weights it was sent."""
    stale = [i for i, got in enumerate(workers) if got != sent]
    if stale:
        raise RuntimeError(
            f"weight sync: rollout workers {stale} of {len(workers)} do not hold the policy's weights after "
            f"the push (sha256 sent {sent[:16]}..., they hold {[workers[i][:16] for i in stale]}); their "
            "rollouts would come from another policy"
        )


# ---------------------------------------------------------------------------------------------------------
# The actor


@dataclass
class WorkerSpec:
    """What a rollout worker builds: the policy's architecture and tokenizer from ``model`` (its weights
    are replaced by the first sync), stored in ``weight_dtype``, generating under ``precision``."""

    model: ModelConfig  # name_or_path: a reference every worker's node can resolve
    weight_dtype: str  # a ModelConfig.dtype value: float32 (fp32, bf16-mixed) or bfloat16 (bf16)
    precision: ResolvedPrecision
    engine: EngineKind = "hf"
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    threads: int = 1  # torch threads of the worker (its CPU share)
    cwd: str | None = None  # the driver's folder: relative paths in the spec resolve against it


class RolloutWorker:
    """One rollout actor (``ray.remote(RolloutWorker)``): a copy of the policy and an engine on it."""

    def __init__(self, spec: WorkerSpec) -> None:
        if spec.cwd and os.path.isdir(spec.cwd):
            os.chdir(spec.cwd)
        torch.set_num_threads(max(1, spec.threads))
        self.spec = spec
        model_cfg = ModelConfig(
            name_or_path=spec.model.name_or_path,
            dtype=spec.weight_dtype,  # type: ignore[arg-type]
            # vLLM generates on the GPU; the copy on the CPU only stages the weights it is pushed
            device="cpu" if spec.engine == "vllm" else spec.model.device,
        )
        self.model, self.tokenizer = load_model(model_cfg)
        self.device = resolve_device(model_cfg.device)
        self.engine: GenerationEngine
        if spec.engine == "vllm":
            from rlxf.rollout.vllm import VLLMEngine

            self.engine = VLLMEngine(self.model, self.tokenizer, spec.vllm)
        else:
            self.engine = HFEngine(self.model, self.tokenizer)

    def pad_token_id(self) -> int:
        return int(self.engine.pad_token_id)  # type: ignore[attr-defined]

    def generate(
        self, prompts: list[str], sampling: SamplingConfig, seed: int, row_offset: int
    ) -> RolloutBatch:
        with torch.no_grad(), autocast(self.spec.precision, self.device):
            batch = self.engine.generate(prompts, sampling, seed=seed, row_offset=row_offset)
        return batch.to("cpu")

    @torch.no_grad()
    def load_weights(self, packed: Packed) -> str:
        """Copy the sent weights into the model (and its vLLM engine); the SHA-256 the model now holds."""
        state = self.model.state_dict()
        for names, array, dtype in packed:
            values = _from_numpy(array, dtype)
            for name in names:
                if name not in state:
                    raise KeyError(f"the rollout worker's model has no weight {name!r}")
                state[name].copy_(values)
        self.engine.sync_weights(self.model)
        return state_sha256(self.model.state_dict().items())


# ---------------------------------------------------------------------------------------------------------
# The trainer's side


class RayEngine(GenerationEngine):
    """Generation on ``num_workers`` Ray actors (:class:`RolloutWorker`), kept in step with the policy.

    Construction starts the actors (Ray must be initialised: :func:`start_ray`) and pushes ``model``'s
    weights to them, checked. Every actor asks for ``config``'s CPUs and GPUs per worker.
    """

    def __init__(self, spec: WorkerSpec, config: RayConfig, num_workers: int, model: torch.nn.Module) -> None:
        ray = import_ray()
        self.ray = ray
        self.dtype = torch.bfloat16 if spec.weight_dtype == "bfloat16" else torch.float32
        actor = ray.remote(num_cpus=config.num_cpus_per_worker, num_gpus=config.num_gpus_per_worker)(
            RolloutWorker
        )
        self.workers = [actor.remote(spec) for _ in range(num_workers)]
        self.pad_token_id = ray.get(self.workers[0].pad_token_id.remote())  # waits for the actors to load
        self.last_sync: dict[str, Any] = {}
        self.sync_weights(model)

    def generate(
        self,
        prompts: list[str],
        sampling: SamplingConfig,
        seed: int | None = None,
        progress: bool = False,
        row_offset: int = 0,
    ) -> RolloutBatch:
        """See :meth:`GenerationEngine.generate`: worker ``w`` generates prompts ``w*k .. (w+1)*k - 1``
        (``k = len(prompts) / W``, rounded), rows counted from ``row_offset``; ``progress`` is not shown."""
        if not prompts:
            raise ValueError("no prompts to generate from")
        if seed is None:  # as the in-process engines: a fresh base seed from torch's global generator
            seed = int(torch.randint(0, 2**62, ()))
        count, workers = len(prompts), len(self.workers)
        bounds = [w * count // workers for w in range(workers + 1)]
        calls = [
            worker.generate.remote(prompts[first:last], sampling, seed, row_offset + first * sampling.n)
            for worker, first, last in zip(self.workers, bounds, bounds[1:])
            if last > first
        ]
        return concat_rollouts(self.ray.get(calls), self.pad_token_id)

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Push ``model``'s weights to every worker through the object store and check each one's SHA-256."""
        start = time.perf_counter()
        packed, sent = pack_weights(model, self.dtype)
        ref = self.ray.put(packed)  # once: every worker reads the same object
        hashes = self.ray.get([worker.load_weights.remote(ref) for worker in self.workers])
        del ref
        check_worker_hashes(sent, hashes)
        self.last_sync = {
            "sha256": sent,
            "workers": hashes,
            "seconds": time.perf_counter() - start,
            "bytes": sum(array.nbytes for _, array, _ in packed),
        }
        logger.debug("weights (sha256 %s) pushed to %d rollout workers", sent[:16], len(hashes))

    def close(self) -> None:
        """End the actors (their memory, their GPUs)."""
        for worker in self.workers:
            self.ray.kill(worker)
        self.workers = []


__all__ = [
    "RayConfig",
    "RayEngine",
    "RolloutWorker",
    "WorkerSpec",
    "check_worker_hashes",
    "pack_weights",
    "start_ray",
    "state_sha256",
]
