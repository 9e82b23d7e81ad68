"""Start-up and many sessions at once."""

from __future__ import annotations

import statistics

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
