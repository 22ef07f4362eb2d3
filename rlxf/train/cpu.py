"""Torch's CPU threads, and a warning when other processes hold the cores a run is about to use.

torch runs one intra-op thread per core by default, and its parallel regions end in a barrier: every
matrix product waits for its slowest thread. When another process holds a core, the thread scheduled
there is descheduled for whole time slices, and every product waits for it. On the 2-core machine this
project is developed on, an RL step measured ~25 s alone took 245-300 s beside another CPU-heavy job,
and nothing said why. So every trainer, before its first step:

* sets torch's thread count when ``train.threads`` asks for one (0 keeps torch's default);
* measures how much of the machine other processes used over a short window (``/proc/stat`` minus this
  process's own CPU time from ``/proc/self/stat``; elsewhere the 1-minute load average) and, when the
  cores left free are fewer than torch's threads, logs a warning that names the figures and the fix;
* logs the thread count either way, so that a slow run's log shows what it ran with.

Only for runs on the CPU: on a GPU the threads feed the device and the warning would mislead.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

# How long the other processes' CPU use is sampled: long enough to average over a few scheduler slices.
SAMPLE_SECONDS = 0.5
# Other processes' use (in cores) below which a core still counts as free: system daemons, a shell.
IDLE_SLACK = 0.25


@dataclass(frozen=True)
class CpuLoad:
    """What the machine looked like just before a run."""

    cores: int  # cores this process may run on
    others: float  # cores' worth of CPU time other processes used (averaged over the sample)
    source: str  # "/proc/stat" or "load average"

    @property
    def free(self) -> float:
        return max(0.0, self.cores - self.others)


def _affinity() -> set[int] | None:
    """The CPUs this process may run on, where the OS says (Linux)."""
    try:
        return set(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return None


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    cpus = _affinity()
    return len(cpus) if cpus is not None else os.cpu_count() or 1


def _busy_jiffies(cpus: set[int]) -> tuple[int, int]:
    """``(busy, total)`` jiffies since boot of the CPUs ``cpus``, from their ``cpuN`` lines of ``/proc/stat``."""
    busy = total = 0
    with open("/proc/stat", encoding="ascii") as stat:
        for line in stat:
            name, *values = line.split()
            if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
                continue
            fields = [int(x) for x in values]
            idle = fields[3] + fields[4]  # idle + iowait
            all_ = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
            busy, total = busy + all_ - idle, total + all_
    return busy, total


def _own_jiffies() -> int:
    """This process's user + system jiffies (its threads included), from ``/proc/self/stat``."""
    with open("/proc/self/stat", encoding="ascii") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def measure_load(seconds: float = SAMPLE_SECONDS) -> CpuLoad:
    """Other processes' CPU use, in cores, over ``seconds`` on the cores this process may use."""
    cpus = _affinity()
    try:
        if cpus is None:
            raise OSError("no affinity mask")
        busy0, total0 = _busy_jiffies(cpus)
        own0 = _own_jiffies()
        time.sleep(seconds)
        busy1, total1 = _busy_jiffies(cpus)
        own1 = _own_jiffies()
    except (OSError, ValueError, IndexError):  # no /proc: the load average counts runnable processes
        return CpuLoad(cores=usable_cores(), others=os.getloadavg()[0], source="load average")
    elapsed = max(total1 - total0, 1)  # jiffies of those CPUs together
    others = max(0, (busy1 - busy0) - (own1 - own0)) / elapsed * len(cpus)  # in cores
    return CpuLoad(cores=len(cpus), others=others, source="/proc/stat")


def busy_warning(load: CpuLoad, threads: int) -> str | None:
    """The warning to show when fewer cores are free than torch has threads, else ``None``."""
    if load.others <= IDLE_SLACK or threads <= load.free + IDLE_SLACK:
        return None
    suggestion = max(1, int(load.free + IDLE_SLACK))
    return (
        f"other processes are using {load.others:.1f} of this machine's {load.cores} cores "
        f"(measured from {load.source}), and torch runs {threads} threads: each matrix product waits for "
        f"a thread that is not running, so steps can be many times slower than on an idle machine "
        f"(measured here: an RL step of ~25 s took 245-300 s). Stop the other jobs, or set train.threads="
        f"{suggestion} to use only the free cores."
    )


def configure_threads(threads: int, device: torch.device) -> int:
    """Apply ``train.threads`` (0: torch's default), log the thread count, and warn when the cores are
    busy (CPU runs only). Returns torch's thread count."""
    if threads > 0:
        torch.set_num_threads(threads)
    count = torch.get_num_threads()
    if device.type != "cpu":
        return count
    load = measure_load()
    warning = busy_warning(load, count)
    if warning is not None:
        logger.warning(warning)
    logger.info(
        "torch uses %d CPU threads on %d cores (%s); other processes used %.1f cores just now",
        count,
        load.cores,
        "train.threads" if threads > 0 else "its default",
        load.others,
    )
    return count


__all__ = ["CpuLoad", "busy_warning", "configure_threads", "measure_load", "usable_cores"]
