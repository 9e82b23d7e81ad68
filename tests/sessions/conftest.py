"""Fixtures of the session tests: the relay implementation the holder runs (native, pure), a
private runtime directory, and `holders`, which starts sessions there and cleans them up."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness.relay import IMPLEMENTATIONS, require_implementation
from harness.sessions import Sessions, runtime_dir


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    """The relay core the holder runs ("native" or "pure")."""
    name: str = request.param
    require_implementation(name)
    return name


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """This test's XDG_RUNTIME_DIR (so its sessions live in <it>/bottle/)."""
    with runtime_dir() as path:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(path))
        yield path


@pytest.fixture
def holders(impl: str, runtime: Path) -> Iterator[Sessions]:
    """Start sessions for the implementation under test; nothing is left running after."""
    s = Sessions(impl, runtime, sys.executable)
    try:
        yield s
    finally:
        s.close()
