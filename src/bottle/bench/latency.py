"""Echo latency: one byte there and back through the relay, as percentiles."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bottle.bench._common import BenchError
from bottle.bench.relays import Relay
from bottle.bench.session import Session


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-quantile (0..1) of ``values``, nearest-rank."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[rank]


@dataclass
class LatencyResult:
    """Round trips through one relay."""

    relay: str
    trips: int
    p50_us: float
    p99_us: float
    cpu_us_per_trip: float | None
    samples_us: list[float] = field(repr=False, default_factory=list)


ECHO_CHILD = ["/bin/sh", "-c", "stty raw -echo && printf R && exec cat"]


def measure_echo(relay: Relay, trips: int, warmup: int = 100) -> LatencyResult:
    """Time 1-byte round trips through ``relay`` to a child that echoes."""
    return measure_echo_interleaved([relay], trips, warmup)[relay.name]


def measure_echo_interleaved(
    relays: Sequence[Relay], trips: int, warmup: int = 100, block: int = 100
) -> dict[str, LatencyResult]:
    """Time 1-byte round trips through several relays at once, in alternating blocks.

    Every relay's session is open for the whole measurement and the trips go to each in turn,
    ``block`` at a time (order reversed every other block), so that a burst of other work on
    the machine lands on all of them alike and their ratios hold still.
    """
    sessions: list[Session] = []
    try:
        for relay in relays:
            sessions.append(Session(relay, ECHO_CHILD))
        cpu0: dict[str, int] = {}
        for s in sessions:
            if s.expect(b"R"):
                raise BenchError(f"{s.relay.name}: unexpected output after the ready mark")
        buf = bytearray(64)
        clock = time.perf_counter_ns
        samples: dict[str, list[float]] = {s.relay.name: [] for s in sessions}

        def trip_block(s: Session, count: int, keep: bool) -> None:
            fd, name = s.master, s.relay.name
            for i in range(count):
                byte = bytes((97 + i % 26,))
                t0 = clock()
                os.write(fd, byte)
                n = s.read_some(buf, 5.0)
                t1 = clock()
                if buf[:n] != byte:
                    raise BenchError(f"{name}: echo of {byte!r} came back as {bytes(buf[:n])!r}")
                if keep:
                    samples[name].append((t1 - t0) / 1000)

        for s in sessions:
            cpu0[s.relay.name] = s.settled_cpu_ns() if s.relay.is_relay else 0
            trip_block(s, warmup, keep=False)
        done = 0
        while done < trips:
            count = min(block, trips - done)
            for s in sessions if (done // block) % 2 == 0 else sessions[::-1]:
                trip_block(s, count, keep=True)
            done += count
        results = {}
        for s in sessions:
            name = s.relay.name
            cpu = (
                (s.settled_cpu_ns() - cpu0[name]) / 1000 / (warmup + trips)
                if s.relay.is_relay
                else None
            )
            v = samples[name]
            results[name] = LatencyResult(
                name, trips, percentile(v, 0.5), percentile(v, 0.99), cpu, v
            )
        return results
    finally:
        for s in sessions:
            s.close()
