"""Readings from /proc: a process's state, its own CPU time, its context switches, and the
processes carrying a benchmark tag.
"""

from __future__ import annotations

import os
import time

from bottle.bench._common import TAG_VAR


def read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def stat_fields(pid: int) -> list[str]:
    # Fields after "(comm)"; comm may contain spaces or parentheses, hence rsplit.
    return read_text(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()


def process_state(pid: int) -> str:
    """Return the one-letter scheduler state of ``pid`` ("R", "S", "Z", ...)."""
    return stat_fields(pid)[0]


def own_cpu_ns(pid: int) -> int:
    """Return the CPU time ``pid`` itself has used, children excluded, in nanoseconds.

    Exact for a sleeping or zombie process (schedstat is brought up to date when a task leaves
    the CPU). Threads that already exited are only in the group's tick-grained stat counters;
    those win when they are larger.
    """
    total = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            total += int(read_text(f"/proc/{pid}/task/{tid}/schedstat").split()[0])
    except FileNotFoundError:
        total = 0
    fields = stat_fields(pid)
    ticks = os.sysconf("SC_CLK_TCK")
    group_ns = (int(fields[11]) + int(fields[12])) * 1_000_000_000 // ticks
    if group_ns > total + 2 * 1_000_000_000 // ticks:
        return group_ns
    return total


def context_switches(pid: int) -> int:
    """Return voluntary + involuntary context switches of all of ``pid``'s threads."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        for line in read_text(f"/proc/{pid}/task/{tid}/status").splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                total += int(line.split()[1])
    return total


def tagged_pids(tag: str) -> list[int]:
    """Return the live processes whose environment carries ``TAG_VAR=tag``."""
    needle = f"{TAG_VAR}={tag}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def settled_cpu_ns(pid: int, timeout: float = 2.0) -> int:
    """Return ``pid``'s own CPU once it has gone back to sleep (or after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    last = -1
    while True:
        cpu = own_cpu_ns(pid)
        if cpu == last and process_state(pid) in ("S", "D"):
            return cpu
        if time.monotonic() > deadline:
            return cpu
        last = cpu
        time.sleep(0.002)
