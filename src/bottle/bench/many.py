"""Many sessions at once: 16 relays streaming side by side, total rate and CPU per GiB."""

from __future__ import annotations

import hashlib
import os
import select
import time
from dataclasses import dataclass
from typing import Any

from bottle.bench._common import GIB, MIB, BenchError
from bottle.bench.relays import Relay
from bottle.bench.throughput import Stream
from bottle.bench.workload import Payload


@dataclass
class ManyResult:
    """Several relays streaming at once."""

    relay: str
    sessions: int
    bytes: int
    seconds: float
    mib_s: float
    cpu_s_per_gib: float | None


def measure_many(relay: Relay, payload: Payload, sessions: int) -> ManyResult:
    """Stream ``payload`` through ``sessions`` relays at once; total relay CPU per GiB."""
    streams: list[Stream] = []
    try:
        for _ in range(sessions):
            streams.append(Stream(relay, payload))
        for st in streams:
            st.ready()
        poll = select.poll()
        by_fd: dict[int, tuple[Stream, Any, list[int]]] = {}
        for st in streams:
            poll.register(st.session.master, select.POLLIN)
            by_fd[st.session.master] = (st, hashlib.sha256(), [0])
        t0 = time.perf_counter_ns()
        for st in streams:
            st.go()
        buf = bytearray(65536)
        view = memoryview(buf)
        while by_fd:
            events = poll.poll(30_000)
            if not events:
                raise BenchError(f"{relay.name}: {len(by_fd)} sessions stalled")
            for fd, _ in events:
                st, digest, got = by_fd[fd]
                try:
                    n = os.readv(fd, [buf])
                except OSError:
                    n = 0
                take = min(n, payload.size - got[0])
                digest.update(view[:take])
                got[0] += take
                if n == 0 or got[0] >= payload.size:
                    st.check(got[0], digest)
                    poll.unregister(fd)
                    del by_fd[fd]
        seconds = (time.perf_counter_ns() - t0) / 1e9
        results = [st.finish() for st in streams]
    finally:
        for st in streams:
            st.abort()
    total = payload.size * sessions
    cpu = sum(r.cpu_s or 0.0 for r in results) if relay.is_relay else None
    return ManyResult(
        relay.name,
        sessions,
        total,
        seconds,
        total / MIB / seconds,
        cpu * GIB / total if cpu is not None else None,
    )
