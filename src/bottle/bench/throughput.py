"""Throughput: a payload streamed through the relay to a reader that takes it as fast as it can;
its rate and the relay's CPU per GiB."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bottle.bench._common import GIB, MIB, BenchError
from bottle.bench.relays import Relay
from bottle.bench.session import Session, StallGuard
from bottle.bench.workload import Payload

READ_SIZE = 64 * 1024  # what the reader asks for at a time (a pty master hands out at most 4 KiB)
STALL_SECONDS = 30.0  # a stream with no byte for this long has hung


def stream_child(payload: Payload, blocks: int = 1, copies: Sequence[str] = ()) -> list[str]:
    """Return the producer: raw mode, "R"; per block, wait for a byte and send the block; then
    wait for a byte. One block is the whole payload, by ``cat``. Each block is also copied to
    the files ``copies`` (by tee), if any."""
    if blocks == 1 and not copies:
        script = (
            'stty raw -echo && printf R && head -c1 >/dev/null && cat "$0" && head -c1 >/dev/null'
        )
        return ["/bin/sh", "-c", script, payload.path]
    if payload.size % blocks:
        raise ValueError(f"{payload.size} bytes do not split into {blocks} blocks")
    # head -c reads a regular file exactly as far as it copies: fd 3 moves on block by block.
    tee = ' | tee "$@"' if copies else ""
    script = (
        'stty raw -echo && printf R && exec 3<"$0" && n=$1 && b=$2 && shift 2 && i=0 && '
        f'while [ "$i" -lt "$n" ]; do head -c1 >/dev/null && head -c "$b" <&3{tee}; '
        "i=$((i + 1)); done; head -c1 >/dev/null"
    )
    size = str(payload.size // blocks)
    return ["/bin/sh", "-c", script, payload.path, str(blocks), size, *copies]


@dataclass
class ThroughputResult:
    """One payload streamed through one relay."""

    relay: str
    bytes: int
    seconds: float
    mib_s: float
    cpu_s: float | None
    cpu_s_per_gib: float | None
    startup_cpu_s: float | None
    life_cpu_s: float | None
    wait4_cpu_s: float | None


class Stream:
    """A payload streamed from a child through a relay: ready(), transfer(), finish().

    With ``blocks`` > 1 the payload comes in that many equal blocks, one per transfer(); the
    producer copies each to ``copies`` too (see `stream_child`).
    """

    def __init__(
        self, relay: Relay, payload: Payload, blocks: int = 1, copies: Sequence[str] = ()
    ) -> None:
        self.relay = relay
        self.payload = payload
        self.blocks = blocks
        self.session = Session(relay, stream_child(payload, blocks, copies))
        self.cpu0 = 0
        self.seconds = 0.0
        self.got = 0
        self.digest = hashlib.sha256()
        self.result: ThroughputResult | None = None

    def ready(self) -> None:
        """Wait until the child is ready and the relay asleep; note the relay's CPU."""
        rest = self.session.expect(b"R")
        if rest:
            raise BenchError(f"{self.relay.name}: unexpected output before the payload: {rest!r}")
        if self.relay.is_relay:
            self.cpu0 = self.session.settled_cpu_ns()

    def go(self) -> None:
        """Let the child start streaming."""
        self.session.write(b"g")
        self._t0 = time.perf_counter_ns()

    def transfer(self) -> None:
        """Stream the payload (or its next block); check it arrived intact after the last.

        The reader is a terminal that takes output as fast as it can, hashing as it goes: 64 KiB
        reads that wait inside the read, no poll in between. Against it a relay that leaves the
        terminal without output for a moment loses throughput (a slower reader would hide that:
        the terminal's ~12 KiB would last it through the gap).
        """
        self.go()
        digest = self.digest
        got, end = self.got, self.got + self.payload.size // self.blocks
        buf = bytearray(READ_SIZE)
        view = memoryview(buf)
        read = self.session.read_waiting
        with StallGuard(self.session, STALL_SECONDS) as guard:
            while got < end:
                n = read(buf)
                if n == 0:
                    break
                take = min(n, end - got)
                digest.update(view[:take])
                got += take
                guard.got = got
        self.seconds += (time.perf_counter_ns() - self._t0) / 1e9
        self.got = got
        if guard.fired:
            raise BenchError(
                f"{self.relay.name}: no output for {STALL_SECONDS:.0f} s after {got} of "
                f"{self.payload.size} bytes{self.session.stderr()}"
            )
        if got < end or got == self.payload.size:
            self.check(got, digest)

    def check(self, got: int, digest: Any) -> None:
        """Raise BenchError unless exactly the payload arrived."""
        if got != self.payload.size or digest.hexdigest() != self.payload.sha256:
            raise BenchError(
                f"{self.relay.name}: payload corrupted: {got} of {self.payload.size} bytes, "
                f"sha256 {'matches' if digest.hexdigest() == self.payload.sha256 else 'differs'}"
                f"{self.session.stderr()}"
            )

    def finish(self) -> ThroughputResult:
        """Note the relay's CPU, let the child exit, reap the relay; return the result."""
        if self.result is not None:
            return self.result
        try:
            cpu1 = self.session.settled_cpu_ns() if self.relay.is_relay else 0
            self.session.write(b"q")
            info = self.session.wait_exit()
            if info.status != 0:
                raise BenchError(
                    f"{self.relay.name}: exit status {info.status}{self.session.stderr()}"
                )
        finally:
            self.session.close()
        size = self.payload.size
        cpu = (cpu1 - self.cpu0) / 1e9 if self.relay.is_relay else None
        self.result = ThroughputResult(
            relay=self.relay.name,
            bytes=size,
            seconds=self.seconds,
            mib_s=size / MIB / self.seconds if self.seconds else 0.0,
            cpu_s=cpu,
            cpu_s_per_gib=cpu * GIB / size if cpu is not None else None,
            startup_cpu_s=self.cpu0 / 1e9 if self.relay.is_relay else None,
            life_cpu_s=info.own_cpu_ns / 1e9 if self.relay.is_relay else None,
            wait4_cpu_s=info.wait4_cpu_s if self.relay.is_relay else None,
        )
        return self.result

    def abort(self) -> None:
        """Tear the session down after a failure."""
        self.session.close()


def measure_throughput(relay: Relay, payload: Payload) -> ThroughputResult:
    """Stream ``payload`` from a raw-mode child through ``relay`` to the outer terminal."""
    stream = Stream(relay, payload)
    try:
        stream.ready()
        stream.transfer()
        return stream.finish()
    finally:
        stream.abort()


def measure_throughput_interleaved(
    relays: Sequence[Relay], payload: Payload, blocks: int = 8
) -> dict[str, ThroughputResult]:
    """Stream ``payload`` through several relays at once, taking turns block by block.

    Every relay's child is ready before the first byte moves; the blocks go to each in turn
    (order reversed every other block), like echo and resize, so that a burst of other work
    lands on all of them alike. Relays between their turns sleep and cost nothing.
    """
    streams: list[Stream] = []
    try:
        for relay in relays:
            streams.append(Stream(relay, payload, blocks))
        for st in streams:
            st.ready()
        for b in range(blocks):
            for st in streams if b % 2 == 0 else streams[::-1]:
                st.transfer()
        return {st.relay.name: st.finish() for st in streams}
    finally:
        for st in streams:
            st.abort()
