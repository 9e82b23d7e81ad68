"""Fixtures of the relay suites: the implementation (native, pure), the output mode (copy,
direct), and `spawn`, which starts relay sessions for them and cleans every one up."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from harness.relay import IMPLEMENTATIONS, OUTPUTS, Session, output_args, require_implementation


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
