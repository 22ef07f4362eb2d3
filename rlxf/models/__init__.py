"""Models: resolve a model reference (registry name, HF folder, GGUF file), load it, save it."""

from rlxf.models.load import (
    LoraSettings,
    ModelConfig,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    save_model,
)
from rlxf.models.registry import DEFAULT_MODEL, KNOWN_MODELS, ModelNotFoundError, resolve_model, rlxf_home

__all__ = [
    "DEFAULT_MODEL",
    "KNOWN_MODELS",
    "LoraSettings",
    "ModelConfig",
    "ModelNotFoundError",
    "load_model",
    "load_tokenizer",
    "resolve_device",
    "resolve_dtype",
    "resolve_model",
    "rlxf_home",
    "save_model",
]
