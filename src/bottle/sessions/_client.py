"""The attach client: the user's terminal on one side, a session holder's socket on the other.

`run` is what `bottle.sessions.attach` does once it has found the session: raw mode on the
user's terminal (`bottle.relay._tty.UserTerminal`, as the relay has it), the terminal's size
sent at once and on every change, keys in, output out, in the relay core's `Attach` loop (no
Python per chunk). It knows nothing of where sessions live: ``connect`` hands it a connected,
attached socket (and does again after a stop, from where the output left off).

Ways out, and what each leaves: the detach keys, a signal (SIGTERM, SIGINT, SIGQUIT) or a
lost terminal (SIGHUP, a hang-up) detach: the session goes on, and the terminal gets its
settings back (and, but for a lost one, its display modes: see `LEAVE`). The program's exit
ends the attach with its status, after all its output; the holder's end without one (killed)
is a lost session. A stop (SIGTSTP) detaches too, so that the session never waits for a
stopped terminal, and attaches again on SIGCONT from the output offset it had reached: what
was printed meanwhile comes then, nothing twice.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Protocol

from bottle import _sessionwire as wire
from bottle.errors import InvalidInputError, Message, Param, SessionEndedError
from bottle.relay._impl import client
from bottle.relay._tty import DEFAULT_SIZE, UserTerminal

__all__ = ["DEFAULT_DETACH_KEYS", "AttachResult", "parse_detach_keys", "run"]

# docker's default: Ctrl-P, Ctrl-Q.
DEFAULT_DETACH_KEYS = b"\x10\x11"

# Signals the client takes over while it runs: the first four detach it (the session goes
# on), SIGWINCH is a RESIZE, SIGTSTP and SIGCONT a stop and its end.
_DETACHING = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
_CAUGHT = (*_DETACHING, signal.SIGWINCH, signal.SIGTSTP, signal.SIGCONT)
_KEPT_IF_IGNORED = (*_DETACHING, signal.SIGTSTP)

# Written to the terminal on the way out (but for a lost one): a program that still runs set
# display modes on it that it has not undone (it cannot know the terminal is leaving), and a
# shell prompt in them would be unusable; after a program's own end they are off already. Attributes
# off, cursor shown, mouse and focus reports off, bracketed paste off, normal cursor keys and
# keypad, and the normal screen (?47: without restoring a saved cursor, which ?1049 would do
# even where no program saved one).
LEAVE = (
    b"\x1b[0m\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1004l\x1b[?2004l"
    b"\x1b[?1l\x1b>\x1b[?47l"
)
# How long a DETACH may take to reach the holder on the way out (it only says goodbye: closing
# the connection detaches too).
_DETACH_FLUSH_MS = 500
_NOTICE_MS = 1000

# docker's key names (`--detach-keys`): one character, or ctrl- and one of these.
_CTRL = "@abcdefghijklmnopqrstuvwxyz[\\]^_"


def parse_detach_keys(keys: str) -> bytes:
    """The bytes of a detach sequence in docker's syntax: comma-separated keys, each one
    character or ``ctrl-X`` (X one of ``a``-``z``, ``@``, ``[``, ``\\``, ``]``, ``^``,
    ``_``), or ``DEL``. ``""`` means no detach keys (podman's way to turn them off)."""
    if not isinstance(keys, str):
        raise InvalidInputError(f"detach_keys must be a string, not {type(keys).__name__}")
    if keys == "":
        return b""
    out = bytearray()
    for key in keys.split(","):
        if len(key) == 1 and key.isascii():
            out.append(ord(key))
        elif key.startswith("ctrl-") and len(key) == 6 and key[5] in _CTRL:
            out.append(_CTRL.index(key[5]))
        elif key == "DEL":
            out.append(0x7F)
        else:
            raise InvalidInputError(
                Message(
                    "{param}: unknown key {key!r} (use one character, ctrl-a to ctrl-z, "
                    "ctrl-@, ctrl-[, ctrl-\\, ctrl-], ctrl-^, ctrl-_ or DEL, comma-separated)",
                    param=Param("detach_keys", keys),
                    key=key,
                )
            )
    if len(out) > client.DETACH_KEYS_MAX:
        raise InvalidInputError(
            Message(
                "{param}: at most {most} keys",
                param=Param("detach_keys", keys),
                most=client.DETACH_KEYS_MAX,
            )
        )
    return bytes(out)


class Decoration(Protocol):
    """What to write to the terminal once attached (`start`) and on the way out (`reset`):
    `bottle.backend.terminal.decoration` makes one."""

    @property
    def start(self) -> str: ...

    @property
    def reset(self) -> str: ...


@dataclass(frozen=True)
class AttachResult:
    """How an attach ended.

    ``ended`` is "detached" (the detach keys), "signal" (``signal`` detached it), "hangup"
    (the terminal went away), "exited" (the program ended with ``status``; its output all
    shown), "lost" (the holder went away without an exit status) or "refused" (the holder
    said why in ``message``). Only the last three end the session or say why there is none;
    after the others it runs on. ``offset`` is the session's output offset the client had
    reached (`connect`'s ``since`` resumes there).
    """

    ended: str
    status: int | None = None
    signal: int | None = None
    message: str = ""
    offset: int = 0


# connect(since, size, redraw, direct): a connected socket whose ATTACHED frame was read, the
# flags it took and the output offset it starts at.
Connect = Callable[[int, tuple[int, int], bool, bool], tuple[socket.socket, int, int]]


def run(
    connect: Connect,
    *,
    since: int,
    readonly: bool,
    detach_keys: bytes,
    stdin_fd: int,
    stdout_fd: int,
    redraw: bool,
    decoration: Decoration | None,
    direct: bool | None,
) -> AttachResult:
    """Attach the terminal on ``stdin_fd``/``stdout_fd`` until one of the ways out."""
    c = _Client(connect, readonly, detach_keys, stdin_fd, stdout_fd, decoration, direct)
    return c.run(since, redraw)


class _Client:
    def __init__(
        self,
        connect: Connect,
        readonly: bool,
        detach_keys: bytes,
        stdin_fd: int,
        stdout_fd: int,
        decoration: Decoration | None,
        direct: bool | None,
    ) -> None:
        self._connect = connect
        self._readonly = readonly
        self._keys = detach_keys
        self._stdin_fd = stdin_fd
        self._stdout_fd = stdout_fd
        self._decoration = decoration
        self._want_direct = direct
        self._undo = ExitStack()
        self._term: UserTerminal | None = None
        self._wake_fd = -1
        self._loop_fds = (-1, -1)
        self._direct = False  # the holder has the terminal (see `bottle._sessionwire`)

    def run(self, since: int, redraw: bool) -> AttachResult:
        with self._undo:
            term = self._term = UserTerminal(self._stdin_fd, self._stdout_fd, self._undo)
            # Listen for SIGWINCH before reading the size, so that no window change is lost.
            self._wake_fd = term.catch_signals(_CAUGHT, _KEPT_IF_IGNORED)
            size = term.window() or DEFAULT_SIZE
            # A watcher keeps its terminal unless told otherwise: the hand-over saves a hop for
            # typing, and would cost the holder's one loop a terminal's writes per watcher.
            wanted = not self._readonly if self._want_direct is None else self._want_direct
            direct = wanted and self._can_hand_over(term)
            # Connected before the terminal is touched: a session that is over or cannot be
            # reached leaves it as it was.
            sock, flags, offset = self._connect(since, size, redraw, direct)
            self._undo.callback(_close, sock)
            self._loop_fds = term.loop_descriptors()
            term.make_raw(keep_output=False)  # the holder's pty processed the output already
            if self._decoration is not None and term.out_tty:
                self._write(self._decoration.start.encode())
                self._undo.callback(self._reset_decoration)
            result = self._relay(self._start(sock, flags, offset))
            if result.ended != "hangup" and term.out_tty:
                self._write(LEAVE)
            return result

    @staticmethod
    def _can_hand_over(term: UserTerminal) -> bool:
        """Whether the terminal can go to the holder: keys and output on one terminal."""
        if not (term.in_tty and term.out_tty):
            return False
        try:
            return os.fstat(term.in_fd).st_rdev == os.fstat(term.out_fd).st_rdev
        except OSError:
            return False

    def _reset_decoration(self) -> None:
        assert self._decoration is not None
        self._write(self._decoration.reset.encode())

    def _start(
        self, sock: socket.socket, flags: int, offset: int
    ) -> tuple[socket.socket, client.Attach]:
        """The loop for a connection; a direct one's terminal handed over first."""
        assert self._term is not None
        in_fd, out_fd = self._loop_fds
        self._direct = bool(flags & wire.DIRECT) and in_fd == out_fd and in_fd >= 0
        if self._direct:
            # Blocking: the TERMINAL frame goes whole, with the descriptor on its first byte.
            socket.send_fds(sock, [wire.frame(wire.TERMINAL, self._keys)], [in_fd])
        sock.setblocking(False)
        loop = client.Attach(
            in_fd,
            out_fd,
            sock.fileno(),
            self._wake_fd,
            self._term.size_fd,
            in_tty=self._term.in_tty,
            detach_keys=self._keys,
            readonly=self._readonly,
            keys=not self._direct,
            offset=offset,
        )
        return sock, loop

    def _relay(self, conn: tuple[socket.socket, client.Attach]) -> AttachResult:
        sock, loop = conn
        while True:
            event = loop.run()
            if event == client.EV_FRAME:
                kind, payload = loop.frame()
                if kind == wire.DROPPED and not self._direct:
                    self._dropped(loop, wire.parse_dropped(payload))
                elif kind == wire.EXIT:
                    return AttachResult("exited", status=wire.parse_exit(payload),
                                        offset=loop.offset)  # fmt: skip
                elif kind == wire.ERROR:
                    message = payload.decode(errors="replace")
                    return AttachResult("refused", message=message, offset=loop.offset)
                elif kind == wire.DETACHED:
                    reason, offset = wire.parse_detached(payload)
                    ended = "hangup" if reason == wire.DETACHED_HANGUP else "detached"
                    return AttachResult(ended, offset=offset)
            elif event == client.EV_DETACH:
                return self._leave(loop, AttachResult("detached"))
            elif event == client.EV_HUP:
                return self._leave(loop, AttachResult("hangup"))
            elif event == client.EV_CLOSED:
                return AttachResult("lost", offset=loop.offset)
            elif event == client.EV_SIGNAL:
                for sig in loop.signals():
                    if sig == signal.SIGHUP:
                        return self._leave(loop, AttachResult("hangup", signal=sig))
                    if sig in _DETACHING:
                        return self._leave(loop, AttachResult("signal", signal=sig))
                    if sig == signal.SIGTSTP:
                        resumed = self._suspend(loop, sock)
                        if isinstance(resumed, AttachResult):
                            return resumed
                        sock, loop = resumed
                    elif sig == signal.SIGCONT:
                        assert self._term is not None
                        self._term.resume()
                        loop.resize()

    def _dropped(self, loop: client.Attach, count: int) -> None:
        """Output this client will never get: say so, and have the program repaint."""
        self._write(wire.DROPPED_NOTICE.format(count).encode())
        with contextlib.suppress(BlockingIOError):
            loop.send(wire.frame(wire.REDRAW))

    def _leave(self, loop: client.Attach, result: AttachResult) -> AttachResult:
        """Detach: say goodbye to the holder (closing the connection would do too), and have
        the terminal back from it; ``result`` with the offset reached."""
        offset = self._let_go(loop)
        return AttachResult(result.ended, signal=result.signal, offset=offset)

    def _let_go(self, loop: client.Attach) -> int:
        """Send DETACH; a direct client waits (a while) until the holder has let go of its
        terminal. The output offset reached."""
        with contextlib.suppress(BlockingIOError):
            loop.send(wire.frame(wire.DETACH))
        if not loop.flush(_DETACH_FLUSH_MS) or not self._direct:
            return loop.offset
        deadline = time.monotonic() + _DETACH_FLUSH_MS / 1000
        while (left := deadline - time.monotonic()) > 0:
            event = loop.run(int(left * 1000) + 1)
            if event == client.EV_FRAME:
                kind, payload = loop.frame()
                if kind == wire.DETACHED:
                    return wire.parse_detached(payload)[1]
                if kind in (wire.EXIT, wire.ERROR):
                    break
            elif event in (client.EV_CLOSED, client.EV_DONE, client.EV_HUP):
                break
        return loop.offset

    def _suspend(
        self, loop: client.Attach, sock: socket.socket
    ) -> tuple[socket.socket, client.Attach] | AttachResult:
        """SIGTSTP: detach, stop with the terminal's settings back, and attach again once
        continued, from where the output left off."""
        assert self._term is not None
        offset = self._let_go(loop)
        _close(sock)
        self._term.stop()
        self._term.resume()
        size = self._term.window() or DEFAULT_SIZE
        try:
            new, flags, start = self._connect(offset, size, False, self._direct)
        except SessionEndedError as exc:
            if exc.status is None:
                return AttachResult("lost", offset=offset)
            return AttachResult("exited", status=exc.status, offset=offset)
        self._undo.callback(_close, new)
        return self._start(new, flags, start)

    def _write(self, data: bytes) -> None:
        """Write to the terminal outside the loop (a notice; the way out): a terminal that
        does not take it within a second, or is gone, goes without."""
        fd = self._loop_fds[1]
        if fd < 0:
            return
        view = memoryview(data)
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                if not poller.poll(_NOTICE_MS):
                    return
            except OSError:
                return


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
