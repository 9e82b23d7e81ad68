"""What every part of the benchmark shares: units, the tag that finds relay processes, the
outer terminal's size, and the error a misbehaving relay raises.
"""

from __future__ import annotations

MIB = 1 << 20
GIB = 1 << 30
TAG_VAR = "BOTTLE_BENCH_TAG"
OUTER_SIZE = (40, 120)


class BenchError(RuntimeError):
    """A relay misbehaved during a measurement (lost bytes, hung, failed to start)."""
