"""Shared pytest fixtures: the reset of process-wide state around every test, the fake smolvm
(tests/fake_smolvm/), the test images registered in it, and the guest user check. Helpers live
in tests/harness/ (on sys.path through pyproject's `pythonpath`): `terminal` (the user's
terminal on a pty), `relay` (relay sessions), `backend` (sessions, /proc scanners, images),
`fakevm` (the fake's handle), `process_state` (the reset).

`clean_process` (autouse, from harness.process_state) puts back, after every test, everything
process-wide a test can change: bottle's module-level caches, the environment, signal handlers
and mask, umask, cwd, logging, sys.stdout/stderr. A test may change any of it without undoing
it; no test may rely on what an earlier one left. It also gives each test its own user
directories ($XDG_CACHE_HOME, $XDG_CONFIG_HOME, $XDG_RUNTIME_DIR): no test reads the state bottle
keeps for whoever runs the suite (`private_cache` hands a test its cache directory).

`fake_smolvm` gives each test its own fake smolvm, first on PATH, with an empty state directory.
Faults and the image table are FAKE_SMOLVM_* variables, documented in
tests/fake_smolvm/README.md (which also says what the fake rests on in smolvm's source).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
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
from harness.process_state import clean_process, private_cache  # noqa: E402, F401 (fixtures)
from harness.relay import kill_quietly, pids_with_env  # noqa: E402

GUEST_USER = "node"

# pytest-xdist's workers inherit LINES and COLUMNS from the controller's terminal; programs the
# tests run (curses above all) would take those over the size of the terminal they are given.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("LINES", None)
    os.environ.pop("COLUMNS", None)

# The suite's children must start as a terminal's would: a run started under `nohup` (SIGHUP
# ignored) or as a background job of a script (SIGINT and SIGQUIT ignored) passes that on to
# every process a test starts, and an ignored signal stays ignored across exec: a fake smolvm
# that outlives its hung-up terminal, a `kill -HUP` that ends nothing. Seen: three tests of
# hang-ups failing in a run started with nohup. A blocked signal is inherited the same way.
for _sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
    if signal.getsignal(_sig) == signal.SIG_IGN:
        signal.signal(_sig, signal.default_int_handler if _sig == signal.SIGINT else signal.SIG_DFL)
signal.pthread_sigmask(signal.SIG_SETMASK, ())


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fake-smolvm-version",
        default=None,
        metavar="X.Y.Z",
        help="smolvm release the fake smolvm fakes unless a test picks one (default: 1.9.3); "
        "run the suite at 1.0.2, 1.6.0, 1.9.3 and 1.16.0",
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test marked `after(NAME)` runs right after the test NAME of its module, in whatever
    order the run has shuffled the rest (give both one xdist_group to keep them in one worker)."""
    for item in [i for i in items if i.get_closest_marker("after")]:
        first = item.get_closest_marker("after").args[0]  # type: ignore[union-attr]
        before = [i for i in items if i.module is item.module and i.originalname == first]
        if before:
            items.remove(item)
            items.insert(items.index(before[-1]) + 1, item)


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


@pytest.fixture
def fake_smolvm(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    python3_dir: Path,
) -> Iterator[FakeSmolvm]:
    """A fresh fake smolvm first on PATH (with python3_dir after it);
    BOTTLE_SMOLVM and inherited FAKE_SMOLVM_* cleared; the release given by
    --fake-smolvm-version, if any. A call of it still running after the test (one that a
    test killed bottle in, held by a FAKE_SMOLVM_DELAY_*) is killed: it would run on into
    later tests."""
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
    yield FakeSmolvm(state, monkeypatch)
    for pid in pids_with_env("FAKE_SMOLVM_STATE", str(state)):
        kill_quietly(pid)


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
