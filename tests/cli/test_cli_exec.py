"""`bottle exec` as a docker user runs it: argv form, stdin, streamed and byte-exact output,
the guest's status, bottle's own failures as 125, the script forms; against the fake smolvm.

The interactive forms (`-t`, `bottle shell`) are in test_cli_exec_tty.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from harness.backend import CLI_FAILURE, guest_execs, image_machine, wait_for_file
from harness.relay import MARK_VAR, assert_none_marked

BOTTLE = [sys.executable, "-m", "bottle"]
TIMEOUT = 60

pytestmark = pytest.mark.usefixtures("test_images")


def bottle(*args: str, input: bytes | None = None, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
    return subprocess.run(
        [*BOTTLE, *args], input=input, stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True, timeout=TIMEOUT, check=False, env=env,
    )  # fmt: skip


def one_error_line(proc: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    """The one stderr line of a bottle failure (status 125), checked for `needles`."""
    err = proc.stderr.decode()
    assert proc.returncode == CLI_FAILURE, (proc.returncode, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bottle: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def machine(fake_smolvm: Any, require_node_user: Any) -> Any:
    # Exact output: a smolvm older than 1.8.1 puts bottle's paste warning first.
    fake_smolvm.set_fault(VERSION="1.9.3")
    image_machine(fake_smolvm, "m")
    return fake_smolvm


# --- the argv form ---------------------------------------------------------------------------

ARGS = ["sh", "-c", 'printf "%s|" "$@"', "sh"]


@pytest.mark.parametrize(
    "words",
    [
        ["m", *ARGS, "-la", "--name", "x", "-i", "--"],  # options after COMMAND are COMMAND's
        ["m", "--", *ARGS, "-la", "--name", "x", "-i", "--"],
        ["-n", "m", *ARGS, "-la", "--name", "x", "-i", "--"],  # -n NAME: more than one word
        ["-n", "m", "--", *ARGS, "-la", "--name", "x", "-i", "--"],
        ["-u", "node", "m", "-w", "/tmp", *ARGS, "-la", "--name", "x", "-i", "--"],
    ],
)
def test_everything_after_the_command_word_is_the_guests(machine: Any, words: list[str]) -> None:
    proc = bottle("exec", *words)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"-la|--name|x|-i|--|", b"")


def test_user_workdir_and_environment(machine: Any) -> None:
    env = {**os.environ, "MY_TOKEN": "hunter2-secret"}
    proc = bottle(
        "exec", "-u", "root", "-w", "/tmp", "-e", "A=x y", "--secret-env", "MY_TOKEN", "m",
        "sh", "-c", 'echo "$(id -un) $(pwd) $A ${#MY_TOKEN}"', env=env,
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, b"root /tmp x y 14\n"), proc.stderr
    proc = bottle("exec", "m", "id", "-un")
    assert proc.stdout == b"node\n"  # the agent's user unless -u says otherwise
    assert b"hunter2-secret" not in (machine.state_dir / "calls.jsonl").read_bytes()


def test_the_guests_status_is_bottles(machine: Any, shared_dir: Path) -> None:
    proc = bottle("exec", "m", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert (proc.returncode, proc.stdout, proc.stderr) == (7, b"out\n", b"err\n")
    # A program that is not there: the guest's 127, as a shell says it.
    proc = bottle("exec", "m", "no-such-program-xyz")
    assert proc.returncode == 127
    assert b"no-such-program-xyz" in proc.stderr
    # Killed: 128+9, once. Never run again (a long-up machine's 137 is the command's own),
    # and what it printed before is kept.
    mark = shared_dir / "runs"
    proc = bottle("exec", "m", "sh", "-c", f'echo x >> {mark}; echo printed; kill -9 "$$"')
    assert (proc.returncode, proc.stdout) == (137, b"printed\n")
    assert b"bottle" not in proc.stderr  # runuser, in the guest, says "Killed"
    assert mark.read_text() == "x\n"


def test_a_137_from_smolvm_on_a_machine_long_up_is_not_retried(machine: Any) -> None:
    # A smolvm with `exec --user`: bottle asks the guest nothing first, so the kill hits the
    # command itself. Past the machine's bring-up, a 137 is the command's own.
    machine.set_fault(VERSION="1.14.0")  # exec --user (smolvm PR #1148)
    image_machine(machine, "old", created_at=int(time.time()) - 3600)
    machine.set_fault(KILL_EXECS=1)
    before = len(guest_execs(machine))
    proc = bottle("exec", "-u", "root", "old", "echo", "hi")
    assert (proc.returncode, proc.stdout, proc.stderr) == (137, b"", b"")
    assert len(guest_execs(machine)) - before == 1


def test_a_kill_before_the_command_started_in_bring_up_runs_it_again(
    machine: Any, shared_dir: Path
) -> None:
    """Killed before it started, on a machine just up: once more, saying why; what the second
    run reads is all of stdin (the first took none). --no-retry: the 137 is bottle's answer."""
    assert bottle("exec", "m", "true").returncode == 0  # who runs commands: learnt, kept
    machine.set_fault(KILL_EXECS=1)
    runs = shared_dir / "runs"
    proc = bottle("exec", "-i", "m", "sh", "-c", f"echo x >> {runs}; cat; echo ran >&2",
                  input=b"all of it\n")  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, b"all of it\n"), proc.stderr
    first, then = proc.stderr.decode().splitlines()
    assert first.startswith("bottle: exec in machine 'm' exited with status 137 and no output "
                            "before the command started, "), first  # fmt: skip
    assert first.endswith("running it again in 1.0 s"), first
    assert then == "ran"
    assert runs.read_text() == "x\n"
    (machine.state_dir / "exec_kills").unlink()
    proc = bottle("exec", "--no-retry", "-i", "m", "sh", "-c", f"echo x >> {runs}; cat",
                  input=b"never read\n")  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (137, b"", b"")
    assert runs.read_text() == "x\n"


def test_a_command_that_started_is_never_run_again(machine: Any, shared_dir: Path) -> None:
    """The issue's `echo x >> f; kill -9 $$` on a machine in its bring-up: it printed nothing,
    but it ran: once, its 137."""
    runs = shared_dir / "runs"
    proc = bottle("exec", "m", "sh", "-c", f'echo x >> {runs}; kill -9 "$$"')
    assert proc.returncode == 137
    assert runs.read_text() == "x\n"
    assert b"bottle" not in proc.stderr, proc.stderr


# --- input and output ------------------------------------------------------------------------


def test_i_forwards_stdin_and_its_end(machine: Any) -> None:
    proc = bottle("exec", "-i", "m", "sh", "-c", 'cat; echo "[end]"', input=b"a\nb")
    assert (proc.returncode, proc.stdout) == (0, b"a\nb[end]\n")


def test_without_i_the_command_reads_end_of_input_at_once(machine: Any) -> None:
    # Our stdin stays open and silent: were it forwarded, cat would wait for it forever.
    proc = subprocess.Popen([*BOTTLE, "exec", "m", "sh", "-c", 'cat; echo "[end] $?"'],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        if proc.poll() is None:
            proc.kill()
    assert (proc.returncode, out) == (0, b"[end] 0\n")


def test_output_comes_as_it_is_written(machine: Any, shared_dir: Path) -> None:
    """The guest writes a line to each stream, then waits for the test to have read both: held
    until the command exits, neither would ever come."""
    seen = shared_dir / "seen"
    script = f'echo first; echo warn >&2; while [ ! -e {seen} ]; do sleep 0.05; done; echo last'
    proc = subprocess.Popen([*BOTTLE, "exec", "m", "sh", "-c", script],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"first\n"
        assert proc.stderr.readline() == b"warn\n"
        seen.touch()
        assert proc.stdout.read() == b"last\n"
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_binary_output_is_byte_exact(machine: Any, shared_dir: Path) -> None:
    every = bytes(range(256))
    (shared_dir / "bytes").write_bytes(every)
    proc = bottle("exec", "m", "cat", str(shared_dir / "bytes"))
    assert (proc.returncode, proc.stdout) == (0, every)
    data = every * 4096 + every[::-1]  # 1 MiB and a bit, both ways
    proc = bottle("exec", "-i", "m", "cat", input=data)
    assert proc.returncode == 0
    assert proc.stdout == data
    proc = bottle("exec", "m", "sh", "-c", f"cat {shared_dir / 'bytes'} >&2")
    assert (proc.returncode, proc.stderr) == (0, every)


def test_a_guest_line_that_looks_like_smolvms_error_is_the_guests(machine: Any) -> None:
    """smolvm's own failure is one last `Error: …` line on stderr with status 1: only that is
    taken for smolvm's. The same line followed by more, or with another status, is output."""
    line = b"Error: agent operation failed: connect: nothing\n"
    proc = bottle("exec", "m", "sh", "-c", f"printf '{line.decode()}' >&2; echo after >&2; exit 1")
    assert (proc.returncode, proc.stderr) == (1, line + b"after\n")
    proc = bottle("exec", "m", "sh", "-c", f"printf '{line.decode()}' >&2; exit 3")
    assert (proc.returncode, proc.stderr) == (3, line)
    proc = bottle("exec", "m", "sh", "-c", "printf 'Error: my own\\n' >&2; exit 1")
    assert (proc.returncode, proc.stderr) == (1, b"Error: my own\n")


# --- bottle's own failures -------------------------------------------------------------------


def test_failures_around_the_command_are_one_line_and_125(machine: Any) -> None:
    machine.create("demo")
    one_error_line(bottle("exec", "dmeo", "true"), "machine 'dmeo' does not exist (did you mean "
                   "'demo'?)")  # fmt: skip
    machine.create("idle", running=False)
    one_error_line(bottle("exec", "idle", "true"), "machine 'idle' is not running")
    one_error_line(bottle("exec", "-w", "/no/such/dir", "m", "true"), "No such file")
    one_error_line(bottle("exec", "--user=-x", "m", "true"), "invalid user name")
    one_error_line(bottle("exec", "m", "A=1", "env"), "variable assignment", "set guest "
                   "variables with -e")  # fmt: skip
    one_error_line(bottle("exec", "m"), "COMMAND")
    one_error_line(bottle("exec"), "NAME")
    one_error_line(bottle("exec", "m", "-c", "true", "extra"), "-c SCRIPT takes no COMMAND")
    one_error_line(bottle("exec", "m2", "-n", "m", "true"), "given twice")
    one_error_line(bottle("exec", "-i", "-n", "m", "-"), "-i cannot forward")
    assert bottle("exec", "--bogus", "m", "true").returncode == CLI_FAILURE


def test_the_vm_dying_mid_command(machine: Any, shared_dir: Path) -> None:
    """Output before the VM died is kept; the end is bottle's failure, said once."""
    machine.set_fault(DIE_AFTER=2)
    started = shared_dir / "started"
    proc = subprocess.Popen(
        [*BOTTLE, "exec", "m", "sh", "-c", f"echo before; touch {started}; sleep 30"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    wait_for_file(started)
    assert out == b"before\n"
    assert proc.returncode == CLI_FAILURE
    (line,) = err.decode().splitlines()
    assert line.startswith("bottle: error: ") and "connection to VM lost" in line, line


@pytest.mark.parametrize("path", ["light", "full"])
def test_ctrl_c_ends_the_command_and_leaves_nothing_running(
    machine: Any, shared_dir: Path, path: str
) -> None:
    """Ctrl-C on a terminal signals its whole foreground group: bottle and smolvm. bottle
    exits 130 once smolvm is reaped, and smolvm's end ends the guest command. Down the light
    path (a plain exec, warm) as down the full one (`-e`: the mark reaches the guest too)."""
    mark = uuid.uuid4().hex
    ready = shared_dir / "ready"
    assert bottle("exec", "m", "true").returncode == 0  # warm
    options = ["-e", f"{MARK_VAR}={mark}"] if path == "full" else []
    proc = subprocess.Popen(
        [*BOTTLE, "exec", *options, "m", "sh", "-c", f"touch {ready}; sleep 30"],
        env={**os.environ, MARK_VAR: mark}, start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        wait_for_file(ready)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert err.decode().splitlines() == ["bottle: interrupted"]
    assert_none_marked(mark)


def test_exec_runs_one_smolvm_exec_and_asks_nothing_else(machine: Any) -> None:
    """No status or ls before or after: a missing machine is told from smolvm's own error."""
    calls = len(machine.calls())
    assert bottle("exec", "m", "true").returncode == 0
    made = machine.calls()[calls:]
    commands = [c for c in made if c[1:2] == ["exec"] and c[-1] == "true"]
    assert len(commands) == 1, made
    assert {c[1] for c in made if c[:1] == ["machine"]} <= {"exec"}, made


# --- the script forms ------------------------------------------------------------------------


def test_script_forms(machine: Any) -> None:
    proc = bottle("exec", "-n", "m", 'echo "a b"; exit 4')  # the older form: one word
    assert (proc.returncode, proc.stdout) == (4, b"a b\n")
    proc = bottle("exec", "m", "-c", 'echo "$0 $(id -un)"')
    assert proc.stdout == b"/bin/sh node\n"
    proc = bottle("exec", "-c", "-", "m", input=b"echo from-stdin\n")
    assert proc.stdout == b"from-stdin\n"
    proc = bottle("exec", "-n", "m", "-", input=b"echo old-form\n")
    assert proc.stdout == b"old-form\n"
