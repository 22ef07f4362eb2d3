"""train.threads and the busy-machine warning (rlxf/train/cpu.py)."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch

from rlxf.train.cpu import CpuLoad, busy_warning, configure_threads, measure_load, usable_cores
from rlxf.train.loop import UpdateConfig


def test_busy_warning_by_hand() -> None:
    idle = CpuLoad(cores=2, others=0.1, source="/proc/stat")
    assert busy_warning(idle, threads=2) is None
    half = CpuLoad(cores=2, others=1.0, source="/proc/stat")
    message = busy_warning(half, threads=2)
    assert message is not None
    assert "1.0 of this machine's 2 cores" in message and "train.threads=1" in message
    assert busy_warning(half, threads=1) is None  # one thread on the one free core: no contention
    full = CpuLoad(cores=2, others=2.0, source="load average")
    assert "train.threads=1" in busy_warning(full, threads=2)  # never suggests 0 threads
    assert "load average" in busy_warning(full, threads=2)
    many = CpuLoad(cores=16, others=4.0, source="/proc/stat")
    assert "train.threads=12" in busy_warning(many, threads=16)


def test_measure_load_sees_another_busy_process() -> None:
    """A process spinning on one core shows up as (about) one core's worth of use by others, and this
    process's own work does not count."""
    quiet = measure_load(0.3)
    assert quiet.cores == usable_cores() >= 1 and quiet.others >= 0
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = measure_load(0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy.others >= 0.5, (quiet, busy)  # the spinner alone (more where other jobs run too)
    if busy.cores == 1:
        assert busy_warning(busy, threads=1) is not None


def test_configure_threads_sets_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="rlxf.train.cpu"):
            assert configure_threads(1, torch.device("cpu")) == 1
        assert torch.get_num_threads() == 1
        assert "torch uses 1 CPU threads" in caplog.text and "train.threads" in caplog.text
        assert configure_threads(0, torch.device("cpu")) == 1  # 0 keeps the count as it is
    finally:
        torch.set_num_threads(before)


def test_threads_option_is_checked() -> None:
    with pytest.raises(ValueError, match="threads must be >= 0"):
        UpdateConfig(threads=-1)
