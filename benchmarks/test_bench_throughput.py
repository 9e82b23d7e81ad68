"""Throughput: a payload of random bytes from a raw-mode child through the relay."""

from __future__ import annotations

import os
import signal
import statistics

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from bottle import bench
from bottle.bench import throughput
from bottle.bench.session import StallGuard


def test_throughput(
    benchmark: BenchmarkFixture,
    relay: bench.Relay,
    settings: bench.Settings,
    measuring: bool,
    payloads: bench.Payloads,
) -> None:
    """MiB/s and relay CPU/GiB for one payload; the bytes arrive intact (sha256)."""
    payload = payloads.get(settings.stream_bytes)
    streams: list[bench.Stream] = []

    def setup() -> tuple[tuple[bench.Stream], dict[str, object]]:
        stream = bench.Stream(relay, payload)
        streams.append(stream)
        stream.ready()
        return (stream,), {}

    try:
        benchmark.pedantic(
            bench.Stream.transfer,
            setup=setup,
            teardown=bench.Stream.finish,
            rounds=settings.runs if measuring else 1,
        )
        results = [s.finish() for s in streams]
    finally:
        for s in streams:
            s.abort()
    for r in results:
        assert r.bytes == payload.size
        assert (r.cpu_s is None) == (relay.name == "none")
    benchmark.extra_info.update(
        mib=payload.size / bench.MIB,
        mib_s=statistics.median(r.mib_s for r in results),
        cpu_s_per_gib=(
            statistics.median(r.cpu_s_per_gib or 0.0 for r in results) if relay.is_relay else None
        ),
        wait4_cpu_s=[r.wait4_cpu_s for r in results],
    )


@pytest.mark.parametrize("relay", ["direct"], indirect=True)
def test_throughput_interleaved_takes_turns_and_checks_every_byte(
    relay: bench.Relay, payloads: bench.Payloads
) -> None:
    """Blocks go to each relay in turn; each payload arrives whole (sha256) over the blocks."""
    relays = [relay, bench.RELAYS["none"]]
    payload = payloads.get(bench.SMOKE.stream_bytes)
    results = bench.measure_throughput_interleaved(relays, payload, 4)
    assert list(results) == ["direct", "none"]
    for r in results.values():
        assert r.bytes == payload.size and r.mib_s > 0
    assert results["direct"].cpu_s is not None and results["none"].cpu_s is None


def test_relay_cpu_excludes_what_the_child_burns() -> None:
    """own_cpu_ns counts the process itself; wait4's rusage also counts the children it reaped."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
    # The "relay" here is a shell that runs a CPU-bound child, reaps it, then waits for a byte.
    child = ["/bin/sh", "-c", 'python3 -c "$0"; printf R; head -c1 >/dev/null', burn]
    with bench.Session(bench.RELAYS["none"], child) as s:
        s.expect(b"R")
        s.write(b"q")
        info = s.wait_exit()
    assert info.status == 0
    assert info.wait4_cpu_s >= 0.3
    assert info.own_cpu_ns / 1e9 < 0.5 * info.wait4_cpu_s


def test_stream_reader_waits_in_read_and_a_stall_ends_it() -> None:
    """The reader waits inside read(); when nothing comes, the guard ends the session (EOF)."""
    child = ["/bin/sh", "-c", "printf R; exec sleep 60"]
    with bench.Session(bench.RELAYS["none"], child) as s:
        buf = bytearray(64)
        assert s.read_waiting(buf) == 1 and buf[:1] == b"R"
        with StallGuard(s, 1.0) as guard:
            assert s.read_waiting(buf) == 0
        assert guard.fired
        assert s.wait_exit().status == -9  # killed: nothing was left waiting on the terminal


def test_a_stalled_stream_is_an_error_not_a_hang(
    monkeypatch: pytest.MonkeyPatch, payloads: bench.Payloads
) -> None:
    """A relay that stops writing mid-stream fails the measurement once the guard fires."""
    monkeypatch.setattr(throughput, "STALL_SECONDS", 1.0)
    payload = payloads.get(bench.SMOKE.stream_bytes)
    stream = bench.Stream(bench.RELAYS["none"], payload)
    try:
        stream.ready()
        os.killpg(stream.session.pid, signal.SIGSTOP)  # the producer: no relay in between
        with pytest.raises(bench.BenchError, match="no output for 1 s"):
            stream.transfer()
    finally:
        stream.abort()
