"""Detached sessions: the session holder's copy loop against the relay's copy mode.

The same producer as the throughput benchmark (random bytes from a raw-mode child, in blocks)
runs three ways at once, taking turns block by block: through the native relay in copy mode on
an outer pty (the reference: today's recorded or `--output copy` session), through a session
holder with one client, and through a holder with one writer and three read-only watchers.
Here the benchmark itself is the holder's client, reading the socket as it reads the outer pty
in copy mode, so "relay CPU" compares the relay process with the holder process (each one's
own CPU, read while it sleeps): what an attached terminal costs on top, the attach client's own
hop (socket to terminal), is the next round's client and is not counted. Every client's stream
is checked: the writer's by sha256, as in copy mode, the watchers' by CRC-32 and length, and a
DROPPED frame is an error.

Echo: one-byte round trips to ``cat`` through each, in alternating blocks (a KEYS frame in, an
OUTPUT frame back). Idle: the holder's context switches while its child sleeps and no client is
attached.

``python -m bottle.bench.detached [--quick] [--runs N] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import select
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
from typing import Any

from bottle import _sessionwire as wire
from bottle import sessions
from bottle.bench._common import GIB, MIB, OUTER_SIZE, TAG_VAR, BenchError
from bottle.bench._procfs import context_switches, own_cpu_ns, settled_cpu_ns
from bottle.bench.latency import ECHO_CHILD, percentile
from bottle.bench.relays import RELAYS, base_env
from bottle.bench.session import Session
from bottle.bench.throughput import Stream, stream_child
from bottle.bench.workload import FULL, QUICK, SMOKE, Payload, Payloads, Settings

IDLE_CHILD = ["/bin/sh", "-c", "stty raw -echo && printf R && exec sleep 3600"]
WATCHERS = 3
TARGETS = (
    # (metric, path, compared with copy mode: "max" ratio or "min" ratio)
    ("throughput_mib_s", "holder", "min", 0.9),
    ("throughput_cpu_s_per_gib", "holder", "max", 1.2),
    ("throughput_mib_s", "holder+3", "min", 0.9),
    ("throughput_cpu_s_per_gib", "holder+3", "max", 1.2),
    ("echo_p50_us", "holder", "max", 1.2),
)


class _Reader:
    """One client connection, read in a thread of its own: OUTPUT frames into a digest."""

    def __init__(self, sock: socket.socket, strong: bool) -> None:
        self.sock = sock
        self.strong = strong
        self.digest = hashlib.sha256()
        self.crc = 0
        self.got = 0
        self.want = 0
        self.kind = -1
        self.left = 0  # payload bytes of the current frame still to come
        self.head = bytearray()
        self.control = bytearray()
        self.error: str | None = None
        self.done = threading.Event()
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def expect(self, count: int) -> None:
        """Wait (in `wait`) until ``count`` more output bytes have come."""
        with self._cond:
            self.want += count
            self.done.clear()
            if self.got >= self.want:
                self.done.set()
            self._cond.notify()

    def wait(self, timeout: float) -> None:
        if not self.done.wait(timeout):
            raise BenchError(f"holder client: {self.got} of {self.want} bytes after {timeout} s")
        if self.error:
            raise BenchError(f"holder client: {self.error}")

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
                self.done.set()
                return
            self._feed(view[:n])

    def _fail(self, message: str) -> None:
        self.error = self.error or message
        self.done.set()

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
                if self.strong:
                    self.digest.update(chunk)
                else:
                    self.crc = zlib.crc32(chunk, self.crc)
                with self._cond:
                    self.got += take
                    if self.got >= self.want:
                        self.done.set()
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


class Holder:
    """A session holder running ``child``, with a writer and ``watchers`` read-only clients."""

    def __init__(self, child: Sequence[str], watchers: int, runtime: str) -> None:
        env = base_env(RELAYS["native"])
        env["XDG_RUNTIME_DIR"] = runtime
        env[TAG_VAR] = uuid.uuid4().hex
        saved = os.environ.get("XDG_RUNTIME_DIR")
        os.environ["XDG_RUNTIME_DIR"] = runtime
        try:
            self.session = sessions.start(
                list(child), name=f"bench-{uuid.uuid4().hex[:8]}", env=env, size=OUTER_SIZE
            )
            self.socks = [sessions.connect(self.session, size=OUTER_SIZE, timeout=None)]
            for _ in range(watchers):
                self.socks.append(
                    sessions.connect(self.session, size=OUTER_SIZE, readonly=True, timeout=None)
                )
        finally:
            if saved is None:
                os.environ.pop("XDG_RUNTIME_DIR", None)
            else:
                os.environ["XDG_RUNTIME_DIR"] = saved
        pid = self.session.pid
        if pid is None:
            raise BenchError("the holder wrote no state")
        self.pid = pid

    def settled_cpu_ns(self) -> int:
        return settled_cpu_ns(self.pid)

    def type(self, data: bytes) -> None:
        for frame in wire.keys(data):
            self.socks[0].sendall(frame)

    def close(self) -> None:
        for sock in self.socks:
            with contextlib.suppress(OSError):
                sock.close()
        with contextlib.suppress(Exception):
            if self.session.running():
                self.session.signal(signal.SIGKILL)
        self.session.wait(10)
        with contextlib.suppress(Exception):
            self.session.remove()


class HolderStream:
    """The throughput benchmark's producer through a holder: ready(), transfer(), finish()."""

    def __init__(self, name: str, payload: Payload, blocks: int, watchers: int, runtime: str):
        self.name = name
        self.payload = payload
        self.blocks = blocks
        self.holder = Holder(stream_child(payload, blocks), watchers, runtime)
        self.readers = [_Reader(s, i == 0) for i, s in enumerate(self.holder.socks)]
        self.seconds = 0.0
        self.cpu0 = 0
        self.crc = 0

    def ready(self) -> None:
        for r in self.readers:
            r.start()
            r.expect(1)  # the child's "R"
        for r in self.readers:
            r.wait(30)
            r.digest = hashlib.sha256()  # the payload's digest starts after the "R"
            r.crc = 0
        self.cpu0 = self.holder.settled_cpu_ns()

    def transfer(self) -> None:
        block = self.payload.size // self.blocks
        for r in self.readers:
            r.expect(block)
        t0 = time.perf_counter_ns()
        self.holder.type(b"g")
        for r in self.readers:
            r.wait(60)
        self.seconds += (time.perf_counter_ns() - t0) / 1e9

    def finish(self, crc: int) -> dict[str, Any]:
        cpu = (self.holder.settled_cpu_ns() - self.cpu0) / 1e9
        writer, *watchers = self.readers
        if writer.digest.hexdigest() != self.payload.sha256:
            raise BenchError(f"{self.name}: the writer's stream differs from the payload")
        for w in watchers:
            if w.crc != crc or w.got != writer.got:
                raise BenchError(f"{self.name}: a watcher's stream differs from the payload")
        self.holder.type(b"q")
        size = self.payload.size
        return {
            "throughput_mib_s": size / MIB / self.seconds,
            "throughput_cpu_s_per_gib": cpu * GIB / size,
        }

    def close(self) -> None:
        self.holder.close()


def _crc(path: str) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(MIB):
            crc = zlib.crc32(chunk, crc)
    return crc


def measure_throughput(settings: Settings, payloads: Payloads, runtime: str) -> dict[str, Any]:
    """Copy mode, a holder with one client, a holder with a writer and three watchers."""
    payload = payloads.get(settings.stream_bytes)
    blocks = settings.stream_blocks
    copy = Stream(RELAYS["native"], payload, blocks)
    holders: list[HolderStream] = []
    try:
        holders.append(HolderStream("holder", payload, blocks, 0, runtime))
        holders.append(HolderStream("holder+3", payload, blocks, WATCHERS, runtime))
        copy.ready()
        for h in holders:
            h.ready()
        order: list[Callable[[], None]] = [copy.transfer, *(h.transfer for h in holders)]
        for b in range(blocks):
            for step in order if b % 2 == 0 else order[::-1]:
                step()
        crc = _crc(payload.path)
        out = {h.name: h.finish(crc) for h in holders}
        r = copy.finish()
        out["copy"] = {
            "throughput_mib_s": r.mib_s,
            "throughput_cpu_s_per_gib": r.cpu_s_per_gib,
        }
        return out
    finally:
        copy.abort()
        for h in holders:
            h.close()


def measure_echo(trips: int, runtime: str, warmup: int = 100, block: int = 100) -> dict[str, Any]:
    """One-byte round trips to cat, copy mode and through a holder, in alternating blocks."""
    copy = Session(RELAYS["native"], ECHO_CHILD)
    holder = Holder(ECHO_CHILD, 0, runtime)
    sock = holder.socks[0]
    try:
        if copy.expect(b"R"):
            raise BenchError("copy: unexpected output after the ready mark")
        pending = bytearray()
        decoder = wire.Decoder()

        def holder_read(timeout: float) -> bytes:
            while not pending:
                if not select.select([sock], [], [], timeout)[0]:
                    raise BenchError("holder: no echo")
                data = sock.recv(65536)
                if not data:
                    raise BenchError("holder: closed")
                for kind, payload in decoder.feed(data):
                    if kind == wire.OUTPUT:
                        pending.extend(payload)
            out = bytes(pending)
            pending.clear()
            return out

        first = b""
        while b"R" not in first:
            first += holder_read(30)
        clock = time.perf_counter_ns
        samples: dict[str, list[float]] = {"copy": [], "holder": []}
        buf = bytearray(64)

        def copy_block(count: int, keep: bool) -> None:
            for i in range(count):
                byte = bytes((97 + i % 26,))
                t0 = clock()
                os.write(copy.master, byte)
                n = copy.read_some(buf, 5.0)
                t1 = clock()
                if buf[:n] != byte:
                    raise BenchError(f"copy: echo of {byte!r} came back as {bytes(buf[:n])!r}")
                if keep:
                    samples["copy"].append((t1 - t0) / 1000)

        def holder_block(count: int, keep: bool) -> None:
            for i in range(count):
                byte = bytes((97 + i % 26,))
                frame = wire.frame(wire.KEYS, byte)
                t0 = clock()
                sock.sendall(frame)
                got = holder_read(5.0)
                t1 = clock()
                if got != byte:
                    raise BenchError(f"holder: echo of {byte!r} came back as {got!r}")
                if keep:
                    samples["holder"].append((t1 - t0) / 1000)

        cpu0 = (copy.settled_cpu_ns(), holder.settled_cpu_ns())
        copy_block(warmup, False)
        holder_block(warmup, False)
        done = 0
        while done < trips:
            count = min(block, trips - done)
            steps = [copy_block, holder_block]
            for step in steps if (done // block) % 2 == 0 else steps[::-1]:
                step(count, True)
            done += count
        cpu1 = (copy.settled_cpu_ns(), holder.settled_cpu_ns())
        result = {}
        for i, name in enumerate(("copy", "holder")):
            v = samples[name]
            result[name] = {
                "echo_p50_us": percentile(v, 0.5),
                "echo_p99_us": percentile(v, 0.99),
                "echo_cpu_us_per_trip": (cpu1[i] - cpu0[i]) / 1000 / (warmup + trips),
            }
        return result
    finally:
        copy.close()
        holder.close()


def measure_idle(seconds: float, runtime: str) -> dict[str, float]:
    """The holder's wake-ups and CPU while its child sleeps and no client is attached."""
    holder = Holder(IDLE_CHILD, 0, runtime)
    try:
        sock = holder.socks[0]
        got = b""
        while b"R" not in got:
            if not select.select([sock], [], [], 30)[0]:
                raise BenchError("idle: no ready mark")
            got += sock.recv(4096)
        sock.sendall(wire.frame(wire.DETACH))
        while sock.recv(4096):
            pass
        time.sleep(0.3)
        pid = holder.pid
        cpu0, sw0, t0 = own_cpu_ns(pid), context_switches(pid), time.monotonic()
        time.sleep(seconds)
        cpu1, sw1, t1 = own_cpu_ns(pid), context_switches(pid), time.monotonic()
        return {
            "idle_wakeups_s": (sw1 - sw0) / (t1 - t0),
            "idle_cpu_ms_s": (cpu1 - cpu0) / 1e6 / (t1 - t0),
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
                merged["holder"].update(measure_idle(settings.idle_seconds, runtime))
                runs.append(merged)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
    medians: dict[str, dict[str, float]] = {}
    for path in runs[0]:
        medians[path] = {
            key: statistics.median(r[path][key] for r in runs) for key in runs[0][path]
        }
    verdicts = []
    for metric, path, kind, limit in TARGETS:
        ratios = [r[path][metric] / r["copy"][metric] for r in runs]
        ratio = statistics.median(ratios)
        met = ratio >= limit if kind == "min" else ratio <= limit
        verdicts.append({
            "target": f"{path} {metric} {'>=' if kind == 'min' else '<='} {limit}x copy mode",
            "ratio": ratio, "per_run": ratios, "met": met,
        })  # fmt: skip
    wake = medians["holder"]["idle_wakeups_s"]
    verdicts.append({"target": "holder idle: 0 wake-ups/s", "ratio": wake, "per_run": [],
                     "met": wake == 0})  # fmt: skip
    return {"settings": settings.__dict__, "runs": runs, "medians": medians, "targets": verdicts}


def format_report(report: dict[str, Any]) -> str:
    med = report["medians"]
    rows = [
        ("throughput, MiB/s", "throughput_mib_s", "{:.0f}"),
        ("relay CPU, s/GiB", "throughput_cpu_s_per_gib", "{:.2f}"),
        ("echo p50, us", "echo_p50_us", "{:.1f}"),
        ("echo p99, us", "echo_p99_us", "{:.1f}"),
        ("relay CPU per echo, us", "echo_cpu_us_per_trip", "{:.1f}"),
        ("idle wake-ups/s", "idle_wakeups_s", "{:.1f}"),
        ("idle CPU, ms/s", "idle_cpu_ms_s", "{:.3f}"),
    ]
    paths = ["copy", "holder", "holder+3"]
    lines = ["| metric | copy mode | holder, 1 client | holder, 1 writer + 3 watchers |",
             "| --- | ---: | ---: | ---: |"]  # fmt: skip
    for label, key, fmt in rows:
        cells = [fmt.format(med[p][key]) if key in med.get(p, {}) else "\u2013" for p in paths]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "| target | ratio (median) | per run | verdict |", "| --- | ---: | --- | --- |"]
    for t in report["targets"]:
        per = ", ".join(f"{x:.2f}" for x in t["per_run"])
        lines.append(f"| {t['target']} | {t['ratio']:.2f} | {per} | "
                     f"{'met' if t['met'] else 'missed'} |")  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bottle.bench.detached",
        description="Measure a detached session's holder against the relay's copy mode.",
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
