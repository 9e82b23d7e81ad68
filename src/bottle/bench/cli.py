"""`bottle bench`: measure, print the table, optionally write JSON."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from typing import Any

from bottle.bench._common import BenchError
from bottle.bench.relays import RELAY_NAMES, Relay, parse_baseline
from bottle.bench.report import format_report
from bottle.bench.suite import run_bench
from bottle.bench.workload import FULL, QUICK, Settings


def main(argv: list[str] | None = None) -> int:
    """Run ``bottle bench``: measure, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(
        prog="bottle bench",
        description="Measure the PTY relay side by side with script(1), pty.spawn and no relay.",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run (~20 s)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    parser.add_argument("--runs", type=int, help="repeat the whole set N times (median)")
    parser.add_argument(
        "--relay",
        action="append",
        choices=RELAY_NAMES,
        help="measure only this relay (repeatable; default: all, and detached sessions)",
    )
    parser.add_argument(
        "--detached",
        action="store_true",
        help="measure only detached sessions (a holder and attach clients against copy mode)",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME=PYTHON",
        help="also measure the native relay (copy mode) that PYTHON runs, for instance another "
        "checkout's .venv/bin/python, as column NAME, interleaved with the rest (repeatable)",
    )
    args = parser.parse_args(argv)
    baselines: list[Relay] = []
    for spec in args.baseline:
        try:
            relay = parse_baseline(spec)
        except ValueError as e:
            parser.error(str(e))
        if relay.name in RELAY_NAMES or relay.name in (b.name for b in baselines):
            parser.error(f"--baseline name {relay.name!r} is taken; choose another")
        baselines.append(relay)
    settings = QUICK if args.quick else FULL
    if args.runs is not None:
        if args.runs < 1:
            parser.error("--runs must be at least 1")
        settings = Settings(**{**asdict(settings), "runs": args.runs})
    if sys.platform != "linux":
        print("bottle bench: needs Linux (/proc, pidfd)", file=sys.stderr)
        return 2

    def log(msg: str) -> None:
        print(f"bottle bench: {msg}", file=sys.stderr, flush=True)

    out = None
    if args.json:
        try:  # before measuring, so a bad path costs no minutes
            out = open(args.json, "w")  # noqa: SIM115 - closed below, after the run
        except OSError as e:
            print(f"bottle bench: cannot write {args.json}: {e.strerror}", file=sys.stderr)
            return 2
    report: dict[str, Any] = {}
    has_error = False
    try:
        if not args.detached:
            report = run_bench(settings, args.relay or RELAY_NAMES, log, baselines)
            print(format_report(report))
            has_error = any(k.endswith("_error") for r in report["results"].values() for k in r)
        if args.detached or not args.relay:
            # Imported here: the relay's own measurements never load the session modules.
            from bottle.bench import detached

            try:
                report["detached"] = detached.run(settings, lambda m: log(f"detached: {m}"))
            except (BenchError, OSError) as exc:
                report["detached_error"] = str(exc)
                print(f"\ndetached sessions: error: {exc}")
                has_error = True
            else:
                print("\ndetached sessions (issue 20; copy mode = the native relay)")
                print(detached.format_report(report["detached"]))
        if out is not None:
            json.dump(report, out, indent=2)
            out.write("\n")
            log(f"results written to {args.json}")
    finally:
        if out is not None:
            out.close()
    return 1 if has_error else 0
