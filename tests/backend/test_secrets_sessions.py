"""Secrets (README, "Secrets"): a `secret_env` value is on no command line, in no log, in no
exception message or repr, and not on the user's terminal, through whole interactive sessions;
yet the guest command has it in its environment.

A background thread scans every process's /proc/PID/cmdline (everyone's, not only ours) while
the session runs. To show the scan is not vacuous it also records which of the session's
processes carry the secret in their environment (where it is meant to travel), and the guest
proves it received the exact value by writing its SHA-256.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest
from harness.backend import BOTTLE, LAUNCH, ROOT_IMAGE, ProcWatch, wait_for
from harness.terminal import terminal_on_stdio, user_terminal, wait_status

from bottle import smolvm as sv
from bottle.backend import LaunchSpec
from bottle.backend.smolmachines import RetryPolicy, SmolmachinesBottleBackend
from bottle.errors import (
    ConnectionLostError,
    GuestCommandError,
    MachineNotRunningError,
    RetryExhaustedError,
)

NAME = "BOTTLE_TOKEN"

pytestmark = pytest.mark.usefixtures("test_images")


@pytest.fixture(autouse=True)
def _fresh_version_cache() -> None:
    sv.clear_version_cache()


@pytest.fixture
def secret() -> str:
    return "tok-" + secrets.token_hex(24)  # long and random: never there by chance


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _guest_script(d: Path) -> str:
    """Record the secret's hash and length, then hold still until the test has scanned."""
    return (
        f'printf %s "${NAME}" | sha256sum | cut -d" " -f1 > {d}/hash; '
        f'echo "token-length=${{#{NAME}}}"; '
        f"touch {d}/ready; while [ ! -e {d}/go ]; do sleep 0.02; done"
    )


def _release_when_scanned(d: Path, watch: ProcWatch) -> threading.Thread:
    """In the background: once the guest is up, let the scanner look, then let the guest go."""

    def run() -> None:
        wait_for((d / "ready").exists, "the guest to start")
        watch.wait_rounds(5)
        (d / "go").touch()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _assert_held_by_guest(watch: ProcWatch) -> None:
    assert watch.rounds > 5
    guests = [cmd for cmd in watch.environ_holders.values() if cmd.startswith("/bin/sh -c ")]
    assert guests, f"no guest process held the secret in its environment: {watch.environ_holders}"


def _exception_texts(exc: BaseException) -> list[str]:
    texts = [str(exc), repr(exc), repr(exc.args), repr(vars(exc))]
    texts += traceback.format_exception(exc)
    for linked in (exc.__cause__, exc.__context__):
        if linked is not None:
            texts += _exception_texts(linked)
    return texts


def test_interactive_launch_session_keeps_the_secret_hidden(
    fake_smolvm: Any, shared_dir: Path, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    """create, start, provisioning, a tty agent session through the relay, failures, teardown:
    in process, with every log record at DEBUG captured."""
    caplog.set_level(logging.DEBUG)
    d = shared_dir
    prompt = d / "prompt.md"
    prompt.write_text("be careful\n")
    spec = LaunchSpec(
        "m1",
        image=ROOT_IMAGE,
        env={"PLAIN": "visible"},
        secret_env={NAME: secret},
        prompt_file=str(prompt),
        prompt_guest_path=str(d / "guest" / "prompt.md"),
        agent_command="/bin/sh",
        prompt_mode="none",
        workdir=str(d / "work"),
        terminal_title="secret session",
    )
    backend = SmolmachinesBottleBackend(retry=RetryPolicy(attempts=2, delay=0.01))
    errors: list[BaseException] = []
    with terminal_on_stdio() as term, ProcWatch(os.getpid(), secret.encode()) as watch:
        with backend.launch(spec) as bottle:
            releaser = _release_when_scanned(d, watch)
            status = bottle.exec_agent(["-c", _guest_script(d)], tty=True)
            releaser.join(30)
            assert status == 0
            fake_smolvm.set_fault(KILL_EXECS=2)
            with pytest.raises(RetryExhaustedError) as retry:
                bottle.exec(f'echo "${NAME}"').check()
            errors.append(retry.value)
            fake_smolvm.set_fault(KILL_EXECS=None)
            with pytest.raises(GuestCommandError) as guest:
                bottle.exec("exit 3").check()
            errors.append(guest.value)
            fake_smolvm.set_fault(DIE_AFTER=1)
            with pytest.raises(ConnectionLostError) as lost:
                bottle.run_agent(["-c", "sleep 30"], tty=True).check()
            errors.append(lost.value)
            with pytest.raises(MachineNotRunningError) as stopped:
                bottle.exec("true").check()
            errors.append(stopped.value)
            reprs = [repr(bottle), repr(spec), repr(backend), str(spec)]
        out = term.settle()
    assert fake_smolvm.machine("m1") is None
    assert (d / "hash").read_text().strip() == _sha(secret)
    assert f"token-length={len(secret)}".encode() in out
    assert watch.cmdline_hits == [], f"secret on a command line: {watch.cmdline_hits}"
    _assert_held_by_guest(watch)
    assert secret.encode() not in out
    assert secret not in caplog.text
    for record in caplog.records:
        assert secret not in repr(record.args)
        assert secret not in record.getMessage()
    assert f"'-e', '{NAME}'" in caplog.text  # the DEBUG records were captured: names only
    for exc in errors:
        for text in _exception_texts(exc):
            assert secret not in text, f"{type(exc).__name__} shows the secret: {text}"
    for text in reprs:
        assert secret not in text
    assert "hidden" in repr(spec) and "hidden" in repr(bottle)
    log_file = (fake_smolvm.state_dir / "calls.jsonl").read_text()
    assert secret not in log_file
    assert f'"-e", "{NAME}"' in log_file


def test_cli_launch_session_keeps_the_secret_hidden(
    fake_smolvm: Any, shared_dir: Path, secret: str
) -> None:
    """`bottle -v launch --secret-env` on a real terminal: its DEBUG log goes to the terminal
    too, and the value shows up in none of it nor on any command line."""
    d = shared_dir
    env = {**os.environ, NAME: secret}
    argv = [*BOTTLE, "-v", *LAUNCH, "--secret-env", NAME, "--title", "t",
            "--workdir", str(d / "work"), "--agent-command", "/bin/sh",
            "--", "-c", _guest_script(d)]  # fmt: skip
    with user_terminal() as term:
        proc = term.spawn(argv, env)
        with ProcWatch(proc.pid, secret.encode()) as watch:
            releaser = _release_when_scanned(d, watch)
            status = wait_status(proc)
            releaser.join(30)
            out = term.settle()
            assert watch.leftovers() == []
        term.assert_restored()
    assert status == 0, out
    assert (d / "hash").read_text().strip() == _sha(secret)
    assert f"token-length={len(secret)}".encode() in out
    assert watch.cmdline_hits == [], f"secret on a command line: {watch.cmdline_hits}"
    _assert_held_by_guest(watch)
    assert secret.encode() not in out
    assert b"bottle: running [" in out  # the DEBUG log reached the terminal, without the value
    assert f"'-e', '{NAME}'".encode() in out
    assert fake_smolvm.machine("m1") is None
