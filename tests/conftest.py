"""Shared pytest fixtures: the fake smolvm (tests/fake_smolvm/), the test images registered in
it, and the guest user check. Helpers live in tests/harness/ (on sys.path through pyproject's
`pythonpath`): `terminal` (the user's terminal on a pty), `relay` (relay sessions), `backend`
(sessions, /proc scanners, images), `fakevm` (the fake's handle).

`fake_smolvm` gives each test its own fake smolvm, first on PATH, with an empty state directory.
Faults and the image table are FAKE_SMOLVM_* variables, documented in
tests/fake_smolvm/README.md (which also says what the fake rests on in smolvm's source).
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
import tempfile
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest

# pytest caches each test module's assertion-rewritten bytecode in __pycache__ (ignored by git),
# unless bytecode writing is off: under PYTHONDONTWRITEBYTECODE every worker would rewrite every
# module again on every run (about 3 s of CPU each). Only this process writes; its children
# keep the environment's choice.
sys.dont_write_bytecode = False
pytest.register_assert_rewrite("harness")

from harness.backend import add_test_images  # noqa: E402
from harness.fakevm import FAKE_DIR, FakeSmolvm  # noqa: E402

from bottle import smolvm as sv  # noqa: E402

GUEST_USER = "node"

# pytest-xdist's workers inherit LINES and COLUMNS from the controller's terminal; programs the
# tests run (curses above all) would take those over the size of the terminal they are given.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("LINES", None)
    os.environ.pop("COLUMNS", None)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fake-smolvm-version",
        default=None,
        metavar="X.Y.Z",
        help="smolvm release the fake smolvm fakes unless a test picks one (default: 1.9.3); "
        "run the suite at 1.0.2, 1.6.0, 1.9.3 and 1.16.0",
    )


@pytest.fixture(scope="session")
def python3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose `python3` is this interpreter, in a bare venv of its own.

    The fake's `#!/usr/bin/env python3` then starts Python directly instead of through a
    version manager's shim (pyenv's costs ~50 ms a call) and without whatever .pth files the
    base installation's site-packages run at start-up; the suite runs the fake thousands of
    times, and it needs the standard library only.
    """
    path = tmp_path_factory.mktemp("python3-venv")
    venv.create(path, symlinks=True, with_pip=False)
    return path / "bin"


@pytest.fixture(autouse=True)
def _no_user_config(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No test reads the config file of whoever runs the suite (~/.config/bottle/config.toml):
    XDG_CONFIG_HOME is an empty directory of the test's own, BOTTLE_CONFIG unset."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("xdg-config")))
    monkeypatch.delenv("BOTTLE_CONFIG", raising=False)


@pytest.fixture
def fake_smolvm(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    python3_dir: Path,
) -> FakeSmolvm:
    """A fresh fake smolvm first on PATH (with python3_dir after it);
    BOTTLE_SMOLVM and inherited FAKE_SMOLVM_* cleared; the release given by
    --fake-smolvm-version, if any."""
    state = tmp_path / "smolvm-state"
    state.mkdir()
    for var in list(os.environ):
        if var.startswith("FAKE_SMOLVM_"):
            monkeypatch.delenv(var)
    monkeypatch.delenv("BOTTLE_SMOLVM", raising=False)
    path = os.pathsep.join([str(FAKE_DIR), str(python3_dir), os.environ.get("PATH", "")])
    monkeypatch.setenv("PATH", path)
    monkeypatch.setenv("FAKE_SMOLVM_STATE", str(state))
    version = request.config.getoption("--fake-smolvm-version")
    if version:
        monkeypatch.setenv("FAKE_SMOLVM_VERSION", version)
    # bottle caches what it learnt of an installed smolvm (its version, whether `exec --help`
    # shows --user) by the executable's file, which is the same fake whatever release it fakes:
    # an answer left by an earlier test of this process would be another release's.
    sv.clear_version_cache()
    return FakeSmolvm(state, monkeypatch)


@pytest.fixture
def test_images(request: pytest.FixtureRequest) -> None:
    """`pytestmark = pytest.mark.usefixtures("test_images")` in a test module: every test there
    using the fake gets harness.backend's test images in its image table."""
    if "fake_smolvm" in request.fixturenames:
        add_test_images(request.getfixturevalue("fake_smolvm"))


def node_user_or_fail() -> pwd.struct_passwd:
    """The guest test user's passwd entry; fails the test (never skips) when it is missing."""
    try:
        return pwd.getpwnam(GUEST_USER)
    except KeyError:
        pytest.fail(
            f"user {GUEST_USER!r} is missing: tests run `runuser -u {GUEST_USER}` for real. "
            f"Create it (`useradd -m {GUEST_USER}`, or run scripts/bootstrap / .ci/run as root)."
        )


@pytest.fixture
def require_node_user() -> pwd.struct_passwd:
    """Fixture form of node_user_or_fail()."""
    return node_user_or_fail()


@pytest.fixture
def shared_dir(require_node_user: pwd.struct_passwd) -> Iterator[Path]:
    """A scratch directory the guest user `node` can write to (tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="bottle-shared-"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
