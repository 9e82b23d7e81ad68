"""Direct clients, native and pure: a client hands its terminal to the holder (DIRECT, then a
TERMINAL frame with the descriptor), and the holder reads the keys from it and writes the output
to it itself. The test plays both the client (the socket) and the user's terminal (the master
of a pty whose slave it hands over)."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.sessions import TIMEOUT, Client, Sessions, blob_program, size_report, wait_for

from bottle import _sessionwire as wire
from bottle import sessions


class Direct:
    """A direct client: the protocol on ``client``, the terminal's far end on ``master``."""

    def __init__(
        self,
        session: sessions.Session,
        *,
        keys: bytes = b"\x10\x11",
        readonly: bool = False,
        since: int = wire.SINCE_OLDEST,
        size: tuple[int, int] = (24, 80),
    ) -> None:
        # The terminal: its far end (the emulator's), and a descriptor of it that stays open
        # as the user's shell's would.
        self.master, slave = os.openpty()
        self.shell = slave
        tty.setraw(slave)
        self.client = Client.raw(session.socket_path)
        self.client.send(wire.attach(*size, readonly=readonly, since=since, direct=True))
        self.client.until(lambda g: g.attached is not None, "ATTACHED")
        assert self.client.got.attached is not None
        assert self.client.got.attached[1] & wire.DIRECT
        self.client.sock.setblocking(True)
        socket.send_fds(self.client.sock, [wire.frame(wire.TERMINAL, keys)], [slave])
        self.client.sock.setblocking(False)
        self.screen = bytearray()

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def expect(self, needle: bytes, start: int = 0, timeout: float = TIMEOUT) -> int:
        """Wait for ``needle`` on the terminal from ``start``; the index past it."""
        wait_for(lambda: self._read() and self.screen.find(needle, start) >= 0,
                 f"{needle!r} on the terminal", timeout)  # fmt: skip
        return self.screen.find(needle, start) + len(needle)

    def _read(self) -> bool:
        while select.select([self.master], [], [], 0)[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return True
            if not data:
                break
            self.screen += data
        return True

    def sync(self, token: bytes = b"~") -> None:
        start = len(self.screen)
        self.type(token)
        self.expect(b"K" + token, start)

    def detached(self) -> tuple[int, int]:
        """Wait for DETACHED (and the end of the connection): (reason, offset)."""
        self.client.wait_eof()
        found = [p for k, p in self.client.got.frames if k == wire.DETACHED]
        assert len(found) == 1, self.client.got.frames
        return wire.parse_detached(found[0])

    def close(self) -> None:
        for fd in (self.master, self.shell):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.client.close()


Attacher = Callable[..., Direct]


@pytest.fixture
def direct(holders: Sessions) -> Iterator[Attacher]:
    """Attach a direct client (`Direct`'s arguments); closed after the test."""
    made: list[Direct] = []

    def attach(session: sessions.Session, **kwargs: Any) -> Direct:
        made.append(Direct(session, **kwargs))
        return made[-1]

    yield attach
    for d in made:
        d.close()


def started(d: Direct) -> int:
    return d.expect(b";")


def test_keys_from_and_output_to_the_terminal(holders: Sessions, direct: Attacher) -> None:
    s = holders.start(size=(24, 80))
    d = direct(s, size=(30, 100))
    start = d.expect(size_report(30, 100))
    d.type(b"hello")
    d.expect(b"KhKeKlKlKo", start)
    # No output ever comes framed: the socket carries ATTACHED and nothing else.
    d.client.pump(0.2)
    assert [k for k, _ in d.client.got.frames] == [wire.ATTACHED]
    # A framed client sees the same output.
    c = Client.attach(s, size=(30, 100))
    c.expect(b"KhKeKlKlKo")
    wait_for(lambda: (s.info().clients, s.info().writers) == (2, 2), "two writers listed")


def test_detach_keys_give_the_terminal_back(holders: Sessions, direct: Attacher) -> None:
    s = holders.start()
    d = direct(s)
    started(d)
    d.sync()
    d.type(b"a\x10x\x10\x11after")
    reason, offset = d.detached()
    assert reason == wire.DETACHED_KEYS
    d._read()
    assert offset == len(d.screen)  # what the terminal was given, to the byte
    # What was typed before the detach keys reached the program; its answer goes to the
    # clients still attached, never to the terminal given back. What followed them did not.
    watcher = Client.attach(s, readonly=True)
    watcher.expect(b"Ka" + b"K\x10" + b"Kx")
    assert b"Kx" not in d.screen and b"Kafter" not in watcher.got.output
    # The holder no longer reads the terminal: what is typed now is the shell's.
    d.type(b"shell")
    got = b""
    while len(got) < 5:
        got += os.read(d.shell, 5 - len(got))
    assert got == b"shell"
    assert s.info().state == "running"


def test_a_hang_up_gives_the_terminal_back(holders: Sessions, direct: Attacher) -> None:
    s = holders.start()
    d = direct(s)
    started(d)
    os.close(d.master)  # the terminal emulator went away
    reason, _ = d.detached()
    assert reason == wire.DETACHED_HANGUP
    wait_for(lambda: s.info().clients == 0, "the client to be gone")
    c = Client.attach(s)
    c.sync()
    assert s.info().state == "running"


def test_detach_frame_answers_with_the_offset(holders: Sessions, direct: Attacher) -> None:
    s = holders.start()
    d = direct(s)
    started(d)
    d.sync()
    d.client.detach()
    reason, offset = d.detached()
    assert reason == wire.DETACHED_ASKED
    d._read()
    assert offset == len(d.screen)
    # Resuming from there gives exactly what came since.
    c = Client.attach(s)
    c.sync(b"!")
    later = Client.attach(s, since=offset)
    later.expect(b"K!")
    assert bytes(later.got.output) == bytes(c.got.output[offset:])


def test_exit_after_the_output(holders: Sessions, direct: Attacher) -> None:
    s = holders.start(env_extra={"PROG_STATUS": "4"})
    d = direct(s)
    started(d)
    d.type(b"X")
    d.client.until(lambda g: g.exit_status is not None, "EXIT")
    assert d.client.got.exit_status == 4
    d._read()
    assert d.screen.endswith(b"KX")
    d.client.wait_eof()


def test_a_watcher_types_nothing_but_detaches(holders: Sessions, direct: Attacher) -> None:
    s = holders.start()
    writer = Client.attach(s)
    writer.expect(b";")
    d = direct(s, readonly=True, keys=b"\x01d")
    started(d)
    d.type(b"ignored")
    writer.sync()
    d.expect(b"K~")
    assert b"Ki" not in writer.got.output
    d.type(b"\x01d")
    assert d.detached()[0] == wire.DETACHED_KEYS


def test_dropped_output_is_said_on_the_terminal(
    holders: Sessions, direct: Attacher, tmp_path: Path
) -> None:
    history = 64 * 1024
    _, env_extra, _ = blob_program(tmp_path, 400_000)
    s = holders.start(history=history, env_extra=env_extra, size=(24, 80))
    d = direct(s)
    started(d)
    reference = Client.attach(s)  # keeps up: the whole stream
    reference.expect(b";")
    # The terminal is not read for now: the holder's writes to it stall, and after STALL_MS
    # the output goes on without it.
    d.type(b"OT")
    reference.expect(b"KT", timeout=30)
    d.expect(b"KT", timeout=30)
    # The repaint after the drop (one row less, then back), and nothing after it.
    mark = reference.expect(size_report(23, 80))
    reference.expect(size_report(24, 80), mark)
    reference.sync()
    d.expect(b"K~")
    d.client.pump(0.5)
    drops = [wire.parse_dropped(p) for k, p in d.client.got.frames if k == wire.DROPPED]
    assert len(drops) == 1, d.client.got.frames
    notice = wire.DROPPED_NOTICE.format(drops[0]).encode()
    at = d.screen.find(notice)
    assert at > 0
    # The terminal got the stream with exactly that much cut out where the notice stands.
    stream = bytes(reference.got.output)
    assert bytes(d.screen) == stream[:at] + notice + stream[at + drops[0] :]


def test_dropped_before_attach_is_said_first(
    holders: Sessions, direct: Attacher, tmp_path: Path
) -> None:
    history = 8192
    data, env_extra, done = blob_program(tmp_path, 50_000)
    s = holders.start(history=history, env_extra=env_extra)
    c = Client.attach(s)
    c.expect(b";")
    c.keys(b"OT")
    c.close()
    wait_for(done.exists, "the program's output")
    d = direct(s)
    d.expect(b"KT")
    lost = d.client.got.dropped
    assert len(lost) == 1
    notice = wire.DROPPED_NOTICE.format(lost[0][1]).encode()
    assert d.screen.startswith(notice)
    assert bytes(d.screen[len(notice) :]).startswith((b"KO" + data + b"KT")[-history:])


def test_terminal_frames_that_break_the_rules(holders: Sessions) -> None:
    s = holders.start()
    framed = Client.attach(s)  # no DIRECT asked
    r, w = os.pipe()
    try:
        framed.sock.setblocking(True)
        socket.send_fds(framed.sock, [wire.frame(wire.TERMINAL, b"")], [r])
        framed.wait_eof()
        assert framed.got.errors and "TERMINAL frame needs DIRECT" in framed.got.errors[0]
        nofd = Client.raw(s.socket_path)
        nofd.send(wire.attach(24, 80, direct=True) + wire.frame(wire.TERMINAL, b""))
        nofd.wait_eof()
        assert nofd.got.errors and "TERMINAL frame needs DIRECT" in nofd.got.errors[0]
        pipe = Client.raw(s.socket_path)
        pipe.send(wire.attach(24, 80, direct=True))
        pipe.until(lambda g: g.attached is not None, "ATTACHED")
        pipe.sock.setblocking(True)
        socket.send_fds(pipe.sock, [wire.frame(wire.TERMINAL, b"")], [r])
        pipe.sock.setblocking(False)
        pipe.wait_eof()
        assert pipe.got.errors == ["TERMINAL: the descriptor is not a terminal"]
    finally:
        os.close(r)
        os.close(w)
    c = Client.attach(s)
    c.expect(b";")
    c.sync()
    assert s.info().state == "running"


def test_a_client_gone_outright_gives_the_terminal_back(
    holders: Sessions, direct: Attacher
) -> None:
    # `bottle attach` killed with SIGKILL: only its connection tells the holder.
    s = holders.start()
    d = direct(s)
    started(d)
    d.client.close()
    wait_for(lambda: s.info().clients == 0, "the holder to notice")
    d.type(b"shell")
    got = b""
    while len(got) < 5:
        got += os.read(d.shell, 5 - len(got))
    assert got == b"shell"
    assert s.info().state == "running"
