"""No test sees what an earlier one changed (tests/harness/process_state.py, autouse through
tests/conftest.py). A pair: the first changes every kind of process-wide state and leaves it so;
the second, run right after it in the same process whatever the order or the worker (the
`after` marker and one xdist_group), finds everything as the first one found it."""

from __future__ import annotations

import io
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness.fakevm import FakeSmolvm
from harness.process_state import bottle_state_names

from bottle import smolvm as sv
from bottle.bench import session as bench_session
from bottle.errors import SmolvmTooOldError

pytestmark = pytest.mark.xdist_group("process-state")

# What the first test of the pair found, for the second (same process) to compare with.
FOUND: dict[str, Any] = {}


def _left_behind(signum: int, frame: object) -> None:
    """A handler that only its identity tells apart."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _state() -> dict[str, Any]:
    bottle_logger = logging.getLogger("bottle")
    smolvm_logger = logging.getLogger("bottle.smolvm")
    return {
        "caches": (dict(sv._version_cache), dict(sv._exec_user_cache), set(sv._warned_old)),
        "bench probe": bench_session._POSIX_SPAWN_GIVES_CTTY,
        # The variables the first test adds, changes and removes (others are set per test by
        # fixtures: the fake's state directory, the user config directory, the test's name).
        "environ": {k: os.environ.get(k) for k in ("BOTTLE_TEST_LEFT_BEHIND", "PATH", "HOME")},
        "cwd": os.getcwd(),
        "umask": _umask(),
        "handlers": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM,
                                                      signal.SIGUSR1, signal.SIGCHLD)},
        "mask": signal.pthread_sigmask(signal.SIG_BLOCK, []),
        "loggers": [(lg.level, list(lg.handlers), list(lg.filters), lg.propagate, lg.disabled)
                    for lg in (bottle_logger, smolvm_logger)],
        "root level": logging.getLogger().level,
        "logging.disable": logging.root.manager.disable,
        "stdout": sys.stdout,
        "sys.path": list(sys.path),
    }  # fmt: skip


def test_a_test_leaves_every_kind_of_state_changed(
    fake_smolvm: FakeSmolvm, tmp_path: Path
) -> None:
    FOUND.clear()
    FOUND.update(_state())
    FOUND["pid"] = os.getpid()
    # bottle's caches, as the issue saw them: a release faked at 1.0.1 is remembered for the
    # fake's file, which never changes, and a launch in the next test got SmolvmTooOldError.
    fake_smolvm.set_fault(VERSION="1.0.1")
    with pytest.raises(SmolvmTooOldError):
        sv.Smolvm().start("m")
    fake_smolvm.set_fault(VERSION="1.6.0")  # below 1.8.1: warned once, remembered
    assert sv.Smolvm().has_exec_user_option() is False
    bench_session._POSIX_SPAWN_GIVES_CTTY = False
    os.environ["BOTTLE_TEST_LEFT_BEHIND"] = "1"
    os.environ["PATH"] = f"/nonexistent:{os.environ['PATH']}"
    del os.environ["HOME"]
    os.chdir(tmp_path)
    os.umask(0o077)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _left_behind)
    signal.signal(signal.SIGUSR1, _left_behind)
    signal.signal(signal.SIGCHLD, _left_behind)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, signal.SIGWINCH})
    logging.getLogger("bottle").setLevel(logging.DEBUG)
    logging.getLogger("bottle").addHandler(logging.StreamHandler(io.StringIO()))
    logging.getLogger("bottle").addFilter(lambda record: False)
    logging.getLogger("bottle.smolvm").propagate = False
    logging.getLogger("bottle.smolvm").disabled = True
    logging.getLogger().setLevel(logging.CRITICAL)
    logging.disable(logging.CRITICAL)
    sys.stdout = io.StringIO()
    sys.path.insert(0, str(tmp_path))
    now = _state()
    assert [k for k in now if now[k] == FOUND[k]] == [], "some state was not changed after all"


@pytest.mark.after("test_a_test_leaves_every_kind_of_state_changed")
def test_the_next_test_finds_everything_as_it_was(
    fake_smolvm: FakeSmolvm, request: pytest.FixtureRequest
) -> None:
    if FOUND.get("pid") != os.getpid():
        first = "test_a_test_leaves_every_kind_of_state_changed"
        if not any(item.name == first for item in request.session.items):
            pytest.skip(f"checks what {first} left behind: run the two together")
        # One process (-n 0), or loadgroup keeping the xdist_group together: the pair must
        # have run here in order. Only --dist load and its like may deal them out apart.
        config = request.config
        assert hasattr(config, "workerinput") and not config.getoption("loadgroup"), (
            f"{first} did not run before this test in this process, though the run keeps an "
            "xdist_group in one worker: the ordering (the `after` marker) or the grouping broke"
        )
        pytest.skip(f"{first} ran in another worker (this run does not honour xdist_group)")
    now = _state()
    assert {k: now[k] for k in now if now[k] != FOUND[k]} == {}
    # And so a launch's smolvm is the one the fake is now, as in the failure.
    expected = sv.parse_version(fake_smolvm.run("--version").stdout)
    assert sv.Smolvm().version == expected


def test_the_reset_covers_bottles_caches() -> None:
    # Found by looking, not listed by hand: a cache added to bottle later is covered as well.
    names = bottle_state_names()
    for cache in ("_version_cache", "_exec_user_cache", "_warned_old"):
        assert f"bottle.smolvm.{cache}" in names


def test_the_tests_start_as_a_foreground_job() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGQUIT) == signal.SIG_DFL
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == set()
    # And so the programs the tests start: a Ctrl-C ends them.
    proc = subprocess.run(["sh", "-c", "kill -INT $$; echo survived"], capture_output=True)
    assert proc.returncode == -signal.SIGINT, proc


def _as_a_background_job() -> None:
    # What a shell gives `pytest &` in a script, with a mask a parent left behind.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGCHLD})


def test_a_run_started_in_the_background_still_starts_its_tests_as_a_foreground_job() -> None:
    root = Path(__file__).resolve().parents[1]
    test = f"{Path(__file__).relative_to(root)}::test_the_tests_start_as_a_foreground_job"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:randomly",
         "-p", "no:cacheprovider", test],
        cwd=root, preexec_fn=_as_a_background_job, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
