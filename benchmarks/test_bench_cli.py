"""`bottle bench`: the report, the JSON, the targets, skipped peers, bad arguments."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from bench_relays import require_relay

from bottle import bench
from bottle.bench.relays import baseline


def test_quick_run_prints_ratios_and_writes_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A (shrunken) quick run prints the table, both ratio tables and targets; JSON matches."""
    monkeypatch.setattr(bench, "QUICK", bench.SMOKE)
    out = tmp_path / "bench.json"
    rc = bench.main(["--quick", "--relay", "script", "--relay", "none", "--json", str(out)])
    text = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert rc == 0, text
    assert report["machine"]["nproc"] >= 1
    assert "none" in report["results"]
    assert "ratio to no relay" in text
    if shutil.which("script"):
        assert "ratio to script" in text
        got = report["results"]["script"]
        assert got["throughput_mib_s"] > 0
        assert got["resize_burst_ok"] is True
        assert got["throughput_cpu_s_per_gib"] > 0
    else:
        assert "skipped script: script(1) is not installed" in text
    assert "targets (issue 12" in text


def test_missing_peer_is_skipped_with_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """A peer that is not installed is left out and the report says why."""
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    report = bench.run_bench(bench.SMOKE, ["script", "none"])
    assert list(report["results"]) == ["none"]
    assert "not installed" in report["skipped"]["script"]
    assert "skipped script: script(1) is not installed" in bench.format_report(report)


def test_targets_follow_issue_12() -> None:
    """Ratios and verdicts follow the issue's targets; a missing figure is n/a, not a pass."""
    results = {
        "native": {
            "throughput_cpu_s_per_gib": 3.0,
            "many_cpu_s_per_gib": 5.0,
            "resize_p99_us": 90.0,
            "idle_wakeups_s": 0.0,
        },
        "direct": {
            "throughput_cpu_s_per_gib": 0.1,
            "throughput_mib_s": 90.0,
            "echo_p50_us": 30.0,
            "many_cpu_s_per_gib": 0.4,
            "idle_wakeups_s": 0.0,
            "inproc_startup_p50_ms": 4.0,
        },
        "script": {
            "throughput_cpu_s_per_gib": 4.0,
            "many_cpu_s_per_gib": 4.0,
            "echo_p50_us": 50.0,
            "resize_p99_us": 100.0,
            "startup_p50_ms": 3.0,
        },
        "none": {"throughput_mib_s": 100.0},
    }
    verdicts = {t["target"]: t for t in bench.evaluate_targets(results)}
    cpu = verdicts["direct relay CPU/GiB <= 0.05x script"]
    assert (cpu["ratio"], cpu["met"]) == (0.025, True)
    assert verdicts["direct throughput >= 0.95x no relay"]["met"] is False
    assert verdicts["direct echo p50 <= 0.8x script"]["met"] is True
    assert verdicts["direct 16 sessions CPU/GiB <= 0.05x script"]["met"] is False
    assert verdicts["native relay CPU/GiB <= 0.85x script"]["met"] is True
    assert verdicts["native 16 sessions CPU/GiB <= 1.0x script"]["met"] is False
    assert verdicts["native resize p99 <= 1.0x script"]["met"] is True
    assert verdicts["direct resize p99 <= 1.0x script"]["met"] is None
    assert verdicts["native idle: 0 wake-ups/s"]["met"] is True
    start = verdicts["direct relay.run start-up <= 1.5x script start-up"]
    assert (round(start["ratio"], 2), start["met"]) == (1.33, True)
    text = bench.format_report(
        {"machine": bench.machine_info(), "settings": {"runs": 1}, "skipped": {},
         "results": results, "targets": list(verdicts.values())}
    )
    assert "MISS  direct throughput >= 0.95x no relay: 90 vs 100, ratio 0.90x" in text
    assert "n/a   direct resize p99 <= 1.0x script" in text


def test_runs_combine_as_medians() -> None:
    """Numbers take the median, flags must hold in every run, an error is kept."""
    runs: list[dict[str, float | bool | str | None]] = [
        {"a": 1.0, "ok": True},
        {"a": 5.0, "ok": False, "echo_error": "hung"},
        {"a": 2.0, "ok": True},
    ]
    assert bench.median_metrics(runs) == {"a": 2.0, "ok": False, "echo_error": "hung"}


def test_percentile_is_nearest_rank() -> None:
    """p50 and p99 of 1..100 are 50 and 99."""
    values = [float(v) for v in range(100, 0, -1)]
    assert (bench.percentile(values, 0.5), bench.percentile(values, 0.99)) == (50.0, 99.0)


def test_bad_arguments_fail_early(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--runs 0 and an unwritable --json path are refused before anything is measured."""
    with pytest.raises(SystemExit) as exc:
        bench.main(["--runs", "0"])
    assert exc.value.code == 2
    assert "--runs must be at least 1" in capsys.readouterr().err
    missing = tmp_path / "no-such-dir" / "out.json"
    assert bench.main(["--json", str(missing)]) == 2
    assert f"cannot write {missing}" in capsys.readouterr().err


def test_target_ratio_is_the_median_of_paired_runs() -> None:
    """Runs are paired (measured back to back): the verdict uses the median per-run ratio."""
    per_run = {
        "direct": [{"echo_p50_us": 35.0}, {"echo_p50_us": 75.0}, {"echo_p50_us": 60.0}],
        "script": [{"echo_p50_us": 50.0}, {"echo_p50_us": 100.0}, {"echo_p50_us": 48.0}],
    }
    results = {name: bench.median_metrics(list(runs)) for name, runs in per_run.items()}
    (echo,) = [t for t in bench.evaluate_targets(results, per_run) if "p50" in t["target"]]
    # Medians alone (60 vs 50) would say 1.2, a miss; the pairs say 0.70, 0.75, 1.25.
    assert [round(r, 2) for r in echo["run_ratios"]] == [0.7, 0.75, 1.25]
    assert echo["ratio"] == 0.75
    assert echo["met"] is True


def test_a_baseline_is_measured_beside_the_relays(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--baseline NAME=PYTHON adds a column: the native relay that PYTHON runs, in copy mode."""
    require_relay("native")
    monkeypatch.setattr(bench, "QUICK", bench.SMOKE)
    rc = bench.main(["--quick", "--relay", "none", "--baseline", f"before={sys.executable}"])
    text = capsys.readouterr().out
    assert rc == 0, text
    header = next(line for line in text.splitlines() if line.startswith("metric"))
    assert header.split()[1:] == ["none", "before"]
    assert "skipped" not in text


def test_a_baseline_relay_runs_the_interpreter_it_names() -> None:
    """The baseline's argv starts with its interpreter; a missing one is skipped, saying why."""
    relay = baseline("before", "/no/such/python")
    assert relay.argv(["true"])[:3] == ["/no/such/python", "-m", "bottle.relay"]
    report = bench.run_bench(bench.SMOKE, ["none"], baselines=[relay])
    assert list(report["results"]) == ["none"]
    assert report["skipped"]["before"] == "/no/such/python is not an executable interpreter"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("before", "--baseline takes NAME=PYTHON, got 'before'"),
        ("=/usr/bin/python3", "--baseline takes NAME=PYTHON"),
        ("native=/usr/bin/python3", "--baseline name 'native' is taken"),
    ],
)
def test_bad_baselines_are_refused(
    spec: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A --baseline without a name, an interpreter or with a taken name is a usage error."""
    with pytest.raises(SystemExit) as exc:
        bench.main(["--baseline", spec])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
