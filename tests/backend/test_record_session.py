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
from harness.backend import LAUNCH, image_machine
from harness.terminal import run_in_pty

from bottle.backend.smolmachines import SmolmachinesBottle
from bottle.errors import InvalidInputError

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
    assert proc.returncode == 1
    assert proc.stderr.startswith("bottle: error: ") and message in proc.stderr, proc.stderr
    assert fake_smolvm.calls() == []  # no machine was touched
