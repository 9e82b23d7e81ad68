"""Start-up and many sessions at once."""

from __future__ import annotations

import statistics

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bottle import bench


def test_startup(
    benchmark: BenchmarkFixture, relay: bench.Relay, settings: bench.Settings, measuring: bool
) -> None:
    """Spawn -> the child's first byte on the outer terminal (the benchmark's own timing)."""
    sessions: list[bench.Session] = []
    times: list[float] = []

    def run() -> None:
        s, ms = bench.spawn_first_byte(relay)
        sessions.append(s)
        times.append(ms)

    def end(s: bench.Session) -> None:
        try:
            s.wait_exit()  # printf exits by itself; the relay follows with its status
        finally:
            s.close()

    try:
        benchmark.pedantic(
            run,
            teardown=lambda: end(sessions[-1]),
            rounds=settings.startup_spawns if measuring else 1,
        )
    finally:
        for s in sessions:
            end(s)
    assert all(s.exit is not None and s.exit.status == 0 for s in sessions)
    cpu = [s.exit.own_cpu_ns / 1e6 for s in sessions if s.exit is not None]
    benchmark.extra_info.update(
        p50_ms=statistics.median(times),
        relay_cpu_ms=statistics.median(cpu) if relay.is_relay else None,
    )


@pytest.mark.parametrize("relay", ["native", "direct"], indirect=True)
def test_startup_in_process(
    benchmark: BenchmarkFixture, relay: bench.Relay, settings: bench.Settings, measuring: bool
) -> None:
    """relay.run called in a process that has bottle imported (the backend's path): request ->
    the child's first byte, and the caller's CPU per run."""
    results: list[bench.StartupResult] = []
    spawns = settings.startup_spawns if measuring else 2
    benchmark.pedantic(
        lambda: results.append(bench.measure_startup_inprocess(relay, spawns)), rounds=1
    )
    (r,) = results
    assert r.spawns == len(r.samples_ms) == spawns
    assert r.cpu_ms is not None and r.cpu_ms > 0
    benchmark.extra_info.update(p50_ms=r.p50_ms, cpu_ms=r.cpu_ms)


def test_many_sessions(
    benchmark: BenchmarkFixture,
    relay: bench.Relay,
    settings: bench.Settings,
    measuring: bool,
    payloads: bench.Payloads,
) -> None:
    """16 relays streaming at once: aggregate MiB/s and total relay CPU per GiB, bytes intact."""
    results: list[bench.ManyResult] = []
    payload = payloads.get(settings.many_bytes)

    def run() -> None:
        results.append(bench.measure_many(relay, payload, settings.many_sessions))

    benchmark.pedantic(run, rounds=settings.runs if measuring else 1)
    assert all(r.bytes == payload.size * settings.many_sessions for r in results)
    benchmark.extra_info.update(
        sessions=settings.many_sessions,
        mib_s=statistics.median(r.mib_s for r in results),
        cpu_s_per_gib=(
            statistics.median(r.cpu_s_per_gib or 0.0 for r in results) if relay.is_relay else None
        ),
    )
