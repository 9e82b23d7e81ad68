"""Statuses and streams of guest commands and agent sessions without a tty, through the fake smolvm.

smolvm dying of signal N is status 128+N everywhere (API, `bottle exec`, `bottle agent
--no-tty`); `exec_agent(tty=False)` is `smolvm machine exec -i`: this process's stdin reaches
the agent, its output appears as it comes and is not capped (tests/fake_smolvm/README.md,
"Modes", from `ExecCmd::run` in smolvm's `src/cli/machine.rs`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness.backend import wait_for_file

from bottle.backend.smolmachines import SmolmachinesBottle

BOTTLE = [sys.executable, "-m", "bottle"]



def _exec_pid(fake_smolvm: Any, marker: str) -> int:
    """The pid of the fake smolvm process whose exec command line holds `marker`."""
    log = fake_smolvm.state_dir / "calls.jsonl"
    for line in log.read_text().splitlines():
        call = json.loads(line)
        if call["argv"][1:2] == ["exec"] and any(marker in arg for arg in call["argv"]):
            return int(call["pid"])
    raise AssertionError(f"no exec call holding {marker!r}")


def _kill_smolvm_when_ready(fake_smolvm: Any, ready: Path, marker: str, sig: int) -> None:
    wait_for_file(ready)
    os.kill(_exec_pid(fake_smolvm, marker), sig)


def _guest(ready: Path) -> str:
    return f"touch {ready}; sleep 60"


# Not SIGKILL: its 137 is what the retry policy runs again.
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_bottle_exec_exits_128_plus_n_when_smolvm_dies_of_a_signal(
    fake_smolvm: Any, shared_dir: Path, sig: int
) -> None:
    fake_smolvm.create("m")
    ready = shared_dir / "ready"
    proc = subprocess.Popen(
        [*BOTTLE, "exec", "-n", "m", "-u", "root", _guest(ready)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _kill_smolvm_when_ready(fake_smolvm, ready, str(ready), sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err


def test_bottle_agent_no_tty_exits_128_plus_n_when_smolvm_dies(
    fake_smolvm: Any, shared_dir: Path
) -> None:
    fake_smolvm.create("m")
    ready = shared_dir / "ready"
    proc = subprocess.Popen(
        [*BOTTLE, "agent", "-n", "m", "--user", "root", "--no-tty", "--agent-command", "/bin/sh",
         "--", "-c", _guest(ready)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _kill_smolvm_when_ready(fake_smolvm, ready, str(ready), signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err


def test_api_statuses_are_128_plus_n(fake_smolvm: Any, shared_dir: Path) -> None:
    import threading

    fake_smolvm.create("m")
    b = SmolmachinesBottle("m", agent_command="/bin/sh", agent_prompt_mode="none",
                           agent_user="root")  # fmt: skip
    ready = shared_dir / "ready"
    killer = threading.Thread(
        target=_kill_smolvm_when_ready,
        args=(fake_smolvm, ready, str(ready), signal.SIGTERM),
    )
    killer.start()
    result = b.exec(_guest(ready), user="root")
    killer.join(30)
    assert result.returncode == 128 + signal.SIGTERM
    ready = shared_dir / "ready-agent"
    killer = threading.Thread(
        target=_kill_smolvm_when_ready, args=(fake_smolvm, ready, str(ready), signal.SIGTERM)
    )
    killer.start()
    status = b.exec_agent(["-c", _guest(ready)], tty=False)
    killer.join(30)
    assert status == 128 + signal.SIGTERM


# --- exec_agent(tty=False) streams ------------------------------------------------------------

CALLER = """
import sys
from bottle.backend.smolmachines import SmolmachinesBottle
b = SmolmachinesBottle("m", agent_command="/bin/sh", agent_prompt_mode="none", agent_user="root")
sys.exit(b.exec_agent(sys.argv[1:], tty=False))
"""


def test_no_tty_session_forwards_stdin_and_streams_output(
    fake_smolvm: Any, shared_dir: Path
) -> None:
    fake_smolvm.create("m")
    go = shared_dir / "go"
    # The agent answers a line read from stdin, then waits for the test: with buffered output
    # (no -i) the answer could not be seen before the agent exits, and the test would hang.
    script = f'read line; echo "got:$line"; while [ ! -e {go} ]; do sleep 0.02; done; exit 4'
    proc = subprocess.Popen(
        [sys.executable, "-c", CALLER, "-c", script],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"hello from the host\n")
        proc.stdin.close()
        assert proc.stdout.readline() == b"got:hello from the host\n"
        go.touch()
        assert proc.wait(60) == 4
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # The session is the last exec (before it, one checks that /bin/sh is there).
    exec_call = [c for c in fake_smolvm.calls() if c[1:2] == ["exec"] and "/bin/sh" in c][-1]
    assert "-i" in exec_call[: exec_call.index("--")]
    assert "-t" not in exec_call[: exec_call.index("--")]


def test_no_tty_session_output_is_not_capped(fake_smolvm: Any) -> None:
    fake_smolvm.create("m")
    size = 12 * 1024 * 1024  # above smolvm's 11 MiB cap on buffered exec output
    proc = subprocess.run(
        [sys.executable, "-c", CALLER, "-c", f"head -c {size} /dev/zero; exit 0"],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout) == size
    assert proc.stdout.count(0) == size


def test_no_tty_session_reads_stdin_to_its_end(fake_smolvm: Any) -> None:
    fake_smolvm.create("m")
    data = os.urandom(256 * 1024)
    began = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", CALLER, "-c", "sha256sum | cut -d' ' -f1"],
        input=data, capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert time.monotonic() - began < 120
    import hashlib

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip() == hashlib.sha256(data).hexdigest()
