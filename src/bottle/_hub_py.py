"""Pure-Python twin of the native session hub (`Hub` in src/_hub.pxi): same API, same behaviour.

A `Hub` is the copy loop of a session holder: one pty master on one side, the clients of a
unix socket on the other (`bottle._sessionwire` is their protocol). It keeps the most recent
output in a ring buffer of ``history`` bytes: every client reads the same ring at its own
position, a client that attaches gets what is still there, and the ring is what a client that
attaches later replays.

Backpressure: the pty is read only into room no attached client still needs, so output waits
for a client that is slow, as it waits for a slow terminal in the relay. But not for long: a
client that holds the output back and has taken less than ``STALL_PROGRESS`` bytes in
``stall_ms`` stops holding it (it *lags*): the ring moves on without it, and the output it
missed is dropped for it alone, with a DROPPED frame saying how much. Once it is back within
half the ring it holds the output again. Nothing is dropped for a client that keeps up.

Size: the pty takes the size of the writer (a client that is not read-only) that was active
last: attached, typed or resized. Watchers' sizes and keys are ignored.

Direct clients (`bottle._sessionwire`, DIRECT and TERMINAL) hand their terminal over: the hub
reads their keys from it (watching for their detach keys: see `bottle._attach_py`) and writes
the output to it itself, unframed; only the other frames go over their socket. Where output
is dropped for one, the hub writes the notice on its terminal and makes the program repaint.
The terminal is given back (DETACHED, and the descriptor closed) on the detach keys, its
hang-up, or the client's DETACH; a client that goes away takes it with it.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import select
import socket
import struct
import termios
import threading
import time

from bottle import _sessionwire as wire
from bottle._ptyrelay_py import (
    EV_CHILD,
    EV_DONE,
    EV_SIGNAL,
    EofRecheck,
    Poller,
    _now_us,
)
from bottle._recorder_py import REC_STALL_MS, Recorder

__all__ = [
    "DEFAULT_HISTORY",
    "EV_CHILD",
    "EV_CLIENTS",
    "EV_DONE",
    "EV_SIGNAL",
    "MAX_CLIENTS",
    "MIN_HISTORY",
    "STALL_MS",
    "STALL_PROGRESS",
    "TWITCH_MS",
    "Hub",
    "Poller",
    "match_keys",
    "peer_uid",
    "read_wakeups",
]

EV_CLIENTS = 5

DEFAULT_HISTORY = 1 << 20
MIN_HISTORY = 4096
MAX_CLIENTS = 32
# A client may hold the output back while it takes at least STALL_PROGRESS bytes every
# STALL_MS (64 KiB in 2 s: any terminal, even over a slow link; not a stopped client).
STALL_MS = 2000
STALL_PROGRESS = 64 * 1024
# A redraw sets the pty one row smaller, then back after TWITCH_MS: smolvm's client reads its
# size once per wake-up (src/agent/client.rs, after every poll return, at most 100 ms apart),
# so two sizes set back to back can reach it as one, unchanged, and the program never hears
# of it.
TWITCH_MS = 200
# Output is passed on at once, unless the read filled a whole pty buffer (4095 bytes on Linux:
# the program is streaming and more is on its way): then it gathers, up to BATCH bytes or for
# at most DEFER_US, so that each client gets one write (and one wake-up) per batch rather than
# one per 4 KiB: with three watchers this took the holder's CPU per GiB from 1.5 to 1.1 times
# the relay's in copy mode (README, Detached sessions).
_FULL_READ = 4095
_BATCH = 64 * 1024
_DEFER_US = 1000
# Keys from clients wait here for the pty.
_IBUF = 64 * 1024
_HOLD_POLL_MS = 10
_FD_FLAGS_NB = os.O_NONBLOCK
# Ancillary room for the descriptors a TERMINAL frame brings (one is wanted; more are closed).
_ANC = socket.CMSG_SPACE(4 * array.array("i").itemsize)
_CMSG_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)

_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT
_POLLHUP = select.POLLHUP
_POLLERR = select.POLLERR
_POLLNVAL = select.POLLNVAL
_WINSIZE = struct.Struct("HHHH")
# macOS: getsockopt(SOL_LOCAL, LOCAL_PEERCRED) gives a struct xucred (version, uid, ...).
_SOL_LOCAL = 0
_LOCAL_PEERCRED = 1


def peer_uid(fd: int) -> int:
    """The user id of the process at the other end of the unix socket ``fd``."""
    with socket.socket(fileno=os.dup(fd)) as sock:
        if hasattr(socket, "SO_PEERCRED"):
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            uid: int = struct.unpack("3i", creds)[1]
            return uid
        creds = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, struct.calcsize("IIh16I"))
        uid = struct.unpack_from("II", creds)[1]
        return uid


def match_keys(seq: bytes, pos: int, data: bytes) -> tuple[bytes, int, bool]:
    """Watch typed ``data`` for the detach sequence ``seq`` (``pos`` of its keys matched
    before, and held back): the keys to send on, the keys matched now, and whether the
    sequence is complete (what follows it in ``data`` is dropped)."""
    if not seq or (not pos and seq[0] not in data):
        return data, pos, False
    out = bytearray()
    for b in data:
        if b == seq[pos]:
            pos += 1
            if pos == len(seq):
                return bytes(out), 0, True
            continue
        if pos:
            out += seq[:pos]  # not the sequence after all: its keys go as they were typed
            pos = 0
            if b == seq[0]:
                pos = 1
                continue
        out.append(b)
    return bytes(out), pos, False


def read_wakeups(fd: int) -> tuple[bytes, bool]:
    """The signal numbers waiting in the `signal.set_wakeup_fd` pipe ``fd`` (non-blocking),
    and whether the pipe has been closed."""
    got = bytearray()
    while True:
        try:
            data = os.read(fd, 128)
        except BlockingIOError:
            return bytes(got), False
        except InterruptedError:
            continue
        if not data:
            return bytes(got), True
        got += data


class _Client:
    """One connection: where it is in the output, and what it owes or is owed."""

    __slots__ = (
        "active",
        "attached",
        "blocked",
        "closing",
        "cols",
        "dead",
        "direct",
        "dkeys",
        "dpos",
        "drop_note",
        "fd",
        "frame_left",
        "given",
        "in_blocked",
        "lagging",
        "pos",
        "pre",
        "rbuf",
        "readonly",
        "rows",
        "sock",
        "stall_pos",
        "stall_since",
        "tail",
        "tblocked",
        "term",
        "tnote",
    )

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock  # owns the connection's descriptor
        self.fd = sock.fileno()
        self.attached = False
        self.readonly = False
        self.rows = self.cols = 0
        self.pos = 0  # absolute offset of the next output byte to send from the ring
        self.frame_left = 0  # payload bytes of the current OUTPUT frame still owed
        self.pre = bytearray()  # control frames (or a header's rest) to send before more data
        self.tail: memoryview | None = None  # a lagging client's frame, copied before overrun
        self.blocked = False  # the socket took less than offered: wait for POLLOUT
        self.closing = False  # close once `pre` is sent (an ERROR, or after EXIT)
        self.dead = False  # closed and forgotten
        self.lagging = False
        self.stall_since = 0
        self.stall_pos = 0
        self.rbuf = bytearray()
        self.in_blocked = False  # keys wait for room in the hub's input buffer
        self.active = 0  # when it was last active (a sequence number), for the size
        # A direct client: granted DIRECT, its terminal (`term`) from its TERMINAL frame on.
        self.direct = False
        self.term = -1
        self.given = -1  # a descriptor that came over the socket, not yet claimed
        self.tblocked = False  # the terminal took less than offered: wait for POLLOUT
        self.tnote = bytearray()  # for the terminal before more output (a drop's notice)
        self.drop_note = 0  # output dropped at attach, said on the terminal once it is ours
        self.dkeys = b""
        self.dpos = 0


class Hub:
    """Copy a pty master's output to the clients of a listening unix socket, and their keys
    back, until something needs Python.

    ``master_fd`` and ``listen_fd`` must be non-blocking. ``wake_fd`` is the read end of the
    `signal.set_wakeup_fd` pipe, ``child_fd`` becomes readable when the child exits (-1 when
    unused). Connections are accepted here, and refused (an ERROR frame) unless their peer's
    user id is ``owner_uid`` (default: this process's effective uid); the hub owns the
    accepted descriptors. ``history`` is the size of the output ring. ``hold_ms`` > 0 holds
    keys while the child's pty is in canonical mode, for at most that long from the Hub's
    creation (see the relay's Pump). ``record_fd`` >= 0 records the session (asciicast v2,
    after the header its caller wrote): ``"o"`` for output as it is read, ``"r"`` for each
    size the pty takes, and with ``record_input`` ``"i"`` for writers' keys. One thread at a
    time may run or finish it.
    """

    def __init__(
        self,
        master_fd: int,
        listen_fd: int,
        wake_fd: int = -1,
        child_fd: int = -1,
        *,
        history: int = DEFAULT_HISTORY,
        owner_uid: int = -1,
        hold_ms: int = 0,
        stall_ms: int = STALL_MS,
        record_fd: int = -1,
        record_input: bool = False,
        record_stall_ms: int = REC_STALL_MS,
    ) -> None:
        self._clients: list[_Client] = []
        self._listener: socket.socket | None = None
        self._rec: Recorder | None = None
        if history < MIN_HISTORY:
            raise ValueError(f"history must be at least {MIN_HISTORY} bytes, not {history}")
        if stall_ms < 1:
            raise ValueError("stall_ms must be positive")
        if record_stall_ms < 1:
            raise ValueError("record_stall_ms must be positive")
        self._master_fd = master_fd
        self._listen_fd = listen_fd
        self._wake_fd = wake_fd
        self._child_fd = child_fd
        self._owner = os.geteuid() if owner_uid < 0 else owner_uid
        self._size = history
        self._ring = bytearray(history)
        self._cap = min(wire.MAX_OUTPUT, history)
        self._total = 0
        self._shown = 0  # output up to here is passed on to clients (see _FULL_READ)
        self._defer_at = 0
        self._batch = min(_BATCH, history // 2)
        self._stall_us = stall_ms * 1000
        self._hold_ms = hold_ms
        self._holding = hold_ms > 0
        self._held_at = time.monotonic_ns() // 1_000_000
        self._ibuf = bytearray()
        self._master_eof = False
        self._master_eio = False  # the end came as Linux's EIO (see EOF_RECHECKS)
        self._master_blocked = False
        self._sigs = bytearray()
        self._busy = threading.Lock()
        self._poller = Poller()
        self._changed = False
        self._refused = 0
        self._lagged = 0
        self._seq = 0
        self._owner_client: _Client | None = None
        self._twitch_at = 0
        self._exit_status = -1
        try:
            rows, cols, _, _ = _WINSIZE.unpack(
                fcntl.ioctl(master_fd, termios.TIOCGWINSZ, bytes(_WINSIZE.size))
            )
        except OSError as exc:
            raise OSError(exc.errno, f"master_fd: {exc.strerror}") from None
        self._rows, self._cols = rows, cols
        self._listener = socket.socket(fileno=os.dup(listen_fd))
        self._listener.setblocking(False)
        if record_fd >= 0:
            self._rec = Recorder(record_fd, record_input, record_stall_ms)

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Close every client connection (the hub owns them); idempotent."""
        for c in getattr(self, "_clients", ()):
            self._let_go(c)
            c.sock.close()
        self._clients = []
        listener = getattr(self, "_listener", None)
        if listener is not None:
            listener.close()
            self._listener = None
        rec = getattr(self, "_rec", None)
        if rec is not None:
            rec.close()

    # ------------------------------------------------------------------ public

    def run(self) -> int:
        """Relay until an event needs Python; return it.

        EV_SIGNAL (a signal arrived: see `signals`), EV_CHILD (``child_fd`` became readable)
        or EV_CLIENTS (a client attached or left, or a connection was refused).
        """
        self._enter()
        try:
            return self._run()
        finally:
            self._busy.release()

    def drain(self, idle_ms: int, cap_ms: int) -> None:
        """After the child's exit: pass on its last output.

        Stops taking connections (closing those not attached yet) and reads the pty until
        EOF, until it stays quiet for ``idle_ms``, or until it has been waited on for
        ``cap_ms`` in all (a grandchild may keep it open); the clients get the output as they
        take it. Linux's EIO counts as the end only once reads at once and after 1, 2, 4, 8
        and 16 ms found nothing more (EOF_RECHECKS).
        """
        if idle_ms < 0 or cap_ms < 0:
            raise ValueError(
                f"drain: idle_ms and cap_ms must not be negative (got {idle_ms}, {cap_ms})"
            )
        self._enter()
        try:
            self._end_loop(idle_ms, cap_ms, -1)
        finally:
            self._busy.release()

    def finish(self, status: int, flush_ms: int) -> None:
        """Give every attached client the rest of the output and then an EXIT frame with
        ``status``, within ``flush_ms``; then close every connection."""
        if flush_ms < 0:
            raise ValueError(f"finish: flush_ms must not be negative (got {flush_ms})")
        if not 0 <= status <= 0xFFFF:
            raise ValueError(f"finish: status {status} out of range")
        self._enter()
        try:
            self._exit_status = status
            self._end_loop(0, 0, flush_ms)
            for c in list(self._clients):
                self._drop(c)
        finally:
            self._busy.release()

    def signals(self) -> bytes:
        """Return the signal numbers received since the last call (each once, in order)."""
        out = bytes(self._sigs)
        self._sigs.clear()
        return out

    def history(self) -> bytes:
        """The output the ring still holds, oldest first."""
        n = min(self._total, self._size)
        start = (self._total - n) % self._size
        if start + n <= self._size:
            return bytes(self._ring[start : start + n])
        return bytes(self._ring[start:]) + bytes(self._ring[: n - (self._size - start)])

    @property
    def total(self) -> int:
        """Bytes of output so far."""
        return self._total

    @property
    def clients(self) -> tuple[int, int, int]:
        """(writers, watchers, connections not attached yet)."""
        writers = sum(1 for c in self._clients if c.attached and not c.readonly)
        watchers = sum(1 for c in self._clients if c.attached and c.readonly)
        return writers, watchers, len(self._clients) - writers - watchers

    @property
    def refused(self) -> int:
        """Connections refused so far (another user, a bad frame, too many clients)."""
        return self._refused

    @property
    def lagged(self) -> int:
        """How many times a client stopped holding the output back (see the module)."""
        return self._lagged

    @property
    def size(self) -> tuple[int, int]:
        """The pty's size as the clients set it: (rows, cols)."""
        return self._rows, self._cols

    @property
    def holding(self) -> bool:
        """Whether keys are still being held back."""
        return self._holding

    def finish_recording(self, timeout_ms: int) -> int:
        """End the recording (see the relay's Pump); 0 when complete, else an errno."""
        if timeout_ms < 0:
            raise ValueError(
                f"finish_recording: timeout_ms must not be negative (got {timeout_ms})"
            )
        if self._rec is None:
            return 0
        self._enter()
        try:
            return self._rec.finish(timeout_ms)
        finally:
            self._busy.release()

    # ------------------------------------------------------------------ loop

    def _enter(self) -> None:
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("this Hub is already running in another thread")

    def _run(self) -> int:
        while True:
            timeout = -1
            if self._holding and self._ibuf:
                timeout = self._hold_timeout()
                if not self._holding:
                    self._write_master()
            timeout = self._min_timeout(timeout, self._twitch_timeout())
            timeout = self._min_timeout(timeout, self._defer_timeout())
            rec = self._rec
            if rec is not None:
                timeout = self._min_timeout(timeout, rec.wait_ms())
            reading = not self._master_eof
            room = self._room() if reading else 0
            if reading and room == 0:
                timeout = self._min_timeout(timeout, self._stall_timeout())
                room = self._room()  # a client that stopped holding it frees room
            want: dict[int, int] = {}
            if self._wake_fd >= 0:
                want[self._wake_fd] = _POLLIN
            if self._child_fd >= 0:
                want[self._child_fd] = _POLLIN
            want[self._listen_fd] = _POLLIN
            if reading:
                ev = 0
                if room > 0 and not (rec is not None and rec.blocked()):
                    ev |= _POLLIN
                if self._ibuf and not self._holding and self._master_blocked:
                    ev |= _POLLOUT
                if ev:
                    want[self._master_fd] = ev
            keys_room = len(self._ibuf) <= _IBUF - wire.MAX_INPUT
            for c in self._clients:
                ev = 0
                if not c.in_blocked and not c.closing:
                    ev |= _POLLIN
                if c.blocked:
                    ev |= _POLLOUT
                want[c.fd] = ev
                if c.term >= 0:
                    # Keys while the input buffer has room (a hang-up is seen either way).
                    ev = _POLLIN if keys_room and not c.closing else 0
                    want[c.term] = ev | (_POLLOUT if c.tblocked else 0)
            if rec is not None and rec.pending:
                want[rec.fd] = _POLLOUT
            ready = self._poller.wait(want, timeout)
            if any(rev & _POLLNVAL for rev in ready.values()):
                raise OSError(errno.EBADF, os.strerror(errno.EBADF))
            if self._wake_fd in ready and self._read_wake():
                return EV_SIGNAL
            if self._child_fd >= 0 and self._child_fd in ready:
                return EV_CHILD
            if rec is not None and rec.fd in want and rec.fd in ready:
                rec.flush()
            rev = ready.get(self._master_fd, 0)
            if rev & (_POLLOUT | _POLLHUP | _POLLERR):
                self._master_blocked = False
            if want.get(self._master_fd, 0) & _POLLIN and rev & (_POLLIN | _POLLHUP | _POLLERR):
                self._read_master()
            for c in list(self._clients):
                if c.dead:
                    continue
                crev = ready.get(c.fd, 0)
                if crev & (_POLLOUT | _POLLHUP | _POLLERR):
                    c.blocked = False
                if crev & (_POLLIN | _POLLHUP | _POLLERR) and not c.in_blocked:
                    self._read_client(c)
                trev = ready.get(c.term, 0) if c.term >= 0 and not c.dead else 0
                if trev & (_POLLOUT | _POLLHUP | _POLLERR):
                    c.tblocked = False
                if trev & (_POLLIN | _POLLHUP | _POLLERR):
                    self._read_term(c, trev)
            if self._listen_fd in ready:
                self._accept()
            self._parse_blocked()
            self._flush_all()
            if not self._master_blocked:
                self._write_master()
            self._lag_check()
            if self._changed:
                self._changed = False
                return EV_CLIENTS

    def _end_loop(self, idle_ms: int, cap_ms: int, flush_ms: int) -> None:
        # drain (flush_ms < 0): read the pty while there is more; finish: until every client
        # is done or flush_ms is over. No connection is taken either way.
        for c in [c for c in self._clients if not c.attached]:
            self._drop(c)
        rec = self._rec
        reading = flush_ms < 0 and (not self._master_eof or self._master_eio)
        budget = cap_ms * 1000
        deadline = _now_us() + flush_ms * 1000 if flush_ms >= 0 else 0
        eio = EofRecheck()
        self._publish()
        while True:
            if reading and (budget <= 0 or (self._master_eof and eio.over())):
                reading = False
            if flush_ms < 0 and not reading:
                return
            if deadline and (not self._clients or _now_us() >= deadline):
                return
            timeout = -1
            want: dict[int, int] = {}
            master_polled = recheck = False
            if reading:
                room = self._room()
                if room == 0:
                    timeout = self._stall_timeout()
                    room = self._room()  # a client that stopped holding it frees room
                if room > 0 and not (rec is not None and rec.blocked()):
                    if not self._master_eof:
                        want[self._master_fd] = _POLLIN
                        master_polled = True
                        timeout = min(idle_ms, (budget + 999) // 1000)
                    else:  # EIO: read again when the next re-read is due (see EOF_RECHECKS)
                        recheck = True
                        timeout = self._min_timeout(timeout, eio.wait_ms())
            if deadline:
                timeout = self._min_timeout(timeout, max(0, (deadline - _now_us() + 999) // 1000))
            if rec is not None:
                timeout = self._min_timeout(timeout, rec.wait_ms())
                if rec.pending:
                    want[rec.fd] = _POLLOUT
            for c in self._clients:
                want[c.fd] = (_POLLOUT if c.blocked else 0) | (0 if c.closing else _POLLIN)
                if c.term >= 0:
                    want[c.term] = _POLLOUT if c.tblocked else 0
            started = _now_us()
            ready = self._poller.wait(want, timeout)
            if master_polled or recheck:
                budget -= _now_us() - started
                if not ready and master_polled:
                    reading = False
            if recheck and eio.due():
                got = self._total
                self._master_eof = False
                self._read_master()
                self._publish()
                eio.read(self._total != got)
            if rec is not None and rec.fd in want and rec.fd in ready:
                rec.flush()
            if master_polled and ready.get(self._master_fd, 0):
                if ready[self._master_fd] & _POLLNVAL:
                    raise OSError(errno.EBADF, os.strerror(errno.EBADF))
                self._read_master()
                self._publish()
                if self._master_eof and not self._master_eio:
                    reading = False
            for c in list(self._clients):
                if c.dead:
                    continue
                crev = ready.get(c.fd, 0)
                if crev & (_POLLOUT | _POLLHUP | _POLLERR):
                    c.blocked = False
                if crev & (_POLLIN | _POLLHUP | _POLLERR):
                    self._discard_input(c)
                trev = ready.get(c.term, 0) if c.term >= 0 and not c.dead else 0
                if trev & (_POLLHUP | _POLLERR):
                    self._let_go(c, wire.DETACHED_HANGUP)
                elif trev & _POLLOUT:
                    c.tblocked = False
            self._flush_all()
            self._lag_check()

    @staticmethod
    def _min_timeout(a: int, b: int) -> int:
        if b < 0:
            return a
        return b if a < 0 or b < a else a

    # ------------------------------------------------------------------ the pty

    def _room(self) -> int:
        """Bytes the pty may be read into now: the ring less what attached clients that hold
        the output still need."""
        floor = self._total
        for c in self._clients:
            if c.attached and not c.lagging and not c.closing and c.pos < floor:
                floor = c.pos
        return self._size - (self._total - floor)

    def _read_master(self) -> None:
        # Read as much as there is room for; each chunk goes out to the clients at once,
        # unless the program is streaming (see _FULL_READ).
        rec = self._rec
        while not self._master_eof:
            room = self._room()
            if room <= 0 and self._shown < self._total:
                self._publish()  # clients cannot make room for what they have not been given
                room = self._room()
            if room <= 0:
                break
            at = self._total % self._size
            want = min(room, self._size - at)
            if rec is not None and rec.on:
                rec_room = rec.room()
                if rec_room == 0:
                    break
                want = min(want, rec_room)
            self._save_tails(want)
            try:
                data = os.read(self._master_fd, want)
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
            n = len(data)
            self._ring[at : at + n] = data
            self._total += n
            if rec is not None:
                rec.output(data)
            if n < _FULL_READ or self._total - self._shown >= self._batch:
                self._publish()
            elif not self._defer_at:
                self._defer_at = _now_us() + _DEFER_US
        if self._master_eof:
            self._publish()

    def _publish(self) -> None:
        """Pass the output read so far on to the clients."""
        self._shown = self._total
        self._defer_at = 0
        self._flush_all()

    def _defer_timeout(self) -> int:
        if not self._defer_at:
            return -1
        left = self._defer_at - _now_us()
        if left <= 0:
            self._publish()
            return -1
        return (left + 999) // 1000

    def _save_tails(self, n: int) -> None:
        # A lagging client in the middle of a frame keeps that frame's rest: the ring is about
        # to overwrite the oldest n bytes, and the frame's length is already on its way.
        oldest_after = self._total + n - self._size
        for c in self._clients:
            if c.lagging and c.frame_left and c.tail is None and c.pos < oldest_after:
                c.tail = memoryview(self._copy(c.pos, c.frame_left))
                c.pos += c.frame_left

    def _copy(self, start: int, n: int) -> bytes:
        at = start % self._size
        if at + n <= self._size:
            return bytes(self._ring[at : at + n])
        return bytes(self._ring[at:]) + bytes(self._ring[: n - (self._size - at)])

    def _segments(self, start: int, n: int) -> list[memoryview]:
        at = start % self._size
        view = memoryview(self._ring)
        if at + n <= self._size:
            return [view[at : at + n]]
        return [view[at:], view[: n - (self._size - at)]]

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

    def _hold_timeout(self) -> int:
        try:
            canonical = termios.tcgetattr(self._master_fd)[3] & termios.ICANON
        except termios.error:
            canonical = 0
        left = self._held_at + self._hold_ms - time.monotonic_ns() // 1_000_000
        if not canonical or left <= 0:
            self._holding = False
            return -1
        return min(left, _HOLD_POLL_MS)

    def _set_size(self, rows: int, cols: int) -> None:
        """Give the pty the size a writer asked for; a change is recorded."""
        self._twitch_at = 0
        if (rows, cols) == (self._rows, self._cols):
            return
        self._ioctl_size(rows, cols)
        self._rows, self._cols = rows, cols
        if self._rec is not None:
            self._rec.resized(rows, cols)

    def _ioctl_size(self, rows: int, cols: int) -> None:
        with contextlib.suppress(OSError):  # a pty that refuses a size keeps the one it has
            fcntl.ioctl(self._master_fd, termios.TIOCSWINSZ, _WINSIZE.pack(rows, cols, 0, 0))

    def _twitch(self) -> None:
        """Make the program repaint: a size one row off, then (TWITCH_MS later) back."""
        if self._twitch_at or not self._rows or not self._cols:
            return
        rows = self._rows - 1 if self._rows > 1 else self._rows + 1
        self._ioctl_size(rows, self._cols)
        self._twitch_at = _now_us() + TWITCH_MS * 1000

    def _twitch_timeout(self) -> int:
        if not self._twitch_at:
            return -1
        left = self._twitch_at - _now_us()
        if left <= 0:
            self._twitch_at = 0
            self._ioctl_size(self._rows, self._cols)
            return -1
        return (left + 999) // 1000

    # ------------------------------------------------------------------ signals

    def _read_wake(self) -> bool:
        data, closed = read_wakeups(self._wake_fd)
        if closed:
            self._wake_fd = -1
        for sig in data:
            if sig not in self._sigs:
                self._sigs.append(sig)
        return bool(data)

    # ------------------------------------------------------------------ clients

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # The peer gave up before we took it (ECONNABORTED), or no descriptor left
                # (EMFILE): neither stops the session.
                if exc.errno in (errno.ECONNABORTED, errno.EMFILE, errno.ENFILE, errno.EPROTO):
                    return
                raise
            sock.setblocking(False)
            try:
                uid = peer_uid(sock.fileno())
            except OSError:
                uid = -1
            if uid != self._owner:
                self._refuse(sock, f"refused: uid {uid} is not this session's owner")
            elif len(self._clients) >= MAX_CLIENTS:
                self._refuse(sock, f"refused: the session has {MAX_CLIENTS} clients already")
            else:
                self._clients.append(_Client(sock))

    def _refuse(self, sock: socket.socket, message: str) -> None:
        with contextlib.suppress(OSError):  # best effort: the socket's buffer is empty
            os.write(sock.fileno(), wire.error(message))
        sock.close()
        self._refused += 1
        self._changed = True

    def _drop(self, c: _Client) -> None:
        """Close a client's connection and forget it."""
        if c.dead:
            return
        c.dead = True
        self._let_go(c)
        if c.given >= 0:
            with contextlib.suppress(OSError):
                os.close(c.given)
            c.given = -1
        c.sock.close()
        self._clients.remove(c)
        if c.attached:
            self._changed = True
        if self._owner_client is c:
            self._owner_client = None
            writers = [w for w in self._clients if w.attached and not w.readonly]
            if writers:
                nxt = max(writers, key=lambda w: w.active)
                self._owner_client = nxt
                self._set_size(nxt.rows, nxt.cols)

    def _fail(self, c: _Client, message: str) -> None:
        """A client broke the protocol: tell it (when the stream allows) and close."""
        if not c.attached:
            self._refused += 1
            self._changed = True
        if c.frame_left or c.tail is not None:
            self._drop(c)
            return
        c.pre += wire.error(message)
        c.closing = True
        c.in_blocked = False
        c.rbuf.clear()

    def _read_client(self, c: _Client) -> None:
        while len(c.rbuf) < wire.HEADER_SIZE + wire.MAX_INPUT:
            want = wire.HEADER_SIZE + wire.MAX_INPUT - len(c.rbuf)
            # A direct client's terminal may come with these bytes.
            waiting = c.direct and c.term < 0
            try:
                data = self._receive(c, want) if waiting else os.read(c.fd, want)
            except BlockingIOError:
                break
            except OSError:  # ECONNRESET: gone
                self._drop(c)
                return
            if not data:
                self._drop(c)
                return
            if c.closing:
                continue
            c.rbuf += data
            self._parse(c)
            if c.dead or c.in_blocked or c.closing:
                return

    def _receive(self, c: _Client, n: int) -> bytes:
        """Read from a client that may send descriptors; the first is kept (`given`), any
        other closed."""
        data, ancillary, _, _ = c.sock.recvmsg(n, _ANC, _CMSG_CLOEXEC)
        for level, kind, payload in ancillary:
            if level != socket.SOL_SOCKET or kind != socket.SCM_RIGHTS:
                continue
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            for fd in fds:
                if not _CMSG_CLOEXEC:
                    fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.FD_CLOEXEC)
                if c.given < 0:
                    c.given = fd
                else:
                    os.close(fd)
        return data

    def _discard_input(self, c: _Client) -> None:
        # While finishing, only a client's leaving matters.
        while True:
            try:
                data = os.read(c.fd, 4096)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._drop(c)
                return

    def _parse_blocked(self) -> None:
        if len(self._ibuf) > _IBUF - wire.MAX_INPUT:
            return
        for c in list(self._clients):
            if c.in_blocked and not c.dead:
                c.in_blocked = False
                self._parse(c)

    def _parse(self, c: _Client) -> None:
        buf = c.rbuf
        while len(buf) >= wire.HEADER_SIZE:
            kind = buf[0]
            length = (buf[1] << 16) | (buf[2] << 8) | buf[3]
            if length > wire.MAX_INPUT:
                self._fail(c, f"frame of {length} bytes (limit {wire.MAX_INPUT})")
                return
            if len(buf) < wire.HEADER_SIZE + length:
                return
            payload = bytes(buf[wire.HEADER_SIZE : wire.HEADER_SIZE + length])
            if (
                kind == wire.KEYS
                and c.attached
                and not c.readonly
                and len(self._ibuf) + length > _IBUF
            ):
                c.in_blocked = True  # until the pty has taken enough of the keys before
                return
            del buf[: wire.HEADER_SIZE + length]
            if not c.attached:
                if kind != wire.ATTACH:
                    self._fail(c, "the first frame must be ATTACH")
                    return
                self._attach(c, payload)
            elif kind == wire.KEYS:
                if not c.readonly:
                    self._keys(c, payload)
            elif kind == wire.RESIZE:
                if length != 4:
                    self._fail(c, "bad RESIZE frame")
                    return
                if not c.readonly:
                    rows, cols = wire.parse_size(payload)
                    if rows and cols:
                        c.rows, c.cols = rows, cols
                        self._activate(c)
            elif kind == wire.REDRAW:
                self._twitch()
            elif kind == wire.DETACH:
                if c.term >= 0:
                    self._let_go(c, wire.DETACHED_ASKED)
                    return
                self._drop(c)
                return
            elif kind == wire.TERMINAL:
                self._take_terminal(c, payload)
            else:
                self._fail(c, f"unexpected frame type {kind:#x}")
                return
            if c.closing:
                return

    def _attach(self, c: _Client, payload: bytes) -> None:
        if len(payload) != 14:
            self._fail(c, "bad ATTACH frame")
            return
        version, flags, rows, cols, since = wire.parse_attach(payload)
        if version != wire.VERSION:
            self._fail(c, f"protocol version {version} is not supported (this holder: 1)")
            return
        c.attached = True
        c.readonly = bool(flags & wire.READONLY)
        c.direct = bool(flags & wire.DIRECT)
        c.rows, c.cols = rows, cols
        oldest = max(0, self._total - self._size)
        start = min(max(since, oldest), self._shown)
        c.pos = start
        taken = flags & (wire.READONLY | wire.REDRAW_ON_ATTACH | wire.DIRECT)
        c.pre += wire.attached(taken, self._rows, self._cols, start)
        if since < oldest:
            c.pre += wire.dropped(oldest - since)
            c.drop_note = oldest - since
        self._changed = True
        before = (self._rows, self._cols)
        if not c.readonly and rows and cols:
            self._activate(c)
        if flags & wire.REDRAW_ON_ATTACH and (self._rows, self._cols) == before:
            self._twitch()

    def _take_terminal(self, c: _Client, payload: bytes) -> None:
        """A direct client's TERMINAL frame: its terminal is the hub's from here."""
        fd, c.given = c.given, -1
        if not c.direct or c.term >= 0 or fd < 0 or len(payload) > wire.DETACH_KEYS_MAX:
            if fd >= 0:
                os.close(fd)
            self._fail(c, "a TERMINAL frame needs DIRECT, one terminal descriptor and at "
                       f"most {wire.DETACH_KEYS_MAX} detach keys")  # fmt: skip
            return
        if not os.isatty(fd):
            os.close(fd)
            self._fail(c, "TERMINAL: the descriptor is not a terminal")
            return
        os.set_blocking(fd, False)  # the client's own open file description: nobody else's
        c.term = fd
        c.dkeys = payload
        if c.drop_note:
            c.tnote += wire.DROPPED_NOTICE.format(c.drop_note).encode()
            c.drop_note = 0
            self._twitch()

    def _let_go(self, c: _Client, reason: int = -1) -> None:
        """Give a direct client's terminal back: never touched again; with a ``reason``, the
        client is told (DETACHED) and the connection closes after."""
        if c.term < 0:
            return
        with contextlib.suppress(OSError):
            os.close(c.term)
        c.term = -1
        c.tblocked = False
        c.tnote.clear()
        if reason >= 0 and not c.dead:
            c.pre += wire.detached(reason, c.pos)
            c.closing = True
            c.in_blocked = False
            c.rbuf.clear()
            self._changed = True

    def _read_term(self, c: _Client, revents: int) -> None:
        """Keys from a direct client's terminal (its detach keys end it)."""
        while len(self._ibuf) <= _IBUF - wire.MAX_INPUT:
            try:
                data = os.read(c.term, wire.MAX_INPUT - c.dpos)
            except BlockingIOError:
                if revents & (_POLLHUP | _POLLERR):
                    self._let_go(c, wire.DETACHED_HANGUP)
                return
            except OSError:  # EIO: hung up
                data = b""
            if not data:
                self._let_go(c, wire.DETACHED_HANGUP)
                return
            keys, c.dpos, detached = match_keys(c.dkeys, c.dpos, data)
            if keys and not c.readonly:
                self._keys(c, keys)
            if detached:
                self._let_go(c, wire.DETACHED_KEYS)
                return
            if len(data) < wire.MAX_INPUT - c.dpos:
                return  # a short read took all there was

    def _activate(self, c: _Client) -> None:
        """A writer attached, typed or resized: it is the most recent, and its size wins."""
        self._seq += 1
        c.active = self._seq
        self._owner_client = c
        if c.rows and c.cols:
            self._set_size(c.rows, c.cols)

    def _keys(self, c: _Client, data: bytes) -> None:
        if self._owner_client is not c:
            self._activate(c)
        else:
            self._seq += 1
            c.active = self._seq
        self._ibuf += data
        rec = self._rec
        if rec is not None and rec.with_input and rec.on and rec.room() >= len(data):
            rec.input(data)

    # ------------------------------------------------------------------ output to clients

    def _flush_all(self) -> None:
        for c in list(self._clients):
            if not c.dead and (c.direct or not c.blocked):
                self._flush(c)

    def _flush(self, c: _Client) -> None:
        if c.direct:
            self._flush_direct(c)
            return
        # Until the socket is full or nothing is left: an EXIT (or a DROPPED) becomes due only
        # once what came before it is out.
        while not c.dead and not c.blocked and self._flush_once(c):
            pass

    def _flush_once(self, c: _Client) -> bool:
        """One writev of what ``c`` is owed; whether it all went (and more may be due)."""
        if not c.attached and not c.closing:
            return False
        # At a frame boundary: output the ring no longer has is dropped (a lagging client),
        # and after the last output comes the exit status.
        if not c.frame_left and c.tail is None and not c.closing:
            oldest = self._total - self._size
            if c.pos < oldest:
                c.pre += wire.dropped(oldest - c.pos)
                c.pos = oldest
            if self._exit_status >= 0 and c.pos == self._shown:
                c.pre += wire.exit_frame(self._exit_status)
                c.closing = True
        iov: list[bytes | bytearray | memoryview] = []
        if c.pre:
            iov.append(c.pre)
        frames: list[tuple[int, int, bytes]] = []
        if c.tail is not None:
            iov.append(c.tail)
        elif c.frame_left:
            iov += self._segments(c.pos, c.frame_left)
        # After a tail (a lagging client's saved frame) the ring may have moved past the
        # client: what comes next is decided at the boundary, next time.
        if not c.closing and c.tail is None:
            cursor = c.pos + c.frame_left
            while cursor < self._shown and len(iov) < 12:
                n = min(self._shown - cursor, self._cap)
                head = wire.header(wire.OUTPUT, n)
                iov.append(head)
                iov += self._segments(cursor, n)
                frames.append((cursor, n, head))
                cursor += n
        if not iov:
            return False
        offered = sum(len(v) for v in iov)
        try:
            k = os.writev(c.fd, iov)
        except BlockingIOError:
            c.blocked = True
            return False
        except OSError:  # EPIPE, ECONNRESET: the client is gone
            self._drop(c)
            return False
        if k < offered:
            c.blocked = True
        took = min(k, len(c.pre))
        del c.pre[:took]
        k -= took
        if c.tail is not None:
            took = min(k, len(c.tail))
            c.tail = c.tail[took:] if took < len(c.tail) else None
            c.frame_left -= took
            k -= took
        elif c.frame_left:
            took = min(k, c.frame_left)
            c.pos += took
            c.frame_left -= took
            k -= took
        for start, n, head in frames:
            if k <= 0:
                break
            if k < len(head):
                c.pre += head[k:]
                c.frame_left = n
                k = 0
                break
            k -= len(head)
            took = min(k, n)
            c.pos = start + took
            c.frame_left = n - took
            k -= took
        if c.closing and not c.pre:
            self._drop(c)
            return False
        return not c.blocked

    def _flush_direct(self, c: _Client) -> None:
        """A direct client: the output to its terminal, unframed; the frames to its socket."""
        if c.term >= 0 and not c.closing:
            oldest = self._total - self._size
            if c.pos < oldest and not c.tblocked:
                # It lagged, and its terminal takes output again: what the ring no longer has
                # is dropped, and said there.
                c.pre += wire.dropped(oldest - c.pos)
                c.tnote += wire.DROPPED_NOTICE.format(oldest - c.pos).encode()
                c.pos = oldest
                self._twitch()
            if not c.tblocked:
                iov: list[bytes | bytearray | memoryview] = []
                if c.tnote:
                    iov.append(c.tnote)
                if c.pos < self._shown:
                    iov += self._segments(c.pos, self._shown - c.pos)
                if iov:
                    offered = sum(len(v) for v in iov)
                    try:
                        k = os.writev(c.term, iov)
                    except BlockingIOError:
                        k = 0
                        c.tblocked = True
                    except OSError:  # EIO: the terminal hung up
                        self._let_go(c, wire.DETACHED_HANGUP)
                        self._flush_direct(c)
                        return
                    if k < offered:
                        c.tblocked = True
                    took = min(k, len(c.tnote))
                    del c.tnote[:took]
                    c.pos += k - took
            if self._exit_status >= 0 and c.pos == self._shown and not c.tnote:
                c.pre += wire.exit_frame(self._exit_status)
                c.closing = True
        if c.pre and not c.blocked:
            try:
                n = os.write(c.fd, c.pre)
            except BlockingIOError:
                c.blocked = True
                return
            except OSError:  # EPIPE, ECONNRESET: the client is gone
                self._drop(c)
                return
            del c.pre[:n]
            if c.pre:
                c.blocked = True
        if c.closing and not c.pre:
            self._drop(c)

    def _stall_timeout(self) -> int:
        """The pty waits for the clients that hold the ring full: run their clocks (see the
        module); the poll timeout until the first would stop holding it (-1: none)."""
        now = _now_us()
        timeout = -1
        for c in self._clients:
            if not c.attached or c.lagging or c.closing:
                c.stall_since = 0
                continue
            if self._total - c.pos < self._size:
                continue  # not holding the ring full; its clock, if running, runs on
            if not c.stall_since or c.pos - c.stall_pos >= STALL_PROGRESS:
                c.stall_since, c.stall_pos = now, c.pos
            left = c.stall_since + self._stall_us - now
            if left <= 0:
                c.lagging = True
                c.stall_since = 0
                self._lagged += 1
                self._changed = True
                continue
            timeout = self._min_timeout(timeout, int((left + 999) // 1000))
        return timeout

    def _lag_check(self) -> None:
        # A lagging client back within half the ring holds the output again.
        for c in self._clients:
            if c.lagging and c.tail is None and self._total - c.pos <= self._size // 2:
                c.lagging = False
            elif not c.lagging and c.stall_since and self._total - c.pos <= self._size // 2:
                c.stall_since = 0
