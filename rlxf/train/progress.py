"""Progress of long loops: a live bar with ETA on a terminal, plain log lines everywhere else.

On a terminal (the stream is a TTY) :class:`Progress` draws a ``tqdm`` bar. When the output goes to a
file, a pipe or a CI log, a carriage-return bar turns into noise, so it writes one plain line every
``every_pct`` percent or every ``every_s`` seconds, whichever comes first, and one at the end::

    sft: step 40/200 (20%) 3.1 s/it, ETA 8m15s, loss=0.42, lr=1e-05
    sft: step 200/200 (100%) 3.0 s/it, done in 10m02s, loss=0.21, lr=0

Metrics shown after the counts (the "postfix") are whatever the loop passes to :meth:`Progress.update`
or :meth:`Progress.set_postfix`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any, Literal

ProgressMode = Literal["auto", "bar", "plain", "off"]


def format_duration(seconds: float) -> str:
    """``42s``, ``8m15s``, ``2h05m``: short and still precise enough for an ETA."""
    total = int(round(max(0.0, seconds)))
    if total < 60:
        return f"{total}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_value(value: Any) -> str:
    """A metric value for display: four significant digits for floats."""
    if hasattr(value, "item"):  # tensors and NumPy scalars
        value = value.item()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _format_rate(seconds_per_it: float | None) -> str:
    if seconds_per_it is None:
        return "? s/it"
    if seconds_per_it >= 1 or seconds_per_it == 0:
        return f"{seconds_per_it:.1f} s/it"
    return f"{1 / seconds_per_it:.1f} it/s"


class Progress:
    """Progress of a loop of ``total`` steps, with ETA and postfix metrics.

    Args:
        total: number of steps (``None`` when unknown: no percentage nor ETA).
        desc: a short label (``"sft"``, ``"rollout"``) at the start of each line.
        initial: steps already done (a resumed run); the rate and ETA count only this session's steps.
        unit: the word before the counts in plain lines.
        stream: where to write; ``sys.stderr`` by default.
        mode: ``"auto"`` (a bar on a terminal, plain lines otherwise), ``"bar"``, ``"plain"`` or ``"off"``.
        every_s, every_pct: in plain mode, write a line at least this often in seconds, and every time
            this percentage of ``total`` is passed.
        clock: time source (seconds); tests pass a fake one.
    """

    def __init__(
        self,
        total: int | None,
        desc: str = "",
        *,
        initial: int = 0,
        unit: str = "step",
        stream: IO[str] | None = None,
        mode: ProgressMode = "auto",
        every_s: float = 30.0,
        every_pct: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.every_pct = every_pct
        self.clock = clock
        self.postfix: dict[str, Any] = {}
        self.start = clock()
        self._last_line_time = self.start
        self._last_line_n = initial
        self._closed = False
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "plain"
        self.mode: ProgressMode = mode
        self._bar = None
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                initial=initial,
                desc=desc or None,
                unit=unit,
                file=self.stream,
                dynamic_ncols=True,
            )

    # -- measurements ---------------------------------------------------------------------------------

    def seconds_per_step(self) -> float | None:
        """Average seconds per step over this session, ``None`` before the first step."""
        done = self.n - self.initial
        if done <= 0:
            return None
        return (self.clock() - self.start) / done

    def eta(self) -> float | None:
        """Estimated seconds left, ``None`` when unknown."""
        rate = self.seconds_per_step()
        if rate is None or self.total is None:
            return None
        return max(0, self.total - self.n) * rate

    def line(self) -> str:
        """The plain progress line for the current state."""
        head = f"{self.desc}: " if self.desc else ""
        if self.total:
            counts = f"{self.unit} {self.n}/{self.total} ({100 * self.n / self.total:.0f}%)"
        else:
            counts = f"{self.unit} {self.n}"
        parts = [f"{head}{counts} {_format_rate(self.seconds_per_step())}"]
        if self.total is not None and self.n >= self.total:
            parts.append(f"done in {format_duration(self.clock() - self.start)}")
        elif self.total is not None:
            eta = self.eta()
            parts.append(f"ETA {format_duration(eta) if eta is not None else '?'}")
        parts.extend(f"{k}={format_value(v)}" for k, v in self.postfix.items())
        return ", ".join(parts)

    # -- updates --------------------------------------------------------------------------------------

    def set_postfix(self, metrics: Mapping[str, Any]) -> None:
        """Show these metrics after the counts (merged into the ones shown so far)."""
        self.postfix.update(metrics)
        if self._bar is not None:
            self._bar.set_postfix({k: format_value(v) for k, v in self.postfix.items()}, refresh=False)

    def update(self, n: int = 1, metrics: Mapping[str, Any] | None = None) -> None:
        """Advance by ``n`` steps, optionally with new postfix metrics."""
        if metrics:
            self.set_postfix(metrics)
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "plain" and self._due():
            self._write_line()

    def _due(self) -> bool:
        if self.total is not None and self.n >= self.total:
            return True
        if self.clock() - self._last_line_time >= self.every_s:
            return True
        if self.total and self.every_pct > 0:
            step = self.total * self.every_pct / 100
            return int(self.n / step) > int(self._last_line_n / step)
        return False

    def _write_line(self) -> None:
        self.stream.write(self.line() + "\n")  # a display on the terminal's stream, not a log record
        self.stream.flush()
        self._last_line_time = self.clock()
        self._last_line_n = self.n

    def close(self) -> None:
        """End the bar, or write a last plain line if the final state was not written yet."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "plain" and self.n != self._last_line_n:
            self._write_line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
