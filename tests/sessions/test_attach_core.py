"""The attach client's loop itself, both twins: frames taken apart at any boundary, keys framed,
the detach keys, the offset, and every way the loop stops. The test plays the holder on one end
of a socketpair, and the user's terminal on a real pty (keys) and a pipe (what the terminal
shows)."""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import select
import signal
import socket
import threading
from collections.abc import Iterator
from types import ModuleType

import pytest
from harness.sessions import loop_module
from harness.terminal import set_winsize

from bottle import _attach_py
from bottle import _sessionwire as wire

CONSTANTS = ("EV_SIGNAL", "EV_HUP", "EV_DETACH", "EV_FRAME", "EV_CLOSED", "CONTROL_MAX",
             "DETACH_KEYS_MAX")  # fmt: skip
TIMEOUT = 10.0


@pytest.fixture(params=["native", "pure"])
def mod(request: pytest.FixtureRequest) -> ModuleType:
    return loop_module(request.param, _attach_py)


class Rig:
    """One loop with its ends: ``holder`` (the test's end of the socket), ``keyboard`` (the
    pty master keys are typed into), ``screen`` (the read end of the pipe it writes to) and
    ``wake`` (the write end of its wakeup pipe)."""

    def __init__(self, mod: ModuleType, **options: object) -> None:
        self.mod = mod
        self.holder, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.client_end = client_end
        self.keyboard, self.tty = os.openpty()
        self.screen, self.screen_w = os.pipe()
        self.wake_r, self.wake = os.pipe()
        for fd in (client_end.fileno(), self.tty, self.screen_w, self.wake_r):
            os.set_blocking(fd, False)
        set_winsize(self.tty, 33, 111)
        import tty

        tty.setraw(self.tty)
        self.loop = mod.Attach(
            options.pop("in_fd", self.tty),
            self.screen_w,
            client_end.fileno(),
            self.wake_r,
            self.tty,
            **{"in_tty": True, **options},
        )
        self.decoder = wire.Decoder(limit=wire.MAX_INPUT)
        self.events: queue.Queue[int | BaseException] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """run() in a thread; its event comes through `event`."""
        assert self._thread is None or not self._thread.is_alive()

        def go() -> None:
            try:
                self.events.put(self.loop.run())
            except BaseException as exc:
                self.events.put(exc)

        self._thread = threading.Thread(target=go, daemon=True)
        self._thread.start()

    def event(self) -> int:
        got = self.events.get(timeout=TIMEOUT)
        if isinstance(got, BaseException):
            raise got
        return got

    def send(self, data: bytes) -> None:
        self.holder.sendall(data)

    def frames(self, count: int) -> list[tuple[int, bytes]]:
        """The next ``count`` frames the loop sent to the holder."""
        got: list[tuple[int, bytes]] = []
        self.holder.settimeout(TIMEOUT)
        while len(got) < count:
            data = self.holder.recv(65536)
            assert data, f"the loop closed the socket after {got}"
            got += self.decoder.feed(data)
        return got

    def shown(self, size: int) -> bytes:
        """Read ``size`` bytes from what the terminal was given."""
        out = b""
        while len(out) < size:
            ready, _, _ = select.select([self.screen], [], [], TIMEOUT)
            assert ready, f"the terminal got {out!r}, not {size} bytes"
            out += os.read(self.screen, size - len(out))
        return out

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self.holder.close()  # the loop ends with EV_CLOSED
            self._thread.join(TIMEOUT)
        for fd in (self.keyboard, self.tty, self.screen, self.screen_w, self.wake_r, self.wake):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.holder.close()
        self.client_end.close()


@pytest.fixture
def rig(mod: ModuleType) -> Iterator[Rig]:
    r = Rig(mod, detach_keys=b"\x10\x11")
    try:
        yield r
    finally:
        r.close()


def test_constants_are_the_twins(mod: ModuleType) -> None:
    assert {n: getattr(mod, n) for n in CONSTANTS} == {n: getattr(_attach_py, n) for n in CONSTANTS}


def test_output_in_frames_cut_anywhere(rig: Rig) -> None:
    attached = wire.attached(0, 24, 80, 1000)
    stream = attached + b"".join(wire.frame(wire.OUTPUT, b"chunk%d;" % i) for i in range(40))
    stream += wire.frame(wire.OUTPUT, b"") + wire.dropped(7) + wire.frame(wire.OUTPUT, b"after")
    stream += wire.exit_frame(3)
    rig.start()
    for i in range(len(stream)):  # one byte at a time: every boundary is a cut
        rig.send(stream[i : i + 1])
        if stream[: i + 1] == attached:
            assert rig.event() == rig.mod.EV_FRAME
            assert rig.loop.frame() == (wire.ATTACHED, attached[4:])
            assert rig.loop.offset == 1000
            rig.start()
    expected = b"".join(b"chunk%d;" % i for i in range(40))
    assert rig.event() == rig.mod.EV_FRAME
    # All the output before a frame is on the terminal when the frame stops the loop.
    assert rig.loop.frame() == (wire.DROPPED, (7).to_bytes(8, "big"))
    assert rig.shown(len(expected)) == expected
    assert rig.loop.offset == 1000 + len(expected) + 7
    rig.start()
    assert rig.event() == rig.mod.EV_FRAME
    assert rig.loop.frame() == (wire.EXIT, (3).to_bytes(2, "big"))
    assert rig.shown(5) == b"after"
    assert rig.loop.offset == 1000 + len(expected) + 7 + 5


def test_frames_in_one_read_each_stop_the_loop(rig: Rig) -> None:
    rig.send(wire.attached(0, 24, 80, 0) + wire.frame(wire.OUTPUT, b"x") + wire.error("no"))
    rig.start()
    assert rig.event() == rig.mod.EV_FRAME and rig.loop.frame()[0] == wire.ATTACHED
    rig.start()
    assert rig.event() == rig.mod.EV_FRAME and rig.loop.frame() == (wire.ERROR, b"no")
    assert rig.shown(1) == b"x"


def test_keys_become_frames_and_the_detach_keys_detach(rig: Rig) -> None:
    rig.start()
    os.write(rig.keyboard, b"hello")
    assert rig.frames(1) == [(wire.KEYS, b"hello")]
    # Begun, then broken: the held key goes out first, as it was typed.
    os.write(rig.keyboard, b"\x10")
    os.write(rig.keyboard, b"x")
    got = rig.frames(1)
    got += [] if got[0][1] == b"\x10x" else rig.frames(1)
    assert b"".join(p for _, p in got) == b"\x10x"
    # A broken start that starts again.
    os.write(rig.keyboard, b"a\x10\x10")
    os.write(rig.keyboard, b"\x11tail")  # detached: what follows it is dropped
    assert rig.event() == rig.mod.EV_DETACH
    assert rig.loop.flush(1000)  # what was typed before the sequence is still sent
    got = rig.frames(1)
    assert got == [(wire.KEYS, b"a\x10")]
    rig.holder.setblocking(False)
    with pytest.raises(BlockingIOError):
        rig.holder.recv(100)


def test_a_watcher_sends_no_keys_but_detaches(mod: ModuleType) -> None:
    r = Rig(mod, detach_keys=b"\x01d", readonly=True)
    try:
        r.start()
        os.write(r.keyboard, b"typed\x01")
        os.write(r.keyboard, b"d")
        assert r.event() == mod.EV_DETACH
        r.holder.setblocking(False)
        with pytest.raises(BlockingIOError):
            r.holder.recv(100)
        # Nor its size: the holder ignores a watcher's.
        assert r.loop.resize() is None
    finally:
        r.close()


def test_no_detach_keys(mod: ModuleType) -> None:
    r = Rig(mod, detach_keys=b"")
    try:
        r.start()
        os.write(r.keyboard, b"\x10\x11")
        assert r.frames(1) == [(wire.KEYS, b"\x10\x11")]
    finally:
        r.close()


def test_window_change_is_a_resize_frame_and_other_signals_stop_it(rig: Rig) -> None:
    rig.start()
    set_winsize(rig.tty, 40, 120)
    os.write(rig.wake, bytes([signal.SIGWINCH]))
    assert rig.frames(1) == [(wire.RESIZE, wire.resize(40, 120)[4:])]
    os.write(rig.wake, bytes([signal.SIGTSTP, signal.SIGWINCH, signal.SIGTSTP]))
    assert rig.event() == rig.mod.EV_SIGNAL
    assert rig.loop.signals() == bytes([signal.SIGTSTP])
    assert rig.loop.flush(1000)  # the resize is queued; the next run() would send it too
    assert rig.frames(1)[0][0] == wire.RESIZE
    assert rig.loop.resize() == (40, 120)
    assert rig.loop.flush(1000)
    assert rig.frames(1) == [(wire.RESIZE, wire.resize(40, 120)[4:])]


def test_send_and_flush(rig: Rig) -> None:
    rig.loop.send(wire.frame(wire.REDRAW) + wire.frame(wire.DETACH))
    assert rig.loop.buffered == (8, 0)
    assert rig.loop.flush(1000)
    assert rig.frames(2) == [(wire.REDRAW, b""), (wire.DETACH, b"")]
    with pytest.raises(ValueError):
        rig.loop.flush(-1)


def test_holder_gone_is_closed(rig: Rig) -> None:
    rig.send(wire.frame(wire.OUTPUT, b"last words"))
    rig.holder.shutdown(socket.SHUT_WR)
    rig.start()
    assert rig.event() == rig.mod.EV_CLOSED
    assert rig.shown(10) == b"last words"


def test_terminal_gone_is_a_hang_up(rig: Rig) -> None:
    rig.start()
    os.close(rig.keyboard)  # the terminal emulator went away
    assert rig.event() == rig.mod.EV_HUP


def test_end_of_piped_input_is_not_the_end(mod: ModuleType) -> None:
    keys_r, keys_w = os.pipe()
    os.set_blocking(keys_r, False)
    r = Rig(mod, in_fd=keys_r, in_tty=False)
    try:
        r.start()
        os.write(keys_w, b"piped")
        os.close(keys_w)
        assert r.frames(1) == [(wire.KEYS, b"piped")]
        r.send(wire.frame(wire.OUTPUT, b"still here") + wire.exit_frame(0))
        assert r.event() == mod.EV_FRAME
        assert r.shown(10) == b"still here"
    finally:
        os.close(keys_r)
        r.close()


@pytest.mark.parametrize(
    "bad",
    [wire.header(wire.OUTPUT, wire.MAX_OUTPUT + 1), wire.header(wire.ERROR, 257)],
    ids=["output", "control"],
)
def test_a_frame_too_long_breaks_the_protocol(rig: Rig, bad: bytes) -> None:
    rig.send(bad)
    rig.start()
    with pytest.raises(OSError) as info:
        rig.event()
    assert info.value.errno == errno.EPROTO


def test_slow_terminal_loses_nothing(rig: Rig) -> None:
    data = os.urandom(3 << 20)
    frames = b"".join(
        wire.frame(wire.OUTPUT, data[i : i + wire.MAX_OUTPUT])
        for i in range(0, len(data), wire.MAX_OUTPUT)
    )
    sender = threading.Thread(target=lambda: rig.send(frames + wire.exit_frame(0)), daemon=True)
    sender.start()
    rig.start()
    assert rig.shown(len(data)) == data  # the pipe (64 KiB) holds the loop back all along
    assert rig.event() == rig.mod.EV_FRAME and rig.loop.frame()[0] == wire.EXIT
    sender.join(TIMEOUT)


def test_arguments(mod: ModuleType) -> None:
    with pytest.raises(ValueError, match="at most 32 keys"):
        mod.Attach(-1, 1, 1, detach_keys=b"x" * 33)
    with pytest.raises(TypeError):
        mod.Attach(-1, 1, 1, detach_keys="ctrl-p")
    with pytest.raises(RuntimeError, match="no frame"):
        mod.Attach(-1, 1, 1).frame()


def test_direct_loop_leaves_the_keys_to_the_holder(mod: ModuleType) -> None:
    # keys=False: the holder reads this terminal; the loop only sees it hang up.
    r = Rig(mod, keys=False, offset=500)
    try:
        assert r.loop.offset == 500
        os.write(r.keyboard, b"for the holder")
        assert r.loop.run(200) == mod.EV_DONE  # a bounded wait: nothing happened
        got = b""
        while len(got) < 14:
            got += os.read(r.tty, 64)
        assert got == b"for the holder"  # still there: the loop never read it
        r.send(wire.detached(wire.DETACHED_KEYS, 512))
        r.start()
        assert r.event() == mod.EV_FRAME
        assert r.loop.frame() == (wire.DETACHED, wire.detached(wire.DETACHED_KEYS, 512)[4:])
        r.start()
        os.close(r.keyboard)
        assert r.event() == mod.EV_HUP
    finally:
        r.close()
