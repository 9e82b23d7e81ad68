"""Measure the PTY relay side by side with its peers and with no relay at all.

Every relay under test runs on an outer pseudo-terminal that this module owns (raw mode, made the
relay's controlling terminal), exactly as a user's terminal would host it. The measurement code
lives in this package so that ``bottle bench`` and the pytest-benchmark suites in
``benchmarks/`` share it: `relays` (what is measured), `session` (a relay on the outer terminal),
`_procfs` (CPU and wake-up readings), one module per measurement (`throughput`, `latency`,
`resize`, `idle`, `startup`, `many`), `suite` (a whole run, ratios and targets), `report` (the
table) and `cli` (``bottle bench``). The names below are what the benchmarks and scripts use.

Relay CPU is the relay process's *own* CPU time, read from ``/proc/<pid>/task/*/schedstat``
(nanoseconds) while the relay sleeps, and once more while it is a zombie (``waitid`` with
``WNOWAIT`` keeps it unreaped). ``wait4``'s rusage is not used for it: Linux fills it with
``RUSAGE_BOTH``, the process's own time *plus* every child it reaped, so for ``script`` it
would include the producer (``cat``) too. That figure is kept in the JSON as ``wait4_cpu_s`` to
show the difference.
"""

from __future__ import annotations

from bottle.bench._common import GIB, MIB, BenchError
from bottle.bench.cli import main
from bottle.bench.idle import IdleResult, measure_idle
from bottle.bench.latency import ECHO_CHILD, LatencyResult, measure_echo, percentile
from bottle.bench.many import ManyResult, measure_many
from bottle.bench.relays import RELAY_NAMES, RELAYS, Relay, unavailable_reason
from bottle.bench.report import format_report
from bottle.bench.resize import ResizeResult, measure_resize
from bottle.bench.session import Session
from bottle.bench.startup import StartupResult, measure_startup_inprocess, spawn_first_byte
from bottle.bench.suite import (
    evaluate_targets,
    machine_info,
    median_metrics,
    recording_cost,
    run_bench,
)
from bottle.bench.throughput import (
    Stream,
    ThroughputResult,
    measure_throughput,
    measure_throughput_interleaved,
)
from bottle.bench.workload import FULL, QUICK, SMOKE, Payload, Payloads, Settings

__all__ = [
    "ECHO_CHILD",
    "FULL",
    "GIB",
    "MIB",
    "QUICK",
    "RELAYS",
    "RELAY_NAMES",
    "SMOKE",
    "BenchError",
    "IdleResult",
    "LatencyResult",
    "ManyResult",
    "Payload",
    "Payloads",
    "Relay",
    "ResizeResult",
    "Session",
    "Settings",
    "StartupResult",
    "Stream",
    "ThroughputResult",
    "evaluate_targets",
    "format_report",
    "machine_info",
    "main",
    "measure_echo",
    "measure_idle",
    "measure_many",
    "measure_resize",
    "measure_startup_inprocess",
    "measure_throughput",
    "measure_throughput_interleaved",
    "median_metrics",
    "percentile",
    "recording_cost",
    "run_bench",
    "spawn_first_byte",
    "unavailable_reason",
]
