"""Recording in the relay core (`Pump(record_fd=…)`), both twins, driven by hand.

The child's side is a pipe (or a real pty, for window sizes) and the user's side a regular
file, so the Pump reads exactly ``bufsize`` bytes at a time: every way of splitting the output
across reads (and so across events) can be chosen. The contract checked: the events' data,
joined, is the output decoded as UTF-8 with U+FFFD for what is not (Python's "replace", which
asciinema's own recorder uses), written with json.dumps's escapes, one whole event per line.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import json
import os
import re
import select
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import tty
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from harness.relay import require_implementation
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bottle import _ptyrelay_py

HEADER = b'{"version": 2, "width": 80, "height": 24}\n'


def events(source: str | Path | bytes) -> list[list[Any]]:
    """The events of a recording (a file or its bytes), each line checked: whole JSON,
    canonical escapes, in order."""
    raw = source if isinstance(source, bytes) else Path(source).read_bytes()
    assert raw.endswith(b"\n")
    lines = raw.decode("utf-8").split("\n")[:-1]
    assert json.loads(lines[0])["version"] == 2
    out = []
    last = 0.0
    for line in lines[1:]:
        event = json.loads(line)
        t, kind, data = event
        assert isinstance(t, float) and t >= last
        last = t
        assert kind in ("o", "i", "r")
        assert isinstance(data, str) and data
        # Exactly asciinema's own writer's form: json.dumps(ensure_ascii=False), ", " between.
        assert line.endswith(f'"{kind}", {json.dumps(data, ensure_ascii=False)}]'), line
        out.append(event)
    return out


def record_pipe(
    core: ModuleType, data: bytes, bufsize: int, **kw: Any
) -> tuple[bytes, list[list[Any]], int]:
    """Relay ``data`` from a pipe to a file, recording; (what the file got, events, outcome)."""
    got, cast, outcome = record_pipe_raw(core, data, bufsize, **kw)
    return got, events(cast), outcome


def record_pipe_raw(
    core: ModuleType, data: bytes, bufsize: int, **kw: Any
) -> tuple[bytes, bytes, int]:
    """`record_pipe`, with the recording's bytes as they are instead of its events."""
    read_end, write_end = os.pipe()
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryDirectory() as d:
            cast = os.path.join(d, "s.cast")
            fd = os.open(cast, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, HEADER)
            writer = None
            if len(data) < 65536:
                os.write(write_end, data)
                os.close(write_end)
                write_end = -1
            else:
                import threading

                def feed() -> None:
                    nonlocal write_end
                    view = memoryview(data)
                    while view:
                        view = view[os.write(write_end, view) :]
                    os.close(write_end)
                    write_end = -1

                writer = threading.Thread(target=feed)
                writer.start()
            os.set_blocking(read_end, False)
            pump = core.Pump(-1, out.fileno(), read_end, bufsize=bufsize, record_fd=fd, **kw)
            os.close(fd)  # the Pump writes through its own duplicate
            assert pump.run() == core.EV_EOF
            outcome = pump.finish_recording(10_000)
            if writer is not None:
                writer.join()
            out.seek(0)
            return out.read(), Path(cast).read_bytes(), outcome
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)


# Every kind of byte run that matters: ASCII, every escape, valid sequences of each length, and
# each way UTF-8 goes wrong (stray continuation, overlong, surrogate, past U+10FFFF, truncated).
PIECES = [
    b"plain ", b'"', b"\\", b"/", b"\n", b"\r\n", b"\t", b"\x08", b"\x0c", b"\x00", b"\x1b[1;31m",
    b"\x7f", "é".encode(), "€".encode(), "𝄞".encode(), "\u2028".encode(), "\ufeff".encode(),
    b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xe0\x80\x80", b"\xed\xa0\x80", b"\xed\xbf\xbf",
    b"\xf4\x90\x80\x80", b"\xf5", b"\xff", b"\xe2\x82", b"\xf0\x9d\x84", b"\xc3",
]


class TestEncoding:
    @settings(max_examples=60, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
    @given(
        pieces=st.lists(st.sampled_from(PIECES) | st.binary(max_size=12), max_size=40),
        bufsize=st.integers(1, 9),
    )
    def test_events_are_the_output_decoded_with_replacement(
        self, core: ModuleType, pieces: list[bytes], bufsize: int
    ) -> None:
        data = b"".join(pieces)
        got, evs, outcome = record_pipe(core, data, bufsize)
        assert got == data  # the terminal gets every byte as it was
        assert outcome == 0
        assert all(kind == "o" for _, kind, _ in evs)
        assert "".join(text for _, _, text in evs) == data.decode("utf-8", "replace")

    def test_a_sequence_split_across_reads_is_carried_to_the_next_event(
        self, core: ModuleType
    ) -> None:
        data = "a€b".encode()  # a, E2 82 AC, b
        _, evs, _ = record_pipe(core, data, 2)  # reads: "a\xe2", "\x82\xac", "b"
        assert [text for _, _, text in evs] == ["a", "€", "b"]

    def test_a_sequence_cut_short_by_the_end_is_one_replacement(self, core: ModuleType) -> None:
        _, evs, _ = record_pipe(core, b"ok \xf0\x9d\x84", 3)
        assert "".join(text for _, _, text in evs) == "ok \ufffd"

    def test_megabytes_of_mixed_output(self, core: ModuleType) -> None:
        data = b"".join(PIECES) * 40_000  # about 3 MiB, past every buffer and the pipe
        got, evs, outcome = record_pipe(core, data, core.DEFAULT_BUFSIZE)
        assert got == data
        assert outcome == 0
        assert "".join(text for _, _, text in evs) == data.decode("utf-8", "replace")


def winsize(fd: int) -> tuple[int, int]:
    rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, bytes(8)))
    return rows, cols


def set_winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class TestEvents:
    def _pump(self, core: ModuleType, tmp_path: Path, **kw: Any) -> tuple[Any, list[int], Path]:
        user_m, user_s = os.openpty()  # the user's terminal (size source)
        child_m, child_s = os.openpty()  # the child's pty
        set_winsize(user_s, 24, 80)
        set_winsize(child_m, 24, 80)
        cast = tmp_path / "s.cast"
        fd = os.open(cast, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, HEADER)
        os.set_blocking(child_m, False)
        in_r, in_w = os.pipe()
        os.set_blocking(in_r, False)
        out = os.open(tmp_path / "terminal", os.O_WRONLY | os.O_CREAT)
        pump = core.Pump(in_r, out, child_m, -1, -1, user_s, record_fd=fd, **kw)
        os.close(fd)
        return pump, [user_m, user_s, child_m, child_s, in_r, in_w, out], cast

    def test_each_window_change_is_an_r_event(self, core: ModuleType, tmp_path: Path) -> None:
        pump, fds, cast = self._pump(core, tmp_path)
        try:
            user_s = fds[1]
            assert pump.resize() == (24, 80)  # no change: no event
            set_winsize(user_s, 40, 100)
            assert pump.resize() == (40, 100)
            assert pump.resize() == (40, 100)  # again no change
            set_winsize(user_s, 50, 132)
            assert pump.resize() == (50, 132)
            assert winsize(fds[3]) == (50, 132)
            assert pump.finish_recording(10_000) == 0
        finally:
            for fd in fds:
                os.close(fd)
        assert [(kind, data) for _, kind, data in events(cast)] == [
            ("r", "100x40"), ("r", "132x50"),
        ]

    @pytest.mark.parametrize("record_input", [False, True])
    def test_input_is_recorded_only_when_asked(
        self, core: ModuleType, tmp_path: Path, record_input: bool
    ) -> None:
        pump, fds, cast = self._pump(core, tmp_path, record_input=record_input)
        child_s, in_w = fds[3], fds[5]
        try:
            attrs = termios.tcgetattr(child_s)
            attrs[3] &= ~termios.ECHO  # a password prompt: the pty does not echo
            termios.tcsetattr(child_s, termios.TCSANOW, attrs)
            os.write(in_w, b"hunter2\n")
            os.close(in_w)
            fds.remove(in_w)
            os.close(child_s)  # the child side goes: EOF once the input is through
            fds.remove(child_s)
            while pump.run() != core.EV_EOF:
                pass
            assert pump.finish_recording(10_000) == 0
        finally:
            for fd in fds:
                os.close(fd)
        evs = [(kind, data) for _, kind, data in events(cast)]
        if record_input:
            assert evs == [("i", "hunter2\n")]
        else:
            assert evs == []
            assert b"hunter2" not in cast.read_bytes()


class TestFailures:
    def test_a_full_disk_ends_the_recording_not_the_session(self, core: ModuleType) -> None:
        read_end, write_end = os.pipe()
        data = b"x" * 300_000
        full = os.open("/dev/full", os.O_WRONLY)
        try:
            with tempfile.TemporaryFile() as out:
                os.set_blocking(read_end, False)
                pump = core.Pump(-1, out.fileno(), read_end, record_fd=full)
                import threading

                def feed() -> None:
                    os.write(write_end, data)
                    os.close(write_end)

                t = threading.Thread(target=feed)
                t.start()
                assert pump.run() == core.EV_EOF
                t.join()
                assert pump.finish_recording(10_000) == errno.ENOSPC
                assert pump.finish_recording(0) == errno.ENOSPC  # the outcome stays
                out.seek(0)
                assert out.read() == data
        finally:
            os.close(read_end)
            os.close(full)

    def test_a_file_cut_short_ends_with_a_whole_event(
        self, core: ModuleType, tmp_path: Path
    ) -> None:
        # RLIMIT_FSIZE makes the writer's write(2) come up short, then fail with EFBIG
        # mid-event: the file is cut back to its last whole line. In a child process, so that
        # the limit stays there (Python ignores SIGXFSZ).
        cast = tmp_path / "s.cast"
        code = f"""
import os, resource, sys
sys.path[:0] = {sys.path!r}
import {core.__name__} as core
resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
fd = os.open({str(cast)!r}, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
os.write(fd, {HEADER!r})
r, w = os.pipe()
os.write(w, ("é" * 1000 + "\\n").encode() * 8)
os.close(w)
os.set_blocking(r, False)
out = os.open(os.devnull, os.O_WRONLY)  # not limited: a device
pump = core.Pump(-1, out, r, bufsize=1000, record_fd=fd)
os.close(fd)
assert pump.run() == core.EV_EOF
print(pump.finish_recording(10_000))
"""
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=60)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert int(proc.stdout) == errno.EFBIG
        size = cast.stat().st_size
        assert 0 < size <= 10_000
        evs = events(cast)  # every line whole
        text = "".join(text for _, _, text in evs)
        assert text
        assert (("é" * 1000 + "\n") * 8).startswith(text)

    def test_finish_recording_rejects_a_negative_timeout(self, core: ModuleType) -> None:
        r, w = os.pipe()
        try:
            pump = core.Pump(-1, w, r)
            with pytest.raises(ValueError, match="timeout_ms"):
                pump.finish_recording(-1)
            assert pump.finish_recording(0) == 0  # nothing recorded: nothing went wrong
        finally:
            os.close(r)
            os.close(w)


def test_a_stuck_disk_gives_the_recording_up_not_the_session(
    core: ModuleType, tmp_path: Path
) -> None:
    # The recording goes to a FIFO that nobody reads: the writer thread blocks in write(2) as
    # on a hung network disk. The output waits for the recording (a slow disk slows the
    # session) until nothing has moved for record_stall_ms; then the recording is given up
    # and all the output still reaches the terminal.
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    stuck = os.open(fifo, os.O_WRONLY)
    read_end, write_end = os.pipe()
    data = b"y" * (4 << 20)  # more than the FIFO, the recording pipe and its buffer hold
    import threading

    def feed() -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(write_end, view) :]
        os.close(write_end)

    t = threading.Thread(target=feed)
    try:
        with tempfile.TemporaryFile() as out:
            os.set_blocking(read_end, False)
            pump = core.Pump(-1, out.fileno(), read_end, record_fd=stuck, record_stall_ms=300)
            os.close(stuck)
            t.start()
            assert pump.run() == core.EV_EOF
            t.join()
            assert pump.finish_recording(300) == errno.ETIMEDOUT
            out.seek(0)
            assert out.read() == data
    finally:
        os.close(read_end)
        os.close(reader)  # the writer thread's write fails (EPIPE) and it ends


def untimed(raw: bytes) -> bytes:
    """A recording with each event's time blanked: all that must not depend on the twin."""
    return re.sub(rb"(?m)^\[\d+\.\d{6}, ", b"[t, ", raw)


@pytest.fixture
def twins() -> tuple[ModuleType, ModuleType]:
    """Both copy loops: the compiled one and its pure-Python twin."""
    require_implementation("native")
    return importlib.import_module("bottle._ptyrelay"), _ptyrelay_py


# Not the encoded surrogates: CPython's decoder (the pure twin's) holds an ED A0..BF prefix
# that ends a read for the next one, where the native encoder emits its U+FFFDs at once. The
# text joined is the same; the events split differently.
TWIN_PIECES = [piece for piece in PIECES if not piece.startswith(b"\xed")]


class TestTwins:
    """For the same output read in the same pieces, both twins write the same file, byte for
    byte, but for the times."""

    @pytest.mark.parametrize("bufsize", [1, 7, 4096])
    def test_output_recorded_alike(self, twins: tuple[ModuleType, ModuleType],
                                   bufsize: int) -> None:  # fmt: skip
        data = b"".join(TWIN_PIECES) * 200  # ends in a sequence: a last U+FFFD at the finish
        files = []
        for core in twins:
            got, cast, outcome = record_pipe_raw(core, data, bufsize)
            assert (got, outcome) == (data, 0)
            files.append(untimed(cast))
        assert files[0] == files[1]
        assert files[0].count(b"\n") > len(data) // max(bufsize, 4096) > 1

    def test_sizes_and_input_recorded_alike(
        self, twins: tuple[ModuleType, ModuleType], tmp_path: Path
    ) -> None:
        typed = b'h\xc3\xa9llo \xff"\\\x1b[A\n' * 50 + b"\xe2\x82"  # cut short at the end
        files = []
        for core in twins:
            where = tmp_path / core.__name__
            where.mkdir()
            pump, fds, cast = TestEvents()._pump(core, where, record_input=True, bufsize=9)
            user_s, child_s, in_w = fds[1], fds[3], fds[5]
            try:
                tty.setraw(child_s)  # no echo: a pty's echo comes in pieces of its own
                set_winsize(user_s, 40, 100)
                pump.resize()
                set_winsize(user_s, 50, 132)
                pump.resize()
                os.write(in_w, typed)  # all there before the first read: read 9 at a time
                ended = threading.Thread(target=run_to_eof, args=(core, pump))
                ended.start()
                got = b""
                while len(got) < len(typed):
                    ready, _, _ = select.select([child_s], [], [], 10)
                    assert ready, f"the child got {len(got)} of {len(typed)} bytes"
                    got += os.read(child_s, 4096)
                assert got.startswith(typed)
                os.close(child_s)  # the child side goes: EOF
                fds.remove(child_s)
                ended.join(10)
                assert not ended.is_alive()
                assert pump.finish_recording(10_000) == 0
            finally:
                for fd in fds:
                    os.close(fd)
            files.append(untimed(cast.read_bytes()))
        assert files[0] == files[1]
        evs = events(files[0].replace(b"[t, ", b"[0.0, "))
        assert [data for _, kind, data in evs if kind == "r"] == ["100x40", "132x50"]
        inputs = [data for _, kind, data in evs if kind == "i"]
        assert "".join(inputs) == typed.decode("utf-8", "replace")
        assert len(inputs) > len(typed) // 9


def run_to_eof(core: ModuleType, pump: Any) -> None:
    while pump.run() != core.EV_EOF:
        pass
