"""The policy's weights as a separate rollout engine needs them: every key of its state dict under the
plain Hugging Face name, a LoRA policy's adapters merged on the fly (``base + B @ A * scale``, one layer at
a time, the training model left untouched), and which names share a tensor (tied weights, such as
SmolLM2's ``lm_head.weight`` and ``model.embed_tokens.weight``).

Used by the engines that hold their own copy of the weights: vLLM (:mod:`rlxf.rollout.vllm`) and Ray
rollout workers (:mod:`rlxf.rollout.ray_engine`). The in-process transformers engine shares the module and
needs none of this.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class PolicyWeight:
    """One key of the policy's state dict, under its plain Hugging Face name."""

    name: str  # the Hugging Face name (peft's wrappers removed)
    stored: torch.Tensor  # the tensor in the policy; the base weight of a LoRA layer
    lora: Any = None  # the peft LoRA layer whose adapters are added to `stored` when pushed

    def value(self) -> torch.Tensor:
        return self.stored if self.lora is None else self.stored + lora_delta(self.lora)


_ADAPTER_KEY = re.compile(r"\.lora_[A-Za-z_]+\.|\.original_module\.")  # LoRA factors, ModulesToSave's copy
_MODULES_TO_SAVE = re.compile(r"\.modules_to_save\.([^.]+)\.")


def policy_weights(model: torch.nn.Module) -> list[PolicyWeight]:
    """Every key of the policy's state dict (a LoRA policy: its base model's, adapters merged on push)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if not isinstance(model, PeftModel):
        return [PolicyWeight(name, tensor) for name, tensor in model.state_dict().items()]
    base = model.get_base_model()
    layers = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    if not layers:
        raise ValueError(
            "the policy is a peft model without LoRA layers; only LoRA adapters are pushed to an engine"
        )
    weights = []
    for key, tensor in base.state_dict().items():
        if _ADAPTER_KEY.search(key):
            continue
        trainable = _MODULES_TO_SAVE.search(key)
        if trainable:  # a fully trained module's copy: the active adapter's stands for the module
            if trainable.group(1) != model.active_adapter:
                continue
            key = _MODULES_TO_SAVE.sub(".", key)
        owner, _, leaf = key.rpartition(".")
        if owner.endswith(".base_layer"):
            owner = owner.removesuffix(".base_layer")
            weights.append(
                PolicyWeight(f"{owner}.{leaf}", tensor, layers[owner] if leaf == "weight" else None)
            )
        else:
            weights.append(PolicyWeight(key, tensor))
    return weights


def lora_delta(layer: Any) -> torch.Tensor | int:
    """``sum over active adapters of B @ A * scale``, in the base weight's layout (peft's own delta)."""
    if layer.merged or layer.disable_adapters:  # merged: already in the base weight; disabled: not in use
        return 0
    delta: torch.Tensor | int = 0
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A and adapter not in layer.lora_embedding_A:
            continue
        if adapter in layer.lora_variant or layer.lora_bias.get(adapter):
            raise ValueError(
                f"adapter {adapter!r} is a LoRA variant (DoRA, ...) or has lora_bias: rlxf pushes only plain "
                "LoRA to a separate rollout engine (base weight + B @ A * scale); train without it, or with "
                "rollout.engine=hf and rollout.placement=local"
            )
        delta = delta + layer.get_delta_weight(adapter)
    return delta


def tied_names(weights: list[PolicyWeight]) -> dict[str, list[str]]:
    """Name -> the names sharing its tensor (tied weights), for names that have such partners."""
    by_storage: dict[tuple[int, tuple[int, ...]], list[str]] = {}
    for w in weights:
        if w.lora is None:  # stored tensors only: a merged LoRA value is a fresh tensor
            by_storage.setdefault((w.stored.data_ptr(), tuple(w.stored.shape)), []).append(w.name)
    return {name: group for group in by_storage.values() if len(group) > 1 for name in group}
