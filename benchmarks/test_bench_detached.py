"""Detached sessions: the session holder's loop against the relay's copy mode
(`bottle.bench.detached`: throughput and CPU per GiB with one client and with a writer and three
watchers, echo through a client, a holder's idle wake-ups)."""

from __future__ import annotations

from bench_relays import require_relay
from pytest_benchmark.fixture import BenchmarkFixture

from bottle import bench
from bottle.bench import detached


def test_detached(benchmark: BenchmarkFixture, settings: bench.Settings) -> None:
    require_relay("native")
    reports: list[dict] = []

    def run() -> None:
        reports.append(detached.run(settings, lambda msg: None))

    benchmark.pedantic(run, rounds=1)
    (report,) = reports
    med = report["medians"]
    assert set(med) == {"copy", "holder", "holder+3"}
    for path in med.values():
        assert path["throughput_mib_s"] > 0
    assert len(report["targets"]) == len(detached.TARGETS) + 1
    benchmark.extra_info.update(
        {f"{path}_{key}": value for path, m in med.items() for key, value in m.items()}
    )
    print(detached.format_report(report))

