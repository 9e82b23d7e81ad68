"""Recorded agent sessions: `exec_agent(record=…)` and `bottle launch|agent --record`, end to end
against the fake smolvm on a real pty, played back with `asciinema cat`.

A recorded session runs the relay in copy mode (it must see the output to record it), so the
recording holds what the user's terminal showed; the agent's secrets travel to smolvm through
its environment and never reach the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness.backend import CLI_FAILURE, LAUNCH, image_machine, root_spec
from harness.terminal import run_in_pty

from bottle.backend.smolmachines import SmolmachinesBottle, SmolmachinesBottleBackend
from bottle.errors import InvalidInputError, MachineNotRunningError, SmolvmError
from bottle.relay import Recording

BOTTLE = [sys.executable, "-m", "bottle"]
HASH = 'printf %s "$BOTTLE_TOKEN" | sha256sum | cut -d" " -f1'
# The agent: some UTF-8, colour, and the hash of the secret it was given (proof it got it).
AGENT = "printf 'agent-here \\342\\202\\254 \\033[32mgreen\\033[0m\\n'; echo sha=$(" + HASH + ")"

pytestmark = pytest.mark.usefixtures("test_images")



@pytest.fixture
def secret() -> str:
    return "tok-" + secrets.token_hex(24)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def asciinema_cat(cast: Path) -> bytes:
    proc = subprocess.run(
        [sys.executable, "-m", "asciinema", "cat", str(cast)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=dict(os.environ, PYTHONIOENCODING="utf-8"),
        start_new_session=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return proc.stdout


def check_recording(cast: Path, shown_on_terminal: bytes, secret: str) -> dict[str, Any]:
    """The file is private, plays back what the terminal showed, and holds no secret."""
    assert stat.S_IMODE(cast.stat().st_mode) == 0o600
    raw = cast.read_bytes()
    assert secret.encode() not in raw
    header = json.loads(raw.split(b"\n", 1)[0])
    assert set(header.get("env", {})) <= {"TERM", "SHELL"}
    played = asciinema_cat(cast)
    assert f"sha={_sha(secret)}".encode() in played
    assert "agent-here € \x1b[32mgreen\x1b[0m".encode() in played
    assert played in shown_on_terminal
    return dict(header)


def test_exec_agent_records_the_session(fake_smolvm: Any, tmp_path: Path, secret: str) -> None:
    image_machine(fake_smolvm, "m")
    cast = tmp_path / "agent.cast"
    code = f"""
import os, sys
from bottle.backend.smolmachines import SmolmachinesBottle
b = SmolmachinesBottle("m", agent_command="/bin/sh", agent_prompt_mode="none",
                       secret_env={{"BOTTLE_TOKEN": os.environ.pop("SECRET_SRC")}})
sys.exit(b.exec_agent(["-c", {AGENT!r} + "; exit 3"], record={str(cast)!r}))
"""
    run = run_in_pty([sys.executable, "-c", code], {**os.environ, "SECRET_SRC": secret})
    assert run.status == 3, run.output
    header = check_recording(cast, run.output, secret)
    assert (header["width"], header["height"]) == (100, 30)  # run_in_pty's terminal
    assert header["title"] == "/bin/sh in m"
    assert run.termios_after == run.termios_before


@pytest.mark.parametrize("command", ["agent", "launch"])
def test_cli_records_the_session(
    fake_smolvm: Any, tmp_path: Path, secret: str, command: str
) -> None:
    cast = tmp_path / f"{command}.cast"
    if command == "agent":
        image_machine(fake_smolvm, "m1")
        argv = [*BOTTLE, "agent", "-n", "m1"]
    else:
        argv = [*BOTTLE, "--quiet", *LAUNCH]
    argv += ["--agent-command", "/bin/sh", "--title", "recorded", "--secret-env",
             "BOTTLE_TOKEN", "--record", str(cast), "--", "-c", AGENT]  # fmt: skip
    run = run_in_pty(argv, {**os.environ, "BOTTLE_TOKEN": secret})
    assert run.status == 0, run.output
    header = check_recording(cast, run.output, secret)
    assert header["title"] == "recorded"
    _, *events = cast.read_text().splitlines()
    assert all(json.loads(e)[1] == "o" for e in events)  # no input recorded by default


def test_refused_before_anything_runs(fake_smolvm: Any, tmp_path: Path) -> None:
    image_machine(fake_smolvm, "m")
    existing = tmp_path / "old.cast"
    existing.write_text("keep")
    b = SmolmachinesBottle("m", agent_command="/bin/sh", agent_prompt_mode="none")
    before = len(fake_smolvm.calls())
    with pytest.raises(InvalidInputError, match="already exists"):
        b.exec_agent(["-c", "true"], record=existing)
    with pytest.raises(InvalidInputError, match="does not exist"):
        b.exec_agent(["-c", "true"], record=tmp_path / "no-dir" / "x.cast")
    # Issue 19: a place that takes no new file was a plain ValueError, after smolvm had run.
    with pytest.raises(InvalidInputError, match=r"cannot create recording file '/proc/x\.cast'"):
        b.exec_agent(["-c", "true"], record="/proc/x.cast")
    with pytest.raises(InvalidInputError, match="terminal session"):
        b.exec_agent(["-c", "true"], tty=False, record=tmp_path / "x.cast")
    with pytest.raises(InvalidInputError, match="record_input needs"):
        b.exec_agent(["-c", "true"], record_input=True)
    assert len(fake_smolvm.calls()) == before
    assert existing.read_text() == "keep"
    assert not (tmp_path / "x.cast").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--record-input"], "--record-input needs --record"),
        (["--no-tty", "--record", "{tmp}/x.cast"], "needs a terminal session"),
        (["--record", "{tmp}/old.cast"], "already exists"),
        # Issue 19: refused only after create, start and provisioning.
        (["--record", "/proc/session.cast"],
         "cannot create recording file '/proc/session.cast': directory '/proc' takes no new "
         "files"),
    ],
)
def test_cli_refuses_a_bad_recording_before_launching(
    fake_smolvm: Any, tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "old.cast").write_text("keep")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run(
        [*BOTTLE, *LAUNCH, "--agent-command", "/bin/sh", *args],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == CLI_FAILURE
    assert proc.stderr.startswith("bottle: error: ") and message in proc.stderr, proc.stderr
    assert fake_smolvm.calls() == []  # no machine was touched


def test_a_session_that_never_started_leaves_no_file(fake_smolvm: Any, tmp_path: Path) -> None:
    """The file is made before anything runs, and removed when no session started: here the
    machine is stopped, then (the retry) running."""
    image_machine(fake_smolvm, "m", state="stopped")
    cast = tmp_path / "s.cast"
    b = SmolmachinesBottle("m", agent_command="/bin/sh", agent_prompt_mode="none")
    result = b.run_agent(["-c", "true"], record=cast)
    assert isinstance(result.error, MachineNotRunningError)
    assert not cast.exists()
    fake_smolvm.run("machine", "start", "-n", "m")
    code = f"""
import sys
from bottle.backend.smolmachines import SmolmachinesBottle
b = SmolmachinesBottle("m", agent_command="/bin/sh", agent_prompt_mode="none")
sys.exit(b.exec_agent(["-c", "echo second-try"], record={str(cast)!r}))
"""
    run = run_in_pty([sys.executable, "-c", code], dict(os.environ))
    assert run.status == 0, run.output
    assert b"second-try" in asciinema_cat(cast)


def test_cli_launch_that_fails_leaves_no_file(fake_smolvm: Any, tmp_path: Path) -> None:
    cast = tmp_path / "launch.cast"
    argv = [*BOTTLE, "--quiet", *LAUNCH, "--agent-command", "/bin/sh", "--record", str(cast),
            "--", "-c", "echo launched"]  # fmt: skip
    fake_smolvm.set_fault(START_FAIL=1)
    failed = run_in_pty(argv, dict(os.environ))
    assert failed.status == CLI_FAILURE, failed.output
    assert b"did not become ready" in failed.output
    assert not cast.exists()
    fake_smolvm.set_fault(START_FAIL=None)
    again = run_in_pty(argv, dict(os.environ))
    assert again.status == 0, again.output
    assert b"launched" in asciinema_cat(cast)


def test_cli_recording_is_private_whatever_the_umask(fake_smolvm: Any, tmp_path: Path) -> None:
    # Issue 19: mode 0400 under umask 0277, where the README promises 0600.
    image_machine(fake_smolvm, "m1")
    cast = tmp_path / "a.cast"
    argv = ["sh", "-c", 'umask 277; exec "$@"', "sh", *BOTTLE, "agent", "-n", "m1",
            "--agent-command", "/bin/sh", "--record", str(cast), "--", "-c", "true"]  # fmt: skip
    run = run_in_pty(argv, dict(os.environ))
    assert run.status == 0, run.output
    assert stat.S_IMODE(cast.stat().st_mode) == 0o600


def test_a_recording_made_before_the_launch(fake_smolvm: Any, tmp_path: Path) -> None:
    """The API's way to refuse a recording before any machine is made: make it first."""
    with pytest.raises(InvalidInputError, match="takes no new files"):
        Recording("/proc/x.cast")
    cast = tmp_path / "s.cast"
    fake_smolvm.set_fault(FAIL_CREATE="image pull failed")
    with pytest.raises(SmolvmError, match="image pull failed"), Recording(cast) as rec:
        assert cast.exists()
        with SmolmachinesBottleBackend().launch(root_spec()) as b:
            b.run_agent([], record=rec)
    assert rec.closed and not rec.used
    assert not cast.exists()
