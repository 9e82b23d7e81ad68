"""Harness for the session tests: a small protocol client, the test programs, and clean-up.

Sessions run for real: `bottle.sessions.start` starts a holder process (native or pure relay
core, chosen through its environment) in a private runtime directory of the test's own, and
the test talks to it over the socket as a client would. Every process a session starts carries
the test's marker (harness.relay.MARK_VAR), so nothing it leaves behind goes unnoticed.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from bottle import _sessionwire as wire
from bottle import sessions
from harness.relay import MARK_VAR, alive, implementation_env, kill_quietly, marked_pids

TIMEOUT = 20.0


def native_core() -> ModuleType | None:
    """The native extension (the holder's and the attach client's loops), None if not built."""
    try:
        import bottle._ptyrelay as mod
    except ImportError:
        return None
    return mod


def loop_module(impl: str, pure: ModuleType) -> ModuleType:
    """The module whose loop a core test runs: the native extension, or the ``pure`` twin.
    A missing extension skips the native half, unless BOTTLE_REQUIRE_EXTENSION demands it."""
    if impl == "pure":
        return pure
    mod = native_core()
    if mod is None:
        if os.environ.get("BOTTLE_REQUIRE_EXTENSION", "") not in ("", "0"):
            pytest.fail("BOTTLE_REQUIRE_EXTENSION is set but bottle._ptyrelay is not importable")
        pytest.skip("native extension not built")
    return mod

# A raw-mode program for the tests: reports its terminal size at the start and on every
# SIGWINCH ("S<rows>x<cols>;"), echoes each byte it reads as "K<byte>", and obeys a few
# commands typed as one byte each: "O" prints the file named in $PROG_BLOB, "X" exits with
# the status in $PROG_STATUS (default 0), "T" touches $PROG_DONE.
PROGRAM = r"""
import fcntl, os, signal, struct, sys, termios, tty
tty.setraw(0)
def size(*_):
    rows, cols = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8)))[:2]
    os.write(1, b"S%dx%d;" % (rows, cols))
signal.signal(signal.SIGWINCH, size)
size()
while True:
    try:
        b = os.read(0, 1)
    except InterruptedError:
        continue
    if not b:
        break
    os.write(1, b"K" + b)
    if b == b"O":
        with open(os.environ["PROG_BLOB"], "rb") as f:
            data = f.read()
        view = memoryview(data)
        while view:
            view = view[os.write(1, view):]
    elif b == b"T":
        open(os.environ["PROG_DONE"], "w").close()
    elif b == b"X":
        sys.exit(int(os.environ.get("PROG_STATUS", "0")))
"""


def program_argv(python: str) -> list[str]:
    """The test program (see PROGRAM), run by ``python``."""
    return [python, "-c", PROGRAM]


def blob(size: int) -> bytes:
    """Random bytes without a "K", so that the program's echoes stand out after them."""
    return os.urandom(size).replace(b"K", b"k")


def blob_program(tmp: Path, size: int) -> tuple[bytes, dict[str, str], Path]:
    """A blob for the program to print ("O"), its environment for it, and the file "T"
    touches: (data, env_extra, done)."""
    data = blob(size)
    (tmp / "blob").write_bytes(data)
    done = tmp / "done"
    return data, {"PROG_BLOB": str(tmp / "blob"), "PROG_DONE": str(done)}, done


def size_report(rows: int, cols: int) -> bytes:
    return b"S%dx%d;" % (rows, cols)


@dataclass
class Received:
    """What a client got, frame by frame."""

    output: bytearray = field(default_factory=bytearray)
    frames: list[tuple[int, bytes]] = field(default_factory=list)
    attached: tuple[int, int, int, int, int] | None = None
    dropped: list[tuple[int, int]] = field(default_factory=list)  # (at output length, count)
    exit_status: int | None = None
    errors: list[str] = field(default_factory=list)
    eof: bool = False


class Client:
    """One connection to a holder, read synchronously with timeouts."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.decoder = wire.Decoder()
        self.got = Received()

    @classmethod
    def attach(cls, session: sessions.Session | str, **kwargs: Any) -> Client:
        return cls(sessions.connect(session, **kwargs))

    @classmethod
    def raw(cls, path: str) -> Client:
        """A connection to a socket path with none of the library's checks."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        return cls(sock)

    def send(self, data: bytes) -> None:
        self.sock.setblocking(True)
        try:
            self.sock.sendall(data)
        finally:
            self.sock.setblocking(False)

    def keys(self, data: bytes) -> None:
        for frame in wire.keys(data):
            self.send(frame)

    def resize(self, rows: int, cols: int) -> None:
        self.send(wire.resize(rows, cols))

    def redraw(self) -> None:
        self.send(wire.frame(wire.REDRAW))

    def detach(self) -> None:
        self.send(wire.frame(wire.DETACH))

    def close(self) -> None:
        self.sock.close()

    def pump(self, timeout: float) -> bool:
        """Read what is there (waiting up to ``timeout`` for something); False at EOF."""
        if self.got.eof:
            return False
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return True
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except BlockingIOError:
                return True
            except ConnectionResetError:
                data = b""
            if not data:
                self.got.eof = True
                return False
            for kind, payload in self.decoder.feed(data):
                self._take(kind, payload)

    def _take(self, kind: int, payload: bytes) -> None:
        got = self.got
        got.frames.append((kind, payload))
        if kind == wire.OUTPUT:
            got.output += payload
        elif kind == wire.ATTACHED:
            got.attached = wire.parse_attached(payload)
        elif kind == wire.DROPPED:
            got.dropped.append((len(got.output), wire.parse_dropped(payload)))
        elif kind == wire.EXIT:
            got.exit_status = wire.parse_exit(payload)
        elif kind == wire.ERROR:
            got.errors.append(payload.decode(errors="replace"))

    def until(self, done: Callable[[Received], bool], what: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not done(self.got):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"timed out waiting for {what}; got {bytes(self.got.output[-300:])!r}, "
                    f"frames {[wire.NAMES.get(k, k) for k, _ in self.got.frames[-10:]]}, "
                    f"eof {self.got.eof}"
                )
            if not self.pump(min(left, 0.5)) and not done(self.got):
                raise AssertionError(
                    f"connection closed waiting for {what}; got "
                    f"{bytes(self.got.output[-300:])!r}, errors {self.got.errors}"
                )

    def expect(self, needle: bytes, start: int = 0, timeout: float = TIMEOUT) -> int:
        """Wait for ``needle`` in the output from ``start``; the index just past it."""
        self.until(lambda g: g.output.find(needle, start) >= 0, repr(needle), timeout)
        return self.got.output.find(needle, start) + len(needle)

    def wait_eof(self, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while self.pump(max(0.0, min(0.5, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                raise AssertionError("the holder did not close the connection")

    def sync(self, token: bytes = b"~") -> None:
        """Type a byte the test program echoes, and wait for its echo: everything sent
        before it has been through the holder."""
        start = len(self.got.output)
        self.keys(token)
        self.expect(b"K" + token, start)


class Sessions:
    """Starts sessions for one test (one relay implementation) and cleans every one up."""

    def __init__(self, impl: str, runtime: Path, python: str) -> None:
        self.impl = impl
        self.runtime = runtime
        self.python = python
        self.mark = uuid.uuid4().hex
        self.started: list[sessions.Session] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = implementation_env(self.impl)
        env[MARK_VAR] = self.mark
        env["XDG_RUNTIME_DIR"] = str(self.runtime)
        env.update(extra)
        return env

    def start(self, argv: Sequence[str] | None = None, **kwargs: Any) -> sessions.Session:
        env = self.env(**kwargs.pop("env_extra", {}))
        kwargs.setdefault("size", (24, 80))
        session = sessions.start(
            list(argv) if argv is not None else program_argv(self.python), env=env, **kwargs
        )
        self.started.append(session)
        return session

    def leftovers(self, timeout: float = 5.0) -> list[int]:
        deadline = time.monotonic() + timeout
        pids = marked_pids(self.mark)
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = marked_pids(self.mark)
        return pids

    def close(self) -> None:
        for session in self.started:
            with contextlib.suppress(Exception):
                pid = session.pid
                if pid is not None and session.running():
                    kill_quietly(pid)
        for pid in marked_pids(self.mark):
            kill_quietly(pid)


@contextlib.contextmanager
def runtime_dir() -> Iterator[Path]:
    """A fresh private directory to serve as XDG_RUNTIME_DIR (short: socket paths are)."""
    path = Path(tempfile.mkdtemp(prefix="bs-", dir="/tmp"))
    path.chmod(0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_for(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def wait_gone(pid: int, timeout: float = TIMEOUT) -> None:
    wait_for(lambda: not alive(pid), f"pid {pid} to end", timeout)


def kill_holder(session: sessions.Session) -> int:
    pid = session.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid
