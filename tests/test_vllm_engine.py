"""The vLLM rollout engine's contract, on the vLLM stand-in (tests/vllm_standin.py): CI has no GPU.

The stand-in draws a request's tokens from its seed the way HFEngine draws a row's, so a VLLMEngine
batch must equal the HFEngine batch of the same policy and seed field for field: ids, masks, text, finish
reasons and log-probs. The weight push is checked against keys the stand-in's loader drops on purpose.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import vllm_standin

from rlxf.models import LoraSettings, ModelConfig, load_model
from rlxf.rollout import HFEngine, SamplingConfig
from rlxf.rollout import vllm as vllm_engine
from rlxf.rollout.vllm import VLLMConfig, VLLMEngine, _combine_workers, llm_kwargs, weight_problems

PROMPTS = ["The movie was", "Our trip to the coast", "Customer service"]


def load_policy(path: Path):
    return load_model(ModelConfig(name_or_path=str(path), dtype="float32", device="cpu"))


def colocated(model, tokenizer, config: VLLMConfig | None = None) -> VLLMEngine:
    """An engine built as users get one (the policy saved, vllm.LLM started on that folder), with the
    stand-in installed as the vllm module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "vllm", vllm_standin.as_vllm_module())
        mp.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # what the engine sets; not left in this process
        return VLLMEngine(model, tokenizer, config or VLLMConfig())


def with_standin(model, tokenizer, folder: Path, config: VLLMConfig | None = None, **standin) -> VLLMEngine:
    """An engine on a stand-in built here (``standin``: e.g. drop_weights), injected with llm=."""
    config = config or VLLMConfig()
    llm = vllm_standin.LLM(**llm_kwargs(config, folder), **standin)
    return VLLMEngine(model, tokenizer, config, llm=llm, sampling_params=vllm_standin.SamplingParams)


@torch.no_grad()
def perturb(model, seed: int, only: str = "") -> None:
    """A stand-in for a training step: noise on every parameter (whose name contains ``only``)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if only in name:
            param.add_(0.05 * torch.randn(param.shape, generator=generator))


def assert_same_rows(got, want) -> None:
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "prompt_index"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    assert got.logprobs.dtype == torch.float32
    assert torch.allclose(got.logprobs, want.logprobs, atol=1e-4)
    assert got.prompts == want.prompts
    assert got.completions == want.completions
    assert got.finish_reasons == want.finish_reasons


@pytest.fixture(scope="module")
def policy(tiny_model_dir):
    return load_policy(tiny_model_dir)


@pytest.fixture(scope="module")
def engines(policy) -> tuple[VLLMEngine, HFEngine]:
    model, tokenizer = policy
    return colocated(model, tokenizer), HFEngine(model, tokenizer)


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingConfig(max_new_tokens=12, n=2),
        SamplingConfig(max_new_tokens=10, n=2, temperature=0.7, top_k=5, top_p=0.9),
        SamplingConfig(max_new_tokens=10, temperature=0.0),
        SamplingConfig(max_new_tokens=14, ignore_eos=True, stop=["e"]),
        SamplingConfig(max_new_tokens=12, n=2, min_new_tokens=12),
    ],
    ids=["plain", "warped", "greedy", "ignore-eos-and-stop", "fixed-length"],
)
def test_rows_are_the_transformers_engines_rows(engines, sampling):
    vllm, hf = engines
    assert_same_rows(vllm.generate(PROMPTS, sampling, seed=3), hf.generate(PROMPTS, sampling, seed=3))


def reference_logprobs(model, batch, temperature: float, top_k: int = 0) -> torch.Tensor:
    """The policy's own log-softmax of each completion token, after temperature and top-k, from one pass."""
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    width = batch.prompt_ids.shape[1]
    logits = logits[:, width - 1 : -1].float() / temperature  # [B, C, V]: position t predicts token t + 1
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    logprobs = torch.log_softmax(logits, dim=-1).gather(2, batch.completion_ids[..., None]).squeeze(2)
    return logprobs * batch.completion_mask


def test_logprobs_are_the_policys_after_temperature_and_top_k(engines, policy):
    model, _ = policy
    vllm, _ = engines
    batch = vllm.generate(PROMPTS, SamplingConfig(max_new_tokens=10, n=2, temperature=0.7, top_k=5), seed=0)
    assert batch.completion_mask.sum() > 20
    assert torch.allclose(batch.logprobs, reference_logprobs(model, batch, 0.7, top_k=5), atol=1e-4)
    # the raw model's log-probs (vLLM's default logprobs_mode) are something else
    assert not torch.allclose(batch.logprobs, reference_logprobs(model, batch, 1.0), atol=1e-2)


def test_seeds_decide_the_rows_and_a_shard_samples_what_the_whole_batch_gives_it(engines):
    vllm, _ = engines
    sampling = SamplingConfig(max_new_tokens=12, n=2)
    whole = vllm.generate(PROMPTS, sampling, seed=5)
    assert vllm.generate(PROMPTS, sampling, seed=5).completions == whole.completions
    assert vllm.generate(PROMPTS, sampling, seed=6).completions != whole.completions
    shard = vllm.generate(PROMPTS[1:], sampling, seed=5, row_offset=2)  # rows 2..5: prompts 1 and 2
    assert shard.completions == whole.completions[2:]
    kept = shard.completion_mask.bool()
    width = shard.completion_ids.shape[1]
    assert torch.equal(shard.completion_ids[kept], whole.completion_ids[2:, :width][kept])
    assert torch.allclose(shard.logprobs[kept], whole.logprobs[2:, :width][kept], atol=1e-6)
    # the same prompts as rows 0..3 are other rows, so they sample otherwise
    assert vllm.generate(PROMPTS[1:], sampling, seed=5).completions != shard.completions
    # a given seed leaves torch's random stream alone; without one, a base seed is drawn from it
    torch.manual_seed(1)
    expected = torch.rand(2)
    torch.manual_seed(1)
    vllm.generate(PROMPTS[:1], sampling, seed=9)
    assert torch.equal(torch.rand(2), expected)
    first, second = vllm.generate(PROMPTS, sampling), vllm.generate(PROMPTS, sampling)
    assert first.completions != second.completions


def test_layout_padding_and_masks_follow_the_rollout_contract(engines):
    vllm, _ = engines
    batch = vllm.generate(PROMPTS, SamplingConfig(max_new_tokens=8, n=3, stop=["o"]), seed=1)
    assert batch.prompt_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert batch.prompts == [p for p in PROMPTS for _ in range(3)]
    assert batch.prompt_mask[:, -1].all()  # left padded: the last prompt column is always a real token
    assert set(batch.finish_reasons) <= {"eos", "length", "stop"} and "stop" in batch.finish_reasons
    for i in range(len(batch)):
        assert batch.prompt_ids[i][batch.prompt_mask[i].bool()].tolist() == vllm.encode_prompt(
            batch.prompts[i]
        )
        assert (batch.prompt_ids[i][~batch.prompt_mask[i].bool()] == vllm.pad_token_id).all()
        kept = int(batch.completion_mask[i].sum())
        assert batch.completion_mask[i, :kept].all() and not batch.completion_mask[i, kept:].any()
        assert (batch.completion_ids[i, kept:] == vllm.pad_token_id).all()
        assert (batch.logprobs[i, kept:] == 0).all() and (batch.logprobs[i, :kept] < 0).all()
        assert "o" not in batch.completions[i]


def test_eos_and_stop_strings_end_rows_as_in_the_transformers_engine(engines):
    vllm, hf = engines
    greedy = SamplingConfig(max_new_tokens=10, temperature=0.0)
    free = vllm.generate(PROMPTS[:1], greedy)
    assert free.finish_reasons == ["length"] and int(free.completion_mask[0].sum()) == 10
    tokens = free.completion_ids[0].tolist()
    first = tokens.index(tokens[3])  # greedy may produce that token earlier
    saved = vllm.eos_token_ids, hf.eos_token_ids
    vllm.eos_token_ids = hf.eos_token_ids = [tokens[3]]  # declare that token the end-of-sequence token
    try:
        ended, hf_ended = vllm.generate(PROMPTS[:1], greedy), hf.generate(PROMPTS[:1], greedy)
    finally:
        vllm.eos_token_ids, hf.eos_token_ids = saved
    assert ended.finish_reasons == ["eos"]
    assert int(ended.completion_mask[0].sum()) == first + 1  # the eos token is kept
    assert_same_rows(ended, hf_ended)
    # min_new_tokens (vLLM's min_tokens) masks that eos until then, in both engines alike (vLLM masks the
    # tokenizer's eos besides the stop token ids, so both engines are given both).
    held = dataclasses.replace(greedy, min_new_tokens=first + 2)
    vllm.eos_token_ids = hf.eos_token_ids = sorted({vllm.tokenizer.eos_token_id, tokens[3]})
    try:
        late, hf_late = vllm.generate(PROMPTS[:1], held), hf.generate(PROMPTS[:1], held)
    finally:
        vllm.eos_token_ids, hf.eos_token_ids = saved
    assert tokens[3] not in late.completion_ids[0, : first + 2].tolist()
    assert int(late.completion_mask[0].sum()) > first + 1
    assert_same_rows(late, hf_late)

    sampled = SamplingConfig(max_new_tokens=16)
    ids = vllm.generate(PROMPTS[:1], sampled, seed=4).completion_ids[0].tolist()
    pieces = [vllm.tokenizer.decode(ids[i : i + 1]).strip() for i in range(3, len(ids))]
    stop = next(p for p in pieces if p and "\ufffd" not in p)
    stopping = SamplingConfig(max_new_tokens=16, stop=[stop])
    stopped = vllm.generate(PROMPTS[:1], stopping, seed=4)
    assert stopped.finish_reasons == ["stop"] and stop not in stopped.completions[0]
    kept = int(stopped.completion_mask[0].sum())
    assert stop in vllm.tokenizer.decode(ids[:kept]) and stop not in vllm.tokenizer.decode(ids[: kept - 1])
    assert_same_rows(stopped, hf.generate(PROMPTS[:1], stopping, seed=4))


def test_prompt_longer_than_context_is_refused(engines):
    vllm, _ = engines
    with pytest.raises(ValueError, match="exceeds the model's context of 256"):
        vllm.generate(["word " * 400], SamplingConfig(max_new_tokens=4))


def test_the_engine_starts_vllm_on_a_saved_copy_of_the_policy(policy, tiny_model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", vllm_standin.as_vllm_module())
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    vllm = VLLMEngine(*policy, VLLMConfig())
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"  # vLLM's engine core in this process
    llm = vllm.backend.llm
    kwargs = llm.init_kwargs
    assert kwargs["logprobs_mode"] == "processed_logprobs"
    assert kwargs["gpu_memory_utilization"] == 0.3 and kwargs["enable_prefix_caching"] is True
    assert kwargs["dtype"] == "auto" and kwargs["max_model_len"] is None
    assert Path(kwargs["model"]) != tiny_model_dir and not Path(kwargs["model"]).exists()  # removed once read
    assert vllm.dtype == torch.float32


def test_sync_pushes_every_key_and_the_engine_samples_from_the_new_weights(tiny_model_dir):
    model, tokenizer = load_policy(tiny_model_dir)
    vllm, hf = colocated(model, tokenizer), HFEngine(model, tokenizer)
    sampling = SamplingConfig(max_new_tokens=10, n=2)
    before = vllm.generate(PROMPTS, sampling, seed=2)  # also fills the prefix cache with the old weights
    perturb(model, seed=0)
    received = vllm.backend.llm.model.received
    received.clear()
    vllm.sync_weights(model)
    names = [name for name, _ in received]
    assert names == list(model.state_dict())
    assert "lm_head.weight" in names and "model.embed_tokens.weight" in names  # both names of the tied pair
    after = vllm.generate(PROMPTS, sampling, seed=2)
    assert after.completions != before.completions
    assert_same_rows(after, hf.generate(PROMPTS, sampling, seed=2))


@pytest.fixture(scope="module")
def untied_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.tie_word_embeddings = False
    torch.manual_seed(1)
    out = tmp_path_factory.mktemp("untied-llama")
    LlamaForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


@pytest.mark.parametrize(
    ("folder", "dropped", "named"),
    [
        ("tied", "model.norm.weight", "model.norm.weight"),
        # a tied model whose embedding is not pushed: vLLM skips lm_head.weight, so nothing reaches it
        ("tied", "model.embed_tokens.weight", "model.embed_tokens.weight"),
        ("tied", "model.layers.1.self_attn.k_proj.weight", "model.layers.1.self_attn.qkv_proj.weight"),
        ("untied", "lm_head.weight", "lm_head.weight"),
    ],
)
def test_the_check_catches_a_push_that_did_not_take(tiny_model_dir, untied_model_dir, folder, dropped, named):
    path = tiny_model_dir if folder == "tied" else untied_model_dir
    model, tokenizer = load_policy(path)
    assert model.config.tie_word_embeddings == (folder == "tied")
    vllm = with_standin(model, tokenizer, path, drop_weights=[dropped])  # the first push changes nothing
    perturb(model, seed=1)
    with pytest.raises(RuntimeError, match=r"does not hold the policy's weights \(1 parameters\)") as caught:
        vllm.sync_weights(model)
    assert named in str(caught.value)


def test_the_check_adds_up_fused_pieces_and_shards_and_counts_a_tied_pair_once():
    packed = {"qkv_proj": ["q_proj", "k_proj", "v_proj"]}
    pushed = {
        "l.q_proj.weight": [1.0, 1.0, 1.0],
        "l.k_proj.weight": [-2.0, 4.0, 2.0],
        "l.v_proj.weight": [3.0, 9.0, 3.0],
        "embed.weight": [0.5, 5.0, 2.0],
        "lm_head.weight": [0.5, 5.0, 2.0],
        "norm.weight": [4.0, 4.0, 4.0],
    }
    tied = {
        "embed.weight": ["embed.weight", "lm_head.weight"],
        "lm_head.weight": ["embed.weight", "lm_head.weight"],
    }
    # two tensor-parallel workers: qkv and the embedding sharded (their halves add up), the norm replicated
    workers = [
        {
            "params": {
                "l.qkv_proj.weight": [0.5, 6.0, 2.5],
                "embed.weight": [1.0, 2.0, 1.5],
                "norm.weight": [4.0, 4.0, 4.0],
            }
        },
        {
            "params": {
                "l.qkv_proj.weight": [1.5, 8.0, 3.5],
                "embed.weight": [-0.5, 3.0, 0.5],
                "norm.weight": [4.0, 4.0, 4.0],
            }
        },
    ]
    engine = _combine_workers(workers)
    assert engine == {
        "l.qkv_proj.weight": [2.0, 14.0, 6.0],
        "embed.weight": [0.5, 5.0, 2.0],
        "norm.weight": [4.0, 4.0, 4.0],
    }
    assert weight_problems(pushed, tied, engine, packed) == []
    stale_k = dict(pushed, **{"l.k_proj.weight": [-2.0, 4.5, 2.0]})
    assert [p.split(":")[0] for p in weight_problems(stale_k, tied, engine, packed)] == ["l.qkv_proj.weight"]
    # untied, lm_head.weight has nowhere to go; a missing norm leaves an engine parameter unfilled
    untied = weight_problems({k: v for k, v in pushed.items() if k != "norm.weight"}, {}, engine, packed)
    assert untied == [
        "lm_head.weight: the engine has no parameter 'lm_head.weight' to load it into",
        "norm.weight: no pushed key fills this engine parameter",
    ]


def test_a_bfloat16_engine_receives_bfloat16_weights(tiny_model_dir):
    model, tokenizer = load_policy(tiny_model_dir)
    vllm = colocated(model, tokenizer, VLLMConfig(dtype="bfloat16"))
    assert vllm.dtype == torch.bfloat16
    perturb(model, seed=2)
    received = vllm.backend.llm.model.received
    received.clear()
    vllm.sync_weights(model)  # the check passes on the rounded values
    assert {dtype for _, dtype in received} == {torch.bfloat16}
    engine_norm = vllm.backend.llm.model.hf.model.norm.weight
    assert torch.equal(engine_norm, model.model.norm.weight.to(torch.bfloat16))
    batch = vllm.generate(PROMPTS, SamplingConfig(max_new_tokens=6), seed=0)
    assert batch.logprobs.dtype == torch.float32 and batch.completion_mask.sum() > 0


def test_a_lora_policy_is_pushed_merged_and_stays_unmerged(tiny_model_dir):
    config = ModelConfig(
        name_or_path=str(tiny_model_dir), dtype="float32", device="cpu", lora=LoraSettings(r=4)
    )
    model, tokenizer = load_model(config, trainable=True)
    perturb(model, seed=3, only="lora_B")  # peft starts B at zero: give the adapters an effect
    vllm = colocated(model, tokenizer)
    perturb(model, seed=4, only="lora_")  # a training step after the engine started
    trained = {name: p.detach().clone() for name, p in model.named_parameters()}
    received = vllm.backend.llm.model.received
    received.clear()
    vllm.sync_weights(model)
    merged = copy.deepcopy(model).merge_and_unload()
    assert [name for name, _ in received] == list(merged.state_dict())  # base names: no lora_, base_layer
    engine_state = vllm.backend.llm.model.hf.state_dict()
    for name, tensor in merged.state_dict().items():
        assert torch.allclose(engine_state[name], tensor, atol=1e-6), name
    # the policy still trains its adapters: nothing merged into it, no weight changed
    assert all(torch.equal(p, trained[name]) for name, p in model.named_parameters())
    assert not any(getattr(m, "merged", False) for m in model.modules())
    sampling = SamplingConfig(max_new_tokens=10, n=2)
    assert_same_rows(
        vllm.generate(PROMPTS, sampling, seed=8),
        HFEngine(merged, tokenizer).generate(PROMPTS, sampling, seed=8),
    )


def test_without_vllm_the_error_names_the_extra(policy, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` now fails as on a machine without it
    model, tokenizer = policy
    with pytest.raises(ImportError, match=r"pip install 'rlxf\[vllm\]'"):
        VLLMEngine(model, tokenizer, VLLMConfig())


def test_config_checks():
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMConfig(gpu_memory_utilization=0.0)
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        VLLMConfig(gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="needs vllm.mode=server"):
        VLLMConfig(tensor_parallel_size=2)
    assert VLLMConfig(mode="server", tensor_parallel_size=2).tensor_parallel_size == 2
    with pytest.raises(ValueError, match="max_model_len"):
        VLLMConfig(max_model_len=-1)
    with pytest.raises(ValueError, match="server_port"):
        VLLMConfig(server_port=0)
    with pytest.raises(ValueError, match="server_timeout"):
        VLLMConfig(server_timeout=0)


@contextlib.contextmanager
def serving(app):
    """``app`` on a real uvicorn server, on a free port of this machine, in a thread."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test's vLLM server did not start")
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_server_mode_round_trip(tiny_model_dir, monkeypatch):
    from rlxf.rollout.vllm_server import build_app

    monkeypatch.setattr(vllm_engine, "_PUSH_CHUNK_BYTES", 4096)  # many chunks, as a real model's push
    model, tokenizer = load_policy(tiny_model_dir)
    hf = HFEngine(model, tokenizer)
    llm = vllm_standin.LLM(**llm_kwargs(VLLMConfig(mode="server"), tiny_model_dir))
    sampling = SamplingConfig(max_new_tokens=10, n=2, temperature=0.8, stop=["e"])
    with serving(build_app(llm, vllm_standin.SamplingParams)) as port:
        vllm = VLLMEngine(model, tokenizer, VLLMConfig(mode="server", server_port=port))
        assert vllm.dtype == torch.float32
        assert_same_rows(vllm.generate(PROMPTS, sampling, seed=7), hf.generate(PROMPTS, sampling, seed=7))

        perturb(model, seed=5)
        llm.model.received.clear()
        vllm.sync_weights(model)
        # every key, tied included (the chunks arrive with their keys sorted)
        assert sorted(name for name, _ in llm.model.received) == sorted(model.state_dict())
        assert_same_rows(vllm.generate(PROMPTS, sampling, seed=7), hf.generate(PROMPTS, sampling, seed=7))

        llm.model.drop_weights = {"model.norm.weight"}
        perturb(model, seed=6)
        with pytest.raises(RuntimeError, match="model.norm.weight"):
            vllm.sync_weights(model)
        with pytest.raises(RuntimeError, match="top_k must be 0"):  # the server's 400, passed on
            vllm.backend.generate([[1, 2]], [{"top_k": -5, "max_tokens": 2}])
    with pytest.raises(RuntimeError, match="python -m rlxf.rollout.vllm_server"):
        VLLMEngine(model, tokenizer, VLLMConfig(mode="server", server_port=port, server_timeout=5))


def test_server_command_builds_the_engine_from_its_flags(tiny_model_dir, monkeypatch):
    import uvicorn
    from fastapi.testclient import TestClient

    from rlxf.rollout import vllm_server

    started: list[vllm_standin.LLM] = []

    class RecordingLLM(vllm_standin.LLM):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            started.append(self)

    module = vllm_standin.as_vllm_module()
    module.LLM = RecordingLLM
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port: served.update(app=app, host=host, port=port))
    flags = ["--model", str(tiny_model_dir), "--port", "9123", "--gpu-memory-utilization", "0.5"]
    vllm_server.main([*flags, "--max-model-len", "128", "--no-prefix-caching"])
    assert (served["host"], served["port"]) == ("127.0.0.1", 9123)
    (llm,) = started
    assert llm.init_kwargs == {
        "model": str(tiny_model_dir),
        "dtype": "auto",
        "logprobs_mode": "processed_logprobs",
        "enable_prefix_caching": False,
        "max_model_len": 128,
        "gpu_memory_utilization": 0.5,
        "tensor_parallel_size": 1,
        "enforce_eager": False,
    }
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0"
    client = TestClient(served["app"])
    assert client.get("/info").json() == {"dtype": "float32"}
    reply = client.post(
        "/generate", json={"prompts": [[1, 2, 3]], "params": [{"max_tokens": 3, "logprobs": 0}]}
    )
    (completion,) = reply.json()["completions"]
    assert len(completion["token_ids"]) == len(completion["logprobs"]) <= 3
