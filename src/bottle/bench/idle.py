"""Idle cost: wake-ups and CPU of a relay whose child writes nothing."""

from __future__ import annotations

import time
from dataclasses import dataclass

from bottle.bench._procfs import context_switches, own_cpu_ns
from bottle.bench.relays import Relay
from bottle.bench.session import Session


@dataclass
class IdleResult:
    """A relay whose child sleeps."""

    relay: str
    seconds: float
    wakeups_s: float
    cpu_ms_s: float


IDLE_CHILD = ["/bin/sh", "-c", "stty raw -echo && printf R && exec sleep 3600"]


def measure_idle(relay: Relay, seconds: float) -> IdleResult:
    """Count the relay's context switches and CPU while its child sleeps."""
    if not relay.is_relay:
        return IdleResult(relay.name, seconds, 0.0, 0.0)
    with Session(relay, IDLE_CHILD) as s:
        s.expect(b"R")
        s.settled_cpu_ns()
        time.sleep(0.2)
        cpu0, sw0, t0 = own_cpu_ns(s.pid), context_switches(s.pid), time.monotonic()
        time.sleep(seconds)
        cpu1, sw1, t1 = own_cpu_ns(s.pid), context_switches(s.pid), time.monotonic()
    return IdleResult(relay.name, t1 - t0, (sw1 - sw0) / (t1 - t0), (cpu1 - cpu0) / 1e6 / (t1 - t0))
