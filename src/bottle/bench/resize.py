"""Resize latency: a window change on the outer terminal until the child sees the new size,
and a burst of changes ending on the last size.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from bottle.bench._common import BenchError
from bottle.bench.latency import percentile
from bottle.bench.relays import Relay
from bottle.bench.session import Session, set_size

# the same for every relay; it reports the size its own terminal has, "rows,cols;".
RESIZE_CHILD = (
    "import fcntl, os, signal, struct, termios, tty\n"
    "tty.setraw(0)\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGWINCH})\n"
    "os.write(1, b'R')\n"
    "while True:\n"
    "    signal.sigwait({signal.SIGWINCH})\n"
    "    r, c = struct.unpack('HHHH', fcntl.ioctl(0, termios.TIOCGWINSZ, bytes(8)))[:2]\n"
    "    os.write(1, b'%d,%d;' % (r, c))\n"
)


@dataclass
class ResizeResult:
    """Window changes through one relay."""

    relay: str
    forwarded: bool
    trips: int = 0
    p50_us: float = 0.0
    p99_us: float = 0.0
    burst: int = 0
    burst_ok: bool = False
    burst_settle_ms: float = 0.0
    burst_reports: int = 0
    samples_us: list[float] = field(repr=False, default_factory=list)


class _SizeReader:
    """Parses the resize child's "rows,cols;" reports from the outer terminal."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.pending = b""
        self.buf = bytearray(4096)

    def next(self, timeout: float) -> tuple[int, int] | None:
        deadline = time.monotonic() + timeout
        while b";" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                n = self.session.read_some(self.buf, left)
            except BenchError:
                return None
            if n == 0:
                raise BenchError(f"{self.session.relay.name}: terminal closed during resizes")
            self.pending += self.buf[:n]
        report, self.pending = self.pending.split(b";", 1)
        rows, cols = report.split(b",")
        return int(rows), int(cols)


def measure_resize(
    relay: Relay, trips: int, burst: int, first_timeout: float = 1.0
) -> ResizeResult:
    """Time TIOCSWINSZ on the outer terminal until the child reports the new size."""
    return measure_resize_interleaved([relay], trips, burst, first_timeout)[relay.name]


RESIZE_BURST_LAST = (77, 177)


def measure_resize_interleaved(
    relays: Sequence[Relay],
    trips: int,
    burst: int,
    first_timeout: float = 1.0,
    block: int = 50,
) -> dict[str, ResizeResult]:
    """Window changes through several relays at once, in alternating blocks of ``block``.

    A relay whose child does not see the first change within ``first_timeout`` does not
    forward window changes (``forwarded=False``) and leaves the rotation. Then each relay gets
    a burst of ``burst`` changes back to back that must end on the last size.
    """
    child = [sys.executable, "-S", "-c", RESIZE_CHILD]
    sessions: list[Session] = []
    try:
        for relay in relays:
            sessions.append(Session(relay, child))
        readers: dict[str, _SizeReader] = {}
        for s in sessions:
            if s.expect(b"R", timeout=60.0):
                raise BenchError(f"{s.relay.name}: unexpected output after the ready mark")
            # A relay may pass the initial size on at start; let that report arrive, drop it.
            readers[s.relay.name] = reader = _SizeReader(s)
            while reader.next(0.2) is not None:
                pass
        samples: dict[str, list[float]] = {s.relay.name: [] for s in sessions}
        live = list(sessions)
        clock = time.perf_counter_ns
        done = 0
        while done < trips and live:
            count = min(block, trips - done)
            for s in list(live if (done // block) % 2 == 0 else live[::-1]):
                name, reader = s.relay.name, readers[s.relay.name]
                for i in range(done, done + count):
                    want = (30 + i % 20, 100 + i % 50)
                    t0 = clock()
                    set_size(s.master, *want)
                    while True:
                        seen = reader.next(first_timeout if i == 0 else 5.0)
                        if seen is None and i == 0:
                            live.remove(s)
                            break
                        if seen is None:
                            raise BenchError(f"{name}: the child never saw size {want}")
                        if seen == want:
                            samples[name].append((clock() - t0) / 1000)
                            break
                    if s not in live:
                        break
            done += count
        results = {s.relay.name: ResizeResult(s.relay.name, forwarded=False) for s in sessions}
        for s in live:
            name, reader = s.relay.name, readers[s.relay.name]
            # Burst: hundreds of changes back to back; the child must end on the last one.
            sizes = [(20 + i % 30, 80 + i % 60) for i in range(burst - 1)] + [RESIZE_BURST_LAST]
            for size in sizes:
                set_size(s.master, *size)
            t_last = clock()
            reports, last, settle = 0, None, 0.0
            while True:
                seen = reader.next(0.5 if last == sizes[-1] else 5.0)
                if seen is None:
                    break
                reports += 1
                last = seen
                if seen == sizes[-1] and not settle:
                    settle = (clock() - t_last) / 1e6
            v = samples[name]
            results[name] = ResizeResult(
                name,
                forwarded=True,
                trips=len(v),
                p50_us=percentile(v, 0.5),
                p99_us=percentile(v, 0.99),
                burst=burst,
                burst_ok=last == sizes[-1],
                burst_settle_ms=settle,
                burst_reports=reports,
                samples_us=v,
            )
        return results
    finally:
        for s in sessions:
            s.close()
