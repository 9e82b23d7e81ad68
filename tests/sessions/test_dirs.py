"""The session's lock as the sign of a live holder: waiting for a dying holder to let go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from bottle.sessions._dirs import LOCK, SessionDir

# Holds the lock the way a holder does (flock, exclusive) until killed; says when it has it.
HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""


def holding(tmp_path: Path) -> tuple[SessionDir, subprocess.Popen[str]]:
    d = SessionDir(str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, d.file(LOCK)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return d, proc


def test_a_live_holder_keeps_its_lock(tmp_path: Path) -> None:
    d, proc = holding(tmp_path)
    try:
        assert d.wait_let_go(proc.pid, 0.2) is False
        assert d.wait_let_go(None, 0.2) is False  # no pid to watch: one look
        assert d.holder_alive()
    finally:
        proc.kill()
        proc.wait()


def test_a_dying_holder_is_waited_for_until_its_lock_is_free(tmp_path: Path) -> None:
    d, proc = holding(tmp_path)
    killer = threading.Timer(0.3, os.kill, (proc.pid, signal.SIGKILL))
    killer.start()
    try:
        # Watched through its pidfd: returns once it is gone, the lock with it.
        assert d.wait_let_go(proc.pid, 60) is True
        assert not d.holder_alive()
    finally:
        killer.cancel()
        proc.kill()
        proc.wait()


def test_no_holder_needs_no_wait(tmp_path: Path) -> None:
    d = SessionDir(str(tmp_path))
    assert d.wait_let_go(None, 60) is True
    assert d.wait_let_go(os.getpid(), 60) is True  # a pid that lives on: the lock is free
