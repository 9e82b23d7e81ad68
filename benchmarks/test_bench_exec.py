"""What one `bottle exec NAME true` costs beside a bare `smolvm machine exec`, through the fake.

Issue 18's target: `bottle exec NAME true` at most 1.3x `smolvm machine exec --name NAME --
true` (wall time, median of 10, after the first call). The two run interleaved, each as a user
runs it (the `bottle` console script, the `smolvm` on PATH), after one call of each that is
not counted. `extra_info` has both medians, their ratio, and how many smolvm processes one
`bottle exec` started (from the fake's call log): bottle's own cost is the time beyond that.
With `--benchmark-disable` (the default run) each runs once, as a smoke test.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest
from harness.fakevm import FAKE_DIR, FakeSmolvm
from pytest_benchmark.fixture import BenchmarkFixture

RUNS = 10
TARGET = 1.3
BOTTLE = str(Path(sys.executable).parent / "bottle")


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSmolvm:
    """The fake smolvm first on PATH, as tests/conftest.py's fixture sets it up: `python3`
    there is this interpreter, so that no version manager's shim sits in every smolvm call."""
    state = tmp_path / "state"
    state.mkdir()
    python3 = tmp_path / "python3-venv"
    venv.create(python3, symlinks=True, with_pip=False)
    for var in list(os.environ):
        if var.startswith("FAKE_SMOLVM_"):
            monkeypatch.delenv(var)
    monkeypatch.delenv("BOTTLE_SMOLVM", raising=False)
    monkeypatch.setenv("PATH", os.pathsep.join([str(FAKE_DIR), str(python3 / "bin"),
                                                os.environ.get("PATH", "")]))  # fmt: skip
    monkeypatch.setenv("FAKE_SMOLVM_STATE", str(state))
    fake = FakeSmolvm(state, monkeypatch)
    fake.add_image("node:22")
    fake.create("demo", image="node:22")
    return fake


def timed(argv: list[str]) -> tuple[float, float]:
    """Wall and CPU milliseconds (user and system, the processes it started included) of one
    run of `argv`, which must succeed. CPU time says the same on a busy machine; wall time is
    what a user waits."""
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
    wall = (time.perf_counter() - start) * 1000
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert proc.returncode == 0, proc.stderr
    used = (after.ru_utime - cpu.ru_utime + after.ru_stime - cpu.ru_stime) * 1000
    return wall, used


def test_bottle_exec_beside_smolvm_exec(
    benchmark: BenchmarkFixture, fake: FakeSmolvm, measuring: bool
) -> None:
    bare = ["smolvm", "machine", "exec", "--name", "demo", "--", "true"]
    ours = [BOTTLE, "exec", "demo", "true"]
    timed(bare), timed(ours)  # the first calls: caches filled, files in the page cache
    calls_before = len(fake.calls())
    timed(ours)
    calls = len(fake.calls()) - calls_before
    times: dict[str, list[tuple[float, float]]] = {"bare": [], "bottle": []}

    def pair() -> None:
        times["bare"].append(timed(bare))
        times["bottle"].append(timed(ours))

    benchmark.pedantic(pair, rounds=RUNS if measuring else 1)
    info: dict[str, float | bool | int] = {"target": TARGET, "smolvm_calls_per_bottle_exec": calls}
    for i, kind in enumerate(("wall", "cpu")):
        bare_ms = statistics.median(t[i] for t in times["bare"])
        bottle_ms = statistics.median(t[i] for t in times["bottle"])
        ratio = bottle_ms / bare_ms
        info.update({
            f"bare_smolvm_exec_{kind}_ms": round(bare_ms, 1),
            f"bottle_exec_{kind}_ms": round(bottle_ms, 1),
            f"{kind}_ratio": round(ratio, 2),
            # What bottle itself adds beyond the smolvm processes it starts.
            f"bottle_own_{kind}_ms": round(bottle_ms - calls * bare_ms, 1),
        })  # fmt: skip
        print(f"\n{kind}: bottle exec {bottle_ms:.0f} ms, smolvm machine exec {bare_ms:.0f} ms: "
              f"{ratio:.2f}x (target {TARGET}x)", end="")  # fmt: skip
    info["met"] = float(info["wall_ratio"]) <= TARGET
    benchmark.extra_info.update(info)
    print(f"; {calls} smolvm calls per bottle exec")
