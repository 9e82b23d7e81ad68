"""The relay under random input: random byte streams, and signals at random moments.

Both run against the native relay and the pure twin, on real ptys, with the test playing the
user's terminal (see harness/relay.py).
"""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from harness.relay import (
    ECHO_CHILD,
    OUTPUTS,
    PY,
    RELAY_ARGV,
    Session,
    assert_no_leftovers,
    assert_restored,
    describe_pids,
    echo_roundtrip,
    output_args,
    wait_until,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROPERTY_SETTINGS = settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Writes its input file to the pty in the given chunk sizes, in raw mode, between markers.
WRITER_CHILD = r"""
import os, sys, time, tty
data = open(sys.argv[1], "rb").read()
sizes = [int(x) for x in sys.argv[2].split(",")]
tty.setraw(0)
os.write(1, b"<<")
pos, i = 0, 0
while pos < len(data):
    n = sizes[i % len(sizes)]
    i += 1
    view = memoryview(data[pos:pos + n])
    pos += n
    while view:
        view = view[os.write(1, view):]
os.write(1, b">>")
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
@PROPERTY_SETTINGS
@given(chunks=st.lists(st.binary(min_size=1, max_size=3000), min_size=1, max_size=6))
def test_random_input_arrives_identical_and_comes_back(impl: str, chunks: list[bytes]) -> None:
    data = b"".join(chunks)
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result"
        s = Session([PY, "-c", ECHO_CHILD, str(len(data)), str(result)], impl=impl, tmp=Path(tmp))
        try:
            echo_roundtrip(s, data, result, chunks=chunks)
        finally:
            s.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
@PROPERTY_SETTINGS
@given(
    data=st.binary(max_size=200_000),
    sizes=st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=5),
)
def test_random_output_arrives_identical(impl: str, data: bytes, sizes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "data"
        source.write_bytes(data)
        cmd = [PY, "-c", WRITER_CHILD, str(source), ",".join(map(str, sizes))]
        s = Session(cmd, impl=impl, tmp=Path(tmp))
        try:
            assert s.wait(60) == 0, s.describe()
            out = s.output()
            assert out == b"<<" + data + b">>", (
                f"{len(out)} bytes out for {len(data)} written\n{s.describe()}"
            )
        finally:
            s.close()


# --------------------------------------------------------------------------- signal storm

STORM_RUNS = 120
BOTTLE_DIR = os.path.dirname(importlib.util.find_spec("bottle").origin or "").encode()
STORM_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
STORM_CHILDREN = {
    "sleep": ["sh", "-c", "echo READY; exec sleep 30"],
    "flood": ["sh", "-c", "echo READY; exec yes 0123456789abcdefghijklmnopqrstuvwxyz"],
    "cat": ["sh", "-c", "echo READY; exec cat"],
}


def _storm_run(impl: str, tmp: Path, rnd: random.Random) -> tuple[str, list[str]]:
    """One run: start, signal at a random moment, check the aftermath; (label, problems)."""
    sig = rnd.choice(STORM_SIGNALS)
    child = rnd.choice(sorted(STORM_CHILDREN))
    mode = rnd.choice(OUTPUTS)
    # Half of the signals land anywhere in start-up (before or after raw mode and the fork),
    # half while the session is relaying.
    early = rnd.random() < 0.5
    delay = rnd.uniform(0, 0.15) if early else rnd.uniform(0, 0.05)
    label = f"{sig.name}/{child}/{mode}/{'startup' if early else 'relaying'}"
    problems: list[str] = []
    s = Session(STORM_CHILDREN[child], impl=impl, tmp=tmp, relay_args=output_args(mode))
    try:
        if not early:
            if not wait_until(lambda: b"READY" in s.output(), 20, 0.005):
                return label, [f"the child never started\n{s.describe()}"]
            if child == "cat":
                s.send(b"typing\r")
        time.sleep(delay)
        os.kill(s.proc.pid, sig)
        try:
            rc = s.proc.wait(10)
        except subprocess.TimeoutExpired:
            return label, [f"relay still running 10 s after {sig.name}"]
        s.settle()
        if rc not in (128 + sig, -sig) and not _interrupted_interpreter_startup(rc, sig, s):
            problems.append(f"status {rc}")
        now = s.terminal.attrs()
        if now != s.terminal.saved:
            problems.append(f"termios not restored: {now}")
        if s.terminal.slave_nonblocking():
            problems.append("O_NONBLOCK left on the terminal")
        left = s.leftovers(3)
        if left:
            problems.append(f"left running:\n{describe_pids(left)}")
        if problems:
            problems.append(f"output tail: {s.output()[-2000:]!r}")
    finally:
        s.close()
    return label, problems


def _interrupted_interpreter_startup(rc: int, sig: int, s: Session) -> bool:
    """SIGINT while the interpreter runs site.py, before any bottle code: exit 1, traceback.

    That window belongs to ``python -m`` itself (site-packages .pth files), not to the relay;
    a KeyboardInterrupt escaping bottle's own code still counts as a failure.
    """
    out = s.output()
    return (
        rc == 1
        and sig == signal.SIGINT
        and out.rstrip().endswith(b"KeyboardInterrupt")
        and BOTTLE_DIR not in out
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_signal_storm(impl: str, tmp_path: Path) -> None:
    """SIGTERM/SIGHUP/SIGINT/SIGQUIT at random moments, in either output mode: terminal
    restored, child gone, status 128+N (or the relay itself killed by N)."""
    rnd = random.Random(20260821)
    failures: list[tuple[str, list[str]]] = []
    seen: collections.Counter[str] = collections.Counter()
    for _ in range(STORM_RUNS):
        label, problems = _storm_run(impl, tmp_path, rnd)
        seen[label] += 1
        if problems:
            failures.append((label, problems))
            if len(failures) >= 3:  # enough evidence; do not spend minutes on a broken relay
                break
    if failures:
        by_label = collections.Counter(label for label, _ in failures)
        first = "\n".join(f"--- {label}\n" + "\n".join(p) for label, p in failures[:5])
        pytest.fail(
            f"{len(failures)} of {sum(seen.values())} runs went wrong: {dict(by_label)}\n{first}"
        )
    assert len(seen) >= 24, f"the storm did not cover the combinations: {dict(seen)}"


# --------------------------------------------------------------------------- bad input

BAD_CALLS = r"""
import json, sys
import bottle.relay as r
marker = sys.argv[1]
touch = ["sh", "-c", f"touch {marker}"]
env = {"PATH": "/usr/bin:/bin"}
cases = {
    "nul-in-argument": (touch + ["x\0y"], {}),
    "nul-in-program": (["to\0uch", marker], {}),
    "nul-in-env-value": (touch, {"env": {**env, "A": "x\0y"}}),
    "equals-in-env-name": (touch, {"env": {**env, "A=B": "1"}}),
    "empty-env-name": (touch, {"env": {**env, "": "1"}}),
    "empty-argv": ([], {}),
    "unknown-placeholder": (touch, {"resize_command": "echo {rows} {foo}", "machine": "m"}),
    "machine-without-name": (touch, {"resize_command": "echo {machine}"}),
    "unbalanced-quote": (touch, {"resize_command": "echo 'x", "machine": "m"}),
    "unknown-output": (touch, {"output": "sideways"}),
}
results = {}
for name, (argv, kwargs) in cases.items():
    try:
        results[name] = ["returned", r.run(argv, **kwargs)]
    except Exception as exc:
        results[name] = [type(exc).__name__, str(exc)]
print("RESULTS", json.dumps(results))
"""

# What each error message must name.
BAD_CALL_NAMES = {
    "nul-in-argument": "null",
    "nul-in-program": "null",
    "nul-in-env-value": "null",
    "equals-in-env-name": "A=B",
    "empty-env-name": "environment",
    "empty-argv": "argv",
    "unknown-placeholder": "{foo}",
    "machine-without-name": "machine",
    "unbalanced-quote": "quot",
    "unknown-output": "sideways",
}


def test_bad_calls_are_clear_errors_before_anything_runs(impl: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    s = Session([], impl=impl, tmp=tmp_path, argv=[PY, "-c", BAD_CALLS, str(marker)])
    try:
        assert s.wait(60) == 0, s.describe()
        line = next(x for x in s.text().splitlines() if x.startswith("RESULTS "))
        results = json.loads(line.split(" ", 1)[1])
        wrong = {
            name: got for name, got in results.items()
            if got[0] != "ValueError" or BAD_CALL_NAMES[name].lower() not in got[1].lower()
        }
        assert not wrong, f"not a ValueError naming the problem: {wrong}"
        assert not marker.exists(), "a bad call ran the command anyway"
        assert_restored(s)
        assert_no_leftovers(s)
    finally:
        s.close()


@pytest.mark.parametrize(
    ("args", "names"),
    [
        ([], "command"),
        (["--"], "command"),
        (["--bogus", "--", "true"], "--bogus"),
        (["--machine"], "--machine"),
        (["--resize-command", "x {nope}", "--machine", "m", "--", "true"], "{nope}"),
        (["--output", "sideways", "--", "true"], "sideways"),
        (["--output"], "--output"),
    ],
)
def test_bad_command_lines(impl: str, tmp_path: Path, args: list[str], names: str) -> None:
    s = Session([], impl=impl, tmp=tmp_path, argv=[*RELAY_ARGV, *args])
    try:
        rc = s.wait(60)
        assert rc == 2, f"usage errors exit 2, got {rc}\n{s.describe()}"
        assert names in s.text(), s.describe()
        assert "Traceback" not in s.text(), s.describe()
        assert_restored(s)
        assert_no_leftovers(s)
    finally:
        s.close()
