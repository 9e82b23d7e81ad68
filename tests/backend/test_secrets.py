"""Secrets (README, "Secrets"): a `secret_env` value is on no command line, in no log, in no
exception message or repr, and not on the user's terminal, through whole sessions against the
fake smolvm (captured and interactive, API and CLI, failures and teardown); yet the guest
command has it in its environment.

A background thread scans every process's /proc/PID/cmdline (everyone's, not only ours) while
the session runs. To show the scan is not vacuous it also records which processes carry the
secret in their environment (where it is meant to travel), and the guest proves it received
the exact value by writing its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest
from harness.backend import (
    BOTTLE,
    LAUNCH,
    ROOT_IMAGE,
    ProcScan,
    ProcWatch,
    child_argv,
    guest_execs,
    image_machine,
    wait_for,
    wait_for_file,
)
from harness.terminal import run_in_pty, terminal_on_stdio, user_terminal, wait_status

from bottle.backend import LaunchSpec
from bottle.backend.smolmachines import RetryPolicy, SmolmachinesBottle, SmolmachinesBottleBackend
from bottle.errors import (
    ConnectionLostError,
    GuestCommandError,
    MachineNotRunningError,
    RetryExhaustedError,
)

NAME = "BOTTLE_TOKEN"

pytestmark = pytest.mark.usefixtures("test_images")



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


# --- interactive launch sessions, API and CLI ----------------------------------------------


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
