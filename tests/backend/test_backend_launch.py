"""launch against the fake smolvm: what it refuses before any smolvm call, the network an image
gets, progress reports, and time limits that keep every step (teardown above all) from hanging.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from harness.backend import AGENT_IMAGE, CLI_FAILURE, ROOT_IMAGE
from harness.terminal import run_in_pty

from bottle import smolvm as sv
from bottle.backend import LaunchSpec, Progress
from bottle.backend.smolmachines import RetryPolicy, SmolmachinesBottleBackend
from bottle.errors import InvalidInputError, SmolvmTimeoutError

FAST = RetryPolicy(attempts=2, delay=0.01)
BOTTLE = [sys.executable, "-m", "bottle"]

pytestmark = pytest.mark.usefixtures("test_images")



def _backend(**timeouts: float) -> SmolmachinesBottleBackend:
    return SmolmachinesBottleBackend(
        smolvm=sv.Smolvm(timeouts=sv.Timeouts(**timeouts)), retry=FAST
    )


# --- refused before any smolvm call -----------------------------------------------------------


def test_registry_image_without_network_is_refused_saying_how_to_go_local(
    fake_smolvm: Any,
) -> None:
    spec = LaunchSpec("m1", image="node:22", network=False)
    with pytest.raises(InvalidInputError) as info, _backend().launch(spec):
        pytest.fail("body must not run")
    message = str(info.value)
    assert "'node:22' is pulled from a registry" in message
    assert "docker save node:22 -o image.tar" in message
    assert "image='./image.tar'" in message
    assert fake_smolvm.calls() == []


def test_no_image_is_refused_unless_the_agent_runs_as_root(fake_smolvm: Any) -> None:
    refused = pytest.raises(InvalidInputError, match="only user is root")
    with refused as info, _backend().launch(LaunchSpec("m1")):
        pytest.fail("body must not run")
    assert "cannot run as 'node'" in str(info.value)
    assert fake_smolvm.calls() == []


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"cpus": 256}, "cpus must be an integer from 1 to 255"),
        ({"memory_mib": 2**32}, "memory"),
        ({"secret_env": {"PATH": "/evil"}}, "'PATH' is reserved"),
        ({"secret_env": {"LD_PRELOAD": "/evil.so"}}, "'LD_PRELOAD' is reserved"),
        ({"secret_env": {"PYTHONPATH": "/evil"}}, "'PYTHONPATH' is reserved"),
        ({"secret_env": {"DYLD_INSERT_LIBRARIES": "x"}}, "reserved"),
        ({"secret_env": {"SMOLVM_DATA_DIR": "/x"}}, "reserved"),
        ({"env": {"HOME": "/x"}}, "guest_env name 'HOME' is reserved"),
        ({"env": {"USER": "x"}}, "guest_env name 'USER' is reserved"),
    ],
)
def test_bad_resources_and_reserved_names_are_refused_first(
    fake_smolvm: Any, kwargs: dict[str, Any], needle: str
) -> None:
    spec = LaunchSpec("m1", agent_user="root", **kwargs)
    with pytest.raises(InvalidInputError, match=needle), _backend().launch(spec):
        pytest.fail("body must not run")
    assert fake_smolvm.calls() == []


def test_guest_env_may_set_path(fake_smolvm: Any) -> None:
    # Only secrets reach the host smolvm process's environment; guest_env is the guest's.
    spec = LaunchSpec("m1", agent_user="root", env={"PATH": "/opt/x/bin:/usr/bin:/bin"})
    with _backend().launch(spec) as bottle:
        assert bottle.exec('printf %s "$PATH"', user="root").stdout == "/opt/x/bin:/usr/bin:/bin"


# --- the network an image gets -------------------------------------------------------------


def _create_call(fake_smolvm: Any) -> list[str]:
    return next(c for c in fake_smolvm.calls() if c[1:2] == ["create"])


def test_registry_image_gets_networking_by_default(fake_smolvm: Any) -> None:
    with _backend().launch(LaunchSpec("m1", image=AGENT_IMAGE)) as bottle:
        assert bottle.exec("id -un").stdout == "node\n"
    assert "--net" in _create_call(fake_smolvm)


def test_local_image_stays_offline_unless_asked(fake_smolvm: Any, tmp_path: Path) -> None:
    archive = tmp_path / "agent.tar"
    archive.write_bytes(b"not really a tar; the fake reads its config from the table")
    fake_smolvm.add_image(str(archive), user="node", workdir="/home/node")
    with _backend().launch(LaunchSpec("m1", image=str(archive))) as bottle:
        assert bottle.exec("id -un").stdout == "node\n"
    assert "--net" not in _create_call(fake_smolvm)
    with _backend().launch(LaunchSpec("m2", image=str(archive), network=True)):
        pass
    assert "--net" in [c for c in fake_smolvm.calls() if c[1:2] == ["create"]][-1]


def test_cli_no_net_with_a_registry_image_is_one_clear_line(fake_smolvm: Any) -> None:
    import subprocess

    proc = subprocess.run(
        [*BOTTLE, "launch", "-n", "m1", "--image", AGENT_IMAGE, "--no-net", "--no-tty"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == CLI_FAILURE
    assert proc.stderr.startswith("bottle: error: image 'bottle-test/agent:1' is pulled from a ")
    assert len(proc.stderr.splitlines()) == 1
    assert fake_smolvm.calls() == []


# --- progress ----------------------------------------------------------------------------------


def test_progress_reports_each_step_and_smolvms_lines(
    fake_smolvm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bottle.backend.smolmachines")
    events: list[Progress] = []
    with _backend().launch(LaunchSpec("m1", agent_user="root"), progress=events.append):
        pass
    steps = [(e.step, e.done) for e in events if e.line is None]
    assert steps == [
        ("creating", False), ("creating", True),
        ("starting", False), ("starting", True),
        ("provisioning", False), ("provisioning", True),
        # The way down is reported too: a teardown is never a silent minute.
        ("stopping", False), ("stopping", True),
        ("deleting", False), ("deleting", True),
    ]  # fmt: skip
    lines = [e.line for e in events if e.line is not None and e.step == "starting"]
    assert "Starting machine 'm1'..." in lines  # smolvm's own stderr line, as it came
    assert all(e.machine == "m1" and e.elapsed >= 0 for e in events)
    logged = [r.getMessage() for r in caplog.records]
    for step in ("creating", "starting", "provisioning", "stopping", "deleting"):
        assert f"{step} machine 'm1'" in logged
        assert any(m.startswith(f"{step} machine 'm1': done in ") for m in logged)


def test_progress_carries_smolvms_image_pull_lines(fake_smolvm: Any) -> None:
    events: list[Progress] = []
    with _backend().launch(LaunchSpec("m1", image=ROOT_IMAGE), progress=events.append):
        pass
    pulled = [e for e in events if e.line and e.line.startswith("Pulling image")]
    # Each redraw of smolvm's progress bar (src/cli/mod.rs) is a report of its own, marked as
    # redrawn (smolvm ends it with "\r"); the last state, which smolvm ends with "\n", is not.
    assert any(e.line and "50%" in e.line and e.redrawn for e in pulled)
    assert pulled[-1].line and pulled[-1].line.startswith(f"Pulling image {ROOT_IMAGE}... done.")
    assert not pulled[-1].redrawn
    others = [e for e in events if e.line and not e.line.startswith("Pulling image")]
    assert others and not any(e.redrawn for e in others)


def test_bottle_launch_shows_progress_on_a_terminal(fake_smolvm: Any) -> None:
    fake_smolvm.set_fault(START_DELAY=2.5)
    run = run_in_pty(
        [*BOTTLE, "launch", "-n", "m1", "--user", "root", "--agent-command", "/bin/sh",
         "--", "-c", "echo agent-here"],
    )  # fmt: skip
    assert run.status == 0, run.output
    out = run.output
    assert b"bottle: starting 'm1'" in out
    assert b"Starting machine 'm1'..." in out
    assert b"bottle: starting 'm1' \xe2\x80\xa6 1 s" in out  # the elapsed time, redrawn
    assert "bottle: starting 'm1' … done in".encode() in out
    assert out.index(b"done in") < out.index(b"agent-here")
    fake_smolvm.set_fault(START_DELAY=None)  # both lines would show at once: no need to wait
    quiet = run_in_pty(
        [*BOTTLE, "-q", "launch", "-n", "m2", "--user", "root", "--agent-command", "/bin/sh",
         "--", "-c", "echo agent-here"],
    )  # fmt: skip
    assert quiet.status == 0
    assert b"bottle: starting" not in quiet.output
    assert b"Starting machine" not in quiet.output


def test_bottle_launch_shows_one_line_per_step_when_stderr_is_not_a_terminal(
    fake_smolvm: Any,
) -> None:
    import subprocess

    argv = [*BOTTLE, "launch", "-n", "m1", "--user", "root", "--no-tty", "--agent-command",
            "/bin/sh", "--", "-c", "echo agent-here"]  # fmt: skip
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "agent-here\n"
    # One plain line per step, with its duration (nothing redrawn: no "\r", no escapes); and,
    # with a smolvm older than 1.8.1 (pytest --fake-smolvm-version), the warning about pastes.
    release = tuple(int(n) for n in os.environ.get("FAKE_SMOLVM_VERSION", "1.9.3").split("."))
    lines = [ln for ln in proc.stderr.splitlines() if "is older than 1.8.1" not in ln]
    assert len(proc.stderr.splitlines()) - len(lines) == (1 if release < (1, 8, 1) else 0)
    steps = ["creating", "starting", "provisioning", "stopping", "deleting"]
    assert len(lines) == len(steps), proc.stderr
    for line, step in zip(lines, steps, strict=True):
        assert re.fullmatch(rf"bottle: {step} 'm1' … done in \d+\.\d s", line), line
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr
    quiet = subprocess.run(
        [*argv[:3], "-q", *argv[3:]], stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert (quiet.returncode, quiet.stdout) == (0, "agent-here\n")
    assert " … " not in quiet.stderr


# --- time limits --------------------------------------------------------------------------------


def test_start_that_outlives_its_limit_is_an_error_naming_it_and_is_torn_down(
    fake_smolvm: Any,
) -> None:
    fake_smolvm.set_fault(START_DELAY=30)
    backend = _backend(start=1.0)
    expired = pytest.raises(
        SmolvmTimeoutError, match=r"smolvm machine start for machine 'm1' did not finish within 1 s"
    )
    with expired, backend.launch(LaunchSpec("m1", agent_user="root")):
        pytest.fail("body must not run")
    assert fake_smolvm.machine("m1") is None
    assert fake_smolvm.subcommands()[-1] == "delete"




def test_teardown_never_hangs_on_a_wedged_smolvm(
    fake_smolvm: Any, caplog: pytest.LogCaptureFixture
) -> None:
    backend = _backend(stop=1.0, delete=1.0)
    failed = pytest.raises(RuntimeError, match="the agent failed")
    with failed, backend.launch(LaunchSpec("m1", agent_user="root")):
        fake_smolvm.set_fault(DELAY_STOP=60, DELAY_DELETE=60)
        raise RuntimeError("the agent failed")
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    stopped = [i for i, m in enumerate(errors) if "teardown: stop of machine 'm1' failed" in m]
    deleted = [i for i, m in enumerate(errors) if "teardown: delete of machine 'm1' failed" in m]
    assert len(stopped) == len(deleted) == 1 and stopped < deleted, errors
    assert "within 1 s" in errors[stopped[0]] and "within 1 s" in errors[deleted[0]], errors
    # The fake logs a call once its Python is up, which a loaded machine can put off past the
    # 1 s limit: a call stopped before that is missing from its log (seen), never out of order.
    teardown = [c for c in fake_smolvm.subcommands() if c in ("stop", "delete")]
    assert teardown in ([], ["stop"], ["delete"], ["stop", "delete"]), teardown
