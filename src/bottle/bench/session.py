"""A relay session on an outer pseudo-terminal that the benchmark owns, as a user's terminal
would host it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import struct
import termios
import threading
import time
import tty
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bottle._ptyrelay_py import EOF_RECHECKS, recheck_delay_us
from bottle.bench._common import OUTER_SIZE, TAG_VAR, BenchError
from bottle.bench._procfs import own_cpu_ns, settled_cpu_ns, stat_fields, tagged_pids
from bottle.bench.relays import Relay, base_env


@dataclass
class ExitInfo:
    """How a relay process ended and what it cost."""

    status: int
    own_cpu_ns: int
    wait4_cpu_s: float


class Session:
    """One relay process (or the bare child) on an outer pty that the benchmark owns."""

    def __init__(
        self,
        relay: Relay,
        child: Sequence[str],
        *,
        size: tuple[int, int] = OUTER_SIZE,
    ) -> None:
        self.relay = relay
        self.tag = uuid.uuid4().hex
        self.argv = relay.argv(child)
        env = base_env(relay)
        env[TAG_VAR] = self.tag
        self.exit: ExitInfo | None = None
        self.stragglers = 0
        self._closed = False
        self._err = os.memfd_create("relay-stderr")
        master, slave = os.openpty()
        self.master = master
        try:
            tty.setraw(slave)
            set_size(master, *size)
            _posix_spawn_gives_ctty()  # the one-time probe, outside the start-up timing
            self.spawned_ns = time.perf_counter_ns()
            self.pid = _spawn_on_tty(self.argv, env, slave, self._err)
        except BaseException:
            os.close(master)
            os.close(self._err)
            raise
        finally:
            os.close(slave)
        self._poll = select.poll()
        self._poll.register(master, select.POLLIN)
        self.pidfd = os.pidfd_open(self.pid)

    # ---- I/O on the outer terminal

    def read_some(self, buf: bytearray, timeout: float) -> int:
        """Read what the relay wrote to the terminal into ``buf``; 0 at EOF."""
        if not self._poll.poll(int(timeout * 1000)):
            raise BenchError(f"{self.relay.name}: no output for {timeout:.1f} s{self.stderr()}")
        return self.read_waiting(buf)

    def read_waiting(self, buf: bytearray) -> int:
        """Read what the relay wrote into ``buf``, waiting inside the read (no poll first, as a
        reader that takes output as fast as it can); 0 at EOF. Hold a `StallGuard` around a
        series of these: a relay that stops writing would otherwise hang the reader."""
        try:
            return os.readv(self.master, [buf])
        except OSError as e:
            if e.errno != errno.EIO:  # Linux: every slave holder has gone.
                raise
        # That EIO may come before the last output has reached the master: read again as the
        # relay's own drain does (bottle._ptyrelay_py.EOF_RECHECKS).
        for done in range(EOF_RECHECKS):
            time.sleep(recheck_delay_us(done) / 1e6)
            try:
                return os.readv(self.master, [buf])
            except OSError as e:
                if e.errno != errno.EIO:
                    raise
        return 0

    def expect(self, marker: bytes, timeout: float = 30.0) -> bytes:
        """Read until ``marker`` arrives; return what followed it."""
        got = bytearray()
        buf = bytearray(65536)
        deadline = time.monotonic() + timeout
        while marker not in got:
            n = self.read_some(buf, max(0.0, deadline - time.monotonic()))
            if n == 0:
                raise BenchError(
                    f"{self.relay.name}: terminal closed before {marker!r}; got {bytes(got)!r}"
                    f"{self.stderr()}"
                )
            got += buf[:n]
        return bytes(got[got.index(marker) + len(marker) :])

    def write(self, data: bytes) -> None:
        """Type ``data`` on the outer terminal."""
        view = memoryview(data)
        while view:
            view = view[os.write(self.master, view) :]

    def stderr(self) -> str:
        """Return the relay's own stderr so far, as a suffix for error messages."""
        text = os.pread(self._err, 4096, 0).decode(errors="replace").strip()
        return f"\n{self.relay.name} stderr: {text}" if text else ""

    # ---- the relay process

    def settled_cpu_ns(self, timeout: float = 2.0) -> int:
        """Return the relay's own CPU once it has gone back to sleep."""
        return settled_cpu_ns(self.pid, timeout)

    def wait_exit(self, timeout: float = 30.0) -> ExitInfo:
        """Wait for the relay to exit, draining the terminal meanwhile; reap it."""
        if self.exit is not None:
            return self.exit
        poll = select.poll()
        poll.register(self.pidfd, select.POLLIN)
        if self.master >= 0:
            poll.register(self.master, select.POLLIN)
        buf = bytearray(65536)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.relay.name}: did not exit within {timeout:.0f} s")
            events = dict(poll.poll(int(left * 1000)))
            if self.pidfd in events:
                break
            if events.get(self.master, 0) & (select.POLLIN | select.POLLHUP | select.POLLERR):
                try:
                    n = os.readv(self.master, [buf])
                except OSError:
                    n = 0
                if n == 0:
                    poll.unregister(self.master)
        os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        cpu = own_cpu_ns(self.pid)
        _, status, ru = os.wait4(self.pid, 0)
        self.exit = ExitInfo(os.waitstatus_to_exitcode(status), cpu, ru.ru_utime + ru.ru_stime)
        return self.exit

    def close(self) -> None:
        """End the child, then the relay; make sure nothing the session started is left."""
        if self._closed:
            return
        self._closed = True
        if self.exit is None:
            # End the child so that every relay takes its ordinary way out. A hang-up would not
            # do: util-linux script keeps running, with its child, after its terminal is gone.
            for pid in tagged_pids(self.tag):
                if pid != self.pid or not self.relay.is_relay:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            try:
                self.wait_exit(timeout=5.0)
            except BenchError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.wait_exit(timeout=5.0)
        if self.master >= 0:
            os.close(self.master)
            self.master = -1
        deadline = time.monotonic() + 0.5
        left = tagged_pids(self.tag)
        while left and time.monotonic() < deadline:
            time.sleep(0.02)
            left = tagged_pids(self.tag)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.stragglers = len(left)
        os.close(self.pidfd)
        os.close(self._err)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StallGuard:
    """Ends a session whose reader has waited ``seconds`` without a byte: its processes are
    killed, so a read waiting on the outer terminal returns (EOF). The reader sets ``got`` as
    it goes (a plain store, nothing per read that would slow it); a thread looks once a second.
    """

    def __init__(self, session: Session, seconds: float) -> None:
        self.session = session
        self.seconds = seconds
        self.got = 0
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="bench-stall-guard", daemon=True)

    def _watch(self) -> None:
        seen, since = self.got, time.monotonic()
        while not self._stop.wait(1.0):
            if self.got != seen:
                seen, since = self.got, time.monotonic()
            elif time.monotonic() - since >= self.seconds:
                self.fired = True
                for pid in tagged_pids(self.session.tag):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                return

    def __enter__(self) -> StallGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def set_size(fd: int, rows: int, cols: int) -> None:
    """Set the window size of the terminal behind ``fd``."""
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _posix_spawn_on_tty(
    argv: Sequence[str], env: Mapping[str, str], tty_fd: int, err_fd: int
) -> int:
    return os.posix_spawnp(
        argv[0],
        list(argv),
        dict(env),
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.ttyname(tty_fd), os.O_RDWR, 0),
            (os.POSIX_SPAWN_DUP2, 0, 1),
            (os.POSIX_SPAWN_DUP2, err_fd, 2),
        ],
        setsid=True,
    )


_POSIX_SPAWN_GIVES_CTTY: bool | None = None


def _posix_spawn_gives_ctty() -> bool:
    """Check once that posix_spawn's setsid() comes before its file actions, as in glibc."""
    global _POSIX_SPAWN_GIVES_CTTY
    if _POSIX_SPAWN_GIVES_CTTY is None:
        master, slave = os.openpty()
        try:
            pid = _posix_spawn_on_tty(["sleep", "60"], os.environ, slave, slave)
            try:
                _POSIX_SPAWN_GIVES_CTTY = int(stat_fields(pid)[4]) == os.fstat(slave).st_rdev
            finally:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        finally:
            os.close(slave)
            os.close(master)
    return _POSIX_SPAWN_GIVES_CTTY


def _spawn_on_tty(argv: Sequence[str], env: Mapping[str, str], tty_fd: int, err_fd: int) -> int:
    """Start ``argv`` in a new session with the terminal ``tty_fd`` as controlling terminal.

    posix_spawn is vfork-fast however large this process is (pytest's is not small), and
    glibc's calls setsid() before the file actions, so opening the terminal by name there
    makes it the controlling terminal. Elsewhere: fork, setsid, TIOCSCTTY.
    """
    if _posix_spawn_gives_ctty():
        return _posix_spawn_on_tty(argv, env, tty_fd, err_fd)
    return _fork_on_tty(argv, env, tty_fd, err_fd)


def _fork_on_tty(argv: Sequence[str], env: Mapping[str, str], tty_fd: int, err_fd: int) -> int:
    rd, wr = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child side
        try:
            os.close(rd)
            os.setsid()
            fcntl.ioctl(tty_fd, termios.TIOCSCTTY, 0)
            os.dup2(tty_fd, 0)
            os.dup2(tty_fd, 1)
            os.dup2(err_fd, 2)
            os.execvpe(argv[0], list(argv), dict(env))
        except OSError as e:
            os.write(wr, str(e.errno).encode())
        finally:
            os._exit(127)
    os.close(wr)
    with os.fdopen(rd, "rb") as f:
        report = f.read()
    if report:
        os.waitpid(pid, 0)
        err = int(report)
        raise OSError(err, os.strerror(err), argv[0])
    return pid
