"""Fixtures of the relay suites: the implementation (native, pure), the output mode (copy,
direct), `spawn`, which starts relay sessions for them and cleans every one up, and `core`, the
copy-loop module itself for the tests that drive it directly."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from harness.relay import IMPLEMENTATIONS, OUTPUTS, Session, output_args, require_implementation

from bottle import _ptyrelay_py


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    """The relay implementation under test ("native" or "pure")."""
    name: str = request.param
    require_implementation(name)
    return name


@pytest.fixture(params=OUTPUTS)
def mode(request: pytest.FixtureRequest) -> str:
    """The relay's output mode under test ("copy", the default, or "direct")."""
    name: str = request.param
    return name


@pytest.fixture
def spawn(impl: str, mode: str, tmp_path: Path) -> Iterator[Callable[..., Session]]:
    """Start relay sessions for the implementation and output mode under test; everything is
    cleaned up. A session started with an explicit ``argv`` chooses its mode itself."""
    sessions: list[Session] = []

    def start(cmd: Sequence[str] = (), **kwargs: Any) -> Session:
        if kwargs.get("argv") is None:
            kwargs["relay_args"] = [*output_args(mode), *kwargs.get("relay_args", ())]
        session = Session(cmd, impl=impl, tmp=tmp_path, **kwargs)
        sessions.append(session)
        return session

    yield start
    for session in sessions:
        session.close()


def native_core() -> ModuleType | None:
    """The compiled copy loop, or None when it is not built."""
    try:
        return importlib.import_module("bottle._ptyrelay")
    except ImportError:
        return None


@pytest.fixture(params=["native", "pure"])
def core(request: pytest.FixtureRequest) -> ModuleType:
    """The relay core under test: the compiled module or its pure-Python twin."""
    if request.param == "pure":
        return _ptyrelay_py
    native = native_core()
    if native is None:
        if os.environ.get("BOTTLE_REQUIRE_EXTENSION", "") not in ("", "0"):
            pytest.fail("BOTTLE_REQUIRE_EXTENSION is set but bottle._ptyrelay is not importable")
        pytest.skip("native extension not built")
    return native
