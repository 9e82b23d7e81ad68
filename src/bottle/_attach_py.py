"""Pure-Python twin of the native attach loop (`Attach` in src/_attach.pxi): same API, same
behaviour.

An `Attach` is the copy loop of a client attached to a session holder: the relay's loop with
the holder's socket in place of the child's pty. Keys read from the user's terminal go to the
socket as KEYS frames; the OUTPUT frames that come back are written to the terminal as they
are, and every other frame (ATTACHED, DROPPED, EXIT, ERROR) stops the loop for Python, after
all the output before it has been written. The loop applies SIGWINCH itself (a RESIZE frame
with the terminal's new size) and watches the typed keys for the detach sequence: the keys of
a sequence begun are held back until the next key shows whether it goes on (then they are
dropped, or the whole sequence is typed and the loop stops) or not (then they go out first,
as typed). Nothing waits on a timer: an idle client sleeps in poll().

Backpressure both ways: the socket is read only while the terminal takes what came before,
and the keyboard only while the socket takes the keys (a stalled holder stalls typing, as a
stalled pty does in the relay).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import struct
import termios
import threading
import time

from bottle import _sessionwire as wire
from bottle._hub_py import match_keys, read_wakeups
from bottle._ptyrelay_py import EV_DONE, EV_HUP, EV_SIGNAL, Poller

__all__ = [
    "CONTROL_MAX",
    "DETACH_KEYS_MAX",
    "EV_CLOSED",
    "EV_DETACH",
    "EV_DONE",
    "EV_FRAME",
    "EV_HUP",
    "EV_SIGNAL",
    "Attach",
]

EV_DETACH = 6
EV_FRAME = 7
EV_CLOSED = 8

# The longest payload of a frame other than OUTPUT that a holder sends (ERROR, at most
# ERROR_MAX bytes; ATTACHED 14): anything longer breaks the protocol.
CONTROL_MAX = 256
DETACH_KEYS_MAX = wire.DETACH_KEYS_MAX
# The socket's bytes are read into this buffer (several OUTPUT frames at a time under a
# stream); the keys go out through one of SEND_MAX, with room kept for a RESIZE and the
# frames Python queues (`send`).
_RBUF = 256 * 1024
_SEND_MAX = 64 * 1024
_SEND_SLACK = 256
_KEYS_READ = wire.MAX_INPUT

_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_POLLHUP = select.POLLHUP
_POLLERR = select.POLLERR
_POLLNVAL = select.POLLNVAL
_WINSIZE = struct.Struct("HHHH")
_SIGWINCH = int(signal.SIGWINCH)


class Attach:
    """Copy the user's keys to a session holder's socket and its output back, until something
    needs Python.

    ``in_fd`` (-1: no input), ``out_fd`` and ``sock_fd`` must be non-blocking; ``sock_fd`` is
    connected and its ATTACH frame sent. ``wake_fd`` is the read end of the
    `signal.set_wakeup_fd` pipe (-1: none), ``size_fd`` the user's terminal, read on SIGWINCH:
    with ``winch`` the loop sends its size as a RESIZE frame itself (a ``readonly`` client
    sends none: the holder ignores a watcher's size). ``in_tty`` makes the end of input a
    hang-up; otherwise the keyboard is just no longer read. ``detach_keys`` (at most
    DETACH_KEYS_MAX bytes; empty for none) typed in a row end the run with EV_DETACH; they
    never reach the holder. A ``readonly`` client sends no keys at all, but its detach keys
    work. With ``keys`` False the loop never reads ``in_fd`` (a direct client: the holder
    reads that terminal) and only watches it for a hang-up. ``offset`` is the output offset
    the connection starts at, when its ATTACHED frame was read before the loop. One thread at
    a time may run it.
    """

    def __init__(
        self,
        in_fd: int,
        out_fd: int,
        sock_fd: int,
        wake_fd: int = -1,
        size_fd: int = -1,
        *,
        winch: bool = True,
        in_tty: bool = False,
        detach_keys: bytes = b"",
        readonly: bool = False,
        keys: bool = True,
        offset: int = 0,
    ) -> None:
        if not isinstance(detach_keys, bytes):
            raise TypeError(f"detach_keys must be bytes, not {type(detach_keys).__name__}")
        if len(detach_keys) > DETACH_KEYS_MAX:
            raise ValueError(
                f"detach_keys: at most {DETACH_KEYS_MAX} keys, not {len(detach_keys)}"
            )
        self._in_fd = in_fd
        self._out_fd = out_fd
        self._sock_fd = sock_fd
        self._wake_fd = wake_fd
        self._size_fd = size_fd
        self._winch = winch
        self._in_tty = in_tty
        self._keys = detach_keys
        self._readonly = readonly
        self._read_keys = keys
        self._dpos = 0  # detach keys matched so far (held back)
        self._in_eof = in_fd < 0
        self._sbuf = bytearray()  # frames for the socket
        self._sock_blocked = False
        self._rbuf = bytearray()  # from the socket, not yet taken apart
        self._rpos = 0
        self._sock_eof = False
        self._out_blocked = False
        self._head = bytearray()  # a frame header in pieces
        self._kind = -1  # the frame being taken apart (-1: between frames)
        self._left = 0  # its payload bytes still to come
        self._control = bytearray()
        self._frame: tuple[int, bytes] | None = None  # the frame `frame()` returns
        self._offset = offset
        self._sigs = bytearray()
        self._busy = threading.Lock()
        self._poller = Poller()

    # ------------------------------------------------------------------ public

    def run(self, timeout_ms: int = -1) -> int:
        """Relay until an event needs Python; return it.

        EV_FRAME (a frame other than OUTPUT arrived: see `frame`), EV_DETACH (the detach
        keys were typed), EV_HUP (the user's terminal went away), EV_CLOSED (the holder
        closed the connection, or it broke) or EV_SIGNAL (see `signals`); EV_DONE when
        ``timeout_ms`` >= 0 ran out first (a bounded wait on the way out: while it runs for
        good the loop has no timer).
        """
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this Attach is already running in another thread")
        try:
            deadline = time.monotonic() + timeout_ms / 1000 if timeout_ms >= 0 else None
            return self._run(deadline)
        finally:
            self._busy.release()

    def frame(self) -> tuple[int, bytes]:
        """The (kind, payload) of the frame that ended the last run with EV_FRAME."""
        if self._frame is None:
            raise RuntimeError("no frame: run() did not return EV_FRAME")
        return self._frame

    def send(self, data: bytes) -> None:
        """Queue whole frames for the holder (sent by the loop, or by `flush`)."""
        if len(self._sbuf) + len(data) > _SEND_MAX + _SEND_SLACK:
            raise BlockingIOError(errno.EAGAIN, "the holder is not taking frames")
        self._sbuf += data

    def flush(self, timeout_ms: int) -> bool:
        """Send what is queued for the holder, waiting at most ``timeout_ms``; whether it all
        went (False too when the connection broke)."""
        if timeout_ms < 0:
            raise ValueError(f"flush: timeout_ms must not be negative (got {timeout_ms})")
        deadline = time.monotonic() + timeout_ms / 1000
        poller = select.poll()
        poller.register(self._sock_fd, _POLLOUT)
        while self._sbuf:
            if self._write_sock() < 0:
                return False
            if not self._sbuf:
                break
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(int(left * 1000) + 1):
                return False
            self._sock_blocked = False
        return True

    def signals(self) -> bytes:
        """Return the signal numbers received since the last call (each once, in order)."""
        out = bytes(self._sigs)
        self._sigs.clear()
        return out

    def resize(self) -> tuple[int, int] | None:
        """Send the terminal's size to the holder (a RESIZE frame); (rows, cols), None when
        unknown or a watcher."""
        return self._resize()

    @property
    def offset(self) -> int:
        """The session's output offset of the next byte to come (ATTACHED's, plus the output
        written and the output dropped since): where a new connection resumes."""
        return self._offset

    @property
    def buffered(self) -> tuple[int, int]:
        """Bytes waiting: (for the holder, from the holder)."""
        return len(self._sbuf), len(self._rbuf) - self._rpos

    # ------------------------------------------------------------------ loop

    def _run(self, deadline: float | None) -> int:
        while True:
            ev = self._consume()
            if ev:
                return ev
            if self._sbuf and not self._sock_blocked:
                ev = self._write_sock()
                if ev:
                    return ev
            if self._sock_eof and self._rpos == len(self._rbuf) and not self._out_blocked:
                return EV_CLOSED
            want: dict[int, int] = {}
            if self._wake_fd >= 0:
                want[self._wake_fd] = _POLLIN
            sock_ev = 0
            if not self._sock_eof and not self._out_blocked:
                sock_ev |= _POLLIN
            if self._sbuf and self._sock_blocked:
                sock_ev |= _POLLOUT
            if sock_ev:
                want[self._sock_fd] = sock_ev
            if self._out_blocked:
                want[self._out_fd] = _POLLOUT
            if not self._in_eof:
                if self._read_keys and len(self._sbuf) <= _SEND_MAX - (
                    wire.HEADER_SIZE + _KEYS_READ
                ):
                    want[self._in_fd] = _POLLIN
                elif self._in_tty:
                    want[self._in_fd] = 0  # nothing to read for now; a hang-up must be seen
            if not want:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            timeout = -1
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return EV_DONE
                timeout = int(left * 1000) + 1
            ready = self._poller.wait(want, timeout)
            if any(rev & _POLLNVAL for rev in ready.values()):
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            if self._wake_fd >= 0 and self._wake_fd in ready and self._read_wake():
                return EV_SIGNAL
            if self._out_blocked and ready.get(self._out_fd, 0):
                self._out_blocked = False
            rev = ready.get(self._sock_fd, 0)
            if rev & (_POLLOUT | _POLLHUP | _POLLERR):
                self._sock_blocked = False
            if sock_ev & _POLLIN and rev & (_POLLIN | _POLLHUP | _POLLERR):
                self._read_sock()
            if not self._in_eof and ready.get(self._in_fd, 0):
                if not self._read_keys:
                    # The holder reads this terminal (a direct client): only its end matters.
                    if ready[self._in_fd] & (_POLLHUP | _POLLERR):
                        return EV_HUP
                    continue
                ev = self._read_in(ready[self._in_fd])
                if ev:
                    return ev

    # ------------------------------------------------------------------ holder to terminal

    def _read_sock(self) -> None:
        if self._rpos:
            del self._rbuf[: self._rpos]
            self._rpos = 0
        while len(self._rbuf) < _RBUF:
            want = _RBUF - len(self._rbuf)
            try:
                data = os.read(self._sock_fd, want)
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError:  # ECONNRESET: the holder is gone
                self._sock_eof = True
                return
            if not data:
                self._sock_eof = True
                return
            self._rbuf += data
            if len(data) < want:
                return  # a short read took all there was

    def _consume(self) -> int:
        """Take apart what was read: OUTPUT to the terminal, any other frame to Python."""
        buf = self._rbuf
        while self._rpos < len(buf) and not self._out_blocked:
            if self._kind < 0:
                need = wire.HEADER_SIZE - len(self._head)
                piece = buf[self._rpos : self._rpos + need]
                self._head += piece
                self._rpos += len(piece)
                if len(self._head) < wire.HEADER_SIZE:
                    break
                h = self._head
                kind, length = h[0], (h[1] << 16) | (h[2] << 8) | h[3]
                self._head = bytearray()
                limit = wire.MAX_OUTPUT if kind == wire.OUTPUT else CONTROL_MAX
                if length > limit:
                    raise OSError(
                        errno.EPROTO,
                        f"the holder sent a frame of type {kind:#x} of {length} bytes",
                    )
                self._kind, self._left = kind, length
                self._control = bytearray()
                if length == 0:
                    ev = self._frame_done()
                    if ev:
                        return ev
                continue
            take = min(self._left, len(buf) - self._rpos)
            if self._kind == wire.OUTPUT:
                ev = self._write_out(bytes(buf[self._rpos : self._rpos + take]))
                if ev:
                    return ev
                continue
            self._control += buf[self._rpos : self._rpos + take]
            self._rpos += take
            self._left -= take
            if not self._left:
                ev = self._frame_done()
                if ev:
                    return ev
        if self._rpos == len(buf):
            buf.clear()
            self._rpos = 0
        return 0

    def _write_out(self, data: bytes) -> int:
        while data:
            try:
                n = os.write(self._out_fd, data)
            except BlockingIOError:
                self._out_blocked = True
                return 0
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EPIPE):
                    return EV_HUP
                raise
            self._rpos += n
            self._left -= n
            self._offset += n
            data = data[n:]
        if not self._left:
            self._kind = -1
        return 0

    def _frame_done(self) -> int:
        kind, payload = self._kind, bytes(self._control)
        self._kind = -1
        if kind == wire.OUTPUT:
            return 0
        if kind == wire.ATTACHED and len(payload) == 14:
            self._offset = wire.parse_attached(payload)[4]
        elif kind == wire.DROPPED and len(payload) == 8:
            self._offset += wire.parse_dropped(payload)
        self._frame = (kind, payload)
        return EV_FRAME

    # ------------------------------------------------------------------ terminal to holder

    def _write_sock(self) -> int:
        buf = self._sbuf
        while buf:
            try:
                n = os.write(self._sock_fd, buf)
            except BlockingIOError:
                self._sock_blocked = True
                return 0
            except InterruptedError:
                continue
            except OSError:  # EPIPE, ECONNRESET: the holder is gone
                buf.clear()
                self._sock_eof = True
                return 0
            del buf[:n]
        return 0

    def _read_in(self, revents: int) -> int:
        if self._in_tty and revents & (_POLLHUP | _POLLERR):
            return EV_HUP
        while len(self._sbuf) <= _SEND_MAX - (wire.HEADER_SIZE + _KEYS_READ):
            try:
                data = os.read(self._in_fd, _KEYS_READ - self._dpos)
            except BlockingIOError:
                return 0
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.EIO:
                    return EV_HUP
                raise
            if not data:
                if self._in_tty:
                    return EV_HUP
                self._in_eof = True
                return 0
            keys, self._dpos, detached = match_keys(self._keys, self._dpos, data)
            if keys and not self._readonly:
                self._sbuf += wire.header(wire.KEYS, len(keys)) + keys
            if detached:
                return EV_DETACH
            if not self._sock_blocked:
                self._write_sock()
            if len(data) < _KEYS_READ - self._dpos:
                return 0  # a short read took all there was
        return 0

    # ------------------------------------------------------------------ signals and size

    def _read_wake(self) -> bool:
        data, closed = read_wakeups(self._wake_fd)
        if closed:
            self._wake_fd = -1
        report = False
        for sig in data:
            if sig == _SIGWINCH and self._winch:
                self._resize()
                continue
            if sig not in self._sigs:
                self._sigs.append(sig)
            report = True
        return report

    def _resize(self) -> tuple[int, int] | None:
        if self._readonly or self._size_fd < 0:
            return None
        try:
            rows, cols, _, _ = _WINSIZE.unpack(
                fcntl.ioctl(self._size_fd, termios.TIOCGWINSZ, bytes(_WINSIZE.size))
            )
        except OSError:
            return None
        if not rows or not cols:
            return None
        if len(self._sbuf) + 8 <= _SEND_MAX + _SEND_SLACK:
            self._sbuf += wire.resize(rows, cols)
        return rows, cols
