"""Pure-Python twin of the native recorder (src/_recorder.pxi): a session's asciicast v2
recording, the one both copy loops hold (the relay's `Pump` and the holder's `Hub`, in
`bottle._ptyrelay_py` and `bottle._hub_py`).

The loop encodes events into a buffer of `REC_BUFSIZE` bytes and writes them to a pipe at once;
a writer thread moves them from the pipe to the file, so that a slow or stuck disk can only
stall the recording, never the loop in a write it cannot interrupt. While the pipe takes
nothing the events wait in the buffer, and the loop's output with them (`Recorder.blocked`),
as for a slow terminal; after ``stall_ms`` without progress the recording is given up and the
session goes on unrecorded.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import sys
import threading
import time

__all__ = ["REC_BUFSIZE", "REC_STALL_MS", "Recorder"]

REC_BUFSIZE = 256 * 1024
REC_STALL_MS = 5000
_REC_PIPE_SIZE = 1 << 20
_REC_CHUNK = 64 * 1024
# Room always kept free past an event's data (see the native twin).
_REC_SLACK = 128
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", None)
_POLLIN = select.POLLIN
_POLLOUT = select.POLLOUT


def _now_us() -> int:
    return time.monotonic_ns() // 1000


def _rec_writer_main(src: int, dst: int, status: int) -> None:
    """The recording's writer thread: pipe -> file until the pipe's end (see the native twin)."""
    err = 0
    total = good = 0
    try:
        start = os.lseek(dst, 0, os.SEEK_CUR)
    except OSError:
        start = -1
    try:
        while True:
            data = os.read(src, _REC_CHUNK)
            if not data:
                break
            view = memoryview(data)
            done = 0
            try:
                while done < len(data):
                    done += os.write(dst, view[done:])
            finally:
                # The whole events in what did reach the file.
                last = data.rfind(b"\n", 0, done)
                if last >= 0:
                    good = total + last + 1
                total += done
    except OSError as exc:
        err = exc.errno or errno.EIO
    os.close(src)
    if total != good and start >= 0:
        with contextlib.suppress(OSError):
            os.ftruncate(dst, start + good)
    os.close(dst)
    with contextlib.suppress(OSError):
        os.write(status, err.to_bytes(4, sys.byteorder, signed=True))
    os.close(status)


class Recorder:
    """A recording into ``record_fd`` (after the header its caller wrote), through a thread of
    its own onto a duplicate of it; times count from now. ``"o"`` events for `output`, ``"i"``
    for `input` (the loop asks `with_input`), ``"r"`` for each size `resized` reports."""

    def __init__(self, record_fd: int, with_input: bool, stall_ms: int) -> None:
        self.with_input = with_input
        self.err = 0
        self.on = False
        self.fd = self.status_fd = -1  # the pipe to the writer thread, and its status pipe
        self._finished = False
        self._stall_us = stall_ms * 1000
        self._stall_at = 0
        self._buf = bytearray()
        self._resize: tuple[int, int] | None = None  # (cols, rows) not yet recorded
        self._u8out = codecs.getincrementaldecoder("utf-8")("replace")
        self._u8in = codecs.getincrementaldecoder("utf-8")("replace")
        dst = fcntl.fcntl(record_fd, fcntl.F_DUPFD_CLOEXEC, 3)
        fds = [dst]
        try:
            src, pipe_w = os.pipe()
            fds += (src, pipe_w)
            status_r, status_w = os.pipe()
            fds += (status_r, status_w)
            writer = threading.Thread(
                target=_rec_writer_main,
                args=(src, dst, status_w),
                name="bottle-record",
                daemon=True,
            )
            # Every signal blocked in the writer (a thread starts with its creator's mask):
            # handlers and SIGPIPE belong to the loop's thread.
            old_mask = signal.pthread_sigmask(signal.SIG_SETMASK, signal.valid_signals())
            try:
                writer.start()
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        os.set_blocking(pipe_w, False)
        if _F_SETPIPE_SZ is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(pipe_w, _F_SETPIPE_SZ, _REC_PIPE_SIZE)
        self.fd = pipe_w
        self.status_fd = status_r
        self.on = True
        self._t0 = _now_us()

    def close(self) -> None:
        """When the loop goes, finished or not; the writer thread ends once its pipe is closed."""
        for fd in (self.fd, self.status_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd = self.status_fd = -1
        self.on = False

    @property
    def pending(self) -> bool:
        """Whether events wait for the pipe."""
        return self.on and bool(self._buf)

    def _prefix(self) -> str:
        t = max(0, _now_us() - self._t0)
        return f"[{t // 1_000_000}.{t % 1_000_000:06d}, "

    def room(self) -> int:
        """How many bytes of data the next event may carry (0: wait for the writer); emits a
        pending resize first."""
        if not self.on:
            return 1 << 62
        buf = self._buf
        if self._resize is not None and REC_BUFSIZE - len(buf) >= 64:
            cols, rows = self._resize
            self._resize = None
            buf += f'{self._prefix()}"r", "{cols}x{rows}"]\n'.encode()
        if self._resize is not None or REC_BUFSIZE - len(buf) < _REC_SLACK + 6:
            return 0
        return (REC_BUFSIZE - len(buf) - _REC_SLACK) // 6

    def blocked(self) -> bool:
        """Whether output (and recorded input) must wait for the writer to take events."""
        return self.on and self.room() == 0

    def output(self, data: bytes | bytearray | memoryview) -> None:
        """An "o" event for ``data`` (at most `room` bytes)."""
        self._event("o", self._u8out, data)

    def input(self, data: bytes | bytearray | memoryview) -> None:
        """An "i" event for ``data`` (at most `room` bytes)."""
        self._event("i", self._u8in, data)

    def resized(self, rows: int, cols: int) -> None:
        """A change of the pty's size: an "r" event, emitted before any later output (see
        `room`) whatever room there is now."""
        if self.on:
            self._resize = (cols, rows)
            self.room()
            self.flush()

    def _event(
        self,
        kind: str,
        decoder: codecs.IncrementalDecoder,
        data: bytes | bytearray | memoryview,
        final: bool = False,
    ) -> None:
        """One event for ``data`` (or a carried sequence's end); none when nothing shows."""
        if not self.on:
            return
        text = decoder.decode(data, final)
        if not text:
            return
        body = json.dumps(text, ensure_ascii=False)
        self._buf += f'{self._prefix()}"{kind}", {body}]\n'.encode()
        self.flush()

    def flush(self) -> None:
        """Write what waits to the pipe, as much as it takes."""
        buf = self._buf
        while buf:
            try:
                n = os.write(self.fd, buf)
            except BlockingIOError:
                if not self._stall_at:
                    self._stall_at = _now_us()
                return
            except OSError as exc:  # EPIPE: the writer failed and said why on its status pipe
                self.stop(exc.errno or errno.EIO)
                return
            if n:
                del buf[:n]
                self._stall_at = 0
        self._stall_at = 0

    def stop(self, err: int) -> None:
        """Give the recording up and relay on; the writer cuts the file to its last event."""
        if not self.err:
            self.err = err
        self.on = False
        self._resize = None
        self._buf.clear()
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def wait_ms(self) -> int:
        """Poll timeout while events wait for the pipe (-1: none); gives up a stalled one."""
        if not self.on or not self._buf or not self._stall_at:
            return -1
        left = self._stall_at + self._stall_us - _now_us()
        if left <= 0:
            self.stop(errno.ETIMEDOUT)
            return -1
        return (left + 999) // 1000

    def finish(self, timeout_ms: int) -> int:
        """End the recording: flush its last events and wait, at most ``timeout_ms`` in all,
        for the file to be written. 0 when the file holds the whole session, else the errno
        of what cut it short; called again, the same."""
        if self._finished:
            return self.err
        self._finished = True
        deadline = time.monotonic_ns() + timeout_ms * 1_000_000
        if self.on:
            # A sequence cut short by the end shows as U+FFFD.
            if self.room() > 0:
                self._event("o", self._u8out, b"", final=True)
            if self.room() > 0:
                self._event("i", self._u8in, b"", final=True)
            while self.on and (self._buf or self._resize is not None):
                left = deadline - time.monotonic_ns()
                if left <= 0:
                    self.stop(errno.ETIMEDOUT)
                    break
                poller = select.poll()
                poller.register(self.fd, _POLLOUT)
                if poller.poll((left + 999_999) // 1_000_000):
                    self.room()
                    self.flush()
            self.on = False
            if self.fd >= 0:
                fd, self.fd = self.fd, -1
                os.close(fd)
        if self.status_fd < 0:
            return self.err
        fd, self.status_fd = self.status_fd, -1
        try:
            left = max(0, deadline - time.monotonic_ns())
            poller = select.poll()
            poller.register(fd, _POLLIN)
            report = os.read(fd, 4) if poller.poll((left + 999_999) // 1_000_000) else b""
        finally:
            os.close(fd)
        if len(report) == 4:
            werr = int.from_bytes(report, sys.byteorder, signed=True)
            if werr:  # the writer's own failure is the cause (the loop saw only EPIPE)
                self.err = werr
        elif not self.err:
            self.err = errno.ETIMEDOUT
        return self.err
