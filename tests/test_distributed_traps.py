"""The launches accelerate would silently run as something else than asked are refused, naming the fix
(:mod:`rlxf.train.distributed`), and the shipped accelerate configs parse and say how to use them.

Most cases check :func:`check_launch` on an environment like the one ``accelerate launch`` gives the
script (read off accelerate's launcher, ``accelerate/utils/launch.py``); one real ``accelerate launch
--cpu --num_processes 2`` shows that the single process it starts stops before writing anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rlxf.train.distributed import LaunchError, check_deepspeed_config, check_launch, configure_deepspeed

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
ACCELERATE = Path(sys.executable).with_name("accelerate")

# What accelerate's launchers put in the environment (accelerate 1.x, utils/launch.py).
SIMPLE_CPU_2 = {  # `accelerate launch --cpu --num_processes 2`: prepare_simple_launcher_cmd_env, ONE process
    "ACCELERATE_USE_CPU": "True",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "ACCELERATE_MIXED_PRECISION": "no",
}
MULTI_2 = {  # torch's elastic launcher (ddp.yaml, fsdp2.yaml, DeepSpeed configs), rank 0 of 2
    "WORLD_SIZE": "2",
    "RANK": "0",
    "LOCAL_RANK": "0",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
    "ACCELERATE_MIXED_PRECISION": "no",
}
FSDP2 = {**MULTI_2, "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"}


def test_plain_runs_pass():
    assert check_launch({}, command="sft").sharding == "none"  # python -m rlxf
    assert check_launch(MULTI_2, command="sft").world_size == 2  # torchrun, ddp.yaml
    # `accelerate launch --cpu` with one process: no MASTER_PORT, nothing asked for that did not happen
    one = {"ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no"}
    assert check_launch(one, command="sft").world_size == 1
    assert check_launch(FSDP2, command="sft").sharding == "fsdp2"
    assert (
        check_launch({**MULTI_2, "ACCELERATE_USE_DEEPSPEED": "true"}, command="dpo").sharding == "deepspeed"
    )


def test_cpu_num_processes_that_started_one_process_is_refused():
    with pytest.raises(LaunchError, match="ONE process") as info:
        check_launch(SIMPLE_CPU_2, command="sft")
    assert "configs/accelerate/ddp.yaml" in str(info.value) and "torchrun" in str(info.value)
    # mpirun (the MULTI_CPU launch accelerate supports) does start them: its size variables count
    assert check_launch({**SIMPLE_CPU_2, "PMI_SIZE": "2"}, command="sft").world_size == 2


@pytest.mark.parametrize("steps, ok", [("1", True), ("4", False)])
def test_accelerates_gradient_accumulation_is_refused(steps, ok):
    env = {**MULTI_2, "ACCELERATE_GRADIENT_ACCUMULATION_STEPS": steps}
    if ok:
        check_launch(env, command="sft")
        return
    with pytest.raises(LaunchError, match="train.global_batch_size / train.micro_batch_size"):
        check_launch(env, command="sft")


@pytest.mark.parametrize("precision", ["bf16", "fp16", "fp8"])
def test_accelerates_mixed_precision_is_refused(precision):
    with pytest.raises(LaunchError, match="train.precision=bf16-mixed"):
        check_launch({**MULTI_2, "ACCELERATE_MIXED_PRECISION": precision}, command="sft")


def test_fsdp1_is_refused():
    with pytest.raises(LaunchError, match="fsdp_version: 2"):
        check_launch({**FSDP2, "FSDP_VERSION": "1"}, command="sft")


@pytest.mark.parametrize(
    "env", [FSDP2, {**MULTI_2, "ACCELERATE_USE_DEEPSPEED": "true"}], ids=["fsdp", "deepspeed"]
)
def test_a_loop_that_cannot_shard_refuses_fsdp_and_deepspeed(env):
    with pytest.raises(LaunchError, match="cannot shard") as info:
        check_launch(env, command="rl", sharding_ok=False)
    assert "ddp.yaml" in str(info.value)
    check_launch(MULTI_2, command="rl", sharding_ok=False)  # data parallelism is fine


@pytest.mark.parametrize(
    "config, match",
    [
        ({"gradient_accumulation_steps": 4}, "gradient_accumulation_steps"),
        ({"optimizer": {"type": "AdamW"}}, "remove `optimizer`"),
        ({"scheduler": {"type": "WarmupLR"}}, "remove `scheduler`"),
        ({"bf16": {"enabled": True}}, "train.precision"),
        ({"fp16": {"enabled": "true"}}, "train.precision"),
    ],
)
def test_deepspeed_settings_that_override_rlxfs_are_refused(config, match):
    with pytest.raises(LaunchError, match=match):
        check_deepspeed_config({"zero_optimization": {"stage": 2}, **config})
    check_deepspeed_config({"gradient_accumulation_steps": "auto", "bf16": {"enabled": False}})


def test_a_deepspeed_json_is_checked_before_the_run(tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 2}, "optimizer": {"type": "Adam"}}))
    env = {**MULTI_2, "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_CONFIG_FILE": str(config)}
    with pytest.raises(LaunchError, match="remove `optimizer`"):
        check_launch(env, command="sft")


def test_deepspeed_config_gets_the_loops_numbers():
    class Plugin:
        deepspeed_config = {"zero_optimization": {"stage": 3}, "gradient_clipping": "auto"}

    class Accelerator:
        num_processes = 2
        state = type("State", (), {"deepspeed_plugin": Plugin()})()

    accelerator = Accelerator()
    configure_deepspeed(accelerator, per_process_batch=4, max_grad_norm=0.5)
    config = Plugin.deepspeed_config
    assert config["train_micro_batch_size_per_gpu"] == 4 and config["train_batch_size"] == 8
    assert config["gradient_accumulation_steps"] == 1 and config["gradient_clipping"] == 0.5
    assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    Plugin.deepspeed_config["gradient_clipping"] = 2.0
    with pytest.raises(LaunchError, match="train.max_grad_norm"):
        configure_deepspeed(accelerator, per_process_batch=4, max_grad_norm=0.5)


# ---------------------------------------------------------------------------------------------- real launches


def write_sft_data(path: Path) -> Path:
    records = [{"prompt": f"Say {w}.", "completion": f" {w}."} for w in ("yes", "no", "maybe", "hello")] * 4
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_accelerate_launch_cpu_num_processes_2_stops_before_writing(tiny_model_dir, tmp_path):
    """The measured trap itself: accelerate starts one process, which refuses and writes nothing."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ACCELERATE_CONFIG_FILE", None)
    command = [str(ACCELERATE), "launch", "--cpu", "--num_processes", "2", "-m", "rlxf", "sft"]
    command += ["--model", str(tiny_model_dir), "--data", str(write_sft_data(tmp_path / "d.jsonl"))]
    command += ["--out", str(out), "eval_split=0", "train.global_batch_size=4", "train.micro_batch_size=2"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "rlxf sft: error: accelerate launch started ONE process" in result.stderr, result.stderr[-2000:]
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "name, kind",
    [
        ("ddp", "MULTI_GPU"),
        ("fsdp2", "FSDP"),
        ("deepspeed_zero2", "DEEPSPEED"),
        ("deepspeed_zero3", "DEEPSPEED"),
    ],
)
def test_each_accelerate_config_parses_and_says_how_to_use_it(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    path = CONFIGS / f"{name}.yaml"
    config = load_config_from_file(str(path))
    assert config.distributed_type == kind
    assert config.mixed_precision == "no" and config.num_processes == 2
    header = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
    assert any(f"accelerate launch --config_file configs/accelerate/{name}.yaml" in line for line in header)
    if name == "fsdp2":
        assert config.fsdp_config["fsdp_version"] == 2
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])
        assert config.deepspeed_config["gradient_accumulation_steps"] == 1
