"""The report: the results as the table `bottle bench` prints."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bottle.bench.suite import METRICS, RATIO_METRICS


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, str):
        return "error"
    return fmt.format(value)


def format_report(report: Mapping[str, Any]) -> str:
    """Render the results as plain-text tables."""
    results: Mapping[str, Mapping[str, Any]] = report["results"]
    names = list(results)
    lines = []
    m = report["machine"]
    lines.append(
        f"bottle bench: {report['settings']['runs']} run(s), medians; "
        f"{m['nproc']} x {m['cpu_model']}, Linux {m['kernel']}, Python {m['python']}"
    )
    if "loadavg_before" in m:
        lines.append(
            f"load average (1 min) {m['loadavg_before']} before, {m['loadavg_after']} after"
            " (other work on the machine inflates times and CPU alike)"
        )
    for name, reason in report["skipped"].items():
        lines.append(f"skipped {name}: {reason}")
    width = max(len(label) for _, label, _ in METRICS) + 2

    def table(title: str, rows: list[tuple[str, list[str]]]) -> None:
        lines.append("")
        lines.append(title.ljust(width) + "".join(n.rjust(12) for n in names))
        for label, cells in rows:
            lines.append(label.ljust(width) + "".join(c.rjust(12) for c in cells))

    rows = []
    for key, label, fmt in METRICS:
        cells = []
        for n in names:
            r = results[n]
            if key.startswith("resize") and r.get("resize_forwarded") is False:
                cells.append("no fwd")
            else:
                cells.append(_cell(r.get(key), fmt))
        rows.append((label, cells))
    table("metric", rows)

    for ref in ("script", "none"):
        if ref not in results:
            continue
        rows = []
        for key, label, _ in METRICS:
            if key not in RATIO_METRICS:
                continue
            base = results[ref].get(key)
            cells = []
            for n in names:
                v = results[n].get(key)
                ok = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (v, base))
                cells.append(f"{v / base:.2f}x" if ok and base else "-")
            rows.append((label, cells))
        table(f"ratio to {'script' if ref == 'script' else 'no relay'}", rows)

    lines.append("")
    lines.append("targets (issue 12; native = copy mode, direct = --output direct)")
    for t in report["targets"]:
        if t["met"] is None:
            lines.append(f"  n/a   {t['target']}: not measured")
        elif "ratio" in t:
            verdict = "met " if t["met"] else "MISS"
            runs = t.get("run_ratios") or []
            spread = f" (runs: {', '.join(f'{x:.2f}' for x in runs)})" if len(runs) > 1 else ""
            lines.append(
                f"  {verdict}  {t['target']}: {t['value']:.4g} vs {t['reference']:.4g},"
                f" ratio {t['ratio']:.2f}x{spread}"
            )
        else:
            verdict = "met " if t["met"] else "MISS"
            lines.append(f"  {verdict}  {t['target']}: {t['value']:.2f}")
    cost = report.get("recording")
    if cost:
        lines.append("")
        lines.append("recording (issue 14; recorded = native with --record FILE.cast)")
        for key, label in (
            ("throughput_cpu_s_per_gib", "relay CPU, s/GiB (random bytes)"),
            ("text_cpu_s_per_gib", "relay CPU, s/GiB (terminal text)"),
            ("many_cpu_s_per_gib", "16 sessions CPU, s/GiB (random bytes)"),
        ):
            if f"{key}_with" in cost:
                a, b = cost[f"{key}_with"], cost[f"{key}_without"]
                ratio = f", {a / b:.2f}x" if b else ""
                lines.append(
                    f"  {label}: {a:.2f} recorded, {b:.2f} not, +{a - b:.2f}{ratio}"
                )
    errors = [
        f"  {n}: {k.removesuffix('_error')}: {v}"
        for n, r in results.items()
        for k, v in r.items()
        if k.endswith("_error")
    ]
    if errors:
        lines.append("")
        lines.append("errors")
        lines += errors
    return "\n".join(lines)
