"""Latency: 1-byte echo round trips, and window changes reaching the child."""

from __future__ import annotations

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bottle import bench


def test_echo(
    benchmark: BenchmarkFixture, relay: bench.Relay, settings: bench.Settings, measuring: bool
) -> None:
    """p50/p99 of 1-byte round trips to ``stty raw -echo; exec cat`` through the relay."""
    results: list[bench.LatencyResult] = []

    def run() -> None:
        results.append(bench.measure_echo(relay, settings.echo_trips))

    benchmark.pedantic(run, rounds=settings.runs if measuring else 1)
    samples = [x for r in results for x in r.samples_us]
    assert len(samples) == settings.echo_trips * len(results)
    benchmark.extra_info.update(
        trips=len(samples),
        p50_us=bench.percentile(samples, 0.5),
        p99_us=bench.percentile(samples, 0.99),
    )


def test_resize(
    benchmark: BenchmarkFixture, relay: bench.Relay, settings: bench.Settings, measuring: bool
) -> None:
    """TIOCSWINSZ on the outer terminal until the child reports that size; then a burst."""
    results: list[bench.ResizeResult] = []

    def run() -> None:
        results.append(bench.measure_resize(relay, settings.resize_trips, settings.resize_burst))

    benchmark.pedantic(run, rounds=settings.runs if measuring else 1)
    if relay.name == "pty.spawn":
        # Measured, not assumed: pty.spawn never passes window changes on.
        assert not any(r.forwarded for r in results)
        pytest.skip("pty.spawn does not forward window changes (checked: the child saw none)")
    for r in results:
        assert r.forwarded, f"{relay.name}: the child never saw a window change"
        assert r.burst_ok, f"{relay.name}: after {r.burst} resizes the child was not on the last"
    samples = [x for r in results for x in r.samples_us]
    benchmark.extra_info.update(
        trips=len(samples),
        p50_us=bench.percentile(samples, 0.5),
        p99_us=bench.percentile(samples, 0.99),
        burst=settings.resize_burst,
        burst_settle_ms=[r.burst_settle_ms for r in results],
        burst_reports=[r.burst_reports for r in results],
    )
