"""Detached sessions, end to end: a session holder and real `bottle attach` clients on outer
terminals, against the relay's copy mode (issue 20's measures).

Paths, all on outer ptys that the benchmark owns, as a user's terminals would host them:

- "copy": the native relay in copy mode (`bottle relay -- CMD`), the reference;
- "copy+3": the same, its program copying every block to three more terminals as well (tee):
  the watchers' terminals with no holder and no client, what they cost the machine alone;
- "attached": the program in a holder, one `bottle attach` (on a terminal it hands the
  terminal over: the holder reads the keys and writes the output itself);
- "attached+3": the same with three `bottle attach --read-only` watchers besides (each keeps
  its terminal: frames over the socket, its own process writes them);
- "framed": one client that keeps its terminal (`sessions.attach(direct=False)`: frames over
  the socket, the client writes the output), for comparison;
- "holder" and "holder+3": the holder alone, the benchmark its clients over the socket (one
  connection, or a writer and three watchers), read as it reads the outer pty in copy mode:
  what the holder costs with no client process and no terminal after it. With watchers on
  terminals, every watcher's terminal is a copy of the stream that some process writes and
  another reads: on a machine of few cores that work, not the holder, sets the pace, which
  "copy+3" measures (the references: ratios that are not targets).

Throughput: the throughput benchmark's producer (random bytes in blocks, sha256 checked on the
writer's terminal, CRC-32 and length on each watcher's, read by a process of its own as a
terminal is), taking turns block by block with copy mode. Relay CPU per GiB is the holder's
own CPU plus the writer's client's (what stands where the relay stood), each read while it
sleeps; each watcher's client (the process that writes the session to that watcher's
terminal) is given apart.
Echo: one-byte round trips to ``cat`` typed on the writer's terminal, in alternating blocks.
Idle: wake-ups of a holder with no client, and of a holder and an attached client, while the
program sleeps. Replay: output produced while nobody is attached, up to the holder's history,
is on the next terminal to attach byte for byte; beyond it the oldest is dropped and the
terminal says how much (the holder's notice), the rest byte for byte.

``python -m bottle.bench.detached [--quick] [--smoke] [--runs N] [--json FILE]``; `bottle
bench` runs it too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import tty
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bottle import _sessionwire as wire
from bottle import sessions
from bottle.bench._common import GIB, MIB, OUTER_SIZE, TAG_VAR, BenchError
from bottle.bench._procfs import context_switches, own_cpu_ns, settled_cpu_ns
from bottle.bench.latency import ECHO_CHILD, measure_echo_interleaved
from bottle.bench.relays import RELAYS, Relay, base_env
from bottle.bench.session import Session
from bottle.bench.throughput import Stream, stream_child
from bottle.bench.workload import FULL, QUICK, SMOKE, Payload, Payloads, Settings

IDLE_CHILD = ["/bin/sh", "-c", "stty raw -echo && printf R && exec sleep 3600"]
WATCHERS = 3
# The replay check's holder keeps this much output (small: the check is of bytes, not speed).
REPLAY_HISTORY = 64 * 1024
TARGETS = (
    # (metric, path, compared with copy mode: "min" or "max" ratio, limit)
    ("throughput_mib_s", "attached", "min", 0.9),
    ("throughput_cpu_s_per_gib", "attached", "max", 1.2),
    ("throughput_mib_s", "attached+3", "min", 0.9),
    ("throughput_cpu_s_per_gib", "attached+3", "max", 1.2),
    ("throughput_mib_s", "holder+3", "min", 0.9),
    ("throughput_cpu_s_per_gib", "holder+3", "max", 1.2),
    ("echo_p50_us", "attached", "max", 1.2),
)
# Not targets, ratios to show where the time of a writer and three watchers goes: copy mode
# feeding three more terminals (tee, no holder, no client) against copy mode alone, which is
# what those terminals cost the machine by themselves; and the writer and three watchers
# against that.
REFERENCES = (
    # (metric, path, compared with path)
    ("throughput_mib_s", "copy+3", "copy"),
    ("throughput_cpu_s_per_gib", "copy+3", "copy"),
    ("throughput_mib_s", "attached+3", "copy+3"),
    ("throughput_cpu_s_per_gib", "attached+3", "copy+3"),
)
# A client that keeps its terminal: frames over the socket (what `bottle attach` does when
# its keys and output are not one terminal).
FRAMED_CLIENT = (
    "import sys\n"
    "from bottle import sessions\n"
    "r = sessions.attach(sys.argv[1], direct=False, redraw=False)\n"
    "sys.exit(r.status or 0)\n"
)


@dataclass(frozen=True)
class AttachClient(Relay):
    """`bottle attach` (or a framed client) of a holder's session, on the outer terminal."""

    session: str = ""
    readonly: bool = False
    framed: bool = False

    def argv(self, child: Sequence[str]) -> list[str]:  # the holder runs the child
        if self.framed:
            return [sys.executable, "-c", FRAMED_CLIENT, self.session]
        options = ["--read-only"] if self.readonly else []
        return [sys.executable, "-m", "bottle", "attach", *options, self.session]


class Holder:
    """A session holder running ``child`` in the benchmark's private session directory."""

    def __init__(self, child: Sequence[str], runtime: str, *, history: int | None = None):
        env = base_env(RELAYS["native"])
        env["XDG_RUNTIME_DIR"] = runtime
        env[TAG_VAR] = uuid.uuid4().hex
        self.runtime = runtime
        with _runtime(runtime):
            self.session = sessions.start(
                list(child),
                name=f"bench-{uuid.uuid4().hex[:8]}",
                env=env,
                size=OUTER_SIZE,
                history=history or sessions.DEFAULT_HISTORY,
            )
        pid = self.session.pid
        if pid is None:
            raise BenchError("the holder wrote no state")
        self.pid = pid

    def client(self, name: str, *, readonly: bool = False, framed: bool = False) -> AttachClient:
        env = (*RELAYS["native"].env, ("XDG_RUNTIME_DIR", self.runtime))
        what = "framed client" if framed else "bottle attach" + (" --read-only" if readonly else "")
        return AttachClient(name, f"{what} of a holder", env, session=self.session.name,
                            readonly=readonly, framed=framed)  # fmt: skip

    def type(self, data: bytes) -> None:
        """Keys for the program from a connection that leaves at once (nobody stays)."""
        with _runtime(self.runtime):
            sock = sessions.connect(self.session, since=wire.SINCE_NOW, timeout=10)
        with contextlib.closing(sock):
            for frame in wire.keys(data):
                sock.sendall(frame)
            sock.sendall(wire.frame(wire.DETACH))
            while sock.recv(65536):
                pass

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.session.running():
                self.session.signal(signal.SIGKILL)
        self.session.wait(10)
        with contextlib.suppress(Exception), _runtime(self.runtime):
            self.session.remove()


@contextlib.contextmanager
def _runtime(path: str) -> Any:
    saved = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = path
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("XDG_RUNTIME_DIR", None)
        else:
            os.environ["XDG_RUNTIME_DIR"] = saved


def _end_client(s: Session) -> None:
    """A client that has not ended by itself detaches (SIGTERM); then its session closes."""
    if s.exit is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(s.pid, signal.SIGTERM)
        with contextlib.suppress(BenchError):
            s.wait_exit(10)
    s.close()


class _Counted:
    """A stream read in a thread of its own, counted and checked (sha256, or CRC-32 when not
    ``strong``): `expect` more bytes, `wait` until they came."""

    what = "reader"

    def __init__(self, strong: bool) -> None:
        self.strong = strong
        self.digest = hashlib.sha256()
        self.crc = 0
        self.got = 0
        self.want = 0
        self.error: str | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def expect(self, count: int) -> None:
        with self._cond:
            self.want += count

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.got < self.want and not self.error:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BenchError(
                        f"{self.what}: {self.got} of {self.want} bytes after {timeout} s"
                    )
                self._cond.wait(left)
        if self.error:
            raise BenchError(f"{self.what}: {self.error}")

    def _take(self, chunk: memoryview) -> None:
        if self.strong:
            self.digest.update(chunk)
        else:
            self.crc = zlib.crc32(chunk, self.crc)
        with self._cond:
            self.got += len(chunk)
            self._cond.notify_all()

    def _fail(self, message: str) -> None:
        with self._cond:
            self.error = self.error or message
            self._cond.notify_all()

    def _loop(self) -> None:
        raise NotImplementedError


# A terminal's reader, in a process of its own as the terminal that shows a watcher's session
# is (a thread of the benchmark would share its interpreter lock with the writer's reader). It
# reads as the writer's reader does (64 KiB reads that wait in read()), keeps a CRC-32 and a
# count, and reports both on a pipe at the end of every block and when the terminal closes.
TERMINAL_READER = """
import os, struct, sys, zlib
fd, out, block = (int(a) for a in sys.argv[1:4])
buf = bytearray(1 << 16)
view = memoryview(buf)
got = crc = 0
mark = block
while True:
    try:
        n = os.readv(fd, [buf])
    except OSError:
        n = 0
    if n == 0:
        os.write(out, struct.pack("=QIB", got, crc, 1))
        break
    crc = zlib.crc32(view[:n], crc)
    got += n
    while got >= mark:
        os.write(out, struct.pack("=QIB", got, crc, 0))
        mark += block
"""
_REPORT = struct.Struct("=QIB")  # bytes read, their CRC-32, whether the terminal has closed


class _TerminalReader:
    """A process that reads the terminal whose master is ``fd`` (see TERMINAL_READER):
    `expect` more bytes, `wait` until they came."""

    def __init__(self, fd: int, block: int, what: str) -> None:
        self.what = what
        self.got = self.crc = self.want = 0
        self.closed = False
        r, w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", TERMINAL_READER, str(fd), str(w), str(block)],
                pass_fds=(fd, w), stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except BaseException:
            os.close(r)
            raise
        finally:
            os.close(w)
        self.pipe = r

    def expect(self, count: int) -> None:
        self.want += count

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.got < self.want:
            if self.closed:
                raise BenchError(f"{self.what}: the terminal closed after {self.got} of "
                                 f"{self.want} bytes")  # fmt: skip
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.pipe], [], [], left)[0]:
                raise BenchError(f"{self.what}: {self.got} of {self.want} bytes after {timeout} s")
            # Reports are written whole (far below PIPE_BUF) and read whole.
            report = os.read(self.pipe, _REPORT.size)
            if not report:
                raise BenchError(f"{self.what}: the reader died (status {self.proc.wait()})")
            self.got, self.crc, closed = _REPORT.unpack(report)
            self.closed = bool(closed)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self.pipe)


class _Terminals:
    """The terminals beside the writer's (watchers', or tee's), each with its reader: a
    transfer waits until every one has had the block too."""

    def __init__(self, block: int) -> None:
        self.block = block
        self.readers: list[_TerminalReader] = []

    def add(self, fd: int, what: str) -> None:
        self.readers.append(_TerminalReader(fd, self.block, what))

    def transfer(self, step: Callable[[], None]) -> None:
        """Run ``step`` (the writer's transfer of one block), then wait for the others."""
        for r in self.readers:
            r.expect(self.block)
        step()
        for r in self.readers:
            r.wait(60)

    def check(self, name: str, crc: int, size: int) -> None:
        for r in self.readers:
            if r.crc != crc or r.got != size:
                raise BenchError(f"{name}: {r.what}'s stream differs from the payload")

    def close(self) -> None:
        for r in self.readers:
            r.close()


class AttachedStream:
    """The producer in a holder; a writer attached on an outer terminal (a `Stream`, which
    checks the payload), and ``watchers`` read-only ones on terminals of their own."""

    def __init__(self, name: str, payload: Payload, blocks: int, watchers: int, runtime: str,
                 framed: bool = False) -> None:  # fmt: skip
        self.name = name
        self.payload = payload
        self.blocks = blocks
        self.holder = Holder(stream_child(payload, blocks), runtime)
        self.writer = Stream(self.holder.client(name, framed=framed), payload, blocks)
        self.watchers: list[Session] = []
        self.terminals = _Terminals(payload.size // blocks)
        for i in range(watchers):
            relay = self.holder.client(f"{name}-watcher{i}", readonly=True)
            self.watchers.append(Session(relay, []))
        self.cpu0 = (0, 0)

    def _cpu(self) -> tuple[int, int]:
        """(the holder's and the writer's CPU, the watchers' clients')."""
        relay = settled_cpu_ns(self.holder.pid) + self.writer.session.settled_cpu_ns()
        return relay, sum(w.settled_cpu_ns() for w in self.watchers)

    def ready(self) -> None:
        for i, w in enumerate(self.watchers):
            if w.expect(b"R"):
                raise BenchError(f"{self.name}: a watcher got more than the ready mark")
            self.terminals.add(w.master, f"watcher {i}")
        self.writer.ready()
        self.cpu0 = self._cpu()

    def transfer(self) -> None:
        self.terminals.transfer(self.writer.transfer)

    def finish(self, crc: int) -> dict[str, float]:
        relay, watching = (b - a for a, b in zip(self.cpu0, self._cpu(), strict=True))
        self.terminals.check(self.name, crc, self.payload.size)
        result = self.writer.finish()  # the program ends: every client with it
        size = self.payload.size
        out = {"throughput_mib_s": result.mib_s,
               "throughput_cpu_s_per_gib": relay / size * GIB / 1e9}  # fmt: skip
        if self.watchers:
            out["watcher_cpu_s_per_gib"] = watching / len(self.watchers) / size * GIB / 1e9
        return out

    def close(self) -> None:
        self.terminals.close()
        for w in self.watchers:
            _end_client(w)
        self.writer.abort()
        self.holder.close()


class TeedStream:
    """Copy mode whose program also copies every block to ``terminals`` more terminals (raw
    outer ptys, each read by a process of its own, as the watchers' are): the watchers'
    terminals with no holder and no client, what they cost the machine by themselves."""

    def __init__(self, name: str, payload: Payload, blocks: int, terminals: int) -> None:
        self.name = name
        self.payload = payload
        self.ptys: list[tuple[int, int]] = []
        self.terminals = _Terminals(payload.size // blocks)
        self.stream: Stream | None = None
        try:
            for _ in range(terminals):
                master, slave = os.openpty()
                self.ptys.append((master, slave))
                tty.setraw(slave)
            names = [os.ttyname(slave) for _, slave in self.ptys]
            self.stream = Stream(RELAYS["native"], payload, blocks, copies=names)
        except BaseException:
            self.close()
            raise

    def ready(self) -> None:
        assert self.stream is not None
        for i, (master, _) in enumerate(self.ptys):
            self.terminals.add(master, f"terminal {i}")
        self.stream.ready()

    def transfer(self) -> None:
        assert self.stream is not None
        self.terminals.transfer(self.stream.transfer)

    def finish(self, crc: int) -> dict[str, float]:
        assert self.stream is not None
        self.terminals.check(self.name, crc, self.payload.size)
        r = self.stream.finish()
        assert r.cpu_s_per_gib is not None  # a relay: its CPU was read
        return {"throughput_mib_s": r.mib_s, "throughput_cpu_s_per_gib": r.cpu_s_per_gib}

    def close(self) -> None:
        if self.stream is not None:
            self.stream.abort()
        self.terminals.close()
        for master, slave in self.ptys:
            os.close(master)
            os.close(slave)
        self.ptys = []


class _Reader(_Counted):
    """One connection to a holder: the payload of its OUTPUT frames."""

    what = "holder client"

    def __init__(self, sock: socket.socket, strong: bool) -> None:
        super().__init__(strong)
        self.sock = sock
        self.kind = -1
        self.left = 0  # payload bytes of the current frame still to come
        self.head = bytearray()
        self.control = bytearray()

    def _loop(self) -> None:
        buf = bytearray(1 << 18)
        view = memoryview(buf)
        while True:
            try:
                n = self.sock.recv_into(buf)
            except OSError as exc:
                self._fail(f"recv: {exc}")
                return
            if n == 0:
                return
            self._feed(view[:n])

    def _feed(self, data: memoryview) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self.left == 0 and self.kind < 0:
                need = wire.HEADER_SIZE - len(self.head)
                self.head += data[pos : pos + need]
                pos += min(need, n - pos)
                if len(self.head) < wire.HEADER_SIZE:
                    return
                h = self.head
                self.kind, self.left = h[0], (h[1] << 16) | (h[2] << 8) | h[3]
                self.head = bytearray()
                self.control = bytearray()
                if self.left == 0:
                    self._frame_done()
                continue
            take = min(self.left, n - pos)
            chunk = data[pos : pos + take]
            if self.kind == wire.OUTPUT:
                self._take(chunk)
            else:
                self.control += chunk
            pos += take
            self.left -= take
            if self.left == 0:
                self._frame_done()

    def _frame_done(self) -> None:
        if self.kind == wire.DROPPED:
            self._fail(f"the holder dropped {wire.parse_dropped(bytes(self.control))} bytes")
        elif self.kind == wire.ERROR:
            self._fail(f"the holder refused: {self.control.decode(errors='replace')}")
        self.kind = -1


class SocketStream:
    """The producer in a holder whose clients are this benchmark's own connections (a writer
    and ``watchers``), read as it reads the outer pty in copy mode: what the holder itself
    costs, with no client process and no terminal after it."""

    def __init__(self, name: str, payload: Payload, blocks: int, watchers: int, runtime: str):
        self.name = name
        self.payload = payload
        self.blocks = blocks
        self.holder = Holder(stream_child(payload, blocks), runtime)
        with _runtime(runtime):
            connect = functools.partial(sessions.connect, self.holder.session, size=OUTER_SIZE,
                                        timeout=None)  # fmt: skip
            self.socks = [connect()] + [connect(readonly=True) for _ in range(watchers)]
        self.readers = [_Reader(s, i == 0) for i, s in enumerate(self.socks)]
        self.seconds = 0.0
        self.cpu0 = 0

    def ready(self) -> None:
        for r in self.readers:
            r.start()
            r.expect(1)  # the child's "R"
        for r in self.readers:
            r.wait(30)
            r.digest = hashlib.sha256()  # the payload's digest starts after the "R"
            r.crc = 0
        self.cpu0 = settled_cpu_ns(self.holder.pid)

    def _type(self, data: bytes) -> None:
        for frame in wire.keys(data):
            self.socks[0].sendall(frame)

    def transfer(self) -> None:
        block = self.payload.size // self.blocks
        for r in self.readers:
            r.expect(block)
        t0 = time.perf_counter_ns()
        self._type(b"g")
        for r in self.readers:
            r.wait(60)
        self.seconds += (time.perf_counter_ns() - t0) / 1e9

    def finish(self, crc: int) -> dict[str, float]:
        cpu = (settled_cpu_ns(self.holder.pid) - self.cpu0) / 1e9
        writer, *watchers = self.readers
        if writer.digest.hexdigest() != self.payload.sha256:
            raise BenchError(f"{self.name}: the writer's stream differs from the payload")
        for w in watchers:
            if w.crc != crc or w.got != writer.got:
                raise BenchError(f"{self.name}: a watcher's stream differs from the payload")
        self._type(b"q")
        size = self.payload.size
        return {
            "throughput_mib_s": size / MIB / self.seconds,
            "throughput_cpu_s_per_gib": cpu * GIB / size,
        }

    def close(self) -> None:
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.close()
        self.holder.close()


def _crc(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            crc = zlib.crc32(chunk, crc)
    return crc


def measure_throughput(settings: Settings, payloads: Payloads, runtime: str) -> dict[str, Any]:
    """Copy mode, alone and feeding three more terminals (tee); one attached client, a writer
    and three watchers, a framed client; the holder alone with one connection and with four."""
    payload = payloads.get(settings.stream_bytes)
    blocks = settings.stream_blocks
    copy = Stream(RELAYS["native"], payload, blocks)
    paths: list[AttachedStream | SocketStream | TeedStream] = []
    try:
        paths.append(TeedStream("copy+3", payload, blocks, WATCHERS))
        paths.append(AttachedStream("attached", payload, blocks, 0, runtime))
        paths.append(AttachedStream("attached+3", payload, blocks, WATCHERS, runtime))
        paths.append(AttachedStream("framed", payload, blocks, 0, runtime, framed=True))
        paths.append(SocketStream("holder", payload, blocks, 0, runtime))
        paths.append(SocketStream("holder+3", payload, blocks, WATCHERS, runtime))
        copy.ready()
        for p in paths:
            p.ready()
        order: list[Callable[[], None]] = [copy.transfer, *(p.transfer for p in paths)]
        for b in range(blocks):
            for step in order if b % 2 == 0 else order[::-1]:
                step()
        crc = _crc(payload.path)
        out = {p.name: p.finish(crc) for p in paths}
        r = copy.finish()
        assert r.cpu_s_per_gib is not None  # a relay: its CPU was read
        out["copy"] = {"throughput_mib_s": r.mib_s, "throughput_cpu_s_per_gib": r.cpu_s_per_gib}
        return out
    finally:
        copy.abort()
        for p in paths:
            p.close()


def measure_echo(trips: int, runtime: str) -> dict[str, Any]:
    """One-byte round trips to cat: copy mode, attached, framed, in alternating blocks."""
    holders = {name: Holder(ECHO_CHILD, runtime) for name in ("attached", "framed")}
    try:
        relays = [RELAYS["native"], holders["attached"].client("attached"),
                  holders["framed"].client("framed", framed=True)]  # fmt: skip
        cpu0 = {n: settled_cpu_ns(h.pid) for n, h in holders.items()}
        got = measure_echo_interleaved(relays, trips)
        out: dict[str, Any] = {}
        for name, r in got.items():
            row = {"echo_p50_us": r.p50_us, "echo_p99_us": r.p99_us}
            if name in holders:
                holder_us = (settled_cpu_ns(holders[name].pid) - cpu0[name]) / 1000 / (trips + 100)
                row["echo_cpu_us_per_trip"] = (r.cpu_us_per_trip or 0.0) + holder_us
            else:
                row["echo_cpu_us_per_trip"] = r.cpu_us_per_trip or 0.0
            out["copy" if name == "native" else name] = row
        return out
    finally:
        for h in holders.values():
            h.close()


def measure_idle(seconds: float, runtime: str) -> dict[str, float]:
    """Wake-ups of a holder with no client, and of a holder and an attached client, while
    the program sleeps."""
    alone = Holder(IDLE_CHILD, runtime)
    watched = Holder(IDLE_CHILD, runtime)
    client: Session | None = None
    try:
        client = Session(watched.client("idle"), [])
        client.expect(b"R")
        pids = {"alone": [alone.pid], "attached": [watched.pid, client.pid]}
        for pid in (alone.pid, watched.pid, client.pid):
            settled_cpu_ns(pid)
        time.sleep(0.3)
        t0 = time.monotonic()
        before = {k: sum(context_switches(p) for p in v) for k, v in pids.items()}
        cpu0 = own_cpu_ns(alone.pid)
        time.sleep(seconds)
        after = {k: sum(context_switches(p) for p in v) for k, v in pids.items()}
        cpu1 = own_cpu_ns(alone.pid)
        t = time.monotonic() - t0
        return {
            "idle_wakeups_s": (after["alone"] - before["alone"]) / t,
            "idle_cpu_ms_s": (cpu1 - cpu0) / 1e6 / t,
            "idle_attached_wakeups_s": (after["attached"] - before["attached"]) / t,
        }
    finally:
        if client is not None:
            _end_client(client)
        alone.close()
        watched.close()


def _attached_output(holder: Holder, size: int, timeout: float = 30.0) -> bytes:
    """Attach on a fresh outer terminal, read ``size`` bytes of what it shows, detach."""
    s = Session(holder.client("replay"), [])
    try:
        got = bytearray()
        buf = bytearray(65536)
        while len(got) < size:
            n = s.read_some(buf, timeout)
            if n == 0:
                break
            got += buf[:n]
        return bytes(got[:size])
    finally:
        _end_client(s)


def check_replay(payloads: Payloads, runtime: str, tmp: str) -> dict[str, Any]:
    """Output made while nobody was attached: within the history byte-exact on attach; past
    it the oldest dropped, the terminal told how much, the rest byte-exact."""
    done = os.path.join(tmp, "done")
    first, second = payloads.get(REPLAY_HISTORY // 2), payloads.get(2 * REPLAY_HISTORY)
    # A key prints the first payload, the next one the second; a file says each is out, and
    # file 0 that the terminal no longer echoes (a key typed before would be echoed: one byte
    # more in the output than the stream it is compared with).
    child = ["/bin/sh", "-c",
             'stty raw -echo && printf R && : > "$3.0" && n=0 && while head -c1 >/dev/null; do '
             'n=$((n + 1)); if [ "$n" = 1 ]; then cat "$1"; else cat "$2"; fi; : > "$3.$n"; '
             "done", "replay", first.path, second.path, done]  # fmt: skip
    holder = Holder(child, runtime, history=REPLAY_HISTORY)

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 30
        while not os.path.exists(f"{done}.{n}"):
            if time.monotonic() > deadline:
                raise BenchError("replay: the program did not print")
            time.sleep(0.01)

    def produce(n: int, payload: Payload) -> bytes:
        holder.type(b"g")
        wait_for(n)
        with open(payload.path, "rb") as f:
            return f.read()

    try:
        wait_for(0)
        stream = b"R" + produce(1, first)
        within = _attached_output(holder, len(stream)) == stream
        stream += produce(2, second)
        dropped = len(stream) - REPLAY_HISTORY
        notice = wire.DROPPED_NOTICE.format(dropped).encode()
        shown = _attached_output(holder, len(notice) + REPLAY_HISTORY)
        # The holder may not have read the last of it when the client came: then less was
        # dropped, and the rest came after the replay.
        told = re.match(rb"\r\n\[bottle: (\d+) bytes", shown)
        count = int(told.group(1)) if told else -1
        head = wire.DROPPED_NOTICE.format(count).encode()
        beyond = bool(told) and dropped - 4096 <= count <= dropped and shown.startswith(head)
        exact = beyond and shown[len(head) :] == stream[count:][: len(shown) - len(head)]
        return {
            "replay_within_history_exact": within,
            "replay_beyond_oldest_dropped_and_told": beyond,
            "replay_beyond_rest_exact": exact,
            "replay_history": REPLAY_HISTORY,
            "replay_dropped": count,
        }
    finally:
        holder.close()


def run(settings: Settings, log: Callable[[str], None]) -> dict[str, Any]:
    """Every measurement, ``settings.runs`` times; per-run results, medians, target verdicts."""
    runtime = tempfile.mkdtemp(prefix="bb-", dir="/tmp")
    os.chmod(runtime, 0o700)
    runs: list[dict[str, dict[str, float]]] = []
    try:
        with Payloads() as payloads:
            for i in range(settings.runs):
                log(f"run {i + 1} of {settings.runs}: throughput")
                merged: dict[str, dict[str, float]] = measure_throughput(
                    settings, payloads, runtime
                )
                log(f"run {i + 1} of {settings.runs}: echo")
                for name, metrics in measure_echo(settings.echo_trips, runtime).items():
                    merged[name].update(metrics)
                log(f"run {i + 1} of {settings.runs}: idle")
                merged["attached"].update(measure_idle(settings.idle_seconds, runtime))
                runs.append(merged)
            log("replay")
            replay = check_replay(payloads, runtime, runtime)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    medians: dict[str, dict[str, float]] = {}
    for path in runs[0]:
        medians[path] = {
            key: statistics.median(r[path][key] for r in runs) for key in runs[0][path]
        }
    verdicts: list[dict[str, Any]] = []
    for metric, path, kind, limit in TARGETS:
        ratios = [r[path][metric] / r["copy"][metric] for r in runs]
        ratio = statistics.median(ratios)
        met = ratio >= limit if kind == "min" else ratio <= limit
        verdicts.append({
            "target": f"{path} {metric} {'>=' if kind == 'min' else '<='} {limit}x copy mode",
            "ratio": ratio, "per_run": ratios, "met": met,
        })  # fmt: skip
    for key, label in (("idle_wakeups_s", "a holder with no client"),
                       ("idle_attached_wakeups_s", "a holder and an attached client")):  # fmt: skip
        wake = medians["attached"][key]
        verdicts.append({"target": f"idle, {label}: 0 wake-ups/s", "ratio": wake,
                         "per_run": [], "met": wake == 0})  # fmt: skip
    for key, label in (
        ("replay_within_history_exact", "output made while detached, up to the history, "
         "byte-exact on attach"),
        ("replay_beyond_oldest_dropped_and_told", "beyond it, the oldest dropped and the "
         "terminal told how much"),
        ("replay_beyond_rest_exact", "and the rest byte-exact"),
    ):  # fmt: skip
        verdicts.append({"target": label, "ratio": None, "per_run": [], "met": replay[key]})
    references: list[dict[str, Any]] = []
    for metric, path, base in REFERENCES:
        ratios = [r[path][metric] / r[base][metric] for r in runs]
        references.append({"reference": f"{path} {metric} / {base}",
                           "ratio": statistics.median(ratios), "per_run": ratios})  # fmt: skip
    return {"settings": settings.__dict__, "runs": runs, "medians": medians,
            "replay": replay, "targets": verdicts, "references": references}  # fmt: skip


def format_report(report: dict[str, Any]) -> str:
    med = report["medians"]
    rows = [
        ("throughput, MiB/s", "throughput_mib_s", "{:.0f}"),
        ("relay CPU (holder + writer), s/GiB", "throughput_cpu_s_per_gib", "{:.2f}"),
        ("CPU of each watcher's client, s/GiB", "watcher_cpu_s_per_gib", "{:.2f}"),
        ("echo p50, us", "echo_p50_us", "{:.1f}"),
        ("echo p99, us", "echo_p99_us", "{:.1f}"),
        ("CPU per echo, us", "echo_cpu_us_per_trip", "{:.1f}"),
        ("idle wake-ups/s (holder alone)", "idle_wakeups_s", "{:.1f}"),
        ("idle wake-ups/s (holder + client)", "idle_attached_wakeups_s", "{:.1f}"),
    ]
    paths = ["copy", "copy+3", "attached", "attached+3", "framed", "holder", "holder+3"]
    lines = ["| metric | copy mode | copy mode, tee to 3 more terminals | attached "
             "| attached, 1 writer + 3 watchers | framed | holder alone "
             "| holder alone, 4 connections |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for label, key, fmt in rows:
        cells = [fmt.format(med[p][key]) if key in med.get(p, {}) else "\u2013" for p in paths]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| target (issue 20) | ratio (median) | per run | verdict |",
              "| --- | ---: | --- | --- |"]  # fmt: skip
    for t in report["targets"]:
        per = ", ".join(f"{x:.2f}" for x in t["per_run"])
        value = "" if t["ratio"] is None else f"{t['ratio']:.2f}"
        lines.append(f"| {t['target']} | {value} | {per} | "
                     f"{'met' if t['met'] else 'missed'} |")  # fmt: skip
    lines += ["", "| reference (not a target) | ratio (median) | per run |",
              "| --- | ---: | --- |"]  # fmt: skip
    for ref in report["references"]:
        per = ", ".join(f"{x:.2f}" for x in ref["per_run"])
        lines.append(f"| {ref['reference']} | {ref['ratio']:.2f} | {per} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bottle.bench.detached",
        description="Measure detached sessions (holder and attach clients) against copy mode.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a check, not a measure)")
    parser.add_argument("--runs", type=int, help="repeat N times (median)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    settings = SMOKE if args.smoke else QUICK if args.quick else FULL
    if args.runs is not None:
        settings = Settings(**{**settings.__dict__, "runs": args.runs})
    if sys.platform != "linux":
        print("bottle bench: needs Linux (/proc, pidfd)", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(f"bottle bench detached: {msg}", file=sys.stderr, flush=True)

    report = run(settings, log)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
