"""Helpers for the backend tests: test images, a /proc scanner for secrets and a pty runner."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bottle.backend import LaunchSpec

# Images in the fake smolvm's image table (registry references, so launch turns networking on).
# ROOT_IMAGE is like docker's node:22: no USER (commands run as root), a `node` user inside, so
# bottle switches with runuser. AGENT_IMAGE is the agent image this backend serves: USER node.
ROOT_IMAGE = "bottle-test/node22:1"
AGENT_IMAGE = "bottle-test/agent:1"
# `bottle launch` of machine m1 on ROOT_IMAGE.
LAUNCH = ["launch", "-n", "m1", "--image", ROOT_IMAGE]


def add_test_images(fake_smolvm: Any) -> None:
    """Register ROOT_IMAGE and AGENT_IMAGE with the fake."""
    fake_smolvm.add_image(ROOT_IMAGE)
    fake_smolvm.add_image(AGENT_IMAGE, user="node", workdir="/home/node")


@pytest.fixture(autouse=True)
def _test_images(request: pytest.FixtureRequest) -> None:
    """Import into a test module: every test there using the fake gets the test images."""
    if "fake_smolvm" in request.fixturenames:
        add_test_images(request.getfixturevalue("fake_smolvm"))


def root_spec(name: str = "m1", **kw: Any) -> LaunchSpec:
    """A LaunchSpec on ROOT_IMAGE (agent user node, reached with runuser)."""
    return LaunchSpec(name, image=ROOT_IMAGE, **kw)


def image_machine(fake_smolvm: Any, name: str, *, image: str = ROOT_IMAGE, **fields: Any) -> None:
    """Pre-seed a running machine on one of the test images (registered on first use)."""
    add_test_images(fake_smolvm)
    fake_smolvm.create(name, image=image, **fields)


def guest_execs(fake_smolvm: Any) -> list[list[str]]:
    """The `machine exec` calls that ran a guest command (not `exec --help`)."""
    return [c for c in fake_smolvm.calls() if c[1:2] == ["exec"] and "--" in c]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # the process went away, or is not ours to read
        return b""


@dataclass
class ProcScan:
    """Scans every process's command line (and, to prove the scan saw the secret in flight,
    its environment) for a secret, in a background thread, until stopped."""

    secret: bytes
    cmdline_hits: list[tuple[int, bytes]] = field(default_factory=list)
    environ_pids: set[int] = field(default_factory=set)
    rounds: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def scan_once(self) -> None:
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            cmdline = _read(f"/proc/{pid}/cmdline")
            if self.secret in cmdline:
                self.cmdline_hits.append((pid, cmdline))
            if pid != me and self.secret in _read(f"/proc/{pid}/environ"):
                self.environ_pids.add(pid)
        self.rounds += 1

    def wait_rounds(self, n: int, timeout: float = 30.0) -> None:
        """Block until `n` more full scans have finished."""
        target = self.rounds + n
        deadline = time.monotonic() + timeout
        while self.rounds < target:
            assert time.monotonic() < deadline, "the /proc scan thread stalled"
            time.sleep(0.005)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.scan_once()
            time.sleep(0.005)

    def __enter__(self) -> ProcScan:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)


def wait_for(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


@dataclass
class PtyRun:
    status: int
    output: bytes
    termios_before: list[object]
    termios_after: list[object]


def _default_signals() -> None:
    # As a terminal starts programs: pytest may inherit signals ignored (nohup, a script's
    # background job), and a shell cannot trap a signal that was ignored on entry.
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def run_in_pty(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    timeout: float = 60,
    rows: int = 30,
    cols: int = 100,
) -> PtyRun:
    """Run `argv` with stdin/stdout/stderr on a fresh pty (the user's terminal); collect output."""
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        before = termios.tcgetattr(slave)
        proc = subprocess.Popen(
            list(argv),
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=None if env is None else dict(env),
            start_new_session=True,
            preexec_fn=_default_signals,
        )
        out = bytearray()
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while True:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    chunk = b""
                out += chunk
                quiet_since = None
                continue
            if proc.poll() is not None:
                quiet_since = quiet_since or time.monotonic()
                if time.monotonic() - quiet_since > 0.3:
                    break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError(f"timed out; output so far: {bytes(out)!r}")
        after = termios.tcgetattr(slave)
        return PtyRun(proc.returncode, bytes(out), before, after)
    finally:
        os.close(master)
        os.close(slave)


CHILD = """
import os, sys, json
from bottle.backend.smolmachines import SmolmachinesBottle
cfg = json.loads(os.environ["BOTTLE_TEST_CFG"])
secret = os.environ.get("BOTTLE_TEST_SECRET_SRC")
b = SmolmachinesBottle(
    cfg["machine"], agent_command="/bin/sh", agent_prompt_mode="none",
    terminal_title=cfg.get("title", ""), terminal_color=cfg.get("color", ""),
    agent_workdir=cfg.get("workdir", "/home/node"),
    secret_env={"BOTTLE_TOKEN": secret} if secret else None,
)
try:
    status = b.run_agent(sys.argv[1:], tty=True).check().returncode
except Exception as exc:
    print(f"\\r\\nRESULT=ERROR:{type(exc).__name__}:{exc}", flush=True)
    sys.exit(99)
print(f"\\r\\nRESULT=STATUS:{status}", flush=True)
"""


def child_argv(agent_args: Sequence[str]) -> list[str]:
    return [sys.executable, "-c", CHILD, *agent_args]
