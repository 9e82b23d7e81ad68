"""Secrets never reach a command line, a log, an exception message or a repr.

A background thread scans /proc/*/cmdline of every process during whole sessions against the
fake smolvm. To show the scan is not vacuous, it also records which processes carried the
secret in their *environment* (where it is supposed to travel), and the guest proves it got
the value by printing its hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

import pytest
from harness.backend import (
    ROOT_IMAGE,
    ProcScan,
    child_argv,
    guest_execs,
    image_machine,
    wait_for_file,
)
from harness.terminal import run_in_pty

from bottle import smolvm as sv
from bottle.backend import LaunchSpec
from bottle.backend.smolmachines import SmolmachinesBottle, SmolmachinesBottleBackend
from bottle.errors import ConnectionLostError

pytestmark = pytest.mark.usefixtures("test_images")


@pytest.fixture(autouse=True)
def _fresh_version_cache() -> None:
    sv.clear_version_cache()


@pytest.fixture
def secret() -> str:
    # Distinctive and long enough never to occur by chance.
    return "tok-" + secrets.token_hex(24)


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


WAIT = 'touch {d}/ready; while [ ! -e {d}/go ]; do sleep 0.02; done; '
HASH = 'printf %s "$BOTTLE_TOKEN" | sha256sum | cut -d" " -f1'


def test_whole_session_keeps_the_secret_off_every_command_line(
    fake_smolvm: Any, shared_dir: Path, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    prompt = shared_dir / "p.md"
    prompt.write_text("prompt\n")
    spec = LaunchSpec(
        "m1",
        image=ROOT_IMAGE,
        env={"PLAIN": "visible"},
        secret_env={"BOTTLE_TOKEN": secret},
        prompt_file=str(prompt),
        prompt_guest_path=str(shared_dir / "g" / "p.md"),
        agent_command="/bin/sh",
        prompt_mode="none",
        workdir=str(shared_dir / "w"),
    )
    d = shared_dir
    with ProcScan(secret.encode()) as scan, SmolmachinesBottleBackend().launch(spec) as bottle:
        # A captured script, caught while it runs.
        box: dict[str, Any] = {}
        t = threading.Thread(
            target=lambda: box.setdefault("r", bottle.exec(WAIT.format(d=d) + HASH))
        )
        t.start()
        wait_for_file(d / "ready")
        scan.wait_rounds(3)
        held = set(scan.environ_pids)
        (d / "go").touch()
        t.join(30)
        assert box["r"].stdout.strip() == _sha(secret)
        assert box["r"].returncode == 0
        # The agent (no tty), caught while it runs, as root too.
        for name in ("ready", "go"):
            (d / name).unlink()
        out = d / "agent-hash"
        t = threading.Thread(
            target=lambda: box.setdefault(
                "s", bottle.exec_agent(["-c", WAIT.format(d=d) + HASH + f" > {out}"], tty=False)
            )
        )
        t.start()
        wait_for_file(d / "ready")
        scan.wait_rounds(3)
        (d / "go").touch()
        t.join(30)
        assert box["s"] == 0
        assert out.read_text().strip() == _sha(secret)
        assert bottle.exec(HASH, user="root").stdout.strip() == _sha(secret)
        assert secret not in repr(bottle)
        assert secret not in repr(spec)
    assert scan.cmdline_hits == []
    # The scan really saw processes carrying the secret (in their environment) while it ran.
    assert held, "the scan never caught a process holding the secret"
    assert secret not in caplog.text
    assert "BOTTLE_TOKEN" in caplog.text  # the name is logged, as part of `-e BOTTLE_TOKEN`
    assert secret not in (fake_smolvm.state_dir / "calls.jsonl").read_text()
    # Every guest command of the bottle gets the secret by name (the `id` probes need none).
    commands = [c for c in guest_execs(fake_smolvm) if c[c.index("--") + 1] != "id"]
    assert commands
    for call in commands:
        options = call[: call.index("--")]
        assert options[-2:] == ["-e", "BOTTLE_TOKEN"], call


def test_secret_not_in_errors(fake_smolvm: Any, secret: str) -> None:
    image_machine(fake_smolvm, "m")
    fake_smolvm.set_fault(DIE_AFTER=0.3)
    b = SmolmachinesBottle("m", secret_env={"BOTTLE_TOKEN": secret})
    with pytest.raises(ConnectionLostError) as info:
        b.exec("sleep 5").check()
    assert secret not in str(info.value)
    assert secret not in repr(info.value)
    assert all(secret not in arg for arg in info.value.argv)
    with pytest.raises(ValueError) as bad:
        SmolmachinesBottle("m", secret_env={"HOME": secret})
    assert secret not in str(bad.value)
    with pytest.raises(ValueError) as bad:
        SmolmachinesBottle("m", secret_env={"T": secret + "\0"})
    assert secret not in str(bad.value)


def test_tty_session_keeps_the_secret_off_every_command_line(
    fake_smolvm: Any, shared_dir: Path, secret: str
) -> None:
    image_machine(fake_smolvm, "m")
    d = shared_dir
    out = d / "tty-hash"
    env = {
        **os.environ,
        "BOTTLE_TEST_CFG": json.dumps({"machine": "m", "title": "secret test"}),
        "BOTTLE_TEST_SECRET_SRC": secret,
    }
    result: dict[str, Any] = {}
    with ProcScan(secret.encode()) as scan:
        t = threading.Thread(
            target=lambda: result.setdefault(
                "run",
                run_in_pty(child_argv(["-c", WAIT.format(d=d) + HASH + f" > {out}"]), env),
            )
        )
        t.start()
        wait_for_file(d / "ready")
        scan.wait_rounds(3)
        held = set(scan.environ_pids)
        (d / "go").touch()
        t.join(60)
    run = result["run"]
    assert b"RESULT=STATUS:0" in run.output, run.output
    assert out.read_text().strip() == _sha(secret)
    assert scan.cmdline_hits == []
    assert held
    assert secret.encode() not in run.output
