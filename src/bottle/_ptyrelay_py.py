"""Pure-Python twin of the native relay core `bottle._ptyrelay`: same API, same behaviour.

Only `bottle.relay` chooses between the two; see `_ptyrelay.pyx` for the reference semantics.
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
from collections.abc import Sequence

from bottle._recorder_py import REC_BUFSIZE, REC_STALL_MS, Recorder

__all__ = [
    "DEFAULT_BUFSIZE",
    "EV_CHILD",
    "EV_DONE",
    "EV_EOF",
    "EV_HUP",
    "EV_INTR",
    "EV_SIGNAL",
    "MAX_FD_SWEEP",
    "REC_BUFSIZE",
    "REC_STALL_MS",
    "STAGES",
    "Pump",
    "spawn",
]

EV_DONE = 0
EV_SIGNAL = 1
EV_EOF = 2
EV_HUP = 3
EV_CHILD = 4
EV_INTR = 5

DEFAULT_BUFSIZE = 128 * 1024
# Linux's EIO on a pty master may come while output is still on its way (see the extension):
# the drains read again at once and after 1, 2, 4, 8 and 16 ms before taking it as the end.
EOF_RECHECKS = 6


def recheck_delay_us(done: int) -> int:
    """The pause before the re-read after ``done`` empty ones: 0, 1, 2, 4, 8, 16 ms."""
    return 0 if done == 0 else 1000 << (done - 1)


class EofRecheck:
    """A drain's re-reads after Linux's EIO (EOF_RECHECKS), for the relay's and the holder's."""

    __slots__ = ("at", "done")

    def __init__(self) -> None:
        self.done = 0  # re-reads in a row that found nothing
        self.at = 0  # when the next one is due (microseconds; 0: not scheduled yet)

    def over(self) -> bool:
        return self.done >= EOF_RECHECKS

    def wait_ms(self) -> int:
        """Milliseconds until the next re-read, scheduling it if it is not yet."""
        if not self.at:
            self.at = _now_us() + recheck_delay_us(self.done)
        return max(0, (self.at - _now_us() + 999) // 1000)

    def due(self) -> bool:
        return _now_us() >= self.at

    def read(self, found: bool) -> None:
        """The re-read has been made: data ``found`` starts the schedule over."""
        self.at = 0
        self.done = 0 if found else self.done + 1


# While input (or its end) is held, the child's termios is re-checked at this interval; with
# nothing held the loop sets no timer at all.
_HOLD_POLL_MS = 10

STAGES = ("exec", "setsid", "TIOCSCTTY", "dup2")
# Where close_range() is missing, descriptors are swept one by one up to the limit, capped here.
MAX_FD_SWEEP = 65536
_STAGE_EXEC, _STAGE_SETSID, _STAGE_CTTY, _STAGE_DUP = range(4)
_REPORT = struct.Struct("ii")

_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_POLLHUP = select.POLLHUP
_POLLERR = select.POLLERR
_POLLNVAL = select.POLLNVAL
# _POSIX_VDISABLE: '\0' on Linux, 0xff on the BSDs and macOS.
_VDISABLE = 0 if os.uname().sysname == "Linux" else 0xFF
_WINSIZE = struct.Struct("HHHH")


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _now_us() -> int:
    return time.monotonic_ns() // 1000


def _child(
    path: bytes, argv: list[bytes], envp: list[bytes], slave: int, out: int, errfd: int
) -> None:
    stage = _STAGE_SETSID
    try:
        for sig in signal.valid_signals():
            with contextlib.suppress(OSError, ValueError, RuntimeError):  # SIGKILL, SIGSTOP
                signal.signal(sig, signal.SIG_DFL)
        signal.set_wakeup_fd(-1)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        # Keep the slave and the report pipe clear of 0-2 so the dup2s cannot clobber them.
        if errfd <= 2:
            errfd = fcntl.fcntl(errfd, fcntl.F_DUPFD_CLOEXEC, 3)
        if slave <= 2:
            slave = fcntl.fcntl(slave, fcntl.F_DUPFD_CLOEXEC, 3)
        os.setsid()
        stage = _STAGE_CTTY
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        stage = _STAGE_DUP
        if out < 0:
            out = slave
        elif out <= 2:
            out = fcntl.fcntl(out, fcntl.F_DUPFD_CLOEXEC, 3)
        os.dup2(slave, 0, inheritable=True)
        os.dup2(out, 1, inheritable=True)
        os.dup2(out, 2, inheritable=True)
        os.close(slave)
        # The child inherits only its stdio (the report pipe closes itself at exec).
        maxfd = min(os.sysconf("SC_OPEN_MAX"), MAX_FD_SWEEP)
        os.closerange(3, errfd)
        os.closerange(errfd + 1, maxfd)
        stage = _STAGE_EXEC
        env = {}
        for item in envp:
            key, _, value = item.partition(b"=")
            env[key] = value
        try:
            os.execve(path, argv, env)
        except OSError as exc:
            if exc.errno != errno.ENOEXEC:
                raise
            # What execvp does with a file the kernel cannot run as it is (a script without
            # "#!"): /bin/sh runs it. Its own failure reports the first one.
            with contextlib.suppress(OSError):
                os.execve(b"/bin/sh", [b"/bin/sh", path, *argv[1:]], env)
            raise
    except OSError as exc:
        code = exc.errno or errno.EINVAL
    except BaseException:
        code = errno.EINVAL
    try:
        os.write(errfd, _REPORT.pack(stage, code))
    finally:
        os._exit(127)


def spawn(
    path: bytes, argv: Sequence[bytes], envp: Sequence[bytes], slave_fd: int, out_fd: int = -1
) -> int:
    """Start ``path`` on the pty whose slave is ``slave_fd``; return its pid.

    The child is a session leader with the pty as its controlling terminal, stdin, stdout and
    stderr (and no other descriptor), default signal dispositions and an empty signal mask.
    With ``out_fd`` >= 0 its stdout and stderr are that descriptor instead of the pty. A file
    the kernel cannot execute as it is (ENOEXEC: a script without "#!") is run by /bin/sh, as
    execvp does. A failure before or at exec raises OSError in the parent, with ``args[2]``
    naming the stage that failed (see STAGES) when it is not exec itself.
    """
    # Snapshots: what was checked is what runs, whatever another thread does to the lists.
    argv, envp = list(argv), list(envp)
    for item in (path, *argv, *envp):
        if not isinstance(item, bytes):
            raise TypeError(f"expected bytes, got {type(item).__name__}")
        if b"\0" in item:
            raise ValueError("embedded null byte")
    if not argv:
        raise ValueError("argv must not be empty")
    rfd, wfd = os.pipe()  # close-on-exec: EOF on it means exec succeeded
    # Block every signal across fork so no handler of ours runs in the child before the
    # dispositions are reset (Python's handler would write to the shared wakeup fd).
    old_mask = signal.pthread_sigmask(signal.SIG_SETMASK, signal.valid_signals())
    pid = -1
    try:
        pid = os.fork()
        if pid == 0:
            os.close(rfd)
            _child(path, argv, envp, slave_fd, out_fd, wfd)
    finally:
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            os.close(wfd)
            if pid < 0:  # fork() raised: nobody will read the report
                os.close(rfd)
    try:
        report = b""
        while len(report) < _REPORT.size:
            chunk = os.read(rfd, _REPORT.size - len(report))
            if not chunk:
                break
            report += chunk
    finally:
        os.close(rfd)
    if len(report) == _REPORT.size:
        os.waitpid(pid, 0)
        stage, code = _REPORT.unpack(report)
        if stage == _STAGE_EXEC:
            raise OSError(code, os.strerror(code))
        raise OSError(code, os.strerror(code), STAGES[stage])
    return pid


class Poller:
    """poll() over a set of descriptors that changes from one wait to the next: only what
    changed is registered again."""

    def __init__(self) -> None:
        self._poll = select.poll()
        self._registered: dict[int, int] = {}

    def wait(self, want: dict[int, int], timeout: int) -> dict[int, int]:
        """Wait for the events ``want`` asks of each descriptor; those that came."""
        registered = self._registered
        for fd in [fd for fd in registered if fd not in want]:
            self._poll.unregister(fd)
            del registered[fd]
        for fd, events in want.items():
            if registered.get(fd) != events:
                self._poll.register(fd, events)
                registered[fd] = events
        return dict(self._poll.poll(timeout))


class Pump:
    """Copy user input to a pty master and its output back, until something needs Python.

    ``in_fd``/``out_fd`` are the user's side, ``master_fd`` the pty; all three must be
    non-blocking (``in_fd`` may be -1: no input, end-of-input at once). ``wake_fd`` is the
    read end of the `signal.set_wakeup_fd` pipe, ``child_fd`` becomes readable when the child
    exits (both -1 when unused). ``size_fd`` is the user's terminal, read on SIGWINCH.
    With ``winch`` the loop applies SIGWINCH itself (reporting it only when the pty refuses
    the size). ``in_tty`` makes end-of-input a hang-up; otherwise it sends VEOF to the child.
    ``hold_ms`` > 0 holds all input and its end while the child's pty is in canonical mode,
    for at most that long from the Pump's creation; ``intr`` (the user's interrupt character,
    -1 for none) typed meanwhile drops everything held and ends the run with EV_INTR: the
    user gave up waiting for the child. One thread at a time may run or drain it.

    ``record_fd`` >= 0 records the session as asciicast v2 events into that file, after the
    header its caller wrote: an ``"o"`` event for what reaches ``out_fd``, ``"r"`` for each
    change of the pty's size and, with ``record_input``, ``"i"`` for what is read from
    ``in_fd``; times count from the Pump's creation. The Pump writes through a thread of its
    own onto a duplicate of ``record_fd``; `finish_recording` ends it. When that thread has
    taken nothing for ``record_stall_ms`` while events wait (a stuck disk), the recording is
    given up and the relay goes on without it.
    """

    def __init__(
        self,
        in_fd: int,
        out_fd: int,
        master_fd: int,
        wake_fd: int = -1,
        child_fd: int = -1,
        size_fd: int = -1,
        *,
        winch: bool = True,
        in_tty: bool = False,
        hold_ms: int = 0,
        intr: int = -1,
        bufsize: int = DEFAULT_BUFSIZE,
        record_fd: int = -1,
        record_input: bool = False,
        record_stall_ms: int = REC_STALL_MS,
    ) -> None:
        self._rec: Recorder | None = None
        if bufsize < 1:
            raise ValueError("bufsize must be positive")
        if record_stall_ms < 1:
            raise ValueError("record_stall_ms must be positive")
        if not -1 <= intr <= 255:
            raise ValueError(f"intr must be a byte value or -1 (got {intr})")
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._master_fd = master_fd
        self._wake_fd = wake_fd
        self._child_fd = child_fd
        self._size_fd = size_fd
        self._winch = winch
        self._in_tty = in_tty
        self._hold_ms = hold_ms
        self._intr = intr
        self._holding = hold_ms > 0
        self._held_at = _now_ms()  # the front creates the Pump as the child starts
        self._busy = threading.Lock()
        self._bufsize = bufsize
        self._ibuf = bytearray()
        self._obuf = bytearray()
        self._in_eof = in_fd < 0
        self._veof_pending = 1 if in_fd < 0 else 0
        self._master_eof = False
        self._master_eio = False  # the end came as Linux's EIO (see EOF_RECHECKS)
        self._master_got = 0
        self._eof_reported = False
        self._last_in = -1
        self._out_blocked = False
        self._master_blocked = False
        self._sigs = bytearray()
        self._poller = Poller()
        if record_fd >= 0:
            self._rec = Recorder(record_fd, record_input, record_stall_ms)

    def __del__(self) -> None:
        rec = getattr(self, "_rec", None)
        if rec is not None:
            rec.close()

    # ------------------------------------------------------------------ public

    def run(self) -> int:
        """Relay until an event needs Python; return it (EV_SIGNAL, EV_EOF, EV_HUP, EV_CHILD or
        EV_INTR).

        EV_EOF (the child side closed the pty, output flushed) is returned once; later calls
        keep waiting for signals, the child and a hang-up.
        """
        self._enter()
        try:
            return self._run()
        finally:
            self._busy.release()

    def _run(self) -> int:
        while True:
            timeout = -1
            if self._holding and (self._ibuf or (self._in_eof and self._veof_pending)):
                timeout = self._hold_timeout()
                if not self._holding:
                    self._write_master()
            rec = self._rec
            rec_wait = -1 if rec is None else rec.wait_ms()
            if rec_wait >= 0 and (timeout < 0 or rec_wait < timeout):
                timeout = rec_wait
            rec_blocked = rec is not None and rec.blocked()
            want: dict[int, int] = {}
            if self._wake_fd >= 0:
                want[self._wake_fd] = _POLLIN
            if self._child_fd >= 0:
                want[self._child_fd] = _POLLIN
            if not self._master_eof:
                ev = 0
                if len(self._obuf) < self._bufsize:
                    ev |= _POLLIN
                if not self._holding and (
                    self._ibuf or (self._in_eof and self._veof_pending)
                ):
                    ev |= _POLLOUT
                if ev:
                    want[self._master_fd] = ev
            if self._obuf and not rec_blocked:
                want[self._out_fd] = want.get(self._out_fd, 0) | _POLLOUT
            if rec is not None and rec.pending:
                want[rec.fd] = _POLLOUT
            in_polled = False
            if self._in_fd >= 0 and not self._in_eof:
                if (
                    not self._master_eof
                    and len(self._ibuf) < self._bufsize
                    and not (rec_blocked and rec is not None and rec.with_input)
                ):
                    want[self._in_fd] = want.get(self._in_fd, 0) | _POLLIN
                    in_polled = True
                elif self._in_tty:
                    want[self._in_fd] = want.get(self._in_fd, 0)
                    in_polled = True
            if not want:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            ready = self._poller.wait(want, timeout)
            if not ready:
                continue
            if any(rev & _POLLNVAL for rev in ready.values()):
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            if self._wake_fd in ready and self._read_wake(drain_mode=False):
                return EV_SIGNAL
            if self._child_fd >= 0 and self._child_fd in ready:
                return EV_CHILD
            if self._out_fd in ready and want.get(self._out_fd, 0) & _POLLOUT:
                self._out_blocked = False
            if rec is not None and rec.fd in want and rec.fd in ready:
                rec.flush()
            rev = ready.get(self._master_fd, 0)
            if rev & (_POLLOUT | _POLLHUP | _POLLERR):
                self._master_blocked = False
            readable = rev & (_POLLIN | _POLLHUP | _POLLERR)
            if want.get(self._master_fd, 0) & _POLLIN and readable and self._read_master():
                return EV_HUP
            if self._obuf and not self._out_blocked and self._write_out():
                return EV_HUP
            if in_polled and ready.get(self._in_fd, 0):
                event = self._read_in(ready[self._in_fd])
                if event:
                    return event
            if not self._master_blocked:
                self._write_master()
            if self._master_eof and not self._obuf and not self._eof_reported:
                self._eof_reported = True
                return EV_EOF

    def drain(self, idle_ms: int, cap_ms: int) -> int:
        """After the child's exit: copy its remaining output, then flush it to ``out_fd``.

        Reads the master until EOF, until it stays quiet for ``idle_ms``, or until it has been
        waited on for ``cap_ms`` in all (a grandchild may keep the pty open and busy; time
        blocked on a stalled ``out_fd`` does not count). Linux's EIO counts as the end only
        once reads at once and after 1, 2, 4, 8 and 16 ms found nothing more (EOF_RECHECKS),
        however early it came. Returns EV_DONE, EV_HUP when the user's side is gone, or
        EV_SIGNAL when a signal other than SIGWINCH, SIGCHLD or SIGCONT interrupts the flush.
        """
        if idle_ms < 0 or cap_ms < 0:
            raise ValueError(
                f"drain: idle_ms and cap_ms must not be negative (got {idle_ms}, {cap_ms})"
            )
        self._enter()
        try:
            return self._drain(idle_ms, cap_ms)
        finally:
            self._busy.release()

    def _drain(self, idle_ms: int, cap_ms: int) -> int:
        # Only time spent waiting for the pty counts against the cap: while a stalled
        # terminal blocks the output, what is already in the pty must not be dropped.
        budget = cap_ms * 1000  # microseconds
        reading = not self._master_eof or self._master_eio
        eio = EofRecheck()
        while True:
            if reading and (budget <= 0 or (self._master_eof and eio.over())):
                reading = False
            want: dict[int, int] = {}
            timeout = -1
            master_polled = recheck = False
            rec = self._rec
            rec_wait = -1 if rec is None else rec.wait_ms()
            if reading and len(self._obuf) < self._bufsize:
                if not self._master_eof:
                    want[self._master_fd] = _POLLIN
                    master_polled = True
                    timeout = min(idle_ms, (budget + 999) // 1000)
                else:  # EIO: read again when the next re-read is due
                    recheck = True
                    timeout = eio.wait_ms()
            if self._obuf:
                if rec is not None and rec.blocked():
                    want[rec.fd] = _POLLOUT
                    if rec_wait >= 0 and (timeout < 0 or rec_wait < timeout):
                        timeout = rec_wait
                else:
                    want[self._out_fd] = want.get(self._out_fd, 0) | _POLLOUT
            if not want and not recheck:
                return EV_DONE
            if self._wake_fd >= 0:
                want[self._wake_fd] = want.get(self._wake_fd, 0) | _POLLIN
            started = time.monotonic_ns()
            ready = self._poller.wait(want, timeout)
            if master_polled or recheck:
                budget -= (time.monotonic_ns() - started) // 1000
            if recheck and eio.due():
                got = self._master_got
                self._master_eof = False
                if self._read_master():
                    return EV_HUP
                eio.read(self._master_got != got)
            if not ready:
                if master_polled:
                    reading = False
                continue
            if self._wake_fd in ready and self._read_wake(drain_mode=True):
                return EV_SIGNAL
            if self._out_fd in ready and self._out_fd in want:
                self._out_blocked = False
            if rec is not None and rec.fd in want and rec.fd in ready:
                rec.flush()
            rev = ready.get(self._master_fd, 0)
            if master_polled and rev:
                if rev & _POLLNVAL:
                    raise OSError(errno.EBADF, os.strerror(errno.EBADF))
                if self._read_master():
                    return EV_HUP
                if self._master_eof and not self._master_eio:
                    reading = False
            if self._obuf and not self._out_blocked and self._write_out():
                return EV_HUP

    def signals(self) -> bytes:
        """Return the signal numbers received since the last call (each once, in order)."""
        out = bytes(self._sigs)
        self._sigs.clear()
        return out

    def resize(self) -> tuple[int, int] | None:
        """Copy the user's terminal size to the pty; return (rows, cols), None when unknown.

        Raises OSError when the pty refuses the size.
        """
        if self._size_fd < 0:
            return None
        try:
            packed = fcntl.ioctl(self._size_fd, termios.TIOCGWINSZ, bytes(_WINSIZE.size))
        except OSError:
            return None
        rows, cols, _, _ = _WINSIZE.unpack(packed)
        if rows == 0 or cols == 0:
            return None
        self._set_size(packed, rows, cols)
        return rows, cols

    def finish_recording(self, timeout_ms: int) -> int:
        """End the recording: flush its last events and wait for the file to be written.

        Waits at most ``timeout_ms`` in all. Returns 0 when the file holds the whole session,
        else the errno of what cut it short (ETIMEDOUT: the disk took too long, the session
        went on unrecorded from there). The file always ends with a whole event. Without a
        recording, or called again, returns the same as before (0 without one).
        """
        if timeout_ms < 0:
            raise ValueError(
                f"finish_recording: timeout_ms must not be negative (got {timeout_ms})"
            )
        self._enter()
        try:
            return 0 if self._rec is None else self._rec.finish(timeout_ms)
        finally:
            self._busy.release()

    @property
    def holding(self) -> bool:
        """Whether typed-ahead input is still being held back."""
        return self._holding

    @property
    def buffered(self) -> tuple[int, int]:
        """Bytes waiting in (input, output) buffers."""
        return len(self._ibuf), len(self._obuf)

    # ------------------------------------------------------------------ helpers

    def _enter(self) -> None:
        # Two loops on one Pump would share its buffers and silently corrupt the stream.
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this Pump is already running in another thread")


    def _add_signal(self, sig: int) -> None:
        if sig not in self._sigs:
            self._sigs.append(sig)

    def _read_wake(self, *, drain_mode: bool) -> bool:
        winch = report = False
        while True:
            try:
                data = os.read(self._wake_fd, 128)
            except BlockingIOError:
                break
            if not data:
                self._wake_fd = -1
                break
            for sig in data:
                if sig == signal.SIGWINCH and self._winch:
                    winch = True
                elif drain_mode and sig in (signal.SIGWINCH, signal.SIGCHLD, signal.SIGCONT):
                    pass
                else:
                    self._add_signal(sig)
                    report = True
        if winch and not drain_mode:
            try:
                self.resize()
            except OSError:  # the pty refused the size: Python reports it
                self._add_signal(signal.SIGWINCH)
                report = True
        return report

    def _read_master(self) -> bool:
        """Read the pty, writing each chunk out at once; True when the user's side is gone."""
        obuf = self._obuf
        while len(obuf) < self._bufsize:
            try:
                data = os.read(self._master_fd, self._bufsize - len(obuf))
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EIO:  # Linux: the child side closed (see EOF_RECHECKS)
                    self._master_eof = self._master_eio = True
                    break
                raise
            if not data:  # BSD/macOS: end of the pty
                self._master_eof = True
                self._master_eio = False
                break
            self._master_got += len(data)
            obuf += data
            if not self._out_blocked and self._write_out():
                return True
        return False

    def _write_out(self) -> bool:
        """Write buffered output; True when the user's side is gone."""
        obuf = self._obuf
        rec = self._rec
        while obuf:
            chunk: bytes | bytearray = obuf
            if rec is not None and rec.on:
                room = rec.room()
                if room == 0:
                    break
                if len(obuf) > room:
                    chunk = obuf[:room]
            try:
                n = os.write(self._out_fd, chunk)
            except BlockingIOError:
                self._out_blocked = True
                break
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EPIPE):
                    obuf.clear()
                    return True
                raise
            if n and rec is not None and rec.on:
                rec.output(obuf[:n])
            del obuf[:n]
        return False

    def _read_in(self, revents: int) -> int:
        """Read user input; EV_HUP when the user's terminal went away, EV_INTR when the user
        typed their interrupt character while input was held, else 0."""
        if self._in_tty and revents & (_POLLHUP | _POLLERR):
            return EV_HUP
        ibuf = self._ibuf
        rec = self._rec if self._rec is not None and self._rec.with_input else None
        while len(ibuf) < self._bufsize:
            want = self._bufsize - len(ibuf)
            if rec is not None and rec.on:
                room = rec.room()
                if room == 0:
                    break
                want = min(want, room)
            try:
                data = os.read(self._in_fd, want)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return EV_HUP
                raise
            if not data:
                if self._in_tty:
                    return EV_HUP
                self._in_eof = True
                # A partial line needs one VEOF to be delivered and a second to read as EOF.
                self._veof_pending = 2 if self._last_in not in (-1, 10) else 1
                break
            if rec is not None and rec.on:
                rec.input(data)
            if self._holding and self._intr >= 0 and self._intr in data:
                self._hold_timeout()  # the child may have gone raw since the last look
                if self._holding:
                    ibuf.clear()
                    return EV_INTR
            ibuf += data
            self._last_in = data[-1]
            if not self._master_blocked:
                self._write_master()
            if len(data) < want:  # drained (see the native twin)
                break
        return 0

    def _write_master(self) -> None:
        if self._master_eof or self._holding:
            return
        ibuf = self._ibuf
        while ibuf:
            try:
                n = os.write(self._master_fd, ibuf)
            except BlockingIOError:
                self._master_blocked = True
                break
            except OSError as exc:
                if exc.errno == errno.EIO:  # nobody holds the slave any more
                    ibuf.clear()
                    break
                raise
            del ibuf[:n]
        if not ibuf and self._in_eof and self._veof_pending > 0:
            try:
                cc = termios.tcgetattr(self._master_fd)[6][termios.VEOF]
            except termios.error:
                self._veof_pending = 0
                return
            veof = cc[0] if isinstance(cc, bytes) else int(cc)
            if veof == _VDISABLE:
                self._veof_pending = 0
                return
            try:
                n = os.write(self._master_fd, bytes([veof]) * self._veof_pending)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EIO:
                    self._veof_pending = 0
                    return
                raise
            self._veof_pending -= n

    def _set_size(self, packed: bytes, rows: int, cols: int) -> None:
        """Set the pty's size (OSError when refused); a change is a recording's "r" event."""
        changed = True
        rec = self._rec
        if rec is not None and rec.on:
            with contextlib.suppress(OSError):
                old = fcntl.ioctl(self._master_fd, termios.TIOCGWINSZ, bytes(_WINSIZE.size))
                changed = _WINSIZE.unpack(old)[:2] != (rows, cols)
        fcntl.ioctl(self._master_fd, termios.TIOCSWINSZ, packed)
        if rec is not None and changed:
            rec.resized(rows, cols)

    def _hold_timeout(self) -> int:
        try:
            canonical = termios.tcgetattr(self._master_fd)[3] & termios.ICANON
        except termios.error:
            canonical = 0
        left = self._held_at + self._hold_ms - _now_ms()
        if not canonical or left <= 0:
            self._holding = False
            return -1
        return min(left, _HOLD_POLL_MS)
