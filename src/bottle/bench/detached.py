"""Detached sessions, end to end: a session holder and real `bottle attach` clients on outer
terminals, against the relay's copy mode (issue 20's measures).

Paths, all on outer ptys that the benchmark owns, as a user's terminals would host them:

- "copy": the native relay in copy mode (`bottle relay -- CMD`), the reference;
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
  the benchmark reads: on a machine of few cores that work, not the holder, sets the pace.

Throughput: the throughput benchmark's producer (random bytes in blocks, sha256 checked on the
writer's terminal, CRC-32 and length on each watcher's), taking turns block by block with copy
mode. Relay CPU per GiB is the holder's own CPU plus the writer's client's (what stands where
the relay stood), each read while it sleeps; each watcher's client (the process that writes
the session to that watcher's terminal) is given apart.
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
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
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


class _Watcher(_Counted):
    """A watcher's terminal (CRC-32)."""

    what = "watcher"

    def __init__(self, session: Session) -> None:
        super().__init__(strong=False)
        self.session = session
        self._stop = False

    def _loop(self) -> None:
        buf = bytearray(1 << 16)
        view = memoryview(buf)
        while not self._stop:
            try:
                n = self.session.read_some(buf, 3600)
            except (BenchError, OSError) as exc:
                if not self._stop:
                    self._fail(str(exc))
                return
            if n == 0:
                return
            self._take(view[:n])

    def stop(self) -> None:
        self._stop = True


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
        self.watchers: list[_Watcher] = []
        for i in range(watchers):
            relay = self.holder.client(f"{name}-watcher{i}", readonly=True)
            self.watchers.append(_Watcher(Session(relay, [])))
        self.cpu0 = (0, 0)

    def _cpu(self) -> tuple[int, int]:
        """(the holder's and the writer's CPU, the watchers' clients')."""
        relay = settled_cpu_ns(self.holder.pid) + self.writer.session.settled_cpu_ns()
        return relay, sum(w.session.settled_cpu_ns() for w in self.watchers)

    def ready(self) -> None:
        for w in self.watchers:
            if w.session.expect(b"R"):
                raise BenchError(f"{self.name}: a watcher got more than the ready mark")
            w.start()
        self.writer.ready()
        self.cpu0 = self._cpu()

    def transfer(self) -> None:
        block = self.payload.size // self.blocks
        for w in self.watchers:
            w.expect(block)
        self.writer.transfer()
        for w in self.watchers:
            w.wait(60)

    def finish(self, crc: int) -> dict[str, float]:
        relay, watching = (b - a for a, b in zip(self.cpu0, self._cpu(), strict=True))
        for w in self.watchers:
            if w.crc != crc or w.got != self.payload.size:
                raise BenchError(f"{self.name}: a watcher's stream differs from the payload")
        result = self.writer.finish()  # the program ends: every client with it
        size = self.payload.size
        out = {"throughput_mib_s": result.mib_s,
               "throughput_cpu_s_per_gib": relay / size * GIB / 1e9}  # fmt: skip
        if self.watchers:
            out["watcher_cpu_s_per_gib"] = watching / len(self.watchers) / size * GIB / 1e9
        return out

    def close(self) -> None:
        for w in self.watchers:
            w.stop()
            _end_client(w.session)
        self.writer.abort()
        self.holder.close()


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
    """Copy mode; one attached client, a writer and three watchers, a framed client; the
    holder alone with one connection and with four."""
    payload = payloads.get(settings.stream_bytes)
    blocks = settings.stream_blocks
    copy = Stream(RELAYS["native"], payload, blocks)
    paths: list[AttachedStream | SocketStream] = []
    try:
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
    return {"settings": settings.__dict__, "runs": runs, "medians": medians,
            "replay": replay, "targets": verdicts}  # fmt: skip


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
    paths = ["copy", "attached", "attached+3", "framed", "holder", "holder+3"]
    lines = ["| metric | copy mode | attached | attached, 1 writer + 3 watchers | framed "
             "| holder alone | holder alone, 4 connections |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
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
