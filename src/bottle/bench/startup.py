"""Start-up: from spawning a relay to its child's first byte, as a process and in-process."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

from bottle.bench._common import BenchError
from bottle.bench.relays import Relay
from bottle.bench.session import Session


@dataclass
class StartupResult:
    """Spawn to the child's first byte on the outer terminal."""

    relay: str
    spawns: int
    p50_ms: float
    max_ms: float
    cpu_ms: float | None
    samples_ms: list[float] = field(repr=False, default_factory=list)


def spawn_first_byte(relay: Relay) -> tuple[Session, float]:
    """Spawn ``printf R`` through ``relay``; return the session and ms until the "R" arrived."""
    s = Session(relay, ["printf", "R"])
    try:
        buf = bytearray(16)
        n = s.read_some(buf, 30.0)
        t1 = time.perf_counter_ns()
        if buf[:n] != b"R":
            raise BenchError(f"{relay.name}: first output {bytes(buf[:n])!r}{s.stderr()}")
    except BaseException:
        s.close()
        raise
    return s, (t1 - s.spawned_ns) / 1e6


def measure_startup(relay: Relay, spawns: int) -> StartupResult:
    """Time spawn -> first byte of ``printf R``; note the relay's whole-life CPU."""
    samples, cpus = [], []
    for _ in range(spawns):
        s, ms = spawn_first_byte(relay)
        with s:
            samples.append(ms)
            info = s.wait_exit()
            if info.status != 0:
                raise BenchError(f"{relay.name}: exit status {info.status}{s.stderr()}")
            cpus.append(info.own_cpu_ns / 1e6)
    return StartupResult(
        relay.name,
        spawns,
        statistics.median(samples),
        max(samples),
        statistics.median(cpus) if relay.is_relay else None,
        samples,
    )


# The backend's path: a Python process that has imported bottle.relay calls relay.run for each
# session. Each "g" on its terminal runs one; "D" follows when run returned 0.
INPROC_DRIVER = (
    "import os, sys\n"
    "from bottle import relay\n"
    "output, argv = sys.argv[1], sys.argv[2:]\n"
    "os.write(1, b'I')\n"
    "while os.read(0, 1) == b'g':\n"
    "    os.write(1, b'D' if relay.run(argv, output=output) == 0 else b'F')\n"
)


def measure_startup_inprocess(relay: Relay, spawns: int) -> StartupResult:
    """Time ``relay.run(["printf", "R"])`` called in a process that has bottle imported.

    From the byte that asks for a run to the "R" on the terminal; the CPU is the calling
    process's own (``printf`` excluded) from before the request until run has returned.
    """
    output = "direct" if "--output" in relay.options else "copy"
    driver = Relay(f"{relay.name} in process", relay.description, relay.env)
    samples, cpus = [], []
    with Session(driver, [sys.executable, "-c", INPROC_DRIVER, output, "printf", "R"]) as s:
        if s.expect(b"I"):
            raise BenchError(f"{driver.name}: unexpected output after the ready mark")
        for _ in range(spawns):
            cpu0 = s.settled_cpu_ns()
            t0 = time.perf_counter_ns()
            s.write(b"g")
            rest = s.expect(b"R")
            samples.append((time.perf_counter_ns() - t0) / 1e6)
            if not rest:  # run's "D" comes after the child's exit and the relay's drain
                buf = bytearray(16)
                rest = bytes(buf[: s.read_some(buf, 30.0)])
            if rest != b"D":
                raise BenchError(f"{driver.name}: relay.run ended with {rest!r}{s.stderr()}")
            cpus.append((s.settled_cpu_ns() - cpu0) / 1e6)
        s.write(b"q")
        info = s.wait_exit()
        if info.status != 0:
            raise BenchError(f"{driver.name}: exit status {info.status}{s.stderr()}")
    return StartupResult(
        driver.name,
        spawns,
        statistics.median(samples),
        max(samples),
        statistics.median(cpus),
        samples,
    )
