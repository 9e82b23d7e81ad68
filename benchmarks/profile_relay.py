"""Count what a relay does per MiB streamed and per echo round trip (perf tracepoints).

    python benchmarks/profile_relay.py [--mib 64] [--trips 2000] [--baseline NAME=PYTHON]
                                       [RELAY ...]

Attaches ``perf stat`` (syscall and scheduler tracepoints: counting, no sampling, so the relay
runs at full speed) to the relay process for the duration of one stream and of one series of
echo round trips, and prints syscalls, context switches and CPU, normalised. Counts barely
move with the machine's load, unlike times, so they are the figures to compare loops by.
Needs root (or perf_event_paranoid <= -1) and perf.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

from bottle import bench
from bottle.bench._procfs import stat_fields
from bottle.bench.relays import parse_baseline

EVENTS = [
    "raw_syscalls:sys_enter",
    "syscalls:sys_enter_read",
    "syscalls:sys_enter_write",
    "syscalls:sys_enter_poll",
    "syscalls:sys_enter_ppoll",
    "syscalls:sys_enter_rt_sigprocmask",
    "syscalls:sys_enter_ioctl",
    "sched:sched_switch",
]
SHORT = {
    "raw_syscalls:sys_enter": "syscalls",
    "sched:sched_switch": "switches",
}


class Perf:
    """``perf stat`` attached to one process until stopped."""

    def __init__(self, pid: int) -> None:
        self._out = tempfile.NamedTemporaryFile("r", suffix=".csv")  # noqa: SIM115
        self._proc = subprocess.Popen(
            ["perf", "stat", "-x", ",", "-o", self._out.name, "-e", ",".join(EVENTS),
             "-p", str(pid)],
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.3)  # perf needs a moment to attach

    def stop(self) -> dict[str, float]:
        """Stop counting; return event -> count."""
        self._proc.send_signal(signal.SIGINT)
        self._proc.wait()
        counts: dict[str, float] = {}
        for line in self._out.read().splitlines():
            parts = line.split(",")
            if len(parts) > 2 and parts[2] in EVENTS:
                name = SHORT.get(parts[2], parts[2].split("sys_enter_")[-1])
                counts[name] = float(parts[0]) if parts[0][:1].isdigit() else 0.0
        self._out.close()
        return counts


def user_sys_ticks(pid: int) -> tuple[int, int]:
    """Return the process's user and system clock ticks so far."""
    fields = stat_fields(pid)
    return int(fields[11]), int(fields[12])


def profile_stream(relay: bench.Relay, payload: bench.Payload) -> str:
    """One stream under perf stat; a line of per-MiB figures."""
    stream = bench.Stream(relay, payload)
    try:
        stream.ready()
        pid = stream.session.pid
        u0, s0 = user_sys_ticks(pid)
        perf = Perf(pid)
        stream.transfer()
        stream.session.settled_cpu_ns()
        counts = perf.stop()
        u1, s1 = user_sys_ticks(pid)
        result = stream.finish()
    finally:
        stream.abort()
    mib = payload.size / bench.MIB
    cells = " ".join(f"{k}={v / mib:.0f}" for k, v in counts.items() if v)
    share = (u1 - u0) / max(1, (u1 - u0) + (s1 - s0))
    return (
        f"{relay.name:9} stream {result.mib_s:6.1f} MiB/s  {result.cpu_s_per_gib or 0:5.2f} s/GiB"
        f"  user {share:4.0%}  per MiB: {cells}"
    )


def profile_echo(relay: bench.Relay, trips: int) -> str:
    """Echo round trips under perf stat; a line of per-trip figures."""
    with bench.Session(relay, bench.ECHO_CHILD) as s:
        s.expect(b"R")
        perf = Perf(s.pid)
        buf = bytearray(16)
        for i in range(trips):
            os.write(s.master, bytes((97 + i % 26,)))
            s.read_some(buf, 5.0)
        time.sleep(0.05)
        counts = perf.stop()
    cells = " ".join(f"{k}={v / trips:.2f}" for k, v in counts.items() if v)
    return f"{relay.name:9} echo   per trip: {cells}"


def main(argv: list[str] | None = None) -> int:
    """Profile the named relays (default: native, pure, script, pty.spawn)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--trips", type=int, default=2000)
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME=PYTHON",
        help="also profile the native relay that PYTHON runs (another checkout's venv)",
    )
    parser.add_argument("relays", nargs="*", default=["native", "pure", "script", "pty.spawn"])
    args = parser.parse_args(argv)
    relays = [bench.RELAYS[name] for name in args.relays]
    for spec in args.baseline:
        try:
            relays.append(parse_baseline(spec))
        except ValueError as e:
            parser.error(str(e))
    with bench.Payloads() as payloads:
        payload = payloads.get(args.mib * bench.MIB)
        for relay in relays:
            name = relay.name
            reason = bench.unavailable_reason(relay)
            if reason:
                print(f"{name}: skipped: {reason}")
                continue
            print(profile_stream(relay, payload), flush=True)
            print(profile_echo(relay, args.trips), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
