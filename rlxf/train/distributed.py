"""How a trainer runs on several processes: the ``accelerate.Accelerator`` it gets, the launches that would
silently train something else than asked (refused here, naming the fix), and the full state dicts of a
sharded model (FSDP2, DeepSpeed ZeRO) for ``model/`` and checkpoints.

**Launching.** ``torchrun --nproc_per_node N -m rlxf COMMAND ...`` or ``accelerate launch --config_file
configs/accelerate/X.yaml -m rlxf COMMAND ...`` (``ddp``, ``fsdp2``, ``deepspeed_zero2``,
``deepspeed_zero3``); one process needs no launcher. On CPU the processes talk through gloo.

**What is refused** (:func:`check_launch`, before the run folder is touched; :class:`LaunchError`, which the
command line shows as one line with exit status 2). Each was measured: accelerate runs, but not what the
user asked for.

* ``accelerate launch --cpu --num_processes N`` (and a ``MULTI_CPU`` config without ``mpirun``) starts ONE
  process: accelerate's ``--cpu`` goes to its "simple launcher", which runs the script once and only sets
  ``MASTER_ADDR`` / ``MASTER_PORT`` (no ``WORLD_SIZE``). The signature is ``ACCELERATE_USE_CPU`` (only that
  launcher sets it) with ``MASTER_PORT`` (set only when more than one process was asked for) in a process
  that is alone. ``configs/accelerate/ddp.yaml`` (torch's elastic launcher; gloo on CPU) or ``torchrun``
  start the N processes.
* FSDP and DeepSpeed on CPU: accelerate turns its FSDP switch on only for GPU-like devices (``state.py``:
  ``AcceleratorState`` sets ``DistributedType.FSDP`` only when the type is ``MULTI_GPU`` / ``MULTI_XPU``
  ...), and its DeepSpeed switch only with ``cpu=False``, while a CPU process group needs ``cpu=True``. So
  an FSDP or DeepSpeed config on CPU silently trains plain DDP. :func:`build_accelerator` makes both work
  instead: the process group is made first for the CPU (gloo); DeepSpeed then gets ``cpu=False`` (its
  engine runs on DeepSpeed's CPU accelerator), and FSDP2's type is set on accelerate's state, as accelerate
  sets it for a GPU (its FSDP2 code path -- ``fully_shard``, DTensor gradient clipping, DCP state dicts --
  is device-agnostic and runs on gloo). FSDP1 is refused (``fsdp_version: 2``). A trainer whose loop
  cannot shard (``sharding_ok=False``) refuses both.
* ``ACCELERATE_GRADIENT_ACCUMULATION_STEPS`` (a config's ``gradient_accumulation_steps``) other than 1, or a
  DeepSpeed JSON's ``gradient_accumulation_steps`` other than 1 / ``auto``: accelerate (and DeepSpeed)
  would divide every loss by it behind the trainer's back, while rlxf already normalises each step over
  its units. rlxf's accumulation is ``train.global_batch_size / train.micro_batch_size``.
* ``ACCELERATE_MIXED_PRECISION`` other than ``no`` (a config's ``mixed_precision: bf16``, or
  ``--mixed_precision``), and ``fp16`` / ``bf16`` enabled in a DeepSpeed JSON: rlxf's precision is
  ``train.precision`` (its own autocast, so a pipeline can run trainers of different precisions in one
  process, where accelerate's is a per-process singleton). Refused rather than mapped: ``bf16`` could mean
  ``bf16-mixed`` or pure ``bf16``, and a silent mapping would override a ``train.precision`` set on purpose.
  So is an ``optimizer`` or ``scheduler`` in a DeepSpeed JSON (rlxf builds AdamW and the schedule from
  ``train:``), and a ``gradient_clipping`` other than ``train.max_grad_norm``.

**Sharded state** (:func:`full_model_state`, :func:`full_optimizer_state` and their loaders). ``model/`` and
checkpoints are written by the main process only, in one layout per strategy, recorded in the checkpoint's
``meta.json`` (``layout``):

* ``replicated`` (one process, DDP): the model's ``state_dict()`` and ``optimizer.state_dict()``, as ever;
* ``fsdp2``: the FULL model state dict and the FULL optimizer state dict (parameter names as keys),
  gathered to the main process with ``torch.distributed.checkpoint.state_dict`` and broadcast from it on
  resume: the checkpoint does not depend on the number of processes;
* ``deepspeed-zero{1,2,3}``: the full model state dict (ZeRO-3: consolidated on the main process) and the
  list of every process's ZeRO optimizer partition (its moments and fp32 master weights): each process
  loads its own, so a resume needs the same number of processes (checked).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

Sharding = Literal["none", "fsdp2", "deepspeed"]

DDP_CONFIG = "configs/accelerate/ddp.yaml"
MPI_SIZE_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


class LaunchError(ValueError):
    """A launch that would train something else than asked: more processes asked for than started, a
    sharding option accelerate would ignore, or accelerate's own accumulation or precision."""


@dataclass(frozen=True)
class LaunchPlan:
    """What the launch asks for, once :func:`check_launch` found nothing to refuse."""

    world_size: int
    sharding: Sharding


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "false").strip().lower() in ("1", "true", "yes")


def _world_size(env: Mapping[str, str]) -> int:
    for name in ("WORLD_SIZE", *MPI_SIZE_VARIABLES):
        if env.get(name, "").strip():
            return int(env[name])
    return 1


def check_launch(env: Mapping[str, str], *, command: str, sharding_ok: bool = True) -> LaunchPlan:
    """Refuse (:class:`LaunchError`) a launch accelerate would silently run as something else; see the module
    docstring. ``env`` is the process environment (``os.environ``); ``command`` names the rlxf command in
    the messages (``sft``, ``reward train``)."""
    world = _world_size(env)
    example = f"accelerate launch --config_file {DDP_CONFIG} --num_processes N -m rlxf {command} ..."
    if world == 1 and "ACCELERATE_USE_CPU" in env and env.get("MASTER_PORT"):
        raise LaunchError(
            "accelerate launch started ONE process although several were asked for: with --cpu (or a "
            "MULTI_CPU config without mpirun) accelerate runs the script once and starts no other process. "
            f"For N processes on CPU run `{example}` or `torchrun --nproc_per_node N -m rlxf {command} ...`; "
            "for one process drop --num_processes (or unset MASTER_PORT)"
        )
    steps = env.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "1").strip()
    if steps not in ("", "1"):
        raise LaunchError(
            f"accelerate's gradient_accumulation_steps is {steps}: accelerate would divide every loss by it "
            "behind rlxf's back. rlxf accumulates train.global_batch_size / train.micro_batch_size "
            "micro-batches per step (over all processes): set gradient_accumulation_steps: 1 in the "
            "accelerate config (or drop --gradient_accumulation_steps) and choose train.micro_batch_size"
        )
    precision = env.get("ACCELERATE_MIXED_PRECISION", "no").strip().lower()
    if precision not in ("", "no"):
        raise LaunchError(
            f"accelerate's mixed_precision is {precision!r}: rlxf's precision is train.precision (fp32, "
            "bf16-mixed, bf16), applied by its own autocast. Launch with mixed_precision: 'no' (the configs in "
            "configs/accelerate/ do) and pass train.precision=bf16-mixed (or bf16) instead"
        )
    fsdp, deepspeed = _flag(env, "ACCELERATE_USE_FSDP"), _flag(env, "ACCELERATE_USE_DEEPSPEED")
    if (fsdp or deepspeed) and not sharding_ok:
        what = "FSDP" if fsdp else "DeepSpeed"
        raise LaunchError(
            f"rlxf {command} cannot shard its model with {what}: its loop keeps whole models on every process "
            f"(generation, reference and value models). Use data parallelism: `{example}` or torchrun"
        )
    if fsdp:
        version = env.get("FSDP_VERSION", "1").strip()
        if version != "2":
            raise LaunchError(
                f"FSDP version {version}: rlxf trains with FSDP2 only (fully_shard, full state dicts for "
                "model/ and checkpoints). Set fsdp_version: 2 in the accelerate config, as "
                "configs/accelerate/fsdp2.yaml does"
            )
        return LaunchPlan(world, "fsdp2")
    if deepspeed:
        try:
            import deepspeed as _  # noqa: F401
        except ImportError as exc:
            raise LaunchError(
                "the accelerate config asks for DeepSpeed, which is not installed: pip install 'rlxf[deepspeed]'"
            ) from exc
        config_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE", "none").strip()
        if config_file.lower() not in ("", "none"):  # a DeepSpeed JSON of the user's: its settings now
            check_deepspeed_config(json.loads(Path(config_file).read_text(encoding="utf-8")))
        return LaunchPlan(world, "deepspeed")
    return LaunchPlan(world, "none")


def build_accelerator(device: torch.device, *, command: str, sharding_ok: bool = True) -> Any:
    """The ``accelerate.Accelerator`` of a trainer whose model is on ``device``, after :func:`check_launch`.

    One process, torchrun and DDP configs: ``Accelerator(cpu=...)``. DeepSpeed and FSDP2 work on CPU too
    (module docstring). accelerate's state is one per process: later calls get the same setup.
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plan = check_launch(os.environ, command=command, sharding_ok=sharding_ok)
    cpu = device.type == "cpu"
    # The process group first, for this device: on CPU gloo (cpu=True), which accelerate's DeepSpeed and
    # FSDP setups would not make (they look for a GPU-like device and fall back to one process).
    PartialState(cpu=cpu)
    if plan.sharding == "deepspeed":
        # cpu=False: accelerate's DeepSpeed switch is `ACCELERATE_USE_DEEPSPEED and not cpu`; the process
        # group made above stays, and DeepSpeed's engine runs on its CPU accelerator on a CPU machine.
        accelerator = Accelerator(cpu=False)
        check_deepspeed_config(accelerator.state.deepspeed_plugin.deepspeed_config)
        return accelerator
    if plan.sharding == "fsdp2":
        plugin = FullyShardedDataParallelPlugin()  # from accelerate's FSDP_* variables
        accelerator = Accelerator(cpu=cpu, fsdp_plugin=plugin)
        if accelerator.distributed_type != DistributedType.FSDP:
            # On CPU accelerate leaves the type MULTI_CPU (its FSDP switch lists GPU-like types only): set it
            # as it does for a GPU, on both of its states.
            accelerator.state.distributed_type = DistributedType.FSDP
            accelerator.state.fsdp_plugin = plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        return accelerator
    return Accelerator(cpu=cpu)


def sharding_of(accelerator: Any) -> Sharding:
    """``fsdp2``, ``deepspeed`` or ``none`` (one process, DDP: every process holds the whole model)."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return "deepspeed"
    if accelerator.is_fsdp2:
        return "fsdp2"
    return "none"


# ---------------------------------------------------------------------------------------------- DeepSpeed


def _is_auto(value: Any) -> bool:
    return value == "auto"


def check_deepspeed_config(config: Mapping[str, Any]) -> None:
    """Refuse the DeepSpeed JSON settings that would override rlxf's own (module docstring)."""
    steps = config.get("gradient_accumulation_steps", "auto")
    if not _is_auto(steps) and int(steps) != 1:
        raise LaunchError(
            f"the DeepSpeed config's gradient_accumulation_steps is {steps}: DeepSpeed would divide every loss "
            "by it. rlxf accumulates train.global_batch_size / train.micro_batch_size micro-batches per step: "
            "set it to 1 or auto"
        )
    for key in ("optimizer", "scheduler"):
        if key in config:
            raise LaunchError(
                f"the DeepSpeed config names a{'n' if key == 'optimizer' else ''} {key}: rlxf builds AdamW and "
                f"its learning-rate schedule from train.*; remove `{key}` from the DeepSpeed config"
            )
    for key in ("fp16", "bf16"):
        enabled = config.get(key, {}).get("enabled", False)
        if enabled is True or str(enabled).lower() == "true":
            raise LaunchError(
                f"the DeepSpeed config enables {key}: rlxf's precision is train.precision (its own autocast "
                f"over fp32 weights); remove `{key}` from the DeepSpeed config and pass train.precision"
            )


def configure_deepspeed(accelerator: Any, *, per_process_batch: int, max_grad_norm: float) -> None:
    """Fill the DeepSpeed config with the loop's own numbers, before ``accelerator.prepare``.

    One optimizer step of the loop is one DeepSpeed "micro-batch" of ``per_process_batch`` examples per
    process with no accumulation of DeepSpeed's (the loop accumulates its micro-batches itself and tells
    the engine where a step ends), so the engine's ``train_batch_size`` is ``global_batch_size``.
    Clipping is the engine's (``gradient_clipping = train.max_grad_norm``; another value is refused).
    ZeRO-3 gathers the weights for saving (``model/`` and checkpoints hold full state dicts).
    """
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    clipping = config.get("gradient_clipping", "auto")
    if not _is_auto(clipping) and float(clipping) != float(max_grad_norm):
        raise LaunchError(
            f"the DeepSpeed config's gradient_clipping is {clipping} but train.max_grad_norm is {max_grad_norm}: "
            "set gradient_clipping to auto (rlxf fills in train.max_grad_norm) or to the same value"
        )
    config["gradient_clipping"] = float(max_grad_norm)
    config["train_micro_batch_size_per_gpu"] = per_process_batch
    config["gradient_accumulation_steps"] = 1
    config["train_batch_size"] = per_process_batch * accelerator.num_processes
    if int(config.get("zero_optimization", {}).get("stage", 0)) == 3:
        config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True


def deepspeed_stage(accelerator: Any) -> int:
    return int(
        accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage", 0)
    )


# ---------------------------------------------------------------------------------------------- state


def checkpoint_layout(accelerator: Any) -> str:
    """The layout of this run's checkpoints (module docstring), recorded in ``meta.json``."""
    sharding = sharding_of(accelerator)
    if sharding == "deepspeed":
        return f"deepspeed-zero{deepspeed_stage(accelerator)}"
    return "fsdp2" if sharding == "fsdp2" else "replicated"


def _dcp_options(**kwargs: bool) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kwargs)


def full_model_state(accelerator: Any, wrapped: Any) -> dict[str, torch.Tensor] | None:
    """The model's full state dict (CPU tensors) on the main process, ``None`` on the others. Every process
    must call it (a sharded model gathers)."""
    sharding = sharding_of(accelerator)
    if sharding == "fsdp2":
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        state = get_model_state_dict(wrapped, options=_dcp_options(cpu_offload=True))
    elif sharding == "deepspeed":
        state = accelerator.get_state_dict(wrapped)  # ZeRO-3: consolidated on the main process only
        state = {k: v.detach().cpu() for k, v in state.items()} if state is not None else None
    else:
        state = accelerator.unwrap_model(wrapped).state_dict()
    return state if accelerator.is_main_process else None


def full_optimizer_state(accelerator: Any, wrapped: Any, optimizer: Any) -> Any:
    """What a checkpoint stores for the optimizer (module docstring) on the main process, ``None`` on the
    others. Every process must call it."""
    sharding = sharding_of(accelerator)
    if sharding == "fsdp2":
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        state = get_optimizer_state_dict(wrapped, optimizer.optimizer, options=_dcp_options(cpu_offload=True))
        return state if accelerator.is_main_process else None
    if sharding == "deepspeed":
        own = optimizer.optimizer.state_dict()  # this process's ZeRO partition
        parts: list[Any] | None = [None] * accelerator.num_processes if accelerator.is_main_process else None
        torch.distributed.gather_object(own, parts, dst=0)
        return parts
    return optimizer.state_dict() if accelerator.is_main_process else None


def _deepspeed_safe_globals() -> list[Any]:
    """The classes a ZeRO optimizer state dict pickles besides tensors (read back with weights_only=True)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def read_state(path: Path) -> Any:
    """A checkpoint file written by :func:`rlxf.train.checkpoint.save_checkpoint`, for the loaders below."""
    globals_ = _deepspeed_safe_globals() if _flag(os.environ, "ACCELERATE_USE_DEEPSPEED") else []
    with torch.serialization.safe_globals(globals_):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_sharded_state(
    accelerator: Any, wrapped: Any, optimizer: Any, model_file: Path, optimizer_file: Path
):
    """Put a sharded checkpoint's model and optimizer state (layout :func:`checkpoint_layout`) back into the
    live objects. Every process must call it."""
    sharding = sharding_of(accelerator)
    main = accelerator.is_main_process
    if sharding == "fsdp2":
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        options = _dcp_options(broadcast_from_rank0=True)
        # Only the main process reads the files; the others receive their shards from it.
        set_model_state_dict(wrapped, read_state(model_file) if main else {}, options=options)
        set_optimizer_state_dict(
            wrapped, optimizer.optimizer, read_state(optimizer_file) if main else {}, options=options
        )
        return
    if sharding != "deepspeed":
        raise ValueError(f"not a sharded run: {sharding}")
    parts = read_state(optimizer_file)
    if len(parts) != accelerator.num_processes:
        raise ValueError(
            f"this DeepSpeed checkpoint holds the optimizer partitions of {len(parts)} processes; resume it "
            f"with {len(parts)} processes, not {accelerator.num_processes}"
        )
    if deepspeed_stage(accelerator) < 3:
        # ZeRO-1/2 refresh their fp32 master partitions from the (replicated) weights: load those first.
        accelerator.unwrap_model(wrapped).load_state_dict(read_state(model_file))
    # ZeRO-3 restores its weight partitions from its fp32 partitions in the optimizer state.
    optimizer.optimizer.load_state_dict(parts)


def plain_model(model_class: type, config: Any, state: Mapping[str, torch.Tensor], like: Any) -> Any:
    """An unsharded ``model_class`` holding the full ``state`` (no copy: built on the meta device, then the
    tensors assigned), for ``save_pretrained``. Buffers a state dict leaves out (rotary frequencies) come
    from the live model ``like``; tied weights are tied again."""
    with torch.device("meta"):
        model = model_class(config)
    result = model.load_state_dict(dict(state), strict=False, assign=True)
    live = dict(like.named_buffers())
    for name in result.missing_keys:
        owner, _, leaf = name.rpartition(".")
        module = model.get_submodule(owner)
        if name in live:
            module.register_buffer(leaf, live[name].detach().cpu().clone(), persistent=False)
    model.tie_weights()
    left = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if left or result.unexpected_keys:
        raise RuntimeError(
            f"the gathered state dict does not fit {model_class.__name__}: missing {left[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )
    return model
