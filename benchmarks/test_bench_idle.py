"""Idle: what a relay costs while its child sleeps."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bottle import bench


@pytest.mark.parametrize("relay", [n for n in bench.RELAY_NAMES if n != "none"], indirect=True)
def test_idle(
    benchmark: BenchmarkFixture, relay: bench.Relay, settings: bench.Settings, measuring: bool
) -> None:
    """Wake-ups per second (context switches) and CPU of a relay whose child sleeps."""
    results: list[bench.IdleResult] = []

    def run() -> None:
        results.append(bench.measure_idle(relay, settings.idle_seconds))

    benchmark.pedantic(run, rounds=1)
    (r,) = results
    assert r.seconds >= settings.idle_seconds
    benchmark.extra_info.update(wakeups_s=r.wakeups_s, cpu_ms_s=r.cpu_ms_s)
