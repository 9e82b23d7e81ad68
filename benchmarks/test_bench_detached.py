"""Detached sessions end to end (`bottle.bench.detached`): a holder and real `bottle attach`
clients on outer terminals against the relay's copy mode (throughput and relay CPU per GiB with
one client and with a writer and three watchers, echo, idle wake-ups, the replay of detached
output), copy mode feeding three more terminals, and the holder alone; and `bottle bench
--detached`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_relays import require_relay
from pytest_benchmark.fixture import BenchmarkFixture

from bottle import bench
from bottle.bench import detached

PATHS = {"copy", "copy+3", "attached", "attached+3", "framed", "holder", "holder+3"}


def test_detached(benchmark: BenchmarkFixture, settings: bench.Settings) -> None:
    require_relay("native")
    reports: list[dict] = []

    def run() -> None:
        reports.append(detached.run(settings, lambda msg: None))

    benchmark.pedantic(run, rounds=1)
    (report,) = reports
    med = report["medians"]
    assert set(med) == PATHS
    for path in med.values():
        assert path["throughput_mib_s"] > 0
    assert med["attached+3"]["watcher_cpu_s_per_gib"] > 0
    # Correctness is not a matter of speed: these hold on any machine.
    verdicts = {t["target"]: t["met"] for t in report["targets"]}
    assert len(verdicts) == len(detached.TARGETS) + 5
    replay = [v for k, v in verdicts.items() if "byte-exact" in k or "dropped" in k]
    assert replay == [True, True, True]
    assert report["replay"]["replay_dropped"] > 0
    refs = {r["reference"]: r["ratio"] for r in report["references"]}
    assert len(refs) == len(detached.REFERENCES)
    assert all(ratio > 0 for ratio in refs.values())
    benchmark.extra_info.update(
        {f"{path}_{key}": value for path, m in med.items() for key, value in m.items()}
    )
    print(detached.format_report(report))


def test_bottle_bench_detached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_relay("native")
    monkeypatch.setattr(bench.cli, "QUICK", bench.SMOKE)
    out = tmp_path / "bench.json"
    rc = bench.main(["--quick", "--detached", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "detached sessions (issue 20" in text and "| attached echo_p50_us" in text
    report = json.loads(out.read_text())
    assert set(report) == {"detached"}
    assert set(report["detached"]["medians"]) == PATHS
