"""Fixtures for the relay benchmarks: which relays run here, payloads, sizes.

With ``--benchmark-disable`` (the default test run) every benchmark runs once on small sizes as
a smoke test; with ``--benchmark-enable`` it measures with the sizes of ``bottle bench``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bottle import bench


@functools.cache
def _reason(name: str) -> str | None:
    return bench.unavailable_reason(bench.RELAYS[name])


def require_relay(name: str) -> bench.Relay:
    """Return the relay, skipping a missing peer or unbuilt extension, failing otherwise."""
    reason = _reason(name)
    if reason is None:
        return bench.RELAYS[name]
    if name == "script":
        pytest.skip(f"peer not installed: {reason}")
    if name in ("native", "recorded", "direct") and _reason("pure") is None:
        if os.environ.get("BOTTLE_REQUIRE_EXTENSION") == "1":
            pytest.fail(f"BOTTLE_REQUIRE_EXTENSION=1 but the native relay is missing: {reason}")
        pytest.skip(f"native extension not built: {reason}")
    pytest.fail(reason)


@pytest.fixture(params=bench.RELAY_NAMES)
def relay(request: pytest.FixtureRequest) -> bench.Relay:
    """Each relay in turn: native (copy mode), recorded, direct, pure, script, pty.spawn, none."""
    return require_relay(request.param)


@pytest.fixture(scope="session")
def payloads() -> Iterator[bench.Payloads]:
    """Random payload files, shared by the whole run."""
    with bench.Payloads() as p:
        yield p


@pytest.fixture
def measuring(benchmark: BenchmarkFixture) -> bool:
    """Whether pytest-benchmark measures (``--benchmark-enable``) or only smoke-runs."""
    return not benchmark.disabled


@pytest.fixture
def settings(measuring: bool) -> bench.Settings:
    """Full sizes when measuring, tiny ones for the smoke run."""
    return bench.FULL if measuring else bench.SMOKE

