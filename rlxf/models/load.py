"""Loading a causal LM and its tokenizer from a model reference, with precision, device and LoRA options.

Precision is a first-class setting. ``dtype: auto`` picks bfloat16 where the hardware computes it natively
(a CUDA GPU with bf16, or a CPU with AVX-512 BF16 / AMX, where a bf16 matmul runs ~4x faster than fp32)
and float32 elsewhere. Training code that needs fp32 master weights asks for ``float32`` explicitly.

Loading never touches the network: every ``from_pretrained`` here passes ``local_files_only=True`` (the
reference is already a local folder, :mod:`rlxf.models.registry`), so rlxf needs no ``HF_HUB_OFFLINE``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import torch

from rlxf.config import option
from rlxf.models.registry import DEFAULT_MODEL, resolve_model

DType = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["auto", "cpu", "cuda"]


@dataclass
class LoraSettings:
    """Low-rank adapters through ``peft``; ``r: 0`` trains the full model."""

    r: int = option(0, help="LoRA rank; 0 disables LoRA (full fine-tuning)")
    alpha: float = option(16.0, help="LoRA scaling numerator (the update is scaled by alpha / r)")
    dropout: float = option(0.0, help="dropout on the LoRA branch")
    target_modules: list[str] = option(
        default_factory=lambda: ["all-linear"],
        help="module names to adapt; 'all-linear' adapts every linear layer but the output head",
    )

    def __post_init__(self) -> None:
        if self.r < 0:
            raise ValueError(f"lora.r must be >= 0, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if self.r and not self.target_modules:
            raise ValueError("lora.target_modules is empty")


@dataclass
class ModelConfig:
    """Which model to load and how."""

    name_or_path: str = option(
        DEFAULT_MODEL, help="model reference: a registry name, a local HF model folder or a .gguf file"
    )
    dtype: DType = option(
        "auto", help="weights and compute precision; auto = bfloat16 where native, else float32"
    )
    device: Device = option("auto", help="where the model runs; auto = cuda if available, else cpu")
    gradient_checkpointing: bool = option(False, help="recompute activations in backward to save memory")
    lora: LoraSettings = field(default_factory=LoraSettings)

    def __post_init__(self) -> None:
        if not self.name_or_path:
            raise ValueError("model.name_or_path is empty")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("model.device=cuda but no CUDA device is available (use auto or cpu)")


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 matmuls natively (AVX-512 BF16 or AMX tiles)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: be conservative
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: Device) -> torch.device:
    """``cpu``, or the GPU this process owns: under ``torchrun`` / ``accelerate launch`` that of its
    ``LOCAL_RANK`` (the one accelerate later puts it on), so N processes do not all load onto GPU 0 first."""
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    # A launcher that shows each process one GPU (CUDA_VISIBLE_DEVICES per rank) leaves it device 0.
    return torch.device("cuda", local_rank if local_rank < torch.cuda.device_count() else 0)


def resolve_dtype(dtype: DType, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer of an HF folder, with a pad token (the eos token when the model has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(cfg: ModelConfig, *, trainable: bool = False) -> tuple[Any, Any]:
    """Resolve ``cfg.name_or_path`` and load ``(model, tokenizer)`` with the configured precision and device.

    ``trainable=False`` returns the model in eval mode with gradients off (generation, scoring, references).
    ``trainable=True`` applies LoRA (when ``cfg.lora.r > 0``) and gradient checkpointing.
    """
    from transformers import AutoModelForCausalLM

    path = resolve_model(cfg.name_or_path)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    tokenizer = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True).to(device)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if not trainable:
        model.eval().requires_grad_(False)
        return model, tokenizer
    return prepare_for_training(model, cfg, task_type="CAUSAL_LM"), tokenizer


def prepare_for_training(model: Any, cfg: ModelConfig, task_type: str) -> Any:
    """Gradient checkpointing and LoRA (peft) as ``cfg`` asks, then train mode; returns the model to train.

    ``task_type`` is peft's: ``CAUSAL_LM``, or ``SEQ_CLS`` for a reward model (peft then keeps the new
    score head fully trainable).
    """
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    if cfg.lora.r > 0:
        from peft import LoraConfig, get_peft_model

        target: Any = "all-linear" if cfg.lora.target_modules == ["all-linear"] else cfg.lora.target_modules
        model = get_peft_model(
            model,
            LoraConfig(
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=target,
                task_type=task_type,
            ),
        )
    model.train()
    return model


def save_model(
    model: Any, tokenizer: Any, out_dir: str | Path, extra: Callable[[Path], None] | None = None
) -> Path:
    """Save as a plain HF folder that ``AutoModelForCausalLM.from_pretrained`` loads with nothing else.

    LoRA adapters are merged into the weights (on a copy: the live model keeps its adapters). The folder is
    written to a temporary sibling and renamed into place, so a kill never leaves a half-written model;
    ``extra(folder)`` writes more files into it before it takes its place (ILQL's heads).
    """
    import copy

    from peft import PeftModel

    out_dir = Path(out_dir)
    to_save = copy.deepcopy(model).merge_and_unload() if isinstance(model, PeftModel) else model
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        to_save.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if extra is not None:
            extra(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def disable_dropout(model: Any) -> None:
    """Set every ``nn.Dropout`` (LoRA's included) to p=0, as TRL's ``disable_dropout`` does: a policy and its
    reference (or old and new log-probs) must come from the same deterministic network."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
