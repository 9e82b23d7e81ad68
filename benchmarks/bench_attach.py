#!/usr/bin/env python3
"""End to end through a session holder and an attach client, against the relay's copy mode.

`python -m bottle.bench.detached` measures the holder with the benchmark as its client. This
script puts a client in between as a user would have one: benchmarks/attach_client.c (built
here with `cc`), a minimal native client that copies the socket's output to its terminal, on
the benchmark's outer pty where the relay would sit. Throughput (64 MiB, in 8 blocks taking
turns with copy mode) counts the holder's and the client's own CPU; echo is one-byte round
trips to cat. It predicts what the next round's attach client (in the relay's copy loop) can
reach, not what it will.

    python3 benchmarks/bench_attach.py [--runs N] [--mib N] [--trips N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bottle import sessions
from bottle.bench._common import GIB, MIB, OUTER_SIZE, TAG_VAR
from bottle.bench._procfs import settled_cpu_ns
from bottle.bench.latency import ECHO_CHILD, measure_echo_interleaved
from bottle.bench.relays import RELAYS, Relay, base_env
from bottle.bench.throughput import Stream, stream_child
from bottle.bench.workload import Payloads

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Attach(Relay):
    """The attach client on the outer pty, attached to a holder that runs the child."""

    client: str = ""
    socket_path: str = ""

    def argv(self, child: list[str]) -> list[str]:  # type: ignore[override]
        return [self.client, self.socket_path]


def build_client(tmp: str) -> str:
    exe = os.path.join(tmp, "attach_client")
    subprocess.run(["cc", "-O2", "-o", exe, str(HERE / "attach_client.c")], check=True)
    return exe


def holder(child: list[str], runtime: str) -> sessions.Session:
    env = base_env(RELAYS["native"])
    env[TAG_VAR] = uuid.uuid4().hex
    return sessions.start(child, name=f"b{uuid.uuid4().hex[:8]}", env=env, size=OUTER_SIZE)


def throughput(client: str, runtime: str, payloads: Payloads, mib: int) -> dict[str, float]:
    payload = payloads.get(mib * MIB)
    blocks = 8
    held = holder(stream_child(payload, blocks), runtime)
    relay = Attach("attach", "holder + attach_client", client=client, socket_path=held.socket_path)
    copy = Stream(RELAYS["native"], payload, blocks)
    attached = Stream(relay, payload, blocks)
    try:
        copy.ready()
        attached.ready()
        assert held.pid is not None
        h0 = settled_cpu_ns(held.pid)
        for b in range(blocks):
            for st in (copy, attached) if b % 2 == 0 else (attached, copy):
                st.transfer()
        h1 = settled_cpu_ns(held.pid)
        rc, ra = copy.finish(), attached.finish()
    finally:
        copy.abort()
        attached.abort()
        held.wait(10)
        held.remove()
    assert rc.cpu_s_per_gib is not None and ra.cpu_s_per_gib is not None
    holder_s_gib = (h1 - h0) / 1e9 * GIB / payload.size
    return {
        "copy_mib_s": rc.mib_s,
        "copy_cpu": rc.cpu_s_per_gib,
        "attached_mib_s": ra.mib_s,
        "client_cpu": ra.cpu_s_per_gib,
        "holder_cpu": holder_s_gib,
        "attached_cpu": ra.cpu_s_per_gib + holder_s_gib,
    }


def echo(client: str, runtime: str, trips: int) -> dict[str, float]:
    held = holder(ECHO_CHILD, runtime)
    relay = Attach("attach", "holder + attach_client", client=client, socket_path=held.socket_path)
    try:
        got = measure_echo_interleaved([RELAYS["native"], relay], trips)
    finally:
        held.signal()
        held.wait(10)
        held.remove()
    return {"copy_p50": got["native"].p50_us, "attached_p50": got["attach"].p50_us}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--trips", type=int, default=5000)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="ba-", dir="/tmp")
    os.chmod(tmp, 0o700)
    os.environ["XDG_RUNTIME_DIR"] = tmp
    rows: list[dict[str, float]] = []
    try:
        client = build_client(tmp)
        with Payloads() as payloads:
            for i in range(args.runs):
                print(f"run {i + 1}: load {os.getloadavg()[0]:.1f}", file=sys.stderr)
                row = throughput(client, tmp, payloads, args.mib)
                row.update(echo(client, tmp, args.trips))
                rows.append(row)
                time.sleep(0.5)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    print("| | copy mode | holder + attach client |")
    print("| --- | ---: | ---: |")
    print(f"| throughput, MiB/s | {med['copy_mib_s']:.0f} | {med['attached_mib_s']:.0f} |")
    print(f"| CPU, s/GiB (holder + client) | {med['copy_cpu']:.2f} | {med['attached_cpu']:.2f} "
          f"({med['holder_cpu']:.2f} + {med['client_cpu']:.2f}) |")
    print(f"| echo p50, us | {med['copy_p50']:.1f} | {med['attached_p50']:.1f} |")
    for key, num, den in (("throughput", "attached_mib_s", "copy_mib_s"),
                          ("CPU/GiB", "attached_cpu", "copy_cpu"),
                          ("echo p50", "attached_p50", "copy_p50")):  # fmt: skip
        ratios = ", ".join(f"{r[num] / r[den]:.2f}" for r in rows)
        print(f"{key} ratio per run: {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
