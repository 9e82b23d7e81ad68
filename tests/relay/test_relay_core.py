"""Unit tests of the relay's layers: the core (spawn, Pump) of both twins, the front, the CLI.

The core tests play both sides by hand: the user's side is a pair of pipes (or a pty), the
child's side is the slave of a real pty that the test reads and writes. The black-box
behaviour suite (python -m bottle.relay on real ptys) is tests/relay/test_relay_conformance.py.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from harness.relay import native_built

import bottle.relay as relay
import bottle.relay._children as relay_children
import bottle.relay._session as relay_session
from bottle.relay import __main__ as relay_cli

WAIT = 10.0  # generous bound against hangs; never a timing assertion


def winsize(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    return rows, cols


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def read_exactly(fd: int, n: int, timeout: float = WAIT) -> bytes:
    """Read ``n`` bytes from ``fd`` (blocking fd), failing the test on a hang."""
    out = bytearray()
    deadline = time.monotonic() + timeout
    while len(out) < n:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out after {len(out)} of {n} bytes"
        if select.select([fd], [], [], left)[0]:
            try:
                chunk = os.read(fd, n - len(out))
            except OSError as exc:
                if exc.errno == errno.EIO:
                    break
                raise
            if not chunk:
                break
            out += chunk
    return bytes(out)


def quiet(fd: int, seconds: float = 0.3) -> bool:
    """True when nothing becomes readable on ``fd`` for ``seconds``."""
    return not select.select([fd], [], [], seconds)[0]


class Rig:
    """A Pump between pipes (the user's side) and a pty whose slave the test plays."""

    def __init__(self, core: ModuleType, *, raw_child: bool = True, **pump_args: Any) -> None:
        self.in_r, self.in_w = os.pipe()
        self.out_r, self.out_w = os.pipe()
        self.wake_r, self.wake_w = os.pipe()
        self.child_r, self.child_w = os.pipe()
        self.master, self.slave = os.openpty()
        if raw_child:
            tty.setraw(self.slave)
        for fd in (self.in_r, self.out_w, self.master, self.wake_r):
            os.set_blocking(fd, False)
        self.pump = core.Pump(
            self.in_r, self.out_w, self.master, self.wake_r, self.child_r, **pump_args
        )
        self.core = core
        self._pool = ThreadPoolExecutor(max_workers=1)

    def start(self, call: Callable[[], int] | None = None) -> Future[int]:
        """Run ``pump.run`` (or ``call``) in a thread; the caller collects the event."""
        return self._pool.submit(call or self.pump.run)

    def wake(self, *signals: int) -> None:
        os.write(self.wake_w, bytes(signals))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for fd in (self.in_r, self.in_w, self.out_r, self.out_w, self.wake_r, self.wake_w,
                   self.child_r, self.child_w, self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture
def rig(core: ModuleType) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**kwargs: Any) -> Rig:
        r = Rig(core, **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


# ------------------------------------------------------------------------------ Pump


def test_bytes_both_ways_unchanged(rig: Callable[..., Rig]) -> None:
    r = rig()
    data = bytes(range(256)) * 300 + "é€😀".encode()  # every byte value, split-able UTF-8
    fut = r.start()
    writer = threading.Thread(target=os.write, args=(r.in_w, data))
    writer.start()
    assert read_exactly(r.slave, len(data)) == data
    writer.join()
    echo = threading.Thread(target=os.write, args=(r.slave, data[::-1]))
    echo.start()
    assert read_exactly(r.out_r, len(data)) == data[::-1]
    echo.join()
    assert not fut.done()
    r.wake(signal.SIGUSR1)
    assert fut.result(WAIT) == r.core.EV_SIGNAL
    assert r.pump.signals() == bytes([signal.SIGUSR1])
    assert r.pump.signals() == b""


def test_signals_reported_once_each_in_order(rig: Callable[..., Rig]) -> None:
    r = rig()
    r.wake(signal.SIGTERM, signal.SIGTERM, signal.SIGINT, signal.SIGTERM)
    assert r.start().result(WAIT) == r.core.EV_SIGNAL
    assert r.pump.signals() == bytes([signal.SIGTERM, signal.SIGINT])


def test_child_fd_ends_the_run(rig: Callable[..., Rig]) -> None:
    r = rig()
    fut = r.start()
    os.write(r.child_w, b"x")
    assert fut.result(WAIT) == r.core.EV_CHILD


def test_master_eof_after_output_is_flushed(rig: Callable[..., Rig]) -> None:
    r = rig()
    os.write(r.slave, b"last words")
    os.close(r.slave)
    assert r.start().result(WAIT) == r.core.EV_EOF
    assert read_exactly(r.out_r, 10) == b"last words"
    # Reported once: the next run waits for something else (here a signal).
    fut = r.start()
    assert quiet(r.out_r, 0.2) and not fut.done()
    r.wake(signal.SIGCHLD)
    assert fut.result(WAIT) == r.core.EV_SIGNAL


def test_broken_output_is_a_hang_up(rig: Callable[..., Rig]) -> None:
    r = rig()
    os.close(r.out_r)
    fut = r.start()
    os.write(r.slave, b"nobody reads this")
    assert fut.result(WAIT) == r.core.EV_HUP


def test_terminal_hang_up_on_input(core: ModuleType) -> None:
    user_master, user_slave = os.openpty()
    master, slave = os.openpty()
    out_r, out_w = os.pipe()
    try:
        for fd in (user_slave, master, out_w):
            os.set_blocking(fd, False)
        pump = core.Pump(user_slave, out_w, master, in_tty=True)
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(pump.run)
            os.close(user_master)
            user_master = -1
            assert fut.result(WAIT) == core.EV_HUP
    finally:
        for fd in (user_master, user_slave, master, slave, out_r, out_w):
            if fd >= 0:
                os.close(fd)


@pytest.mark.parametrize("data", [b"", b"line\n", b"partial"], ids=["empty", "nl", "partial"])
def test_input_eof_sends_veof(rig: Callable[..., Rig], data: bytes) -> None:
    """One VEOF after a complete line (or nothing), two after a partial line: exactly enough."""
    r = rig(raw_child=False)  # canonical: the pty turns VEOF into end-of-input
    termios_attrs = termios.tcgetattr(r.slave)
    termios_attrs[3] &= ~termios.ECHO
    termios.tcsetattr(r.slave, termios.TCSANOW, termios_attrs)
    fut = r.start()
    os.write(r.in_w, data)
    os.close(r.in_w)
    got = b""
    while True:  # a canonical reader: data (maybe over several reads), then b"" = EOF
        assert select.select([r.slave], [], [], WAIT)[0], "child never saw end-of-input"
        chunk = os.read(r.slave, 100)
        if not chunk:
            break
        got += chunk
    assert got == data
    # No VEOF too many: a spare one would read as a second EOF.
    assert quiet(r.slave)
    r.wake(signal.SIGUSR1)
    assert fut.result(WAIT) == r.core.EV_SIGNAL


def test_no_input_at_all_is_end_of_input(core: ModuleType) -> None:
    master, slave = os.openpty()
    out_r, out_w = os.pipe()
    wake_r, wake_w = os.pipe()
    try:
        attrs = termios.tcgetattr(slave)
        attrs[3] &= ~termios.ECHO
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        for fd in (master, out_w, wake_r):
            os.set_blocking(fd, False)
        pump = core.Pump(-1, out_w, master, wake_r)
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(pump.run)
            assert select.select([slave], [], [], WAIT)[0]
            assert os.read(slave, 10) == b""
            os.write(wake_w, bytes([signal.SIGUSR1]))
            assert fut.result(WAIT) == core.EV_SIGNAL
    finally:
        for fd in (master, slave, out_r, out_w, wake_r, wake_w):
            os.close(fd)


def test_backpressure_child_not_reading_does_not_stall_output(rig: Callable[..., Rig]) -> None:
    bufsize = 64 * 1024
    r = rig(bufsize=bufsize)
    os.set_blocking(r.in_w, False)
    fut = r.start()
    pushed = 0
    deadline = time.monotonic() + WAIT
    # Paste until nothing more fits anywhere: the child never reads, the pty's input queue is
    # full, the relay holds a full buffer and the pipe before it is full. The kernel moves pty
    # input on in a worker after the write returns, so room can still appear for a moment after
    # the first refusal: the count must stay put for a while (0.3 s of refused writes).
    quiet_since = None
    while True:
        assert time.monotonic() < deadline, f"input never backed up ({pushed} bytes taken)"
        try:
            pushed += os.write(r.in_w, b"p" * 65536)
            quiet_since = None
            continue
        except BlockingIOError:
            pass
        if r.pump.buffered[0] != bufsize:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 0.3:
            break
        time.sleep(0.01)  # the relay may still be moving input into the pty
    assert pushed > bufsize  # more than the relay's buffer: the pty and the pipe filled too
    # Output still flows, in full, while input is stalled.
    out = b"o" * (1 << 20)
    writer = threading.Thread(target=os.write, args=(r.slave, out))
    writer.start()
    assert read_exactly(r.out_r, len(out)) == out
    writer.join()
    r.wake(signal.SIGUSR1)
    assert fut.result(WAIT) == r.core.EV_SIGNAL
    # The input side stayed bounded, and the pipe before it is still backed up. The pty may
    # have taken a little more after the count stood still (its worker moves input on late
    # under load, at most the line discipline's 4 KiB read buffer, since the child reads
    # nothing): the relay refills its buffer from the pipe on its next turn, which the wake-up
    # above may pre-empt (seen: 61952 of 65536 under load). A relay dropping input would leave
    # its buffer and the whole pipe free.
    assert bufsize - 4096 <= r.pump.buffered[0] <= bufsize
    assert r.pump.buffered[1] == 0
    room = 0
    with pytest.raises(BlockingIOError):
        while room <= 4096:
            room += os.write(r.in_w, b"p")


def test_slow_user_terminal_bounds_output_buffer(rig: Callable[..., Rig]) -> None:
    bufsize = 32 * 1024
    r = rig(bufsize=bufsize)
    fut = r.start()
    os.set_blocking(r.slave, False)
    written, stuck_since = 0, None
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:  # nobody reads out_r: everything backs up
        try:
            written += os.write(r.slave, b"z" * 4096)
            stuck_since = None
        except BlockingIOError:
            stuck_since = stuck_since or time.monotonic()
            if time.monotonic() - stuck_since > 0.3:
                break
            time.sleep(0.02)
    assert stuck_since is not None, "the child's output never backed up"
    assert written > 2 * bufsize
    r.wake(signal.SIGUSR1)
    assert fut.result(WAIT) == r.core.EV_SIGNAL
    assert r.pump.buffered[1] <= bufsize


def test_full_output_buffer_refills_as_the_terminal_takes_it(rig: Callable[..., Rig]) -> None:
    # Under backpressure the relay must take from the child's pty as much as the terminal has
    # just taken, at once: a loop that waits for half its buffer to go out and then reads the
    # rest in one burst drains the pty faster than the child refills it and leaves the terminal
    # waiting meanwhile (half the throughput to a reader taking 64 KiB at a time). The steps
    # go round the buffer more than once, and the bytes must come out intact and in order.
    bufsize = 64 * 1024
    page = 4096  # a pipe frees room a page at a time
    r = rig(bufsize=bufsize)
    fut = r.start()
    os.set_blocking(r.slave, False)
    data = (bytes(range(251)) * (8 * bufsize // 251))[: 8 * bufsize]  # out of step with pages
    sent = 0

    def feed() -> None:
        # Give the pty all it takes, until the relay's buffer is full and the pty refuses more.
        nonlocal sent
        deadline = time.monotonic() + WAIT
        while True:
            assert sent < len(data)
            try:
                sent += os.write(r.slave, data[sent : sent + page])
                continue
            except BlockingIOError:
                pass
            if r.pump.buffered[1] == bufsize:
                return
            assert time.monotonic() < deadline, (
                f"the relay holds {r.pump.buffered[1]} of {bufsize} bytes with the child's pty "
                f"full and {len(got)} bytes taken by the terminal"
            )
            time.sleep(0.002)

    got = bytearray()
    feed()  # the pipe to the terminal is full too: nobody has read it yet
    for _ in range(2 * bufsize // page):
        got += read_exactly(r.out_r, page)
        feed()
    got += read_exactly(r.out_r, sent - len(got))
    assert got == data[:sent]
    r.wake(signal.SIGUSR1)
    assert fut.result(WAIT) == r.core.EV_SIGNAL


def test_type_ahead_held_until_child_leaves_canonical_mode(rig: Callable[..., Rig]) -> None:
    r = rig(raw_child=False, hold_ms=60_000)
    fut = r.start()
    os.write(r.in_w, b"typed early")
    assert quiet(r.slave, 0.4), "input reached a canonical-mode child"
    assert r.pump.holding
    tty.setraw(r.slave)  # what smolvm does once its session has started
    assert read_exactly(r.slave, 11) == b"typed early"
    assert not r.pump.holding
    r.wake(signal.SIGUSR1)
    assert fut.result(WAIT) == r.core.EV_SIGNAL


def test_type_ahead_released_after_bounded_wait(rig: Callable[..., Rig]) -> None:
    r = rig(raw_child=False, hold_ms=200)
    attrs = termios.tcgetattr(r.slave)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(r.slave, termios.TCSANOW, attrs)
    fut = r.start()
    os.write(r.in_w, b"line\n")
    assert read_exactly(r.slave, 5) == b"line\n"  # canonical forever: delivered anyway
    assert not r.pump.holding
    r.wake(signal.SIGUSR1)
    assert fut.result(WAIT) == r.core.EV_SIGNAL


def test_interrupt_char_while_held_ends_the_run(rig: Callable[..., Rig]) -> None:
    r = rig(raw_child=False, hold_ms=60_000, intr=3)
    fut = r.start()
    os.write(r.in_w, b"typed early\x03and after")
    assert fut.result(WAIT) == r.core.EV_INTR
    assert r.pump.buffered[0] == 0
    tty.setraw(r.slave)  # the child goes raw after all: nothing typed is left to replay
    assert quiet(r.slave, 0.3)


def test_interrupt_char_once_the_child_is_raw_is_input(rig: Callable[..., Rig]) -> None:
    # Nothing was held yet, so the relay has not looked at the child's modes since it went raw.
    r = rig(raw_child=True, hold_ms=60_000, intr=3)
    fut = r.start()
    os.write(r.in_w, b"a\x03b")
    assert read_exactly(r.slave, 3) == b"a\x03b"
    r.wake(signal.SIGUSR1)
    assert fut.result(WAIT) == r.core.EV_SIGNAL


def test_interrupt_char_without_a_hold_is_input(rig: Callable[..., Rig]) -> None:
    r = rig(intr=3)
    fut = r.start()
    os.write(r.in_w, b"x\x03y")
    assert read_exactly(r.slave, 3) == b"x\x03y"
    r.wake(signal.SIGUSR1)
    assert fut.result(WAIT) == r.core.EV_SIGNAL


def test_pump_rejects_a_bad_interrupt_char(core: ModuleType) -> None:
    for intr in (-2, 256):
        with pytest.raises(ValueError, match="intr"):
            core.Pump(-1, 1, 0, intr=intr)


def test_sigwinch_applied_in_the_loop(core: ModuleType, rig: Callable[..., Rig]) -> None:
    term_master, term_slave = os.openpty()
    try:
        set_winsize(term_master, 40, 100)
        r = rig(size_fd=term_slave)
        fut = r.start()
        r.wake(signal.SIGWINCH)
        deadline = time.monotonic() + WAIT
        while winsize(r.slave) != (40, 100):
            assert time.monotonic() < deadline, winsize(r.slave)
            time.sleep(0.01)
        set_winsize(term_master, 0, 0)  # a zero size is never forwarded
        r.wake(signal.SIGWINCH, signal.SIGUSR1)
        assert fut.result(WAIT) == core.EV_SIGNAL
        assert r.pump.signals() == bytes([signal.SIGUSR1])  # SIGWINCH was handled, not reported
        assert winsize(r.slave) == (40, 100)
    finally:
        os.close(term_master)
        os.close(term_slave)


def test_sigwinch_reported_when_not_handled(core: ModuleType, rig: Callable[..., Rig]) -> None:
    term_master, term_slave = os.openpty()
    try:
        set_winsize(term_master, 33, 77)
        r = rig(size_fd=term_slave, winch=False)
        r.wake(signal.SIGWINCH)
        assert r.start().result(WAIT) == core.EV_SIGNAL
        assert r.pump.signals() == bytes([signal.SIGWINCH])
        assert winsize(r.slave) != (33, 77)
        assert r.pump.resize() == (33, 77)
        assert winsize(r.slave) == (33, 77)
    finally:
        os.close(term_master)
        os.close(term_slave)


def test_resize_without_a_terminal(rig: Callable[..., Rig]) -> None:
    assert rig().pump.resize() is None


def test_drain_delivers_output_left_at_exit(rig: Callable[..., Rig]) -> None:
    r = rig()
    payload = os.urandom(200_000)
    writer = threading.Thread(target=lambda: (os.write(r.slave, payload), os.close(r.slave)))
    writer.start()
    reader: Future[bytes] = ThreadPoolExecutor(1).submit(read_exactly, r.out_r, len(payload))
    assert r.pump.drain(100, 5000) == r.core.EV_DONE
    writer.join()
    assert reader.result(WAIT) == payload


def test_drain_reads_on_after_eio(rig: Callable[..., Rig]) -> None:
    # Linux may answer EIO (no slave open any more) while output written before the last
    # close is still on its way to the master: under load a relay read 80 of a child's 5003
    # bytes, got EIO, and a read right after returned the other 4923. The kernel's timing
    # cannot be forced; this makes the same sequence for certain: the run sees EIO with nothing
    # to read, then output arrives (the slave opened again by name, written, closed), and the
    # drain must still deliver it.
    r = rig()
    name = os.ttyname(r.slave)
    os.write(r.slave, b"early ")
    os.close(r.slave)
    assert r.start().result(WAIT) == r.core.EV_EOF
    assert read_exactly(r.out_r, 6) == b"early "
    late = os.open(name, os.O_RDWR | os.O_NOCTTY)
    os.write(late, b"tail")
    os.close(late)
    assert r.pump.drain(100, 5000) == r.core.EV_DONE
    assert read_exactly(r.out_r, 4) == b"tail"
    assert r.core.EOF_RECHECKS == 6


def test_drain_stops_when_a_grandchild_keeps_the_pty_quiet(rig: Callable[..., Rig]) -> None:
    r = rig()
    os.write(r.slave, b"bye")  # the slave stays open, as with `sleep 60 & exit 5`
    assert r.start(lambda: r.pump.drain(50, 60_000)).result(WAIT) == r.core.EV_DONE
    assert read_exactly(r.out_r, 3) == b"bye"


def test_drain_is_capped_when_a_grandchild_keeps_writing(rig: Callable[..., Rig]) -> None:
    r = rig()
    os.set_blocking(r.slave, False)
    stop = threading.Event()
    lines = [0]

    def chatter() -> None:  # writes without a pause: the pty is never idle, never ends
        while not stop.is_set():
            try:
                os.write(r.slave, b"line %d\n" % lines[0])
                lines[0] += 1
            except BlockingIOError:
                select.select([], [r.slave], [], 0.05)

    def sink() -> None:
        while not stop.is_set():
            if select.select([r.out_r], [], [], 0.05)[0]:
                received.extend(os.read(r.out_r, 65536))

    received = bytearray()
    threads = [threading.Thread(target=chatter), threading.Thread(target=sink)]
    for t in threads:
        t.start()
    try:
        # Neither EOF nor an idle second can end this drain: only its 300 ms cap can.
        assert r.start(lambda: r.pump.drain(1000, 300)).result(WAIT) == r.core.EV_DONE
        assert threads[0].is_alive(), "the writer stopped: the drain did not end on its cap"
        written_at_return = lines[0]
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert written_at_return > 0 and b"line 0\n" in received  # it did copy while it ran


def test_drain_keeps_what_the_pty_holds_while_the_terminal_stalls(
    rig: Callable[..., Rig],
) -> None:
    r = rig(bufsize=8192)
    fcntl.fcntl(r.out_w, fcntl.F_SETPIPE_SZ, 4096)
    payload = os.urandom(48 * 1024)  # far more than the relay's and the pipe's buffers
    writer = threading.Thread(target=os.write, args=(r.slave, payload))
    writer.start()
    fut = r.start(lambda: r.pump.drain(50, 200))
    time.sleep(0.8)  # the terminal reads nothing for longer than the whole cap
    assert not fut.done()
    assert read_exactly(r.out_r, len(payload)) == payload
    assert fut.result(WAIT) == r.core.EV_DONE
    writer.join()


def test_drain_gives_up_on_a_terminating_signal(rig: Callable[..., Rig]) -> None:
    r = rig(bufsize=1 << 20)
    fcntl.fcntl(r.out_w, fcntl.F_SETPIPE_SZ, 4096)  # Linux: a small pipe that fills at once
    os.set_blocking(r.slave, False)
    with contextlib.suppress(BlockingIOError):
        for _ in range(64):  # more than the out pipe holds; nobody reads it
            os.write(r.slave, b"x" * 4096)
    fut = r.start(lambda: r.pump.drain(50, 200))
    assert not quiet(r.out_r, WAIT)  # the flush has begun and is stuck on a full pipe
    time.sleep(0.3)
    assert not fut.done()
    r.wake(signal.SIGWINCH, signal.SIGCHLD)  # not reasons to give up
    time.sleep(0.1)
    assert not fut.done()
    r.wake(signal.SIGTERM)
    assert fut.result(WAIT) == r.core.EV_SIGNAL
    assert r.pump.signals() == bytes([signal.SIGTERM])


def test_pump_rejects_bad_bufsize(core: ModuleType) -> None:
    with pytest.raises(ValueError, match="bufsize"):
        core.Pump(0, 1, 2, bufsize=0)


def test_pump_raises_oserror_for_a_closed_fd(core: ModuleType) -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    pump = core.Pump(r, w, r)
    with pytest.raises(OSError) as info:
        pump.run()
    assert info.value.errno == errno.EBADF


# ------------------------------------------------------------------------------ spawn

SESSION_PROBE = b"""import os
p = os.getpid()
print(os.getsid(0) == p, os.tcgetpgrp(0) == p, os.isatty(0), os.isatty(1), os.isatty(2),
      os.environ.get("PROBE_VAR"))
"""


def spawn_probe(core: ModuleType, path: bytes, argv: list[bytes]) -> tuple[int, bytes]:
    master, slave = os.openpty()
    try:
        pid = core.spawn(path, argv, [b"PROBE_VAR=seen", b"PATH=/usr/bin:/bin"], slave)
    finally:
        os.close(slave)
    try:
        out = read_exactly(master, 1 << 16)
    finally:
        os.close(master)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), out


def test_spawn_session_leader(core: ModuleType) -> None:
    code, out = spawn_probe(core, sys.executable.encode(), [b"python", b"-c", SESSION_PROBE])
    assert code == 0, out
    assert out.split() == [b"True"] * 5 + [b"seen"], out


def test_spawn_default_signal_state(core: ModuleType) -> None:
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])
    try:
        # grep itself is the spawned process: its status shows what it inherited.
        code, out = spawn_probe(core, b"/bin/grep", [b"grep", b"^Sig", b"/proc/self/status"])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    assert code == 0, out
    fields = dict(line.split(b":") for line in out.replace(b"\t", b"").split())
    # Python ignores SIGPIPE and this thread blocked SIGUSR2: neither may reach the child.
    assert int(fields[b"SigBlk"], 16) == 0, out
    assert int(fields[b"SigIgn"], 16) == 0, out


def test_spawn_child_inherits_only_its_stdio(core: ModuleType) -> None:
    r, w = os.pipe()
    leaked = os.dup2(w, 200, inheritable=True)  # an inheritable descriptor of the caller's
    try:
        code, out = spawn_probe(core, b"/bin/ls", [b"ls", b"/proc/self/fd"])
    finally:
        for fd in (r, w, leaked):
            os.close(fd)
    assert code == 0, out
    fds = sorted(int(x) for x in out.split())
    assert fds[:3] == [0, 1, 2] and len(fds) == 4, out  # the fourth: ls reading the directory


def test_spawn_yes_head_has_no_broken_pipe(core: ModuleType) -> None:
    code, out = spawn_probe(core, b"/bin/sh", [b"sh", b"-c", b"yes | head -1; echo done"])
    assert code == 0
    assert out.replace(b"\r\n", b"\n") == b"y\ndone\n"


@pytest.mark.parametrize(
    ("path", "code"),
    [(b"/nonexistent/prog", errno.ENOENT), (b"/etc/passwd", errno.EACCES), (b"/", errno.EACCES)],
)
def test_spawn_exec_failure_raises_and_reaps(core: ModuleType, path: bytes, code: int) -> None:
    master, slave = os.openpty()
    try:
        with pytest.raises(OSError) as info:
            core.spawn(path, [b"prog"], [], slave)
    finally:
        os.close(master)
        os.close(slave)
    assert info.value.errno == code
    assert len(info.value.args) == 2  # exec itself failed, not an earlier step
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)  # the failed child was reaped


def test_spawn_runs_a_file_without_interpreter_line_with_sh(
    core: ModuleType, tmp_path: Path
) -> None:
    # As execvp: ENOEXEC hands the file to /bin/sh, with the arguments after it.
    prog = tmp_path / "no-hashbang"
    prog.write_text('echo "$0|$1|$2"; exit 5\n')
    prog.chmod(0o755)
    code, out = spawn_probe(core, bytes(prog), [b"name", b"one", b"two"])
    assert code == 5, out
    assert out.replace(b"\r\n", b"\n") == b"%s|one|two\n" % bytes(prog)


# Where its stdio leads: "tty" for the pty's slave, else the inode of a pipe.
STDIO_PROBE = b"""import os
for fd in (0, 1, 2):
    st = os.fstat(fd)
    print("tty" if os.isatty(fd) else st.st_ino, end=" ")
"""


def test_spawn_out_fd_becomes_stdout_and_stderr(core: ModuleType) -> None:
    master, slave = os.openpty()
    r, w = os.pipe()
    try:
        pid = core.spawn(sys.executable.encode(), [b"python", b"-c", STDIO_PROBE], [], slave, w)
        os.close(w)
        w = -1
        out = read_exactly(r, 1 << 16)
        _, status = os.waitpid(pid, 0)
        pty_out = b"" if quiet(master, 0.1) else os.read(master, 1 << 16)
    finally:
        for fd in (master, slave, r, w):
            if fd >= 0:
                os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out
    words = out.split()
    assert words[0] == b"tty" and words[1] == words[2] != b"tty", out
    assert pty_out == b"", "the child wrote to its pty although stdout was redirected"


@pytest.mark.parametrize("number", [0, 1, 2])
def test_spawn_out_fd_among_the_low_descriptors(core: ModuleType, number: int) -> None:
    """out_fd (and the slave) may sit at 0-2 themselves, as the caller's stdout does."""
    code = f"""
import os, sys
from bottle import {core.__name__.rsplit(".", 1)[1]} as core
master, slave = os.openpty()
os.dup2(int(sys.argv[1]), {number})  # the pipe to the test lands on fd {number}
argv = [b"sh", b"-c", b"tty <&0 >&2; echo out; echo err >&2"]
pid = core.spawn(b"/bin/sh", argv, [], slave, {number})
os.close({number})
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""
    r, w = os.pipe()
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(w)], pass_fds=(w,),
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
        os.close(w)
        w = -1
        out = read_exactly(r, 1 << 16)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert proc.returncode == 0, proc.stderr
    lines = out.decode().split()
    assert lines[0].startswith("/dev/pts/") and lines[1:] == ["out", "err"], out


def test_spawn_rejects_bad_arguments(core: ModuleType) -> None:
    with pytest.raises(ValueError):
        core.spawn(b"/bin/true", [], [], -1)
    with pytest.raises(ValueError):
        core.spawn(b"/bin/tr\0ue", [b"x"], [], -1)
    with pytest.raises(TypeError):
        core.spawn(b"/bin/true", ["str"], [], -1)


# ------------------------------------------------------------------------------ front


@pytest.fixture
def devnull(core: ModuleType, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """/dev/null for stdin; the front runs on the core under test (both twins)."""
    monkeypatch.setattr(relay_session, "core", core)
    fd = os.open(os.devnull, os.O_RDONLY)
    yield fd
    os.close(fd)


def run_captured(argv: list[str], stdin_fd: int, **kwargs: Any) -> tuple[int, bytes]:
    r, w = os.pipe()
    try:
        with ThreadPoolExecutor(1) as pool:
            reader = pool.submit(read_exactly, r, 1 << 20)
            status = relay.run(argv, stdin_fd=stdin_fd, stdout_fd=w, **kwargs)
            os.close(w)
            w = -1
            return status, reader.result(WAIT)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


@pytest.mark.parametrize(
    ("script", "status"),
    [("exit 0", 0), ("exit 3", 3), ("exit 255", 255), ("kill -KILL $$", 137),
     ("kill -TERM $$", 143), ("kill -INT $$", 130)],
)
def test_run_status(devnull: int, script: str, status: int) -> None:
    assert run_captured(["sh", "-c", script], devnull)[0] == status


def test_run_output_and_pipe_flags_restored(devnull: int) -> None:
    r, w = os.pipe()
    try:
        flags = fcntl.fcntl(r, fcntl.F_GETFL)
        os.write(w, b"hello")
        os.close(w)
        w = -1
        status, out = run_captured(["cat"], r)
        assert fcntl.fcntl(r, fcntl.F_GETFL) == flags
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert status == 0
    assert out.replace(b"\r\n", b"\n") == b"hellohello"  # the pty's echo, then cat's copy


def test_run_restores_signal_handlers_and_wakeup_fd(devnull: int) -> None:
    caught = [signal.SIGWINCH, signal.SIGCHLD, signal.SIGTSTP, signal.SIGCONT,
              signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT]

    def custom(signum: int, frame: object) -> None:
        pass

    before_handlers = {s: signal.getsignal(s) for s in caught}
    previous = signal.signal(signal.SIGTERM, custom)
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    try:
        old_wakeup = signal.set_wakeup_fd(wfd)
        try:
            assert run_captured(["true"], devnull)[0] == 0
            assert signal.set_wakeup_fd(wfd) == wfd
            assert signal.getsignal(signal.SIGTERM) is custom
            for s in caught:
                if s != signal.SIGTERM:
                    assert signal.getsignal(s) == before_handlers[s], signal.Signals(s).name
        finally:
            signal.set_wakeup_fd(old_wakeup)
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.close(rfd)
        os.close(wfd)


def test_run_unblocks_what_it_needs_and_puts_the_callers_mask_back(devnull: int) -> None:
    # A caller with SIGCHLD and SIGWINCH blocked (a parent's mask is inherited): the relay
    # must still see its child exit, and the caller gets its own mask back.
    blocked = {signal.SIGCHLD, signal.SIGWINCH, signal.SIGUSR2}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
    try:
        before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        status, out = run_captured(["grep", "SigBlk", "/proc/self/status"], devnull)
        after = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert status == 0
    assert after == before
    assert int(out.split()[1], 16) == 0, out  # the child: nothing blocked, as from a shell


def test_run_from_a_thread_works_without_signal_handling(devnull: int) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGWINCH, signal.SIGCHLD, signal.SIGTERM)}
    with ThreadPoolExecutor(1) as pool:
        status, out = pool.submit(
            run_captured, ["sh", "-c", "echo from-thread; exit 9"], devnull
        ).result(60)
    assert status == 9
    assert b"from-thread" in out
    assert {s: signal.getsignal(s) for s in before} == before


def test_run_from_a_thread_waits_for_a_child_that_closed_its_stdio(devnull: int) -> None:
    script = "exec 0<&- 1>&- 2>&-; sleep 0.5; exit 6"
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(run_captured, ["sh", "-c", script], devnull).result(60)[0] == 6


def test_run_on_a_terminal_restores_it(devnull: int) -> None:
    master, slave = os.openpty()
    set_winsize(master, 37, 111)
    before = termios.tcgetattr(slave)
    flags = fcntl.fcntl(slave, fcntl.F_GETFL)
    sink: list[bytes] = []

    def drain() -> None:
        with contextlib.suppress(OSError):
            while chunk := os.read(master, 65536):
                sink.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        status = relay.run(["sh", "-c", "stty size; stty -a | grep -c -- -icanon; exit 4"],
                           stdin_fd=slave, stdout_fd=slave)
        assert termios.tcgetattr(slave) == before
        assert fcntl.fcntl(slave, fcntl.F_GETFL) == flags
    finally:
        os.close(slave)
        reader.join(WAIT)
        os.close(master)
    assert status == 4
    text = b"".join(sink).decode()
    assert "37 111" in text  # the child's pty had the user's size from the start


def test_run_default_size_without_a_terminal(devnull: int) -> None:
    assert run_captured(["stty", "size"], devnull)[1].strip() == b"24 80"


def test_run_missing_program_names_it(devnull: int) -> None:
    with pytest.raises(FileNotFoundError) as info:
        relay.run(["smolvm-not-installed", "machine", "exec"], stdin_fd=devnull)
    assert info.value.filename == "smolvm-not-installed"
    assert "smolvm-not-installed" in str(info.value)


def test_run_resolves_on_the_path_of_env(tmp_path: Path, devnull: int) -> None:
    prog = tmp_path / "only-here"
    prog.write_text("#!/bin/sh\necho found-it\nexit 12\n")
    prog.chmod(0o755)
    env = {"PATH": f"/nonexistent:{tmp_path}"}
    status, out = run_captured(["only-here"], devnull, env=env)
    assert (status, out.strip()) == (12, b"found-it")
    with pytest.raises(FileNotFoundError):
        relay.run(["only-here"], stdin_fd=devnull, env={"PATH": "/nonexistent"})


def test_run_not_executable(tmp_path: Path, devnull: int) -> None:
    prog = tmp_path / "noexec"
    prog.write_text("#!/bin/sh\n")
    prog.chmod(0o644)
    with pytest.raises(PermissionError) as info:
        relay.run(["noexec"], stdin_fd=devnull, env={"PATH": str(tmp_path)})
    assert info.value.filename == "noexec"
    with pytest.raises(PermissionError):
        relay.run([str(prog)], stdin_fd=devnull)


def test_run_bad_arguments(devnull: int) -> None:
    with pytest.raises(ValueError, match="empty"):
        relay.run([])
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(ValueError, match="stdout_fd"):
        relay.run(["true"], stdin_fd=devnull, stdout_fd=w)
    with pytest.raises(ValueError, match="output"):
        relay.run(["true"], stdin_fd=devnull, output="sideways")


# The child's view of its stdio in direct mode: fd 1 and 2 the caller's pipe, as it was given.
DIRECT_PROBE = r"""
import fcntl, os, sys
same = os.fstat(1).st_ino == os.fstat(2).st_ino == int(sys.argv[1])
blocking = not fcntl.fcntl(1, fcntl.F_GETFL) & os.O_NONBLOCK
os.write(1, b"out:%s:%s\n" % (str(same).encode(), str(blocking).encode()))
os.write(2, b"err\n")
with open("/dev/tty", "wb", buffering=0) as tty:
    tty.write(b"tty\n")
"""


def test_run_direct_output_is_the_callers_descriptor(devnull: int) -> None:
    r, w = os.pipe()
    try:
        flags = fcntl.fcntl(w, fcntl.F_GETFL)
        with ThreadPoolExecutor(1) as pool:
            reader = pool.submit(read_exactly, r, 1 << 20)
            status = relay.run([sys.executable, "-c", DIRECT_PROBE, str(os.fstat(w).st_ino)],
                               stdin_fd=devnull, stdout_fd=w, output="direct")
            assert fcntl.fcntl(w, fcntl.F_GETFL) == flags
            os.close(w)
            w = -1
            out = reader.result(WAIT)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    assert status == 0
    # Written straight to the pipe: untouched (no CR). Through /dev/tty: copied, from the pty.
    assert out == b"out:True:True\nerr\ntty\r\n", out


def test_run_direct_output_to_a_file(devnull: int, tmp_path: Path) -> None:
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        status = relay.run(["sh", "-c", "echo one; echo two >/dev/tty; echo three >&2"],
                           stdin_fd=devnull, stdout_fd=fd, output="direct")
        assert fcntl.fcntl(fd, fcntl.F_GETFL) == flags
    finally:
        os.close(fd)
    assert status == 0
    assert sorted(path.read_bytes().split(b"\n")) == [b"", b"one", b"three", b"two\r"]


@pytest.mark.parametrize(
    ("template", "machine", "message"),
    [("", None, "empty"), ("cmd {rows} {bogus}", None, "bogus"),
     ("cmd {machine}", None, "no machine"), ("cmd 'unclosed", None, "quotation")],
)
def test_resize_command_template_errors(
    devnull: int, template: str, machine: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        relay.run(["true"], stdin_fd=devnull, machine=machine, resize_command=template)


def test_resize_worker_one_in_flight_latest_wins(tmp_path: Path) -> None:
    log, gate = tmp_path / "log", tmp_path / "gate"
    script = tmp_path / "resize.sh"
    script.write_text(
        f'echo "start $1 $2 $3" >> {log}\n'
        f"while [ ! -e {gate} ]; do sleep 0.01; done\n"
        f'echo "end $1 $2 $3" >> {log}\n'
    )
    words = ["sh", str(script), "{rows}", "{cols}", "{machine}"]
    worker = relay_children.ResizeWorker(words, "vm 1", os.environ)

    def lines() -> list[str]:
        return log.read_text().splitlines() if log.exists() else []

    try:
        worker.post((10, 20))
        deadline = time.monotonic() + WAIT
        while not lines():
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for i in range(20):
            worker.post((30 + i, 40 + i))
        time.sleep(0.2)
        assert lines() == ["start 10 20 vm 1"]  # at most one in flight
        gate.touch()
        while len(lines()) < 4:
            assert time.monotonic() < deadline, lines()
            time.sleep(0.01)
    finally:
        worker.stop()
    assert lines() == ["start 10 20 vm 1", "end 10 20 vm 1", "start 49 59 vm 1", "end 49 59 vm 1"]


def test_exit_status_mapping() -> None:
    assert relay_children.exit_status(3 << 8) == 3
    assert relay_children.exit_status(signal.SIGKILL) == 137
    assert relay_children.exit_status(signal.SIGSEGV | 0x80) == 128 + signal.SIGSEGV  # core dumped


# ------------------------------------------------------------------------------ CLI and selection


@pytest.mark.parametrize(
    ("argv", "message"),
    [([], "no command"), (["--machine"], "needs a value"), (["--bogus", "x"], "unknown option"),
     (["--machine", "m", "--"], "no command"), (["--output", "sideways", "--", "true"], "output")],
)
def test_cli_usage_errors(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert relay_cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert relay_cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--resize-command" in out and "--output copy|direct" in out


def test_cli_parses_options_and_command() -> None:
    options, flags, command = relay_cli._parse(
        ["--machine=vm", "--resize-command", "x {rows}", "--output", "direct", "--", "cmd",
         "--machine", "-x"]
    )
    assert options == {"machine": "vm", "resize_command": "x {rows}", "output": "direct"}
    assert command == ["cmd", "--machine", "-x"]
    assert flags == set()
    assert relay_cli._parse(["cmd", "-h"]) == ({}, set(), ["cmd", "-h"])
    assert relay_cli._parse(["--hold-until-raw", "cmd"]) == ({}, {"hold_until_raw"}, ["cmd"])


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTTLE_")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "bottle.relay", *args], stdin=subprocess.DEVNULL,
        capture_output=True, text=True, env=env, timeout=60,
    )


def test_cli_missing_program() -> None:
    proc = _cli("--", "smolvm-not-installed", "machine", "exec")
    assert proc.returncode == 127
    assert "smolvm-not-installed" in proc.stderr and "not found" in proc.stderr


def test_cli_exit_status_and_bad_template() -> None:
    assert _cli("--", "sh", "-c", "exit 42").returncode == 42
    proc = _cli("--resize-command", "x {nope}", "--", "true")
    assert proc.returncode == 2 and "{nope}" in proc.stderr


def _implementation(
    env_extra: dict[str, str], prelude: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOTTLE_")}
    env.update(env_extra)
    code = f"{prelude}\nimport bottle.relay as r; print(r.IMPLEMENTATION)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)


def test_implementation_selection() -> None:
    forced = _implementation({"BOTTLE_NO_EXTENSIONS": "1"})
    assert (forced.returncode, forced.stdout.strip()) == (0, "pure")
    both = _implementation({"BOTTLE_NO_EXTENSIONS": "1", "BOTTLE_REQUIRE_EXTENSION": "1"})
    assert both.returncode != 0 and "both set" in both.stderr
    # The native module missing: fall back quietly, unless it is required.
    hide = "import sys; sys.modules['bottle._ptyrelay'] = None"
    fallback = _implementation({}, hide)
    assert (fallback.returncode, fallback.stdout.strip()) == (0, "pure")
    required = _implementation({"BOTTLE_REQUIRE_EXTENSION": "1"}, hide)
    assert required.returncode != 0 and "BOTTLE_REQUIRE_EXTENSION" in required.stderr
    if native_built():
        default = _implementation({})
        assert (default.returncode, default.stdout.strip()) == (0, "native")


# ------------------------------------------------------------------------------ found in review


def test_end_of_input_is_held_with_the_keys(rig: Callable[..., Rig]) -> None:
    r = rig(raw_child=False, hold_ms=60_000)
    fut = r.start()
    os.write(r.in_w, b"piped")
    os.close(r.in_w)
    r.in_w = -1
    # A VEOF written now would be flushed by the child's switch to raw mode, and it would wait
    # for an end of input that never comes.
    assert quiet(r.slave, 0.4), "input or its end reached a canonical-mode child"
    tty.setraw(r.slave, termios.TCSAFLUSH)
    assert read_exactly(r.slave, 7) == b"piped\x04\x04"  # raw: the VEOFs arrive as bytes
    r.wake(signal.SIGUSR1)
    assert fut.result(WAIT) == r.core.EV_SIGNAL


def test_no_input_at_all_is_held_too(core: ModuleType) -> None:
    master, slave = os.openpty()
    out_r, out_w = os.pipe()
    wake_r, wake_w = os.pipe()
    try:
        for fd in (master, out_w, wake_r):
            os.set_blocking(fd, False)
        pump = core.Pump(-1, out_w, master, wake_r, hold_ms=60_000)
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(pump.run)
            assert quiet(slave, 0.4), "the end of input reached a canonical-mode child"
            tty.setraw(slave, termios.TCSAFLUSH)
            assert read_exactly(slave, 1) == b"\x04"
            os.write(wake_w, bytes([signal.SIGUSR1]))
            assert fut.result(WAIT) == core.EV_SIGNAL
    finally:
        for fd in (master, slave, out_r, out_w, wake_r, wake_w):
            os.close(fd)


def test_hold_is_timed_from_the_start_not_the_first_key(rig: Callable[..., Rig]) -> None:
    r = rig(raw_child=False, hold_ms=200)
    attrs = termios.tcgetattr(r.slave)
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(r.slave, termios.TCSANOW, attrs)
    time.sleep(0.4)  # the child has been canonical for longer than the whole hold
    fut = r.start()
    os.write(r.in_w, b"late\n")
    while select.select([r.in_r], [], [], 0)[0]:  # until the pump has read it
        assert not fut.done()
        time.sleep(0.005)
    r.wake(signal.SIGUSR1)
    assert fut.result(WAIT) == r.core.EV_SIGNAL
    # The pump has returned: the key was written at once, not held for another 200 ms.
    assert select.select([r.slave], [], [], 0)[0], "a key typed after the hold was held"
    assert os.read(r.slave, 10) == b"late\n"


def test_second_concurrent_run_is_refused(rig: Callable[..., Rig]) -> None:
    r = rig()
    barrier = threading.Barrier(2)

    def run() -> int:
        barrier.wait(WAIT)
        return int(r.pump.run())

    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(run) for _ in range(2)]
        try:
            done = next(iter(concurrent.futures.as_completed(futures, WAIT)))
            with pytest.raises(RuntimeError, match="already running"):
                done.result()
            with pytest.raises(RuntimeError, match="already running"):
                r.pump.drain(10, 10)
        finally:
            r.wake(signal.SIGUSR1)
            r.wake(signal.SIGUSR2)  # frees a second loop, if one was let in
        other = futures[1] if done is futures[0] else futures[0]
        assert other.result(WAIT) == r.core.EV_SIGNAL
    # Free again once the loop has returned.
    r.wake(signal.SIGUSR1)
    assert r.pump.run() == r.core.EV_SIGNAL


def test_drain_rejects_negative_arguments(rig: Callable[..., Rig]) -> None:
    r = rig()
    os.close(r.slave)  # a drain that wrongly accepts them still ends (pty EOF)
    r.slave = -1
    for idle_ms, cap_ms in [(-1, 100), (100, -1)]:
        with pytest.raises(ValueError, match="negative"):
            r.pump.drain(idle_ms, cap_ms)


def test_drain_with_a_huge_idle_time_still_keeps_the_cap(rig: Callable[..., Rig]) -> None:
    r = rig()  # the slave stays open and quiet: only the cap ends the drain
    fut = r.start(lambda: r.pump.drain(3_000_000, 100))  # idle_ms * 1000 overflows an int
    try:
        assert fut.result(WAIT) == r.core.EV_DONE
    finally:
        if not fut.done():
            r.wake(signal.SIGTERM)


# A spawn whose fork (clone) or report pipe (pipe2) fails, many times, under strace's fault
# injection: nothing may stay behind (descriptors, or the C argv/envp arrays: peak RSS).
FAILING_SPAWN = r"""
import importlib, os, resource, sys
core = importlib.import_module(sys.argv[1])
argv = [b"x%d" % i for i in range(200_000)]  # 1.6 MB of pointers per call
fds = len(os.listdir("/proc/self/fd"))
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
errors = set()
for _ in range(30):
    try:
        core.spawn(b"/bin/true", argv, [], 0)
    except OSError as exc:
        errors.add(exc.errno)
print(sorted(errors), len(os.listdir("/proc/self/fd")) - fds,
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss)
"""


@pytest.mark.parametrize("syscall", ["clone", "pipe2"])
def test_failed_spawn_leaks_nothing(core: ModuleType, syscall: str) -> None:
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is missing: the test injects the failure with it")
    inject = "clone,clone3" if syscall == "clone" else "pipe2"
    proc = subprocess.run(
        [strace, "-qq", "-o", "/dev/null", "-e", f"trace={inject}",
         "-e", f"inject={inject}:error=EAGAIN" if syscall == "clone" else
         f"inject={inject}:error=EMFILE", sys.executable, "-c", FAILING_SPAWN, core.__name__],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    errors, fd_growth, rss_growth_kib = proc.stdout.rsplit("]", 1)[0] + "]", *map(
        int, proc.stdout.rsplit("]", 1)[1].split())
    expected = errno.EAGAIN if syscall == "clone" else errno.EMFILE
    assert errors == f"[{expected}]", proc.stdout  # the failure really was injected
    assert fd_growth == 0, f"{fd_growth} descriptors leaked over 30 failed spawns"
    assert rss_growth_kib < 16 * 1024, f"{rss_growth_kib} KiB more after 30 failed spawns"


# A bytes subclass whose `in` empties the argv list it sits in: spawn must run the argv it
# was given, never what the list turned into.
SHRINKING_ARGV = r"""
import importlib, os, sys
core = importlib.import_module(sys.argv[1])
argv = []
class Shrinking(bytes):
    def __contains__(self, item):
        argv.clear()
        return False
argv += [b"echo", Shrinking(b"kept"), b"whole"]
master, slave = os.openpty()
try:
    pid = core.spawn(b"/bin/echo", argv, [], slave)
finally:
    os.close(slave)
out = b""
while True:
    try:
        chunk = os.read(master, 100)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
os.waitpid(pid, 0)
print("ran:", out.decode().strip())
"""


def test_spawn_uses_a_snapshot_of_argv(core: ModuleType) -> None:
    proc = subprocess.run([sys.executable, "-c", SHRINKING_ARGV, core.__name__],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr  # a crash (out-of-bounds read) fails here
    assert proc.stdout.strip() == "ran: kept whole", proc.stdout + proc.stderr


def test_spawn_while_another_thread_mutates_the_lists(core: ModuleType) -> None:
    """Free-threaded builds: spawn reads a snapshot, so a list changed meanwhile is harmless."""
    code = r"""
import importlib, os, sys, threading
core = importlib.import_module(sys.argv[1])
argv = [b"true"] * 64
stop = threading.Event()
def churn():
    while not stop.is_set():
        argv.append(b"x"); argv.pop(); del argv[32:]; argv.extend([b"true"] * 32)
t = threading.Thread(target=churn); t.start()
try:
    for _ in range(200):
        master, slave = os.openpty()
        try:
            pid = core.spawn(b"/bin/true", argv, [], slave)
            os.waitpid(pid, 0)
        except ValueError:
            pass  # argv seen empty: refused, which is fine
        finally:
            os.close(master); os.close(slave)
finally:
    stop.set(); t.join()
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", code, core.__name__],
                          capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout.strip()) == (0, "ok"), proc.stderr


def test_run_negative_stdin_is_no_input(devnull: int) -> None:
    status, out = run_captured(["sh", "-c", "cat; echo after-eof"], -1)
    assert status == 0
    assert out.strip() == b"after-eof"


def test_waiter_never_writes_into_a_reused_descriptor(
    devnull: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Widen the waiter's window between reaping the child and writing its notify byte, as a
    # loaded machine can: the pipe it writes to must still be its own by then.
    real_write = os.write

    def slow_write(fd: int, data: Any) -> int:
        if threading.current_thread().name == "bottle-relay-wait" and data == b"x":
            time.sleep(0.3)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", slow_write)
    pid = os.posix_spawn("/bin/true", ["true"], os.environ)
    child = relay_children.Child(pid, threaded=True)
    while child.poll() is None:  # the status is set before the byte is written
        time.sleep(0.001)
    child.end()
    r, w = os.pipe()  # takes the numbers end() just released
    try:
        for thread in threading.enumerate():
            if thread.name == "bottle-relay-wait":
                thread.join(WAIT)
        assert not select.select([r], [], [], 0)[0], "the waiter wrote into an unrelated pipe"
    finally:
        os.close(r)
        os.close(w)
