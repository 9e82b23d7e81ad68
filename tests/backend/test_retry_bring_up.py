"""Retry only what smolvm killed: the 137 retry belongs to a machine's bring-up.

A captured exec killed with 137 is run again (RetryPolicy) because smolvm's VM can SIGKILL a
short exec while it comes up. On a machine long up a 137 is the command's own (`kill -9 $$`, the
guest's OOM killer): running it again repeats whatever it did. `RetryPolicy(bring_up=S)` (the
command line's `BRING_UP_RETRY`) repeats a run only when it printed nothing and the machine is
at most S seconds old; the default policy stays the replaced class's (once, whatever the age).

The fake's `FAKE_SMOLVM_KILL_EXECS=N` kills the first N execs before they run (a bring-up kill);
a script's own `kill -9 $$` is the other kind. A machine's age comes from `created_at` here: the
fake's `pid` is the pid of the `machine start` that has exited (no VM process), so bottle's check
that the pid is smolvm's own fails, as it must.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from harness.backend import ROOT_IMAGE, image_machine, root_spec
from harness.backend import run_bottle as bottle

from bottle.backend.smolmachines import (
    BRING_UP_RETRY,
    RetryPolicy,
    SmolmachinesBottle,
    SmolmachinesBottleBackend,
)

HOUR_AGO = int(time.time()) - 3600
QUICK_BRING_UP = RetryPolicy(delay=0.01, bring_up=60.0)

pytestmark = pytest.mark.usefixtures("test_images")



@pytest.fixture
def exact(fake_smolvm: Any) -> None:
    """Exact stderr: a smolvm older than 1.8.1 puts its paste warning first (pytest
    --fake-smolvm-version)."""
    fake_smolvm.set_fault(VERSION="1.9.3")


def runs(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


# --- the command line ----------------------------------------------------------------------


@pytest.mark.usefixtures("exact")
def test_a_command_killed_on_a_machine_long_up_runs_once(
    fake_smolvm: Any, shared_dir: Path
) -> None:
    """The issue's `bottle exec -n demo 'echo x >> f; kill -9 $$'`: once, status 137, no error."""
    image_machine(fake_smolvm, "demo", created_at=HOUR_AGO)
    log = shared_dir / "f"
    proc = bottle("exec", "-n", "demo", f"echo x >> {log}; kill -9 $$")
    assert runs(log) == 1
    assert proc.returncode == 137
    # The command's own status: bottle has nothing to say (runuser, between root and node on
    # this image, says "Killed" of its child).
    assert "bottle" not in proc.stderr, proc.stderr


@pytest.mark.usefixtures("exact")
def test_a_command_that_printed_keeps_its_output_and_runs_once(
    fake_smolvm: Any, shared_dir: Path
) -> None:
    """Even on a machine just made: it printed, so it ran, and its output is shown."""
    image_machine(fake_smolvm, "demo")
    log = shared_dir / "f"
    proc = bottle("exec", "-n", "demo", f"echo x >> {log}; echo printed; echo err >&2; kill -9 $$")
    assert runs(log) == 1
    assert (proc.returncode, proc.stdout) == (137, "printed\n")
    assert proc.stderr.splitlines()[0] == "err"
    assert "bottle" not in proc.stderr, proc.stderr


@pytest.mark.usefixtures("exact")
def test_a_kill_during_bring_up_is_run_again_and_says_why(
    fake_smolvm: Any, shared_dir: Path
) -> None:
    image_machine(fake_smolvm, "demo")
    assert bottle("exec", "-n", "demo", "true").returncode == 0  # who runs commands: learnt
    fake_smolvm.set_fault(KILL_EXECS=1)
    log = shared_dir / "f"
    proc = bottle("exec", "-n", "demo", f"echo x >> {log}; echo done")
    assert (proc.returncode, proc.stdout) == (0, "done\n"), proc.stderr
    assert runs(log) == 1  # the killed run never ran it
    (line,) = proc.stderr.splitlines()
    assert line.startswith("bottle: exec in machine 'demo' exited with status 137 and no output ")
    assert "after the machine came up (timed from its creation), within its 60 s bring-up" in line
    assert line.endswith("running it again in 1.0 s")


@pytest.mark.usefixtures("exact")
def test_no_retry(fake_smolvm: Any, shared_dir: Path) -> None:
    image_machine(fake_smolvm, "demo")
    assert bottle("exec", "-n", "demo", "true").returncode == 0
    fake_smolvm.set_fault(KILL_EXECS=1)
    proc = bottle("exec", "-n", "demo", "--no-retry", "echo never")
    assert (proc.returncode, proc.stdout, proc.stderr) == (137, "", "")
    assert bottle("exec", "-n", "demo", "--no-retry", "echo ran").stdout == "ran\n"


@pytest.mark.usefixtures("exact")
def test_launch_retries_a_kill_in_provisioning(fake_smolvm: Any, shared_dir: Path) -> None:
    """A launched machine's age is launch's own clock: its first exec is in its bring-up."""
    fake_smolvm.set_fault(KILL_EXECS=1)
    proc = bottle("launch", "-n", "m1", "--image", ROOT_IMAGE, "--agent-command", "sh",
                  "--no-tty", "--", "-c", "echo agent ran")  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "agent ran\n"), proc.stderr
    assert "within its 60 s bring-up" in proc.stderr
    assert "timed from launch's start" in proc.stderr


# --- the Python API -------------------------------------------------------------------------


def test_the_default_policy_is_the_replaced_classs(fake_smolvm: Any, shared_dir: Path) -> None:
    """Drop-in: once more on 137 after the settle, whatever the machine's age or output; the
    first run's output is kept in the result."""
    image_machine(fake_smolvm, "m", created_at=HOUR_AGO)
    log = shared_dir / "f"
    result = SmolmachinesBottle("m", retry=RetryPolicy(delay=0.01)).exec(
        f"echo x >> {log}; echo out; kill -9 $$"
    )
    assert runs(log) == 2
    assert result.retry_exhausted
    assert [(r.returncode, r.stdout) for r in result.attempts] == [(137, "out\n"), (137, "out\n")]


def test_bring_up_policy_against_the_machines_age(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "young")
    image_machine(fake_smolvm, "old", created_at=HOUR_AGO)
    for name, kills_left in (("young", 0), ("old", 1)):
        b = SmolmachinesBottle(name, retry=QUICK_BRING_UP)
        b.guest_user()
        fake_smolvm.set_fault(KILL_EXECS=1)
        result = b.exec("echo hi")
        if kills_left:
            assert (result.returncode, len(result.attempts), result.retry_exhausted) == (
                137, 1, False)  # fmt: skip
        else:
            assert (result.stdout, len(result.attempts)) == ("hi\n", 2)
        fake_smolvm.set_fault(KILL_EXECS=None)
        (fake_smolvm.state_dir / "exec_kills").unlink()


def test_a_launched_bottle_past_its_bring_up_does_not_retry(fake_smolvm: Any) -> None:
    backend = SmolmachinesBottleBackend(retry=QUICK_BRING_UP)
    with backend.launch(root_spec()) as b:
        b.guest_user()
        b._up_since = time.monotonic() - 3600  # as if an hour had passed since launch
        fake_smolvm.set_fault(KILL_EXECS=1)
        result = b.exec("echo hi")
        assert (result.returncode, len(result.attempts)) == (137, 1)
        b._up_since = time.monotonic()
        fake_smolvm.set_fault(KILL_EXECS=1)
        (fake_smolvm.state_dir / "exec_kills").unlink()
        assert b.exec("echo hi").stdout == "hi\n"


def test_a_stopped_machine_is_not_in_its_bring_up(fake_smolvm: Any) -> None:
    """The age is asked only after a kill; a machine that is gone by then is not retried."""
    image_machine(fake_smolvm, "m")
    b = SmolmachinesBottle("m", retry=QUICK_BRING_UP)
    assert b._past_bring_up("", "", 60.0)[0] is False
    fake_smolvm.run("machine", "stop", "-n", "m")
    refused, why = b._past_bring_up("", "", 60.0)
    assert refused and "it is stopped" in why
    assert b._past_bring_up("out", "", 60.0) == (
        True, "it printed output, so the command ran (a bring-up kill comes first)")  # fmt: skip


def test_the_vm_process_gives_the_age_when_it_is_smolvms(
    fake_smolvm: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine made an hour ago and started just now is in its bring-up: its VM process
    (`status --json`'s pid, running smolvm's executable or SMOLVM_BOOT_BINARY) says so."""
    vm = tmp_path / "smolvm-vm"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", vm)
    proc = subprocess.Popen([str(vm), "60"])
    try:
        image_machine(fake_smolvm, "m", created_at=HOUR_AGO, pid=proc.pid)
        b = SmolmachinesBottle("m", retry=QUICK_BRING_UP)
        refused, why = b._past_bring_up("", "", 60.0)
        assert refused and "timed from its creation" in why  # not smolvm's: not believed
        monkeypatch.setenv("SMOLVM_BOOT_BINARY", str(vm))
        refused, why = b._past_bring_up("", "", 60.0)
        assert not refused and f"its VM process {proc.pid} started then" in why
    finally:
        proc.kill()
        proc.wait()


def test_bring_up_is_checked() -> None:
    from bottle.errors import InvalidInputError

    for bad in (-1, float("nan"), float("inf"), "60", True):
        with pytest.raises(InvalidInputError, match="RetryPolicy bring_up"):
            RetryPolicy(bring_up=bad)  # type: ignore[arg-type]
    assert BRING_UP_RETRY.bring_up == 60.0
