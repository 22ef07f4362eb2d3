"""Progress: plain lines with ETA off a terminal, a bar on one."""

from __future__ import annotations

import io

import pytest

from rlxf.train.progress import Progress, format_duration, format_value


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_every_pct_with_eta_and_postfix():
    clock, stream = FakeClock(), io.StringIO()
    with Progress(10, "sft", stream=stream, every_pct=20, every_s=1e9, clock=clock) as progress:
        assert progress.mode == "plain"  # a StringIO is not a terminal
        for step in range(10):
            clock.now += 3.0
            progress.update(1, {"loss": 1 / (step + 1), "reward/mean": 2})
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 5
    assert lines[0] == "sft: step 2/10 (20%) 3.0 s/it, ETA 24s, loss=0.5, reward/mean=2"
    assert lines[2] == "sft: step 6/10 (60%) 3.0 s/it, ETA 12s, loss=0.1667, reward/mean=2"
    assert lines[-1] == "sft: step 10/10 (100%) 3.0 s/it, done in 30s, loss=0.1, reward/mean=2"


def test_plain_lines_every_seconds():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(1000, "rl", stream=stream, mode="plain", every_s=10, every_pct=0, clock=clock)
    for _ in range(12):
        clock.now += 4.0
        progress.update()
    # lines after 12 s (step 3), 24 s (step 6), 36 s (step 9), 48 s (step 12)
    lines = stream.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["3/1000", "6/1000", "9/1000", "12/1000"]
    assert lines[0] == "rl: step 3/1000 (0%) 4.0 s/it, ETA 1h06m"
    progress.close()
    assert len(stream.getvalue().splitlines()) == 4  # the last state was already written


def test_close_writes_the_final_state_and_resume_counts_only_this_session():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(100, stream=stream, initial=50, every_s=1e9, every_pct=50, clock=clock)
    clock.now += 1.0
    progress.update(4)  # 4 steps in 1 s: 4 it/s, 46 left
    progress.close()
    assert stream.getvalue() == "step 54/100 (54%) 4.0 it/s, ETA 12s\n"


def test_bar_on_a_terminal():
    stream = FakeTTY()
    with Progress(5, "sft", stream=stream) as progress:
        assert progress.mode == "bar"
        for _ in range(5):
            progress.update(1, {"loss": 0.25})
    out = stream.getvalue()
    assert "\r" in out and "5/5" in out and "loss=0.25" in out


def test_off_writes_nothing():
    stream = io.StringIO()
    with Progress(3, stream=stream, mode="off") as progress:
        for _ in range(3):
            progress.update()
    assert stream.getvalue() == ""


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (42.4, "42s"), (495, "8m15s"), (59.6, "1m00s"), (3599.6, "1h00m"), (7500, "2h05m")],
)
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_format_value():
    import torch

    assert format_value(0.123456) == "0.1235"
    assert format_value(torch.tensor(2.5)) == "2.5"
    assert format_value(3) == "3"
