"""Which relays the benchmarks can run here. A module of its own, not conftest.py: test modules
import it by name, and several conftest modules share that one (tests/, tests/relay/, here)."""

from __future__ import annotations

import functools
import os

import pytest

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
