"""CPU training on cores that other processes share: as many intra-op threads as cores are free.

PyTorch's OpenMP threads spin while they wait at the end of each parallel region. With one thread
per core and another busy process on the machine, every region waits for a thread that the kernel
has descheduled, and the waiting threads burn the cores the late one needs: training slowed 3x
beside one busy process and 10-16x beside a second training, whose threads spin too. Passive
waiting (`OMP_WAIT_POLICY=PASSIVE`) avoids that but costs a third of the speed on an idle machine.

`CpuShare` keeps the spinning and matches the thread count to the cores left free instead: every
few seconds it reads how much CPU time other processes used (`/proc/stat` minus this process and
its children, the DataLoader workers) and sets `torch.set_num_threads` to the free cores, between 1
and the thread count it started with. On an idle machine nothing changes.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional

import torch

log = logging.getLogger(__name__)

_PROC = Path("/proc")


def _busy_ticks(cpus: set[int]) -> Optional[int]:
    """Clock ticks these CPUs spent running anything (user, nice, system, irq, softirq); None
    where /proc/stat is missing (not Linux)."""
    try:
        lines = (_PROC / "stat").read_text().splitlines()
    except OSError:
        return None
    total = 0
    for line in lines:
        name, *values = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in values[:7])
            total += user + nice + system + irq + softirq
    return total


def _process_ticks(pid: int | str) -> int:
    """User + system clock ticks of one process (all its threads); 0 when it is gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))


def _children(pid: int) -> list[str]:
    pids: list[str] = []
    for task in (_PROC / str(pid) / "task").glob("*"):
        try:
            pids += (task / "children").read_text().split()
        except OSError:
            pass
    return pids


def _own_ticks() -> int:
    """This process and its live descendants (loader workers and what they start)."""
    total, todo = 0, [str(os.getpid())]
    while todo:
        pid = todo.pop()
        total += _process_ticks(pid)
        todo += _children(int(pid))
    return total


class CpuShare:
    """Call `update()` once per training step; every `interval_s` it re-reads the machine's load and
    sets the intra-op thread count to the cores other processes leave free. Returns the new count
    when it changed, else None."""

    def __init__(self, max_threads: Optional[int] = None, interval_s: float = 2.0) -> None:
        self.max_threads = max_threads or torch.get_num_threads()
        # The CPUs this process may run on: only their load is shared with it.
        self.cpus = (
            set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
        )
        self.cores = len(self.cpus)
        self.interval_s = interval_s
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.enabled = _busy_ticks(self.cpus) is not None and self.max_threads > 1
        self.others = 0.0  # cores in use by other processes, at the last reading
        self._last = self._reading() if self.enabled else None

    def _reading(self) -> tuple[float, int, int]:
        return time.monotonic(), _busy_ticks(self.cpus) or 0, _own_ticks()

    def threads_for(self, others: float) -> int:
        """Free cores, rounded down unless nearly whole (a busy neighbour that got only part of a
        core from the kernel, because our threads held the rest, still counts as one)."""
        free = self.cores - others
        return max(1, min(self.max_threads, int(free + 0.3)))

    def update(self) -> Optional[int]:
        if not self.enabled:
            return None
        now = time.monotonic()
        if now - self._last[0] < self.interval_s:
            return None
        reading = self._reading()
        elapsed = reading[0] - self._last[0]
        machine, own = reading[1] - self._last[1], reading[2] - self._last[2]
        self._last = reading
        self.others = min(float(self.cores), max(0.0, (machine - own) / self.hz / elapsed))
        threads = self.threads_for(self.others)
        if threads == torch.get_num_threads():
            return None
        torch.set_num_threads(threads)
        return threads
