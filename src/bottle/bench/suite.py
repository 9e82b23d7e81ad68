"""A whole run: every measurement for every relay, interleaved, the medians, the ratios to
script(1) and the targets they are held to.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from bottle.bench._common import BenchError
from bottle.bench._procfs import read_text
from bottle.bench.idle import measure_idle
from bottle.bench.latency import LatencyResult, measure_echo, measure_echo_interleaved
from bottle.bench.many import measure_many
from bottle.bench.relays import RECORD_FILE, RELAY_NAMES, RELAYS, Relay, unavailable_reason
from bottle.bench.resize import ResizeResult, measure_resize, measure_resize_interleaved
from bottle.bench.startup import measure_startup, measure_startup_inprocess
from bottle.bench.throughput import (
    ThroughputResult,
    measure_throughput,
    measure_throughput_interleaved,
)
from bottle.bench.workload import Payloads, Settings

METRICS: list[tuple[str, str, str]] = [
    # key, label, format
    ("throughput_mib_s", "throughput, MiB/s", "{:.0f}"),
    ("throughput_cpu_s_per_gib", "relay CPU, s/GiB", "{:.2f}"),
    ("text_mib_s", "text throughput, MiB/s", "{:.0f}"),
    ("text_cpu_s_per_gib", "text relay CPU, s/GiB", "{:.2f}"),
    ("echo_p50_us", "echo p50, us", "{:.1f}"),
    ("echo_p99_us", "echo p99, us", "{:.1f}"),
    ("resize_p50_us", "resize p50, us", "{:.1f}"),
    ("resize_p99_us", "resize p99, us", "{:.1f}"),
    ("resize_burst_ok", "burst ends on last size", "{}"),
    ("idle_wakeups_s", "idle wake-ups/s", "{:.1f}"),
    ("idle_cpu_ms_s", "idle CPU, ms/s", "{:.3f}"),
    ("startup_p50_ms", "start-up p50, ms", "{:.1f}"),
    ("startup_cpu_ms", "start-up relay CPU, ms", "{:.1f}"),
    ("inproc_startup_p50_ms", "relay.run start-up p50, ms", "{:.2f}"),
    ("inproc_startup_cpu_ms", "relay.run start-up CPU, ms", "{:.2f}"),
    ("many_mib_s", "16 sessions, MiB/s", "{:.0f}"),
    ("many_cpu_s_per_gib", "16 sessions CPU, s/GiB", "{:.2f}"),
]

# Metrics where a ratio means something (flags and wake-up counts do not divide usefully).
RATIO_METRICS = [k for k, _, _ in METRICS if k not in ("resize_burst_ok", "idle_wakeups_s")]


Metrics = dict[str, float | bool | None]


def _throughput(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    return _throughput_metrics(measure_throughput(relay, payloads.get(settings.stream_bytes)))


def _throughput_metrics(r: ThroughputResult) -> Metrics:
    return {
        "throughput_mib_s": r.mib_s,
        "throughput_cpu_s_per_gib": r.cpu_s_per_gib,
        "throughput_startup_cpu_s": r.startup_cpu_s,
        "throughput_life_cpu_s": r.life_cpu_s,
        "throughput_wait4_cpu_s": r.wait4_cpu_s,
    }


def _text(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    # Terminal text instead of random bytes: what a recording mostly encodes (random bytes are
    # its worst case). Only for the copy loop with and without recording (and its baselines).
    if relay.name not in ("native", "recorded") and relay.python is None:
        return {}
    r = measure_throughput(relay, payloads.text(settings.stream_bytes))
    return {"text_mib_s": r.mib_s, "text_cpu_s_per_gib": r.cpu_s_per_gib}


def _echo(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    return _echo_metrics(measure_echo(relay, settings.echo_trips))


def _echo_metrics(r: LatencyResult) -> Metrics:
    return {"echo_p50_us": r.p50_us, "echo_p99_us": r.p99_us, "echo_cpu_us": r.cpu_us_per_trip}


def _resize(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    return _resize_metrics(measure_resize(relay, settings.resize_trips, settings.resize_burst))


def _resize_metrics(r: ResizeResult) -> Metrics:
    if not r.forwarded:
        return {"resize_forwarded": False}
    return {
        "resize_forwarded": True,
        "resize_p50_us": r.p50_us,
        "resize_p99_us": r.p99_us,
        "resize_burst_ok": r.burst_ok,
        "resize_burst_settle_ms": r.burst_settle_ms,
        "resize_burst_reports": float(r.burst_reports),
    }


def _idle(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    if not relay.is_relay:
        return {}
    r = measure_idle(relay, settings.idle_seconds)
    return {"idle_wakeups_s": r.wakeups_s, "idle_cpu_ms_s": r.cpu_ms_s}


def _startup(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    r = measure_startup(relay, settings.startup_spawns)
    return {"startup_p50_ms": r.p50_ms, "startup_max_ms": r.max_ms, "startup_cpu_ms": r.cpu_ms}


def _inproc(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    # Only bottle's native relay runs in process (the backend's path); the others are programs.
    # (The recorded one would measure the same unrecorded relay.run again; a baseline's would be
    # this install's.)
    if relay.implementation != "native" or RECORD_FILE in relay.options or relay.python:
        return {}
    r = measure_startup_inprocess(relay, settings.startup_spawns)
    return {"inproc_startup_p50_ms": r.p50_ms, "inproc_startup_cpu_ms": r.cpu_ms}


def _many(relay: Relay, settings: Settings, payloads: Payloads) -> Metrics:
    r = measure_many(relay, payloads.get(settings.many_bytes), settings.many_sessions)
    return {"many_mib_s": r.mib_s, "many_cpu_s_per_gib": r.cpu_s_per_gib}


MEASUREMENTS: list[tuple[str, Callable[[Relay, Settings, Payloads], Metrics]]] = [
    ("throughput", _throughput),
    ("text", _text),
    ("echo", _echo),
    ("resize", _resize),
    ("idle", _idle),
    ("startup", _startup),
    ("inproc", _inproc),
    ("many", _many),
]

# Measurements that run every relay at once, taking turns (see measure_*_interleaved).
INTERLEAVED = ("throughput", "echo", "resize")


def _all_at_once(
    name: str, relays: Sequence[Relay], settings: Settings, payloads: Payloads
) -> dict[str, dict[str, float | bool | str | None]]:
    """Throughput, echo or resize through all relays interleaved; on failure, each alone."""
    try:
        if name == "throughput":
            streams = measure_throughput_interleaved(
                relays, payloads.get(settings.stream_bytes), settings.stream_blocks
            )
            return {n: dict(_throughput_metrics(r)) for n, r in streams.items()}
        if name == "echo":
            echoes = measure_echo_interleaved(relays, settings.echo_trips)
            return {n: dict(_echo_metrics(r)) for n, r in echoes.items()}
        resizes = measure_resize_interleaved(relays, settings.resize_trips, settings.resize_burst)
        return {n: dict(_resize_metrics(r)) for n, r in resizes.items()}
    except (BenchError, OSError):
        return {r.name: measure_one(name, r, settings, payloads) for r in relays}


def measure_one(
    name: str, relay: Relay, settings: Settings, payloads: Payloads
) -> dict[str, float | bool | str | None]:
    """Run the measurement ``name`` once for ``relay``; a failure becomes ``<name>_error``."""
    fn = dict(MEASUREMENTS)[name]
    try:
        return dict(fn(relay, settings, payloads))
    except (BenchError, OSError) as e:
        return {f"{name}_error": str(e)}


def measure_all(
    relay: Relay, settings: Settings, payloads: Payloads
) -> dict[str, float | bool | str | None]:
    """Run every measurement once for ``relay``; return flat metrics (errors as strings)."""
    out: dict[str, float | bool | str | None] = {}
    for name, _ in MEASUREMENTS:
        out.update(measure_one(name, relay, settings, payloads))
    return out


def median_metrics(
    runs: list[dict[str, float | bool | str | None]],
) -> dict[str, float | bool | str | None]:
    """Combine several runs: medians of numbers, all() of flags, the first error text."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run if k not in keys]
    out: dict[str, float | bool | str | None] = {}
    for key in keys:
        values = [run[key] for run in runs if key in run]
        if any(isinstance(v, str) for v in values):
            out[key] = next(v for v in values if isinstance(v, str))
        elif all(isinstance(v, bool) for v in values):
            out[key] = all(values)
        else:
            nums = [float(v) for v in values if isinstance(v, int | float)]
            out[key] = statistics.median(nums) if nums else None
    return out


def machine_info() -> dict[str, str | int]:
    """Describe the machine: cores, CPU model, kernel, Python."""
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in read_text("/proc/cpuinfo").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count() or 0,
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


Target = dict[str, Any]


def _num(d: Mapping[str, Any], key: str) -> float | None:
    v = d.get(key)
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def evaluate_targets(
    results: Mapping[str, Mapping[str, Any]],
    per_run: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
) -> list[Target]:
    """Compare bottle's native relay, in copy ("native") and direct mode, with issue 12's targets.

    With ``per_run``, a ratio is the median of the per-run ratios: each run measured the two
    relays seconds apart, so their ratio is steadier than the ratio of two medians.
    """
    targets: list[Target] = []

    def ratio_target(
        name: str,
        subject: str,
        key: str,
        ref_name: str,
        limit: float,
        le: bool,
        ref_key: str | None = None,
    ) -> None:
        ref_key = ref_key or key
        a = _num(results.get(subject, {}), key)
        b = _num(results.get(ref_name, {}), ref_key)
        if a is None or b is None or b == 0:
            targets.append({"target": name, "measured": "n/a", "met": None})
            return
        ratios = []
        if per_run is not None:
            for x, y in zip(per_run.get(subject, []), per_run.get(ref_name, []), strict=False):
                xa, yb = _num(x, key), _num(y, ref_key)
                if xa is not None and yb:
                    ratios.append(xa / yb)
        r = statistics.median(ratios) if ratios else a / b
        met = r <= limit if le else r >= limit
        targets.append(
            {
                "target": name,
                "value": a,
                "reference": b,
                "ratio": r,
                "run_ratios": ratios,
                "met": met,
            }
        )

    def idle_target(subject: str) -> None:
        name = f"{subject} idle: 0 wake-ups/s"
        wake = _num(results.get(subject, {}), "idle_wakeups_s")
        targets.append(
            {"target": name, "value": wake, "met": wake == 0.0}
            if wake is not None
            else {"target": name, "measured": "n/a", "met": None}
        )

    cpu, many = "throughput_cpu_s_per_gib", "many_cpu_s_per_gib"
    ratio_target("direct relay CPU/GiB <= 0.05x script", "direct", cpu, "script", 0.05, True)
    ratio_target(
        "direct throughput >= 0.95x no relay", "direct", "throughput_mib_s", "none", 0.95, False
    )
    ratio_target("direct echo p50 <= 0.8x script", "direct", "echo_p50_us", "script", 0.8, True)
    ratio_target("direct 16 sessions CPU/GiB <= 0.05x script", "direct", many, "script", 0.05, True)
    ratio_target("native relay CPU/GiB <= 0.85x script", "native", cpu, "script", 0.85, True)
    ratio_target("native 16 sessions CPU/GiB <= 1.0x script", "native", many, "script", 1.0, True)
    ratio_target("native resize p99 <= 1.0x script", "native", "resize_p99_us", "script", 1.0, True)
    ratio_target("direct resize p99 <= 1.0x script", "direct", "resize_p99_us", "script", 1.0, True)
    idle_target("native")
    idle_target("direct")
    idle_target("recorded")
    ratio_target(
        "direct relay.run start-up <= 1.5x script start-up",
        "direct",
        "inproc_startup_p50_ms",
        "script",
        1.5,
        True,
        ref_key="startup_p50_ms",
    )
    return targets


def recording_cost(results: Mapping[str, Mapping[str, Any]]) -> dict[str, float] | None:
    """What recording costs: relay CPU per GiB (random bytes and text, one stream; 16 sessions)
    with and without.

    None unless both the "native" and the "recorded" relay (the same loop, copy mode) were
    measured.
    """
    out: dict[str, float] = {}
    for key in ("throughput_cpu_s_per_gib", "text_cpu_s_per_gib", "many_cpu_s_per_gib"):
        without = _num(results.get("native", {}), key)
        with_ = _num(results.get("recorded", {}), key)
        if without is not None and with_ is not None:
            out[f"{key}_without"] = without
            out[f"{key}_with"] = with_
    return out or None


def run_bench(
    settings: Settings,
    relay_names: Sequence[str] = RELAY_NAMES,
    log: Callable[[str], None] = lambda _m: None,
    baselines: Sequence[Relay] = (),
) -> dict[str, Any]:
    """Measure the relays, interleaved run by run so drifting load hits them alike.

    ``baselines`` (see `relays.baseline`) are measured with them, as further columns.
    """
    skipped: dict[str, str] = {}
    active: list[Relay] = []
    for relay in [*(RELAYS[name] for name in relay_names), *baselines]:
        reason = unavailable_reason(relay)
        if reason:
            skipped[relay.name] = reason
            log(f"skipping {relay.name}: {reason}")
        else:
            active.append(relay)
    per_run: dict[str, list[dict[str, float | bool | str | None]]] = {r.name: [] for r in active}
    load_before = os.getloadavg()
    with Payloads() as payloads:
        for i in range(settings.runs):
            log(f"run {i + 1}/{settings.runs}")
            runs: dict[str, dict[str, float | bool | str | None]] = {r.name: {} for r in active}
            # Metric by metric, every relay back to back (order reversed every other run), so
            # that the load of the moment weighs on all of them alike.
            for name, _ in MEASUREMENTS:
                order = active if i % 2 == 0 else active[::-1]
                if name in INTERLEAVED:
                    for relay_name, got in _all_at_once(name, order, settings, payloads).items():
                        runs[relay_name].update(got)
                    continue
                for relay in order:
                    runs[relay.name].update(measure_one(name, relay, settings, payloads))
            for relay in active:
                per_run[relay.name].append(runs[relay.name])
    results = {name: median_metrics(runs) for name, runs in per_run.items()}
    # Other work on the machine shows up in every figure: say how busy it was.
    machine: dict[str, Any] = {
        **machine_info(),
        "loadavg_before": round(load_before[0], 2),
        "loadavg_after": round(os.getloadavg()[0], 2),
    }
    return {
        "machine": machine,
        "settings": asdict(settings),
        "skipped": skipped,
        "results": results,
        "runs": per_run,
        "targets": evaluate_targets(results, per_run),
        "recording": recording_cost(results),
    }
