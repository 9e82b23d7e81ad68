"""The user's terminal, played by the test: one pty for every suite (relay, backend, CLI, fake).

`Terminal` owns a fresh pty. The session under test gets the slave as its stdio and controlling
terminal (`spawn`); the test holds the master, as a terminal emulator does, reads it in a
background thread (`output`, `expect`, `settle`) and types into it (`send`). A second
descriptor of the slave lets it inspect the termios state and file status flags a session
leaves behind (`assert_restored`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import struct
import subprocess
import termios
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from bottle._ptyrelay_py import EOF_RECHECKS, recheck_delay_us

TIMEOUT = 60.0


def get_winsize(fd: int) -> tuple[int, int]:
    """(rows, cols) of the terminal behind ``fd``."""
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    return rows, cols


def set_winsize(fd: int, rows: int, cols: int) -> None:
    """Set the window size; on a master this signals the slave's foreground group."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def is_canonical(attrs: list[Any]) -> bool:
    """Whether ICANON is set."""
    return bool(attrs[3] & termios.ICANON)


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.01) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that, or None on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def _start_on_terminal(close_stdin: bool = False, controlling: bool = True) -> None:
    # Runs in the child after setsid() (start_new_session). Default dispositions, as a terminal
    # gives them: pytest may inherit SIGHUP (or SIGINT/SIGQUIT) ignored (nohup, a script's
    # background job), a signal ignored on entry stays ignored in shells, and one sent before
    # the program installs its handlers would be dropped instead of ending it.
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    if close_stdin:
        os.close(0)
    if not controlling:
        return
    # The first terminal among stdio becomes the controlling terminal, so the session leader's
    # group is the terminal's foreground group (^C and SIGWINCH reach it).
    for fd in (0, 1, 2):
        if os.isatty(fd):
            fcntl.ioctl(fd, termios.TIOCSCTTY, 0)
            return


def read_after_eio(fd: int) -> bytes:
    """What a pty master still yields after Linux's first EIO: reads at once and after 1, 2, 4,
    8 and 16 ms (the schedule of the relay's own drain), starting over after each that finds
    data."""
    out = bytearray()
    misses = 0
    while misses < EOF_RECHECKS:
        if misses:
            time.sleep(recheck_delay_us(misses) / 1e6)
        try:
            data = os.read(fd, 1 << 16)
        except OSError:  # EIO again (or EAGAIN: the slave was opened again)
            data = b""
        if data:
            out += data
            misses = 0
        else:
            misses += 1
    return bytes(out)


class Terminal:
    """A pty standing for the user's terminal; the test holds the master and a slave fd.

    ``read`` starts a thread that collects everything written to the terminal (``output``);
    clearing the ``reading`` event stops it reading, as a terminal that stops draining does.
    """

    def __init__(self, rows: int = 24, cols: int = 80, *, read: bool = True) -> None:
        self.master, self.slave = os.openpty()
        self.name = os.ttyname(self.slave)
        set_winsize(self.master, rows, cols)
        attrs = termios.tcgetattr(self.slave)
        # Unusual but cooked settings, so that restoring "some sane mode" cannot pass for
        # restoring exactly what the user had. ISIG and VINTR stay, so ^C still means SIGINT.
        attrs[3] &= ~termios.ECHOCTL
        attrs[4] = attrs[5] = termios.B19200
        attrs[6][termios.VKILL] = b"\x0b"
        attrs[6][termios.VREPRINT] = b"\x01"
        termios.tcsetattr(self.slave, termios.TCSANOW, attrs)
        self.saved = termios.tcgetattr(self.slave)
        self.flags_before = fcntl.fcntl(self.slave, fcntl.F_GETFL)
        os.set_blocking(self.master, False)
        self.master_open = True
        self._out = bytearray()
        self._lock = threading.Lock()
        self._fences: set[bytes] = set()  # written by drain(), not yet back out of the master
        self._stop = threading.Event()
        self.reading = threading.Event()
        self.reading.set()
        self._reader: threading.Thread | None = None
        if read:
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    # ------------------------------------------------------------------ the session

    def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        close_stdin: bool = False,
        controlling: bool = True,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` as a session leader with the slave as its stdio (unless one of them
        is given) and, with ``controlling``, as its controlling terminal. ``close_stdin``:
        start it with no fd 0 at all."""
        return subprocess.Popen(
            list(argv),
            stdin=self.slave if stdin is None else stdin,
            stdout=self.slave if stdout is None else stdout,
            stderr=self.slave if stderr is None else stderr,
            env=None if env is None else dict(env),
            start_new_session=True,
            preexec_fn=lambda: _start_on_terminal(close_stdin, controlling),
        )

    # ------------------------------------------------------------------ output

    def _read(self) -> None:
        while not self._stop.is_set():
            if not self.reading.wait(0.05):
                continue
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(self.master, 1 << 16)
            except BlockingIOError:
                data = b""
            except OSError:  # EIO: every slave descriptor is closed
                # Linux's EIO can come before the last output has reached the master, as the
                # relay knows (bottle._ptyrelay.EOF_RECHECKS): take what a few more reads find.
                data = None
            got = read_after_eio(self.master) if data is None else data
            with self._lock:
                self._out += got
                if self._fences:
                    self._strip_fences()
            if data is None:
                return

    def collecting(self) -> bool:
        """Whether the reader is running and not paused (so `drain` can succeed)."""
        return self.reading.is_set() and self._reader is not None and self._reader.is_alive()

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until everything written to the terminal so far is in ``output()``; False when
        the reader is paused or stopped, or on timeout.

        A fence (a unique run of letters and digits, untouched by output processing) is written
        through the slave, and everything written before it has arrived once it comes out of
        the master: a pty keeps order. The reader takes the fence out again wherever it lands.
        Nothing unread on the master (FIONREAD) is not enough: bytes still in the pty's buffer,
        which a kernel worker pushes on (late under load), do not count there yet.
        """
        if not self.collecting():
            return False
        fence = b"FENCE" + uuid.uuid4().hex.upper().encode()
        try:
            # Opened anew: O_NONBLOCK on the test's own slave descriptor would show in the flags
            # a session must leave as it found them.
            fd = os.open(self.name, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return False
        try:
            with self._lock:
                self._fences.add(fence)
            written = os.write(fd, fence)
        except OSError:  # output stopped and full: nothing to fence with
            with self._lock:
                self._fences.discard(fence)
            return False
        finally:
            os.close(fd)
        if written != len(fence):  # a part went in: the reader strips only whole fences
            return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if fence not in self._fences:
                    return True
            if not (self.reading.is_set() and self._reader.is_alive()):
                return False
            time.sleep(0.002)
        return False

    def _strip_fences(self) -> None:
        """Take arrived fences out of the output (called with the lock held)."""
        for fence in list(self._fences):
            at = self._out.find(fence)
            if at >= 0:
                del self._out[at : at + len(fence)]
                self._fences.discard(fence)

    def record(self, data: bytes) -> None:
        """Add ``data`` to the output (the reader does; so may a test reading elsewhere)."""
        with self._lock:
            self._out += data

    def output(self) -> bytes:
        """Everything written to the terminal so far."""
        with self._lock:
            return bytes(self._out)

    def output_len(self) -> int:
        with self._lock:
            return len(self._out)

    def find(self, needle: bytes, timeout: float = TIMEOUT, start: int = 0) -> int | None:
        """Wait until ``needle`` appears at or after ``start``; the offset just after it, or
        None when it did not appear within ``timeout`` seconds."""

        def found() -> int:
            with self._lock:  # searched in place: the output can be many MiB
                idx = self._out.find(needle, start)
            return idx + len(needle) + 1 if idx >= 0 else 0

        at = wait_until(found, timeout)
        return None if not at else int(at) - 1

    def expect(self, needle: bytes, timeout: float = TIMEOUT, start: int = 0) -> bytes:
        """Wait until ``needle`` appears (or fail); everything received so far."""
        if self.find(needle, timeout, start) is None:
            pytest.fail(f"{needle!r} did not appear within {timeout} s; output: {self.output()!r}")
        return self.output()

    def settle(self, quiet: float = 0.3, timeout: float = 10) -> bytes:
        """Wait until no output arrived for ``quiet`` seconds (after a session ended)."""
        deadline = time.monotonic() + timeout
        self.drain(timeout)
        seen = self.output_len()
        since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.02)
            now = self.output_len()
            if now != seen:
                seen, since = now, time.monotonic()
            elif time.monotonic() - since >= quiet:
                break
        return self.output()

    # ------------------------------------------------------------------ input

    def send(
        self,
        data: bytes,
        timeout: float = TIMEOUT,
        stop: threading.Event | None = None,
        progress: list[int] | None = None,
    ) -> int:
        """Type ``data`` (the master is non-blocking: as much as the terminal takes, until
        ``timeout`` or ``stop``); the number of bytes typed."""
        view = memoryview(data)
        sent = 0
        stop = stop or self._stop
        deadline = time.monotonic() + timeout
        while sent < len(data) and not stop.is_set() and time.monotonic() < deadline:
            _, ready, _ = select.select([], [self.master], [], 0.05)
            if not ready:
                continue
            try:
                sent += os.write(self.master, view[sent : sent + 4096])
            except BlockingIOError:
                continue
            except OSError:
                break
            if progress is not None:
                progress[0] = sent
        return sent

    # ------------------------------------------------------------------ state

    def attrs(self) -> list[Any]:
        """Current termios of the user's terminal."""
        return termios.tcgetattr(self.slave)

    def flags(self) -> int:
        """File status flags of the open file description the session shared with us."""
        return fcntl.fcntl(self.slave, fcntl.F_GETFL)

    def slave_nonblocking(self) -> bool:
        """Whether O_NONBLOCK is set on the open file description the session shared with us."""
        return bool(self.flags() & os.O_NONBLOCK)

    def is_raw(self) -> bool:
        """Whether the terminal is out of canonical mode."""
        return not is_canonical(self.attrs())

    def wait_raw(self, timeout: float = 20.0) -> bool:
        """Wait until the session has taken the terminal out of canonical mode."""
        return bool(wait_until(self.is_raw, timeout))

    def resize(self, rows: int, cols: int) -> None:
        """Change the terminal size as a terminal emulator would (SIGWINCH to the foreground)."""
        set_winsize(self.master, rows, cols)

    def assert_restored(self) -> None:
        """termios exactly as before, and the same file status flags."""
        after = self.attrs()
        assert after == self.saved, (
            f"the user's terminal was not restored exactly:\nbefore {self.saved}\nafter  {after}"
        )
        assert self.flags() == self.flags_before, (
            f"file status flags changed: {self.flags_before:#o} -> {self.flags():#o}"
        )

    # ------------------------------------------------------------------ the end

    def close_master(self) -> None:
        """Hang up: the terminal emulator goes away."""
        if self.master_open:
            self.master_open = False
            self._stop.set()
            if self._reader is not None:
                self._reader.join(5)
            os.close(self.master)

    def close(self) -> None:
        """Stop reading and release both descriptors."""
        self._stop.set()
        if self._reader is not None:
            self._reader.join(5)
        self.close_master()
        with contextlib.suppress(OSError):
            os.close(self.slave)


@contextlib.contextmanager
def user_terminal(rows: int = 30, cols: int = 100) -> Iterator[Terminal]:
    term = Terminal(rows, cols)
    try:
        yield term
    finally:
        term.close()


@contextlib.contextmanager
def terminal_on_stdio() -> Iterator[Terminal]:
    """Put a fresh user terminal on this process's fds 0 and 1 (for in-process sessions)."""
    term = Terminal(30, 100)
    saved = [os.dup(0), os.dup(1)]
    try:
        os.dup2(term.slave, 0)
        os.dup2(term.slave, 1)
        yield term
    finally:
        os.dup2(saved[0], 0)
        os.dup2(saved[1], 1)
        for fd in saved:
            os.close(fd)
        term.close()


def wait_status(proc: subprocess.Popen[bytes], timeout: float = TIMEOUT) -> int:
    """The exit status (128+N for signal N); kills the process if it hangs."""
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"the session did not end within {timeout} s") from None
    return 128 - rc if rc < 0 else rc


class PtyRun:
    """What `run_in_pty` saw: the status, the output, termios before and after."""

    def __init__(self, status: int, output: bytes, before: list[Any], after: list[Any]) -> None:
        self.status = status
        self.output = output
        self.termios_before = before
        self.termios_after = after


def run_in_pty(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    timeout: float = 60,
    rows: int = 30,
    cols: int = 100,
) -> PtyRun:
    """Run ``argv`` with stdin/stdout/stderr on a fresh terminal (not its controlling one) to
    its end; collect its output until every process has let go of the terminal (or it has
    been quiet for 0.3 s after the exit, when some descendant still holds it)."""
    term = Terminal(rows, cols)
    try:
        proc = term.spawn(argv, env, controlling=False)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"timed out; output so far: {term.output()!r}") from None
        after = term.attrs()
        # With our slave closed, the reader sees EIO as soon as no process holds the terminal
        # and its output is read; a descendant that keeps it open is waited out by `settle`.
        os.close(term.slave)
        term.slave = os.open(os.devnull, os.O_RDONLY)  # close() closes something harmless
        deadline = time.monotonic() + 0.3
        assert term._reader is not None
        while term._reader.is_alive() and time.monotonic() < deadline:
            before_len = term.output_len()
            term._reader.join(0.05)
            if term.output_len() != before_len:
                deadline = time.monotonic() + 0.3
        return PtyRun(proc.returncode, term.output(), term.saved, after)
    finally:
        term.close()
