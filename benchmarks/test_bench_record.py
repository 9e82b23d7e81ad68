"""`bottle bench` measures what recording costs: the "recorded" relay beside "native"."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from bench_relays import require_relay

from bottle import bench


def test_recorded_stream_arrives_intact_and_writes_a_recording() -> None:
    """The recorded relay streams the payload intact; each session records into a new file."""
    relay = require_relay("recorded")
    argv = relay.argv(["true"])
    first = argv[argv.index("--record") + 1]
    again = relay.argv(["true"])
    assert again[again.index("--record") + 1] != first  # a new file for every session
    with bench.Payloads() as payloads:
        result = bench.measure_throughput(relay, payloads.get(256 * 1024))
    assert result.cpu_s_per_gib is not None and result.cpu_s_per_gib > 0
    recordings = os.listdir(os.path.dirname(first))
    assert recordings, "the recorded relay wrote no recording"


def test_report_states_the_cost_of_recording() -> None:
    results = {
        "native": {"throughput_cpu_s_per_gib": 3.0, "many_cpu_s_per_gib": 4.0},
        "recorded": {"throughput_cpu_s_per_gib": 4.5, "many_cpu_s_per_gib": 6.0,
                     "idle_wakeups_s": 0.0},
    }  # fmt: skip
    cost = bench.recording_cost(results)
    assert cost == {
        "throughput_cpu_s_per_gib_without": 3.0,
        "throughput_cpu_s_per_gib_with": 4.5,
        "many_cpu_s_per_gib_without": 4.0,
        "many_cpu_s_per_gib_with": 6.0,
    }
    targets = bench.evaluate_targets(results)
    assert {t["target"]: t["met"] for t in targets}["recorded idle: 0 wake-ups/s"] is True
    text = bench.format_report(
        {"machine": bench.machine_info(), "settings": {"runs": 1}, "skipped": {},
         "results": results, "targets": targets, "recording": cost}
    )  # fmt: skip
    assert "relay CPU, s/GiB (random bytes): 4.50 recorded, 3.00 not, +1.50, 1.50x" in text
    assert bench.recording_cost({"native": results["native"]}) is None


def test_quick_run_of_native_and_recorded(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    require_relay("recorded")
    monkeypatch.setattr(bench, "QUICK", bench.SMOKE)
    out = tmp_path / "bench.json"
    rc = bench.main(["--quick", "--relay", "native", "--relay", "recorded", "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    report = json.loads(out.read_text())
    assert report["recording"]["throughput_cpu_s_per_gib_with"] > 0
    assert re.search(r"\(terminal text\): [\d.]+ recorded, [\d.]+ not", text), text
    assert report["results"]["recorded"]["text_cpu_s_per_gib"] > 0
