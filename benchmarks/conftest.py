"""Fixtures for the relay benchmarks: which relays run here, payloads, sizes.

With ``--benchmark-disable`` (the default test run) every benchmark runs once on small sizes as
a smoke test; with ``--benchmark-enable`` it measures with the sizes of ``bottle bench``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from bench_relays import require_relay
from harness.process_state import clean_process  # noqa: F401 (autouse: see tests/conftest.py)
from pytest_benchmark.fixture import BenchmarkFixture

from bottle import bench


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

