"""Readings of a process from /proc (Linux): open files, memory, CPU time, and the processes below it.

Standard library only, so gevent-free programs (the benchmark runner and load generator) use them too; the public
names are in :mod:`geventchat.testing`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import TypeVar

_N = TypeVar("_N", int, float)

_PAGE = os.sysconf("SC_PAGE_SIZE")
_TICK = os.sysconf("SC_CLK_TCK")


def open_fds(pid: int | str = "self") -> int:
    """How many file descriptors ``pid`` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int | str = "self") -> int:
    """Resident set size of ``pid``."""
    with open(f"/proc/{pid}/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE


def pss_bytes(pid: int | str = "self") -> int:
    """Proportional set size of ``pid``: pages shared with other processes split between them (fair for forks)."""
    with open(f"/proc/{pid}/smaps_rollup", "rb") as rollup:
        for line in rollup:
            if line.startswith(b"Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it (pre-forked workers, a process per client)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue  # exited while we looked
        children.setdefault(int(fields[1]), []).append(int(entry))  # its parent's pid
    found, todo = [], [pid]
    while todo:  # bounded: each process is visited once, /proc lists each pid once
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def summed(read: Callable[[int], _N], pids: Iterable[int]) -> _N:
    """``read`` (one of the readers above) added up over ``pids``, skipping those that have exited meanwhile.

    Summed RSS counts pages shared between processes once per process; sum PSS over forks."""
    values: list[_N] = []
    for pid in pids:
        try:
            values.append(read(pid))
        except OSError:
            continue
    return sum(values)
