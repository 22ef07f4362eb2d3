"""The run folder: files as docs/design.md lists them, metrics sinks, refusing to mix runs, resume."""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field

import pytest
import torch
import yaml

from rlxf.config import option, to_dict
from rlxf.train.checkpoint import save_checkpoint
from rlxf.train.metrics import MetricsLogger, read_metrics
from rlxf.train.run import RunDir, RunExistsError, print_config, render_config, run_status


@dataclass
class OptimConfig:
    lr: float = option(1e-5, help="learning rate")
    warmup_steps: int = option(10, help="warm-up steps")


@dataclass
class ToyConfig:
    model: str = option("smollm2-135m-instruct", help="model reference")
    steps: int = option(6, help="optimizer steps")
    optim: OptimConfig = option(default_factory=OptimConfig, help="optimiser")
    stop: list[str] = field(default_factory=lambda: ["\n\n"], metadata={"help": "stop strings"})


def tb_scalars(tb_dir, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_run_folder_layout(tmp_path):
    out = tmp_path / "run"
    cfg = ToyConfig()
    with RunDir.create(out, cfg, stream=io.StringIO()) as run:
        assert run_status(out) == "in_progress"
        for step in (1, 2, 3):
            run.log(step, {"loss": 1.0 / step, "lr": torch.tensor(1e-5), "reward/mean": float("nan")})
        # flushed at once: readable while the run goes on (a kill loses nothing logged)
        assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
        summary = run.write_summary({"loss": 1 / 3}, num_tokens=3000)

    assert yaml.safe_load((out / "config.yaml").read_text()) == to_dict(cfg)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # standard JSON: NaN is written as null
    assert records[0] == {"step": 1, "loss": 1.0, "lr": pytest.approx(1e-5), "reward/mean": None}
    assert run.model_dir == out / "model" and run.checkpoints_dir.is_dir()

    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == summary
    assert on_disk["status"] == "finished" and on_disk["metrics"] == {"loss": pytest.approx(1 / 3)}
    assert on_disk["num_tokens"] == 3000 and on_disk["tokens_per_s"] > 0 and on_disk["wall_time_s"] >= 0
    assert on_disk["peak_memory_mb"]["cpu_rss"] > 10  # a Python process with torch uses more than 10 MiB
    assert run_status(out) == "finished"

    assert list((out / "tb").glob("events.out.tfevents.*"))
    assert tb_scalars(out / "tb", "loss") == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]


def test_refuses_to_overwrite(tmp_path):
    out = tmp_path / "run"
    with RunDir.create(out, ToyConfig(), tensorboard=False) as run:
        run.log(1, {"loss": 1.0})
    with pytest.raises(RunExistsError, match="--resume") as info:
        RunDir.create(out, ToyConfig(), tensorboard=False)
    assert "in progress" in str(info.value) and "--out" in str(info.value)

    (out / "summary.json").write_text("{}")
    with pytest.raises(RunExistsError, match="finished run"):
        RunDir.create(out, ToyConfig(), tensorboard=False)
    with pytest.raises(ValueError):
        RunDir.create(out, ToyConfig(), resume=True, overwrite=True)
    assert read_metrics(out / "metrics.jsonl") == [{"step": 1, "loss": 1.0}]  # nothing was touched


def test_overwrite_replaces_only_run_files(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # a folder with other files but no run is fine
    with RunDir.create(out, ToyConfig(), tensorboard=False) as run:
        run.log(1, {"loss": 1.0})
        save_checkpoint(run.checkpoints_dir, 1, torch.nn.Linear(2, 2))
    with RunDir.create(out, ToyConfig(steps=9), overwrite=True, tensorboard=False) as run:
        assert run.resume_checkpoint is None
    assert read_metrics(out / "metrics.jsonl") == []
    assert not list((out / "checkpoints").iterdir())
    assert (out / "notes.txt").read_text() == "mine"
    assert yaml.safe_load((out / "config.yaml").read_text())["steps"] == 9


def test_resume_truncates_metrics_after_checkpoint(tmp_path):
    out = tmp_path / "run"
    with RunDir.create(out, ToyConfig(), stream=io.StringIO()) as run:
        for step in range(1, 6):
            run.log(step, {"loss": float(step)})
            if step == 3:
                save_checkpoint(run.checkpoints_dir, step, torch.nn.Linear(2, 2))
        run.write_summary({"loss": 5.0})
    # ... killed after step 5 (here: even finished), resumed with a changed option
    notes = io.StringIO()
    with RunDir.create(out, ToyConfig(steps=8), resume=True, stream=notes) as run:
        assert run.resume_step == 3 and run.resume_checkpoint == out / "checkpoints" / "step-000003"
        assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]
        assert run_status(out) == "in_progress"  # the old summary is gone
        for step in range(4, 9):
            run.log(step, {"loss": 10.0 * step})
    assert "step-000003" in notes.getvalue() and "steps: 6 -> 8" in notes.getvalue()

    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl")]
    assert steps == list(range(1, 9))  # no step twice
    # TensorBoard drops the first session's events after the checkpoint too
    assert tb_scalars(out / "tb", "loss") == [(1, 1.0), (2, 2.0), (3, 3.0)] + [
        (s, 10.0 * s) for s in range(4, 9)
    ]


def test_resume_without_checkpoint_starts_over(tmp_path):
    out = tmp_path / "run"
    with RunDir.create(out, ToyConfig(), tensorboard=False) as run:
        run.log(1, {"loss": 1.0})
    notes = io.StringIO()
    with RunDir.create(out, ToyConfig(), resume=True, tensorboard=False, stream=notes) as run:
        assert run.resume_checkpoint is None and run.resume_step == 0
    assert read_metrics(out / "metrics.jsonl") == []
    assert "starting over" in notes.getvalue()


def test_metrics_logger_rejects_bad_values(tmp_path):
    with MetricsLogger(tmp_path / "m.jsonl") as logger:
        with pytest.raises(TypeError, match="'text'"):
            logger.log(1, {"text": "hello"})
        with pytest.raises(ValueError, match="reserved"):
            logger.log(1, {"step": 3})
        with pytest.raises(TypeError, match="shape"):
            logger.log(1, {"loss": torch.ones(2)})
    assert read_metrics(tmp_path / "m.jsonl") == []
    with pytest.raises(RuntimeError):
        logger.log(2, {"loss": 1.0})


def test_read_metrics_skips_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n{"step": 2, "lo')
    assert read_metrics(path) == [{"step": 1, "loss": 0.5}]


def test_print_config_plain(tmp_path):
    stream = io.StringIO()
    print_config(ToyConfig(), title="rlxf sft", stream=stream)
    text = stream.getvalue()
    assert text.startswith("── rlxf sft ")
    assert "optim:\n  lr: 1.0e-05\n  warmup_steps: 10\n" in text
    assert "\x1b[" not in text  # no colour codes into a file
    assert render_config({"a": 1}, "t").splitlines()[1] == "a: 1"


def test_resuming_a_finished_run_needs_its_checkpoint(tmp_path):
    """A finished run whose checkpoints were tidied away (the default) cannot be resumed: a clear error, and
    the run stays as it was. One that kept its final checkpoint resumes from it."""
    out = tmp_path / "run"
    with RunDir.create(out, ToyConfig(), tensorboard=False) as run:
        run.log(1, {"loss": 1.0})
        run.write_summary({"loss": 1.0})
    with pytest.raises(RunExistsError, match="finished run whose checkpoints were not kept") as info:
        RunDir.create(out, ToyConfig(steps=8), resume=True, tensorboard=False)
    message = str(info.value)
    assert "keep_final_checkpoint" in message and "--overwrite" in message and str(out / "model") in message
    assert run_status(out) == "finished" and read_metrics(out / "metrics.jsonl") == [{"step": 1, "loss": 1.0}]

    save_checkpoint(out / "checkpoints", 1, torch.nn.Linear(2, 2))  # kept: keep_final_checkpoint=true
    with RunDir.create(out, ToyConfig(steps=8), resume=True, tensorboard=False) as run:
        assert run.resume_step == 1 and run_status(out) == "in_progress"


def test_notes_and_config_are_logged(tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="rlxf"):
        print_config(ToyConfig(), title="rlxf sft")
        with RunDir.create(out, ToyConfig(), tensorboard=False) as run:
            save_checkpoint(run.checkpoints_dir, 2, torch.nn.Linear(2, 2))
        RunDir.create(out, ToyConfig(steps=7), resume=True, tensorboard=False).close()
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("── rlxf sft ") and "steps: 6" in messages[0]
    assert any("from step-000002 (step 2)" in m for m in messages)
    assert any("steps: 6 -> 7" in m for m in messages)
    assert all(r.name.startswith("rlxf.") and r.levelname == "INFO" for r in caplog.records)
