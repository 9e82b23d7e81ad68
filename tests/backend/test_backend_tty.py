"""exec_agent with a tty: through bottle.relay, on a real pty playing the user's terminal,
against the fake smolvm (which puts the terminal in raw mode and runs the guest on a pty)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from harness.backend import child_argv, image_machine, vm_lost_line
from harness.terminal import run_in_pty

from bottle.backend import terminal
from bottle.backend.smolmachines import SmolmachinesBottle

pytestmark = pytest.mark.usefixtures("test_images")



def _env(**cfg: Any) -> dict[str, str]:
    return {**os.environ, "BOTTLE_TEST_CFG": json.dumps(cfg)}


def test_tty_session_decorates_restores_and_returns_the_agents_status(
    fake_smolvm: Any, require_node_user: Any
) -> None:
    image_machine(fake_smolvm, "m")
    title = "proj \x1b]0;evil\x07 \x9b2J"
    run = run_in_pty(
        child_argv(["-c", 'echo "in guest as $(id -un), tty: $(tty)"; stty size; exit 7']),
        _env(machine="m", title=title, color="#0a0b0c"),
    )
    deco = terminal.decoration(title, "#0a0b0c")
    assert deco is not None
    out = run.output
    assert b"RESULT=STATUS:7" in out, out
    assert b"in guest as node, tty: /dev/pts/" in out
    assert b"30 100" in out  # the user's terminal size reached the guest pty
    start, reset = deco.start.encode(), deco.reset.encode()
    assert out.count(start) == 1
    assert out.count(reset) == 1
    assert out.index(start) < out.index(b"in guest") < out.index(reset)
    assert b"evil" in out and b"\x1b]0;evil" not in out  # the hostile title was defused
    assert run.termios_after == run.termios_before
    calls = [c for c in fake_smolvm.calls() if c[1:2] == ["exec"]]
    assert calls[-1][:6] == ["machine", "exec", "--name", "m", "-i", "-t"]


def test_tty_session_without_decoration_writes_no_escape(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    run = run_in_pty(child_argv(["-c", "echo plain"]), _env(machine="m"))
    assert b"RESULT=STATUS:0" in run.output
    assert b"\x1b]0;" not in run.output
    assert b"\x1b]11;" not in run.output


def test_tty_connection_lost_is_an_error_and_the_terminal_is_restored(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    fake_smolvm.set_fault(DIE_AFTER=0.8)
    run = run_in_pty(child_argv(["-c", "sleep 20"]), _env(machine="m", title="t"))
    assert b"RESULT=ERROR:ConnectionLostError:connection to the VM lost" in run.output
    # smolvm's own line reached the user (bottle's error rests on the machine's state).
    assert vm_lost_line("m", "run interactive").encode() in run.output
    assert run.status == 99
    assert run.termios_after == run.termios_before
    assert run.output.rstrip().endswith(b"'m' is stopped after the agent session ended")


def test_tty_session_in_a_workdir(fake_smolvm: Any, require_node_user: Any) -> None:
    image_machine(fake_smolvm, "m")
    with tempfile.TemporaryDirectory(prefix="bottle-tty-") as base:
        os.chmod(base, 0o755)  # node must be able to reach it
        workdir = os.path.join(base, "a b$c 'd'")
        os.mkdir(workdir)
        run = run_in_pty(
            child_argv(["-c", 'echo "cwd=$(pwd)"']), _env(machine="m", workdir=workdir)
        )
    # The guest's pty makes the LF a CR LF; the user's terminal, whose output processing the
    # relay leaves on in direct mode, adds a CR of its own (CR CR LF: the same on the screen).
    assert f"cwd={workdir}\r\r\n".encode() in run.output, run.output
    assert b"RESULT=STATUS:0" in run.output


def test_relay_argv_is_one_runnable_command_line(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    b = SmolmachinesBottle(
        "m",
        agent_command="/bin/sh",
        agent_prompt_mode="none",
        secret_env={"BOTTLE_TOKEN": "value-from-env"},
    )
    argv = b.relay_argv(["-c", 'echo "token=$BOTTLE_TOKEN"; exit 4'])
    script = terminal.exec_shell_script(argv, "T", "")
    assert script is not None
    run = run_in_pty(["sh", "-c", script], b.child_env())
    assert run.status == 4
    assert b"token=value-from-env" in run.output
    assert run.output.endswith(b"\x1b[23;0t")
    assert run.termios_after == run.termios_before


def test_non_tty_exec_agent_does_not_touch_the_terminal(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    code = (
        "from bottle.backend.smolmachines import SmolmachinesBottle as B; import sys; "
        "sys.exit(B('m', agent_command='/bin/sh', agent_prompt_mode='none', "
        "terminal_title='T').exec_agent(['-c', 'echo plain; exit 5'], tty=False))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=False, timeout=60
    )
    assert proc.returncode == 5
    assert proc.stdout == b"plain\n"


# Run in the guest: report the pid of the smolvm client it runs under (its nearest ancestor
# with smolvm as program or script), then wait for the gate file.
SMOLVM_PID = """
p=$$
while [ "$p" -gt 1 ] && ! tr '\\0' '\\n' < /proc/$p/cmdline | head -2 | grep -qx '.*smolvm'; do
    p=$(cut -d' ' -f4 /proc/$p/stat)
done
echo $p > "$0/pid.new" && mv "$0/pid.new" "$0/pid"
while [ ! -e "$0/gate" ]; do sleep 0.02; done
"""


def test_tty_session_output_goes_straight_to_the_users_terminal(fake_smolvm: Any) -> None:
    """exec_agent runs the relay in direct mode: smolvm's stdin is the relay's pty, its stdout
    (what the agent prints) the user's terminal itself, never copied by the relay."""
    image_machine(fake_smolvm, "m")
    with tempfile.TemporaryDirectory(prefix="bottle-tty-") as shared:
        os.chmod(shared, 0o777)  # the guest may run as node
        with ThreadPoolExecutor(1) as pool:
            session = pool.submit(
                run_in_pty, child_argv(["-c", SMOLVM_PID, shared]), _env(machine="m")
            )
            pidfile = os.path.join(shared, "pid")
            deadline = time.monotonic() + 60
            while not os.path.exists(pidfile) and time.monotonic() < deadline:
                time.sleep(0.02)
            try:
                pid = int(Path(pidfile).read_text())
                stdin, stdout = (os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1))
            finally:
                Path(shared, "gate").touch()
            run = session.result(120)
    assert b"RESULT=STATUS:0" in run.output, run.output
    assert stdin.startswith("/dev/pts/") and stdout.startswith("/dev/pts/"), (stdin, stdout)
    assert stdin != stdout, f"smolvm writes to the relay's pty {stdin}"
    assert run.termios_after == run.termios_before
