"""Rollout workers as Ray actors (``rollout.placement: ray``, rlxf/rollout/ray_engine.py), on a local Ray.

* ``rlxf rl ... ray.address=auto`` joins a cluster started by ``ray start --head`` in another process;
* ``rlxf rl`` with a trainer actor and 2 rollout actors runs 3 steps like the single-process run at the
  same seed: the same logged figures (within float rounding: the workers generate shares of the batch at
  other shapes) and the same final weights within 1e-5; after every sync each worker's SHA-256 equals
  the one the trainer sent, and the last one is the hash of the saved model;
* the Ray engine's batches are the in-process engine's (tokens equal, log-probs within 1e-5) before and
  after weight pushes, and a LoRA policy reaches the workers merged;
* a worker that does not report the sent hash stops training; bfloat16 weights cross numpy exactly and
  tied weights travel once;
* the vLLM engine is selectable (``rollout.engine: vllm``) and trains like the transformers engine (on the
  vLLM stand-in of tests/vllm_standin.py: CI has no GPU).
"""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import vllm_standin
from safetensors.torch import load_file
from test_ppo import PROMPTS

from rlxf.algos.rl import RLConfig, rl
from rlxf.config import ConfigError, load_config
from rlxf.models import ModelConfig, load_model
from rlxf.rollout import HFEngine, SamplingConfig
from rlxf.rollout.ray_engine import (
    RayConfig,
    RayEngine,
    WorkerSpec,
    check_worker_hashes,
    import_ray,
    pack_weights,
    state_sha256,
)
from rlxf.train.metrics import read_metrics

REWARD = """
def score(prompts, completions):
    return [c.count("e") / max(len(c), 1) for c in completions]
"""


def test_rl_joins_a_running_cluster(tiny_model_dir, tmp_path):
    """``ray start --head`` in another process (a cluster's head node), then ``rlxf rl ... ray.address=auto``
    from a folder, with relative paths: the trainer and its workers run on that cluster and the run folder
    is written where the command was given. (First in the module: no Ray of this process is running.)"""
    rl_config(tiny_model_dir, tmp_path, "unused")  # writes the prompts and the reward file
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [str(ray_cli), "start", "--head", f"--port={port}", "--num-cpus=4", "--include-dashboard=false"]
        + ["--disable-usage-stats", "--block"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # where `auto` looks
        deadline = time.monotonic() + 120
        while not (current.is_file() and current.read_text().strip().endswith(f":{port}")):
            assert head.poll() is None and time.monotonic() < deadline, "ray start --head did not come up"
            time.sleep(0.5)
        subprocess.run(
            [sys.executable, "-m", "rlxf", "rl", "--model", str(tiny_model_dir), "--prompts", "train.jsonl"]
            + ["--reward", "fn:reward.py:score", "--out", "on-cluster", "sampling.n=2"]
            + ["sampling.max_new_tokens=6", "prompts_per_step=4", "num_steps=2", "micro_batch_size=4"]
            + ["rollout.placement=ray", "ray.address=auto"],
            cwd=tmp_path,
            check=True,
            timeout=300,
        )
    finally:
        head.terminate()
        head.wait(timeout=120)
    syncs = [json.loads(line) for line in (tmp_path / "on-cluster" / "weight_syncs.jsonl").open()]
    assert [s["step"] for s in syncs] == [0, 1, 2]
    assert all(s["workers"] == [s["sha256"]] * 2 for s in syncs)
    assert (tmp_path / "on-cluster" / "model" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (starting one takes seconds); rl() uses it as it is."""
    ray = import_ray()
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def rl_config(model_dir: Path, tmp: Path, out: str, **overrides) -> RLConfig:
    (tmp / "reward.py").write_text(REWARD)
    (tmp / "train.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    (tmp / "held_out.jsonl").write_text(
        "".join(
            json.dumps({"prompt": p}) + "\n" for p in ["The weather today", "My new phone", "The concert"]
        )
    )
    base = {
        "model": {"name_or_path": str(model_dir)},
        "prompts": str(tmp / "train.jsonl"),
        "eval_prompts": str(tmp / "held_out.jsonl"),
        "reward": f"fn:{tmp / 'reward.py'}:score",
        "out": str(tmp / out),
        "sampling": {"n": 2, "max_new_tokens": 6},
        "prompts_per_step": 4,
        "num_steps": 3,
        "micro_batch_size": 4,
        "kl": {"coef": 0.05},
        "train": {"learning_rate": 1e-3, "precision": "fp32"},
    }
    for key, value in overrides.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return load_config(RLConfig, overrides=base)


def assert_same_run(one: Path, two: Path, rel: float = 1e-4) -> None:
    weights_one = load_file(one / "model" / "model.safetensors")
    weights_two = load_file(two / "model" / "model.safetensors")
    worst = max((weights_one[k] - weights_two[k]).abs().max().item() for k in weights_one)
    assert worst < 1e-5, worst
    records_one, records_two = read_metrics(one / "metrics.jsonl"), read_metrics(two / "metrics.jsonl")
    assert [r["step"] for r in records_one] == [r["step"] for r in records_two] == [0, 1, 2, 3, 3]
    for a, b in zip(records_one, records_two):
        assert a.keys() == b.keys()
        for key in a.keys() - {"step", "tokens_per_s"}:
            if key.startswith("time/"):
                continue
            if a[key] is None:  # not finite (JSON null): e.g. explained variance of constant returns
                assert b[key] is None, key
            else:
                assert b[key] == pytest.approx(a[key], rel=rel, abs=1e-6), key


@pytest.mark.parametrize(
    "case",
    [
        {"estimator": "grpo", "kl": {"placement": "loss", "estimator": "k3"}},
        {"estimator": "ppo", "critic": {"kind": "shared"}, "ppo_epochs": 2},
    ],
    ids=["grpo", "ppo-2-epochs"],
)
def test_trainer_and_two_rollout_actors_run_like_one_process(local_ray, tiny_model_dir, tmp_path, case):
    local = rl(rl_config(tiny_model_dir, tmp_path, "local", **case))
    on_ray = rl(
        rl_config(tiny_model_dir, tmp_path, "ray", **case, rollout={"placement": "ray", "num_workers": 2})
    )
    assert on_ray.out == tmp_path / "ray"
    start = load_file(tiny_model_dir / "model.safetensors")
    trained = load_file(on_ray.out / "model" / "model.safetensors")
    assert any(not start[k].equal(trained[k]) for k in start)  # it trained
    assert_same_run(local.out, on_ray.out)
    for samples in sorted((local.out / "samples").glob("*.jsonl")):
        assert (on_ray.out / "samples" / samples.name).read_text() == samples.read_text()

    syncs = [json.loads(line) for line in (on_ray.out / "weight_syncs.jsonl").read_text().splitlines()]
    assert [s["step"] for s in syncs] == [0, 1, 2, 3]  # the starting weights, then after every update
    for s in syncs:
        assert s["workers"] == [s["sha256"], s["sha256"]]
    assert len({s["sha256"] for s in syncs}) == 4  # every update changed what the workers hold
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(on_ray.out / "model")
    assert state_sha256(saved.state_dict().items()) == syncs[-1]["sha256"]  # they sampled the final policy
    assert not (local.out / "weight_syncs.jsonl").exists()


@torch.no_grad()
def perturb(model: torch.nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(0.05 * torch.randn(param.shape, generator=generator))


def assert_same_batch(got, want) -> None:
    assert got.completion_ids.equal(want.completion_ids)
    assert got.prompt_ids.equal(want.prompt_ids)
    assert got.completion_mask.equal(want.completion_mask)
    assert got.prompt_index.equal(want.prompt_index)
    assert got.completions == want.completions and got.finish_reasons == want.finish_reasons
    torch.testing.assert_close(got.logprobs, want.logprobs, atol=1e-5, rtol=0)


def test_ray_engine_samples_what_the_policy_samples_and_follows_its_weights(local_ray, tiny_model_dir):
    policy, tokenizer = load_model(
        ModelConfig(name_or_path=str(tiny_model_dir), dtype="float32", device="cpu")
    )
    spec = WorkerSpec(
        model=ModelConfig(name_or_path=str(tiny_model_dir), device="cpu"),
        weight_dtype="float32",
        precision="fp32",
    )
    engine = RayEngine(spec, RayConfig(), num_workers=2, model=policy)
    try:
        local = HFEngine(policy, tokenizer)
        prompts = ["The movie was", "Our trip", "The cast was wonderful and", "Customer service"]
        sampling = SamplingConfig(n=3, max_new_tokens=8, batch_size=4)
        for version in range(3):
            if version:
                perturb(policy, version)
                engine.sync_weights(policy)
            sent = state_sha256(policy.state_dict().items())
            assert engine.last_sync["sha256"] == sent
            assert engine.last_sync["workers"] == [sent, sent]
            assert_same_batch(
                engine.generate(prompts, sampling, seed=7, row_offset=5),
                local.generate(prompts, sampling, seed=7, row_offset=5),
            )

        # A LoRA policy reaches the workers merged: they hold what merge_and_unload gives.
        from peft import LoraConfig, get_peft_model

        lora = get_peft_model(copy.deepcopy(policy), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.1)
        engine.sync_weights(lora)
        merged = copy.deepcopy(lora).merge_and_unload()
        assert engine.last_sync["workers"] == [state_sha256(merged.state_dict().items())] * 2
        assert engine.last_sync["sha256"] != state_sha256(policy.state_dict().items())
    finally:
        engine.close()


def test_a_worker_holding_other_weights_stops_training():
    check_worker_hashes("abc", ["abc", "abc"])
    with pytest.raises(RuntimeError, match=r"rollout workers \[1\] of 3 do not hold the policy's weights"):
        check_worker_hashes("abc", ["abc", "abd", "abc"])


def test_weights_travel_once_per_tensor_and_bf16_exactly(tiny_model_dir):
    policy, _ = load_model(ModelConfig(name_or_path=str(tiny_model_dir), dtype="bfloat16", device="cpu"))
    packed, sent = pack_weights(policy, torch.bfloat16)
    names = [name for group, _, _ in packed for name in group]
    assert sorted(names) == sorted(policy.state_dict())  # every key, tied ones included
    assert ["lm_head.weight", "model.embed_tokens.weight"] in [sorted(group) for group, _, _ in packed]
    assert sum(array.nbytes for _, array, _ in packed) < sum(
        t.numel() * t.element_size() for t in policy.state_dict().values()
    )  # the tied embedding travels once
    state = policy.state_dict()
    for group, array, dtype in packed:
        assert dtype == "bfloat16" and str(array.dtype) == "int16"
        back = torch.from_numpy(array.copy()).view(torch.bfloat16)
        assert all(back.equal(state[name]) for name in group)
    assert sent == state_sha256(state.items())


def test_vllm_on_ray_needs_a_gpu_per_worker_and_ray_an_extra(tiny_model_dir, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="ray.num_gpus_per_worker=1"):
        rl_config(tiny_model_dir, tmp_path, "x", rollout={"placement": "ray", "engine": "vllm"})
    with pytest.raises(ConfigError, match="rollout.num_workers must be >= 1"):
        rl_config(tiny_model_dir, tmp_path, "x", rollout={"placement": "ray", "num_workers": 0})
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ImportError, match=r"pip install 'rlxf\[ray\]'"):
        import_ray()


def test_vllm_engine_trains_like_the_transformers_engine(tiny_model_dir, tmp_path, monkeypatch):
    """``rollout.engine: vllm`` builds the vLLM engine (here the stand-in, which draws a row's tokens the way
    the transformers engine does), pushes the weights after every update and checks them: the run is the
    transformers engine's. (With vLLM the rollout's log-probs come from a forward pass, not from the engine:
    they differ from the transformers engine's by float rounding, which GRPO's division by a group's reward
    std blows up where a group's rewards are equal; so the KL goes in the loss here, not in the reward.)"""
    kl = {"placement": "loss", "estimator": "k3"}
    hf = rl(rl_config(tiny_model_dir, tmp_path, "hf", kl=kl))
    monkeypatch.setitem(sys.modules, "vllm", vllm_standin.as_vllm_module())
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    pushes = []
    original = vllm_standin.LLM.apply_model

    def counting(self, func):
        pushes.append(getattr(func, "func", func).__name__)
        return original(self, func)

    monkeypatch.setattr(vllm_standin.LLM, "apply_model", counting)
    with_vllm = rl(rl_config(tiny_model_dir, tmp_path, "vllm", kl=kl, rollout={"engine": "vllm"}))
    assert_same_run(hf.out, with_vllm.out)
    assert pushes.count("load_weights_into") == 4  # at the start, then after each of the 3 updates
