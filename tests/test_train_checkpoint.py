"""Checkpoints: exact resume of a tiny training loop, atomic saves under kills, keep_last, tidying at the
end of a run, LoRA."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, build_tiny_tokenizer

from rlxf.train import checkpoint as ckpt_mod
from rlxf.train.checkpoint import (
    CheckpointError,
    finish_checkpoints,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
)
from rlxf.train.optim import build_optimizer, build_scheduler
from rlxf.train.seed import seed_everything

TOTAL_STEPS = 6


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def make_parts(tokenizer, seed: int):
    model = build_tiny_model(tokenizer, seed=seed)
    model.train()  # dropout is 0 in the tiny Llama: train mode is deterministic
    optimizer = build_optimizer(model, lr=1e-2, weight_decay=0.1)
    scheduler = build_scheduler(optimizer, "linear", warmup_steps=2, total_steps=TOTAL_STEPS)
    return model, optimizer, scheduler


def train_steps(model, optimizer, scheduler, data_gen: torch.Generator, steps: int) -> list[float]:
    """A few SFT-like steps. The batch comes from ``data_gen``; the global RNG masks some labels, so only
    a restored global RNG repeats the same losses."""
    vocab = model.config.vocab_size
    losses = []
    for _ in range(steps):
        input_ids = torch.randint(0, vocab, (2, 12), generator=data_gen)
        labels = input_ids.clone()
        labels[torch.rand(labels.shape) < 0.3] = -100
        loss = model(input_ids=input_ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def straight_run(tokenizer):
    seed_everything(0)
    model, optimizer, scheduler = make_parts(tokenizer, seed=0)
    data_gen = torch.Generator().manual_seed(1)
    losses = train_steps(model, optimizer, scheduler, data_gen, TOTAL_STEPS)
    return losses, model, scheduler


def interrupted_run(tokenizer, ckpt_dir: Path, *, restore_rng: bool = True):
    seed_everything(0)
    model, optimizer, scheduler = make_parts(tokenizer, seed=0)
    data_gen = torch.Generator().manual_seed(1)
    first = train_steps(model, optimizer, scheduler, data_gen, 3)
    save_checkpoint(ckpt_dir, 3, model, optimizer, scheduler, extra={"data_gen": data_gen.get_state()})
    del model, optimizer, scheduler, data_gen

    # A new process would start from scratch: other weights, other RNG state.
    seed_everything(12345)
    model, optimizer, scheduler = make_parts(tokenizer, seed=123)
    state = load_checkpoint(ckpt_dir, model, optimizer, scheduler, restore_rng=restore_rng)
    assert state.step == 3
    data_gen = torch.Generator()
    data_gen.set_state(state.extra["data_gen"])
    second = train_steps(model, optimizer, scheduler, data_gen, TOTAL_STEPS - 3)
    return first + second, model, scheduler


def test_resume_is_exact(tokenizer, tmp_path):
    losses, model, scheduler = straight_run(tokenizer)
    resumed_losses, resumed_model, resumed_scheduler = interrupted_run(tokenizer, tmp_path / "ckpt")

    assert resumed_losses == losses
    assert resumed_scheduler.get_last_lr() == scheduler.get_last_lr()
    expected = dict(model.named_parameters())
    for name, param in resumed_model.named_parameters():
        assert torch.equal(param, expected[name]), name


def test_resume_without_rng_restore_diverges(tokenizer, tmp_path):
    """The control for the test above: the loop really depends on the restored global RNG."""
    losses, _, _ = straight_run(tokenizer)
    resumed_losses, _, _ = interrupted_run(tokenizer, tmp_path / "ckpt", restore_rng=False)
    assert resumed_losses[:3] == losses[:3]
    assert resumed_losses[3:] != losses[3:]


# -- atomicity ---------------------------------------------------------------------------------------


def small_parts(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    return model, optimizer


def one_step(model, optimizer):
    loss = model(torch.ones(2, 4)).pow(2).sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def params_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_loads_as(path: Path, step: int, expected: dict[str, torch.Tensor]):
    model, optimizer = small_parts(seed=99)
    state = load_checkpoint(path, model, optimizer, restore_rng=False)
    assert state.step == step
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected[name]), name


def test_crash_while_writing_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "checkpoints"
    model, optimizer = small_parts()
    one_step(model, optimizer)
    save_checkpoint(ckpt_dir, 1, model, optimizer, extra={"batch": 1})
    at_step1 = params_of(model)
    one_step(model, optimizer)

    real_save = ckpt_mod._save_file

    def dying_save(obj, path):
        if path.name == ckpt_mod.OPTIMIZER_FILE:
            raise KeyboardInterrupt("killed while writing")  # the model file is already written
        real_save(obj, path)

    monkeypatch.setattr(ckpt_mod, "_save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(ckpt_dir, 2, model, optimizer)
    monkeypatch.undo()

    leftovers = [p for p in ckpt_dir.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers and (leftovers[0] / ckpt_mod.MODEL_FILE).is_file()  # a half-written checkpoint
    assert latest_checkpoint(ckpt_dir) == ckpt_dir / "step-000001"
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step-000001"]
    assert_loads_as(ckpt_dir, 1, at_step1)

    save_checkpoint(ckpt_dir, 3, model, optimizer)  # the next save cleans up
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".")]
    assert latest_checkpoint(ckpt_dir) == ckpt_dir / "step-000003"


def test_crash_before_pointer_update(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "checkpoints"
    model, optimizer = small_parts()
    save_checkpoint(ckpt_dir, 1, model, optimizer, keep_last=1)
    at_step1 = params_of(model)
    one_step(model, optimizer)
    at_step2 = params_of(model)

    real_write = ckpt_mod.write_text_atomic

    def dying_write(path, text):
        if path.name == ckpt_mod.LATEST:
            raise KeyboardInterrupt("killed before the pointer moved")
        real_write(path, text)

    monkeypatch.setattr(ckpt_mod, "write_text_atomic", dying_write)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(ckpt_dir, 2, model, optimizer, keep_last=1)
    monkeypatch.undo()

    # keep_last=1, but the older one is pruned only after the pointer moved: both are there
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step-000001", "step-000002"]
    assert latest_checkpoint(ckpt_dir) == ckpt_dir / "step-000001"  # the pointer still names it
    assert_loads_as(ckpt_dir, 1, at_step1)
    (ckpt_dir / ckpt_mod.LATEST).unlink()  # a lost pointer: the highest complete step wins
    assert_loads_as(ckpt_dir, 2, at_step2)


def test_crash_while_resaving_same_step(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "checkpoints"
    model, optimizer = small_parts()
    save_checkpoint(ckpt_dir, 5, model, optimizer, keep_last=1)
    at_first = params_of(model)
    one_step(model, optimizer)

    real_replace = os.replace

    def dying_replace(src, dst):
        if Path(src).name.startswith(".tmp-step-"):
            raise KeyboardInterrupt("killed between moving the old one aside and the new one in")
        real_replace(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(ckpt_dir, 5, model, optimizer, keep_last=1)
    monkeypatch.undo()

    assert not (ckpt_dir / "step-000005").exists()
    found = latest_checkpoint(ckpt_dir)
    assert found is not None and found.name == ".old-step-000005"
    assert_loads_as(ckpt_dir, 5, at_first)

    save_checkpoint(ckpt_dir, 6, model, optimizer, keep_last=2)  # puts the old one back, then prunes
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step-000005", "step-000006"]
    assert not [p for p in ckpt_dir.iterdir() if p.name.startswith(".")]


def test_crash_while_pruning(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / "checkpoints"
    model, optimizer = small_parts()
    save_checkpoint(ckpt_dir, 1, model, optimizer, keep_last=1)

    def dying_rmtree(path, ignore_errors=False):
        raise KeyboardInterrupt("killed while deleting an old checkpoint")

    monkeypatch.setattr(ckpt_mod.shutil, "rmtree", dying_rmtree)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(ckpt_dir, 2, model, optimizer, keep_last=1)
    monkeypatch.undo()

    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step-000002"]  # the half-deleted one is hidden
    save_checkpoint(ckpt_dir, 3, model, optimizer, keep_last=1)
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["latest", "step-000003"]


KILLED_SAVER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from rlxf.train import checkpoint as ckpt

    ckpt_dir, marker = Path(sys.argv[1]), Path(sys.argv[2])
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 8)
    ckpt.save_checkpoint(ckpt_dir, 1, model, extra={"note": "first"})
    with torch.no_grad():
        model.weight.add_(1.0)
    real_save = ckpt._save_file

    def slow_save(obj, path):
        real_save(obj, path)
        if path.name == ckpt.MODEL_FILE:
            marker.write_text("model file written")
            time.sleep(60)

    ckpt._save_file = slow_save
    ckpt.save_checkpoint(ckpt_dir, 2, model, extra={"note": "second"})
    """
)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_during_save(tmp_path):
    ckpt_dir, marker = tmp_path / "checkpoints", tmp_path / "marker"
    script = tmp_path / "saver.py"
    script.write_text(KILLED_SAVER)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt_dir), str(marker)], env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "the saver exited early"
            assert time.monotonic() < deadline, "the saver never reached the second save"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    assert any(p.name.startswith(".tmp-step-000002") for p in ckpt_dir.iterdir())
    assert latest_checkpoint(ckpt_dir) == ckpt_dir / "step-000001"
    torch.manual_seed(0)
    expected = torch.nn.Linear(8, 8).state_dict()
    model = torch.nn.Linear(8, 8)
    state = load_checkpoint(ckpt_dir, model, restore_rng=False)
    assert state.extra == {"note": "first"}
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_keep_last(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    model, optimizer = small_parts()
    for step in range(1, 6):
        save_checkpoint(ckpt_dir, step, model, optimizer, keep_last=2)
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step-000004", "step-000005"]
    assert (ckpt_dir / "latest").read_text().strip() == "step-000005"
    for step in range(6, 9):
        save_checkpoint(ckpt_dir, step, model, optimizer, keep_last=None)
    assert len(list_checkpoints(ckpt_dir)) == 5
    with pytest.raises(ValueError):
        save_checkpoint(ckpt_dir, 9, model, optimizer, keep_last=0)


def test_finish_checkpoints_deletes_all_by_default(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    model, optimizer = small_parts()
    for step in (2, 4, 6):
        save_checkpoint(ckpt_dir, step, model, optimizer, keep_last=None)
    (ckpt_dir / ".tmp-step-000008-1").mkdir()  # left by a save killed half-way
    finish_checkpoints(ckpt_dir, keep_final=False, keep_last=2)
    assert not ckpt_dir.exists()  # no checkpoint, no `latest`, no optimizer state
    finish_checkpoints(ckpt_dir, keep_final=False, keep_last=2)  # nothing left to do: no error


def test_finish_checkpoints_keeps_the_last_ones_when_asked(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    model, optimizer = small_parts()
    for step in (2, 4, 6):
        save_checkpoint(ckpt_dir, step, model, optimizer, keep_last=None)
    finish_checkpoints(ckpt_dir, keep_final=True, keep_last=2)
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step-000004", "step-000006"]
    assert latest_checkpoint(ckpt_dir) == ckpt_dir / "step-000006"
    assert (ckpt_dir / "step-000006" / "optimizer.pt").is_file()  # what --resume needs to extend the run
    finish_checkpoints(ckpt_dir, keep_final=True, keep_last=1)
    assert [p.name for p in list_checkpoints(ckpt_dir)] == ["step-000006"]


def test_finish_checkpoints_leaves_other_files_alone(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    model, optimizer = small_parts()
    save_checkpoint(ckpt_dir, 1, model, optimizer)
    (ckpt_dir / "notes.txt").write_text("mine")
    finish_checkpoints(ckpt_dir, keep_final=False, keep_last=2)
    assert list_checkpoints(ckpt_dir) == [] and not (ckpt_dir / "latest").exists()
    assert (ckpt_dir / "notes.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="keep_last"):
        finish_checkpoints(ckpt_dir, keep_final=True, keep_last=0)


def test_no_checkpoint_is_an_error(tmp_path):
    assert latest_checkpoint(tmp_path / "nothing") is None
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(tmp_path, torch.nn.Linear(2, 2))


# -- what is stored for partly frozen models -----------------------------------------------------------


def test_frozen_parameters_are_not_stored(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    model.train()
    model(torch.randn(8, 4))  # moves the BatchNorm running statistics (buffers, not parameters)
    with torch.no_grad():
        model[2].weight.add_(1.0)
    path = save_checkpoint(tmp_path, 1, model)
    stored = torch.load(path / ckpt_mod.MODEL_FILE, weights_only=True)
    assert not any(k.startswith("0.") for k in stored)
    assert {"1.running_mean", "2.weight", "2.bias"} <= stored.keys()

    fresh = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    fresh[0].load_state_dict(model[0].state_dict())  # the frozen part comes from the model reference
    fresh[0].requires_grad_(False)
    load_checkpoint(path, fresh, restore_rng=False)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name

    other = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    with pytest.raises(CheckpointError, match="does not fit"):  # 0.* trainable here but not stored
        load_checkpoint(path, other, restore_rng=False)


def test_lora_checkpoint_holds_adapters_only(tokenizer, tmp_path):
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    model = peft.get_peft_model(build_tiny_model(tokenizer, seed=0), config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)
    path = save_checkpoint(tmp_path, 7, model)
    stored = torch.load(path / ckpt_mod.MODEL_FILE, weights_only=True)
    params = [k for k in stored if "lora_" in k]
    assert params and len(params) == sum(p.requires_grad for p in model.parameters())
    assert not any("embed_tokens" in k or "mlp" in k for k in stored)

    fresh = peft.get_peft_model(build_tiny_model(tokenizer, seed=0), config)
    load_checkpoint(path, fresh, restore_rng=False)
    expected = dict(model.named_parameters())
    for name, param in fresh.named_parameters():
        assert torch.equal(param, expected[name]), name
