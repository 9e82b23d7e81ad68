"""The fake smolvm behaves as smolvm 1.9.3 does (read in its source; see fake_smolvm/README.md).

Each test names the behaviour it checks; tests of image machines, users, secrets and versions are
in test_fake_smolvm_strict.py. PTY tests play the terminal through
os.openpty(): the fake's stdin (and controlling tty) is the slave, the test holds the master.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from harness.fakevm import FAKE_SMOLVM, FakeSmolvm
from harness.terminal import Terminal

NOT_RUNNING = (
    "Error: agent operation failed: connect: machine 'm' is not running. "
    "Use 'smolvm machine start --name m' first.\n"
)
CORE_KEYS = {"name", "state", "cpus", "memory_mib", "pid", "image", "mounts", "ports",
             "created_at", "network", "labels"}


@pytest.fixture(autouse=True)
def _smolvm_1_9_3(fake_smolvm: FakeSmolvm) -> None:
    """These tests describe smolvm 1.9.3 whatever --fake-smolvm-version says; the ones about
    older releases pick theirs."""
    fake_smolvm.set_fault(VERSION=None)


def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    """Poll `predicate` until true; fail (no hang) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def gone(pid: int) -> bool:
    """True when `pid` no longer exists or is a zombie (reparented orphans may linger as Z)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat_line.rsplit(")", 1)[1].split()[0] == "Z"


def running(fake: FakeSmolvm, name: str = "m") -> None:
    fake.create(name, running=True)


# --------------------------------------------------------------------------- global conventions


def test_version_default_and_override(fake_smolvm: FakeSmolvm) -> None:
    r = fake_smolvm.run("--version")
    assert (r.returncode, r.stdout, r.stderr) == (0, "smolvm 1.9.3\n", "")
    fake_smolvm.set_fault(VERSION="0.9.0")
    assert fake_smolvm.run("-V").stdout == "smolvm 0.9.0\n"
    fake_smolvm.set_fault(VERSION="1.9")
    r = fake_smolvm.run("--version")
    assert r.returncode == 70 and "FAKE_SMOLVM_VERSION='1.9'" in r.stderr


def test_fixture_puts_fake_first_on_path(fake_smolvm: FakeSmolvm) -> None:
    r = subprocess.run(["smolvm", "--version"], capture_output=True, text=True, check=False)
    assert r.stdout == "smolvm 1.9.3\n"
    assert "BOTTLE_SMOLVM" not in os.environ
    assert os.environ["FAKE_SMOLVM_STATE"] == str(fake_smolvm.state_dir)


def test_state_dir_required(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_SMOLVM_")}
    r = subprocess.run([str(FAKE_SMOLVM), "machine", "ls"], capture_output=True, text=True,
                       env=env, check=False)
    # A test set-up mistake, not a smolvm behaviour: its own status and prefix.
    assert r.returncode == 70
    assert r.stderr == "fake smolvm: FAKE_SMOLVM_STATE is not set (a state directory)\n"


def test_vm_alias_and_list_alias(fake_smolvm: FakeSmolvm) -> None:
    assert fake_smolvm.run("vm", "create", "--name", "m").returncode == 0
    r = fake_smolvm.run("vm", "list", "--json")
    assert [m["name"] for m in json.loads(r.stdout)] == ["m"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["machine", "exec", "-n", "m", "--", "true"], "unexpected argument '-n' found"),
        (["machine", "start", "--bogus"], "unexpected argument '--bogus' found"),
        (["machine", "start", "--name"], "a value is required for '--name <NAME>'"),
        (["machine", "exec", "--name", "m"], "required arguments were not provided"),
        (["machine", "delete", "-f"], "required arguments were not provided"),
        (["machine", "start", "-n", "a", "-n", "b"], "cannot be used multiple times"),
        (["machine", "exec", "--name", "m", "-d", "-t", "true"], "cannot be used with"),
        (["machine", "exec", "--name", "m", "--timeout", "0s", "true"],
         "invalid value '0s' for '--timeout <DURATION>': timeout must be greater than 0 "
         "(e.g., 5sec, 30s)"),
        (["machine", "exec", "--name", "m", "--timeout", "5", "true"],
         "time unit needed, for example 5sec or 5ms"),
        (["machine", "exec", "--name", "m", "--timeout", "5 parsecs", "true"],
         'unknown time unit "parsecs"'),
        (["machine", "create", "--cpus", "256"],
         "invalid value '256' for '--cpus <N>': 256 is not in 0..=255"),
        (["machine", "create", "--mem", "4294967296"],
         "invalid value '4294967296' for '--mem <MiB>': 4294967296 is not in 0..=4294967295"),
        (["machine", "create", "--cpus=-1"],
         "invalid value '-1' for '--cpus <N>': -1 is not in 0..=255"),
        (["machine", "create", "--storage", "-5"], "a value is required for '--storage <GiB>'"),
        (["machine", "create", "--dns", "1.2.3"], "invalid IPv4 address syntax"),
        (["machine", "create", "--net-backend", "slirp"], "[possible values: tsi, virtio-net]"),
        (["machine", "create", "--image", " "], "image reference must not be empty"),
        (["machine", "cp", "--uid", "4294967296", "a", "m:/b"],
         "invalid value '4294967296' for '--uid <UID>': 4294967296 is not in 0..=4294967295"),
        (["machine", "cp", "--gid", "root", "a", "m:/b"],
         "invalid value 'root' for '--gid <GID>': invalid digit found in string"),
        (["machine", "create", "--name", "m", "sleep"], "unexpected argument 'sleep' found"),
        (["machine", "create", "--cpus", "four"], "invalid value 'four'"),
        (["machine", "frobnicate"], "unrecognized subcommand 'frobnicate'"),
        (["machine", "cp", "a"], "required arguments were not provided"),
    ],
)
def test_usage_errors_exit_2_on_stderr(
    fake_smolvm: FakeSmolvm, args: list[str], message: str
) -> None:
    running(fake_smolvm)
    r = fake_smolvm.run(*args)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.startswith("error: ") and message in r.stderr
    assert "Usage: smolvm" in r.stderr


def test_exec_short_n_runs_nothing(fake_smolvm: FakeSmolvm, tmp_path: Path) -> None:
    running(fake_smolvm)
    marker = tmp_path / "ran"
    r = fake_smolvm.run("machine", "exec", "-n", "m", "--", "touch", str(marker))
    assert r.returncode == 2 and not marker.exists()


def test_help_exits_0_on_stdout(fake_smolvm: FakeSmolvm) -> None:
    r = fake_smolvm.run("machine", "exec", "--help")
    assert r.returncode == 0 and "Usage: smolvm machine exec" in r.stdout and r.stderr == ""


# --------------------------------------------------------------------------- lifecycle


def test_create_output_and_record(fake_smolvm: FakeSmolvm) -> None:
    r = fake_smolvm.run("machine", "create", "--name", "m", "-I", "alpine", "--cpus", "2",
                        "--mem", "1024", "--net", "-e", "A=1", "--", "sleep", "1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (
        "Created machine: m\n  CPUs: 2, Memory: 1024 MiB\n\n"
        "Use 'smolvm machine start --name m' to start the machine\n"
        "Then use 'smolvm machine exec --name m -- <command>' to run commands\n")
    rec = fake_smolvm.machine("m")
    assert rec is not None
    assert (rec["state"], rec["cpus"], rec["memory_mib"], rec["image"], rec["network"]) == (
        "created", 2, 1024, "alpine", True)
    assert rec["cmd"] == ["sleep", "1"]


def test_create_defaults_network_off(fake_smolvm: FakeSmolvm) -> None:
    assert fake_smolvm.run("machine", "create", "-n", "m").returncode == 0
    rec = fake_smolvm.machine("m")
    assert rec is not None
    assert (rec["cpus"], rec["memory_mib"], rec["network"]) == (4, 8192, False)


def test_create_without_name_generates_one(fake_smolvm: FakeSmolvm) -> None:
    r = fake_smolvm.run("machine", "create")
    assert r.returncode == 0
    name = r.stdout.splitlines()[0].removeprefix("Created machine: ")
    assert fake_smolvm.machine(name) is not None


def test_create_duplicate(fake_smolvm: FakeSmolvm) -> None:
    fake_smolvm.create("m", running=True)
    r = fake_smolvm.run("machine", "create", "--name", "m", "--cpus", "1")
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (
        "Error: config operation failed: create machine: machine 'm' already exists "
        "or is being created\n"
    )
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["state"] == "running" and rec["cpus"] == 4


@pytest.mark.parametrize(("name", "reason"), [
    ("-a", 'must start with a letter or digit (got: "-a")'),
    ("_a", 'must start with a letter or digit (got: "_a")'),
    ("a--b", "cannot contain consecutive hyphens"),
    ("a-", 'cannot end with a hyphen (got: "a-")'),
    ("a b", "contains invalid character: ' '"),
    ("a.b", "contains invalid character: '.'"),
    ("a/b", "cannot contain path separators"),
    ("x" * 129, "too long: 129 characters (max 128)"),
    ("é", 'must start with a letter or digit (got: "é")'),
])
def test_create_rejects_bad_names(fake_smolvm: FakeSmolvm, name: str, reason: str) -> None:
    # src/data/mod.rs validate_vm_name, wrapped by build_vm_record.
    r = fake_smolvm.run("machine", "create", f"--name={name}")
    assert r.returncode == 1
    assert r.stderr == f"Error: config operation failed: create machine: machine name {reason}\n"
    assert not (fake_smolvm.state_dir / "machines").exists() or not list(
        (fake_smolvm.state_dir / "machines").iterdir())


@pytest.mark.parametrize("name", ["a", "A_b-1", "9", "a_", "x" * 128])
def test_create_accepts_good_names(fake_smolvm: FakeSmolvm, name: str) -> None:
    assert fake_smolvm.run("machine", "create", "--name", name).returncode == 0
    assert fake_smolvm.machine(name) is not None


def test_start_outputs_and_already_running(fake_smolvm: FakeSmolvm) -> None:
    fake_smolvm.create("m", running=False)
    r = fake_smolvm.run("machine", "start", "--name", "m")
    assert r.returncode == 0
    assert r.stderr == "Starting machine 'm'...\n"
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["state"] == "running"
    assert r.stdout == f"Machine 'm' running (PID: {rec['pid']})\n"
    r = fake_smolvm.run("machine", "start", "-n", "m")
    assert (r.returncode, r.stdout) == (0, f"Machine 'm' already running (PID: {rec['pid']})\n")


def test_start_unknown_explicit_name(fake_smolvm: FakeSmolvm) -> None:
    r = fake_smolvm.run("machine", "start", "--name", "nope")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", "Error: vm not found: nope\n")


def test_start_without_name_boots_default(fake_smolvm: FakeSmolvm) -> None:
    r = fake_smolvm.run("machine", "start")
    assert r.returncode == 0 and "Machine 'default' running" in r.stdout
    rec = fake_smolvm.machine("default")
    assert rec is not None and rec["state"] == "running"


def test_stop_running_then_stopped_exit_0(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    r = fake_smolvm.run("machine", "stop", "--name", "m")
    assert (r.returncode, r.stdout) == (0, "Stopping machine 'm'...\nStopped machine: m\n")
    r = fake_smolvm.run("machine", "stop", "--name", "m")
    assert (r.returncode, r.stdout) == (0, "Machine 'm' is not running (state: stopped)\n")
    r = fake_smolvm.run("machine", "stop", "--name", "nope")
    assert (r.returncode, r.stderr) == (1, "Error: vm not found: nope\n")


def test_delete_without_force_cancels_on_eof_leaving_machine_stopped(
    fake_smolvm: FakeSmolvm,
) -> None:
    running(fake_smolvm)
    r = fake_smolvm.run("machine", "delete", "--name", "m")  # stdin is /dev/null: EOF
    assert r.returncode == 0
    assert "Delete machine 'm'? [y/N] " in r.stderr
    assert "Cancelled" in r.stdout and "Deleted" not in r.stdout
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["state"] == "stopped"


@pytest.mark.parametrize(("answer", "deleted"), [("y\n", True), ("yes\n", True), ("n\n", False),
                                                 ("\n", False), ("sure\n", False)])
def test_delete_prompt_answers(fake_smolvm: FakeSmolvm, answer: str, deleted: bool) -> None:
    fake_smolvm.create("m", running=False)
    r = fake_smolvm.run("machine", "delete", "-n", "m", stdin=None, input=answer)
    assert r.returncode == 0
    assert (fake_smolvm.machine("m") is None) == deleted


def test_delete_force_and_rm_alias(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm, "a")
    fake_smolvm.create("b", running=False)
    r = fake_smolvm.run("machine", "delete", "--name", "a", "-f")
    assert r.returncode == 0
    assert r.stdout == ("Stopping machine 'a'...\nCleaning up data directory for vm: a\n"
                        "Deleted machine: a\n")
    assert fake_smolvm.run("machine", "rm", "-f", "-n", "b").returncode == 0
    assert fake_smolvm.machine("a") is None and fake_smolvm.machine("b") is None
    r = fake_smolvm.run("machine", "delete", "-f", "--name", "a")
    assert (r.returncode, r.stderr) == (1, "Error: vm not found: a\n")


@pytest.mark.parametrize("state", ["created", "running", "stopped", "failed", "unreachable",
                                   "frozen"])
def test_status_exit_0_for_every_state(fake_smolvm: FakeSmolvm, state: str) -> None:
    fake_smolvm.create("m", state=state, pid=77)
    r = fake_smolvm.run("machine", "status", "--name", "m")
    assert r.returncode == 0
    expected = "running (PID: 77)" if state == "running" else state
    assert r.stdout == f"Machine 'm': {expected}\n"
    r = fake_smolvm.run("machine", "status", "--name", "m", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 0 and doc.keys() >= CORE_KEYS
    assert (doc["name"], doc["state"]) == ("m", state)
    assert doc["pid"] == (77 if state == "running" else None)


def test_status_unknown(fake_smolvm: FakeSmolvm) -> None:
    r = fake_smolvm.run("machine", "status", "-n", "x")
    assert (r.returncode, r.stderr) == (1, "Error: vm not found: x\n")
    r = fake_smolvm.run("machine", "status", "-n", "x", "--json")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ("Error: config operation failed: machine status: machine 'x' "
                        "not found\n")


def test_ls_empty_and_json(fake_smolvm: FakeSmolvm) -> None:
    r = fake_smolvm.run("machine", "ls")
    assert (r.returncode, r.stdout) == (0, "No machines found\n")
    assert json.loads(fake_smolvm.run("machine", "ls", "--json").stdout) == []
    running(fake_smolvm, "a")
    fake_smolvm.create("b", running=False)
    docs = json.loads(fake_smolvm.run("machine", "ls", "--json").stdout)
    assert {d["name"]: d["state"] for d in docs} == {"a": "running", "b": "created"}
    assert all(d.keys() >= CORE_KEYS for d in docs)
    table = fake_smolvm.run("machine", "ls").stdout
    assert "a" in table and "running" in table and "created" in table


def test_injected_subcommand_failure(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    fake_smolvm.set_fault(FAIL_STOP="stop exploded")
    r = fake_smolvm.run("machine", "stop", "-n", "m")
    assert (r.returncode, r.stderr) == (1, "Error: stop exploded\n")
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["state"] == "running"
    fake_smolvm.set_fault(FAIL_DELETE="nope")
    assert fake_smolvm.run("machine", "rm", "-f", "-n", "m").stderr == "Error: nope\n"


# --------------------------------------------------------------------------- exec (no tty)


def test_exec_not_running_unknown_and_no_default(fake_smolvm: FakeSmolvm) -> None:
    fake_smolvm.create("m", running=False)
    r = fake_smolvm.run("machine", "exec", "--name", "m", "--", "true")
    assert (r.returncode, r.stdout, r.stderr) == (1, "", NOT_RUNNING)
    r = fake_smolvm.run("machine", "exec", "--name", "x", "--", "true")
    assert (r.returncode, r.stderr) == (1, "Error: vm not found: x\n")
    r = fake_smolvm.run("machine", "exec", "--", "true")
    assert r.stderr == "Error: agent operation failed: connect: machine 'default' not found\n"


def test_exec_buffers_stdout_then_stderr(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    script = "echo e1 >&2; echo o1; echo e2 >&2; echo o2; exit 3"
    r = subprocess.run([str(FAKE_SMOLVM), "machine", "exec", "--name", "m", "--", "sh", "-c",
                        script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       stdin=subprocess.DEVNULL, check=False)
    # One pipe for both streams: only buffering puts every stdout line before stderr.
    assert (r.returncode, r.stdout) == (3, b"o1\no2\ne1\ne2\n")


def test_exec_separates_streams(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    r = fake_smolvm.run("machine", "exec", "--name", "m", "--", "sh", "-c", "echo o; echo e >&2")
    assert (r.returncode, r.stdout, r.stderr) == (0, "o\n", "e\n")


def test_exec_stdin_is_dev_null(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    r = fake_smolvm.run("machine", "exec", "--name", "m", "--", "sh", "-c",
                        "cat; readlink /proc/self/fd/0", stdin=None, input="host data\n")
    assert r.stdout == "/dev/null\n"


@pytest.mark.parametrize(("script", "status"), [
    ("exit 0", 0), ("exit 7", 7), ("exit 255", 255),
    ("kill -TERM $$", 143), ("kill -KILL $$", 137), ("kill -INT $$", 130),
])
def test_exec_exit_status(fake_smolvm: FakeSmolvm, script: str, status: int) -> None:
    running(fake_smolvm)
    assert fake_smolvm.run("machine", "exec", "--name", "m", "--", "sh", "-c",
                           script).returncode == status


def test_exec_trailing_var_arg(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    # Once the command starts, later options belong to it, `--name` included.
    r = fake_smolvm.run("machine", "exec", "--name", "m", "echo", "--name", "x", "-e", "A=1")
    assert (r.returncode, r.stdout) == (0, "--name x -e A=1\n")
    r = fake_smolvm.run("machine", "exec", "--name", "m", "--", "echo", "--", "-n")
    assert r.stdout == "-- -n\n"


def test_exec_spawn_failures_are_errors_not_127(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    r = fake_smolvm.run("machine", "exec", "--name", "m", "--", "no-such-command-xyz")
    assert r.returncode == 1
    assert r.stderr == ("Error: agent operation failed: vm exec: failed to spawn command: "
                        "No such file or directory (os error 2)\n")
    r = fake_smolvm.run("machine", "exec", "--name", "m", "-w", "/no/such/dir", "--", "true")
    assert r.returncode == 1 and "failed to spawn command" in r.stderr
    r = fake_smolvm.run("machine", "exec", "--name", "m", "-i", "--", "no-such-command-xyz")
    assert r.stderr == ("Error: agent operation failed: vm exec interactive: "
                        "No such file or directory (os error 2)\n")


def test_exec_env(fake_smolvm: FakeSmolvm, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_smolvm.create("m", env=["REC=rec", "OVER=rec"])
    monkeypatch.setenv("HOST_SECRET", "s3cr3t")
    monkeypatch.setenv("HOST_ONLY", "leak")
    monkeypatch.delenv("UNSET_VAR", raising=False)
    r = fake_smolvm.run("machine", "exec", "--name", "m", "-e", "A=1", "-e", "B=x=y", "-e",
                        "HOST_SECRET", "-e", "UNSET_VAR", "-e", "=dropped", "-e", "OVER=cli",
                        "--", "env")
    env = dict(line.split("=", 1) for line in r.stdout.splitlines())
    assert env["A"] == "1" and env["B"] == "x=y"
    assert env["HOST_SECRET"] == "s3cr3t"  # bare -e copies the host value
    assert "UNSET_VAR" not in env  # bare -e of an unset variable is dropped
    assert "HOST_ONLY" not in env  # the host env does not reach the guest
    assert "FAKE_SMOLVM_STATE" not in env
    assert env["REC"] == "rec" and env["OVER"] == "cli"  # record env < -e
    # The bare guest inherits the agent's own environment (src/agent/launcher.rs).
    assert (env["HOME"], env["TERM"]) == ("/root", "xterm-256color")
    assert env["PATH"] == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert "dropped" not in r.stdout
    assert "s3cr3t" not in json.dumps(fake_smolvm.calls())


def test_exec_workdir(fake_smolvm: FakeSmolvm, tmp_path: Path) -> None:
    fake_smolvm.create("m", workdir=str(tmp_path))
    assert fake_smolvm.run("machine", "exec", "--name", "m", "pwd").stdout == f"{tmp_path}\n"
    r = fake_smolvm.run("machine", "exec", "--name", "m", "-w", "/tmp", "pwd")
    assert r.stdout == "/tmp\n"


def test_exec_bare_machine_has_only_root(fake_smolvm: FakeSmolvm, require_node_user: Any) -> None:
    # The host has `node`; the bare VM's agent rootfs does not (scripts/build-agent-rootfs.sh).
    running(fake_smolvm)
    r = fake_smolvm.run("machine", "exec", "--name", "m", "--", "runuser", "-u", "node", "--",
                        "id")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == ("runuser: user node does not exist or the user entry does not contain "
                        "all the required fields\n")
    r = fake_smolvm.run("machine", "exec", "--name", "m", "--", "su", "node", "-c", "id")
    assert r.returncode != 0 and "node" in r.stderr
    r = fake_smolvm.run("machine", "exec", "--name", "m", "--", "runuser", "-u", "root", "--",
                        "sh", "-c", "id -un; id -u")
    assert (r.returncode, r.stdout) == (0, "root\n0\n"), r.stderr
    assert fake_smolvm.run("machine", "exec", "--name", "m", "--", "id", "node").returncode == 1


def test_exec_timeout_kills_process_group(fake_smolvm: FakeSmolvm, tmp_path: Path) -> None:
    running(fake_smolvm)
    pidfile = tmp_path / "bg.pid"
    r = fake_smolvm.run("machine", "exec", "--name", "m", "--timeout", "300ms", "--", "sh", "-c",
                        f"sleep 60 & echo $! > {pidfile}; echo before; wait")
    assert r.returncode == 124
    assert r.stdout == "before\n"
    wait_for(lambda: gone(int(pidfile.read_text())), "the background guest process to die")


def test_exec_interactive_forwards_stdin_live(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    p = subprocess.Popen(
        [str(FAKE_SMOLVM), "machine", "exec", "--name", "m", "-i", "--", "sh", "-c",
         'readlink /proc/self/fd/0 | cut -c1-5; while read l; do echo "got $l"; '
         'echo "err $l" >&2; done; echo eof'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    assert p.stdin and p.stdout and p.stderr
    assert p.stdout.readline() == b"pipe:\n"  # guest stdin is a pipe
    p.stdin.write(b"one\n")
    p.stdin.flush()
    # Live: the answer arrives while the session is still open.
    assert p.stdout.readline() == b"got one\n"
    assert p.stderr.readline() == b"err one\n"
    p.stdin.close()  # host EOF closes the guest's stdin
    assert p.stdout.read() == b"eof\n"
    assert p.wait() == 0


def test_exec_stream_never_feeds_stdin(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    r = fake_smolvm.run("machine", "exec", "--name", "m", "--stream", "--timeout", "500ms", "--",
                        "sh", "-c", "echo live; cat; echo after-cat", stdin=None, input="data\n")
    assert r.returncode == 124  # cat never saw EOF: its stdin pipe is held open, never written
    assert r.stdout == "live\n"


def test_exec_kill_execs_fault(fake_smolvm: FakeSmolvm, tmp_path: Path) -> None:
    running(fake_smolvm)
    fake_smolvm.set_fault(KILL_EXECS=2)
    marker = tmp_path / "ran"
    results = [fake_smolvm.run("machine", "exec", "--name", "m", "--", "sh", "-c",
                               f"echo hi; echo x >> {marker}") for _ in range(3)]
    assert [(r.returncode, r.stdout) for r in results] == [(137, ""), (137, ""), (0, "hi\n")]
    assert marker.read_text() == "x\n"  # the killed execs never ran their command


def test_exec_kill_execs_counter_is_shared_by_concurrent_calls(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    fake_smolvm.set_fault(KILL_EXECS=3)
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: fake_smolvm.run("machine", "exec", "--name", "m",
                                                        "true").returncode, range(8)))
    assert sorted(codes) == [0] * 5 + [137] * 3


def test_exec_dies_mid_session_non_tty(fake_smolvm: FakeSmolvm, tmp_path: Path) -> None:
    running(fake_smolvm)
    fake_smolvm.set_fault(DIE_AFTER=0.3)
    pidfile = tmp_path / "guest.pid"
    r = fake_smolvm.run("machine", "exec", "--name", "m", "--", "sh", "-c",
                        f"echo $$ > {pidfile}; exec sleep 60")
    assert (r.returncode, r.stdout) == (1, "")  # the buffered output dies with the VM
    # src/agent/client.rs read_exact_retry: the reply never comes.
    assert r.stderr == "Error: io operation failed: connection closed\n"
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["state"] == "stopped"
    wait_for(lambda: gone(int(pidfile.read_text())), "the guest to be killed")
    r = fake_smolvm.run("machine", "exec", "--name", "m", "true")
    assert (r.returncode, r.stderr) == (1, NOT_RUNNING)


@pytest.mark.parametrize("how", ["stop", "delete", "restart"])
def test_stopping_a_machine_ends_the_execs_in_it(
    fake_smolvm: FakeSmolvm, tmp_path: Path, how: str
) -> None:
    # `stop` (and `delete`, which stops first) kills the VM process (src/agent/manager.rs
    # AgentManager::stop, stop_vm_process): its guests die, and each exec client loses its
    # connection, as when the VM dies by itself.
    running(fake_smolvm)
    pidfile = tmp_path / "guest.pid"
    proc = subprocess.Popen(
        [str(FAKE_SMOLVM), "machine", "exec", "--name", "m", "-i", "--", "sh", "-c",
         f"echo $$ > {pidfile}; echo started; exec sleep 60"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"started\n"
    if how == "delete":
        assert fake_smolvm.run("machine", "delete", "--name", "m", "-f").returncode == 0
    else:
        assert fake_smolvm.run("machine", "stop", "--name", "m").returncode == 0
    if how == "restart":
        assert fake_smolvm.run("machine", "start", "--name", "m").returncode == 0
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (1, b"")
    assert err == b"Error: agent operation failed: vm exec interactive: connection to VM lost\n"
    wait_for(lambda: gone(int(pidfile.read_text())), "the guest to be killed")
    rec = fake_smolvm.machine("m")
    state = {"stop": "stopped", "delete": None, "restart": "running"}[how]
    assert (rec and rec["state"]) == state


def test_concurrent_creates_one_winner(fake_smolvm: FakeSmolvm) -> None:
    def create(name: str) -> int:
        return fake_smolvm.run("machine", "create", "--name", name).returncode

    with ThreadPoolExecutor(8) as pool:
        same = list(pool.map(create, ["dup"] * 6))
        distinct = list(pool.map(create, [f"m{i}" for i in range(6)]))
    assert sorted(same) == [0, 1, 1, 1, 1, 1]
    assert distinct == [0] * 6
    names = {d["name"] for d in json.loads(fake_smolvm.run("machine", "ls", "--json").stdout)}
    assert names == {"dup", *(f"m{i}" for i in range(6))}


def test_create_collide_fault(fake_smolvm: FakeSmolvm) -> None:
    fake_smolvm.set_fault(CREATE_COLLIDE=1)
    r = fake_smolvm.run("machine", "create", "--name", "fresh")
    assert r.returncode == 1 and "machine 'fresh' already exists or is being created" in r.stderr
    assert fake_smolvm.machine("fresh") is None


def test_start_fail_fault(fake_smolvm: FakeSmolvm) -> None:
    fake_smolvm.create("m", running=False)
    fake_smolvm.set_fault(START_FAIL="agent operation failed: start: boom")
    r = fake_smolvm.run("machine", "start", "--name", "m")
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr.endswith("Error: agent operation failed: start: boom\n")
    assert fake_smolvm.run("machine", "status", "-n", "m").stdout == "Machine 'm': failed\n"


def test_start_delay_fault_machine_not_running_until_start_returns(
    fake_smolvm: FakeSmolvm,
) -> None:
    fake_smolvm.create("m", running=False)
    fake_smolvm.set_fault(START_DELAY=2)
    p = subprocess.Popen([str(FAKE_SMOLVM), "machine", "start", "-n", "m"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    assert p.stderr.readline() == "Starting machine 'm'...\n"
    # While start is still booting, the machine is not usable and the state lock is free.
    r = fake_smolvm.run("machine", "exec", "--name", "m", "true")
    assert (r.returncode, r.stderr) == (1, NOT_RUNNING)
    out, _ = p.communicate()
    assert p.returncode == 0 and out.startswith("Machine 'm' running")
    assert fake_smolvm.run("machine", "exec", "--name", "m", "true").returncode == 0


def test_call_log(fake_smolvm: FakeSmolvm) -> None:
    fake_smolvm.run("--version")
    fake_smolvm.run("machine", "create", "--name", "m")
    fake_smolvm.run("machine", "exec", "-n", "m", "true")  # usage errors are logged too
    assert fake_smolvm.calls() == [["--version"], ["machine", "create", "--name", "m"],
                                   ["machine", "exec", "-n", "m", "true"]]
    assert fake_smolvm.subcommands() == ["--version", "create", "exec"]


# --------------------------------------------------------------------------- cp


def test_cp_upload(fake_smolvm: FakeSmolvm, tmp_path: Path) -> None:
    running(fake_smolvm)
    src = tmp_path / "src.txt"
    src.write_bytes(b"payload\x00\xff")
    dest = tmp_path / "guest" / "deep" / "file.txt"
    r = fake_smolvm.run("machine", "cp", str(src), f"m:{dest}")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and "Uploading" in r.stderr
    assert dest.read_bytes() == b"payload\x00\xff"
    st = dest.stat()
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (0, 0)
    assert [p.name for p in dest.parent.iterdir()] == ["file.txt"]  # no staging file left


def test_cp_upload_mode_uid_gid_and_atomic_overwrite(fake_smolvm: FakeSmolvm,
                                                      tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test checks ownership changes and must run as root")
    running(fake_smolvm)
    src = tmp_path / "src"
    src.write_text("new")
    dest = tmp_path / "dest"
    dest.write_text("old")
    old_inode = dest.stat().st_ino
    r = fake_smolvm.run("machine", "cp", "--mode", "600", "--uid", "1001", "--gid", "1002",
                        str(src), f"m:{dest}")
    assert r.returncode == 0, r.stderr
    st = dest.stat()
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o600, 1001, 1002)
    assert dest.read_text() == "new" and st.st_ino != old_inode  # renamed into place


def test_cp_relative_guest_path_gets_leading_slash(fake_smolvm: FakeSmolvm,
                                                   tmp_path: Path) -> None:
    running(fake_smolvm)
    src = tmp_path / "s"
    src.write_text("x")
    dest = tmp_path / "rel"
    assert fake_smolvm.run("machine", "cp", str(src), f"m:{str(dest).lstrip('/')}").returncode == 0
    assert dest.read_text() == "x"


@pytest.mark.parametrize("guest", ["/tmp/../etc/x", "a/../../b", ".."])
def test_cp_rejects_parent_segments(fake_smolvm: FakeSmolvm, tmp_path: Path, guest: str) -> None:
    running(fake_smolvm)
    src = tmp_path / "s"
    src.write_text("x")
    r = fake_smolvm.run("machine", "cp", str(src), f"m:{guest}")
    assert r.returncode == 1
    assert r.stderr == ("Error: agent operation failed: write file: invalid guest path "
                        f"{guest}: parent traversal is not allowed\n")


def test_cp_accepts_inner_dot_segments(fake_smolvm: FakeSmolvm, tmp_path: Path) -> None:
    # Rust's Path::components() drops a `.` that is not leading (normalize_guest_path).
    running(fake_smolvm)
    src = tmp_path / "s"
    src.write_text("x")
    r = fake_smolvm.run("machine", "cp", str(src), f"m:{tmp_path}/./dotted")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "dotted").read_text() == "x"


def test_cp_errors(fake_smolvm: FakeSmolvm, tmp_path: Path) -> None:
    running(fake_smolvm)
    fake_smolvm.create("off", running=False)
    src = tmp_path / "s"
    src.write_text("x")
    r = fake_smolvm.run("machine", "cp", str(src), str(tmp_path / "d"))
    assert r.returncode == 1
    assert r.stderr == ("Error: config operation failed: cp: one of SRC or DST must use "
                        "machine:path syntax (e.g., myvm:/workspace/file)\n")
    r = fake_smolvm.run("machine", "cp", str(tmp_path), f"m:{tmp_path}/dir-copy")
    # A directory opens as a file and fails on read: regular files only.
    assert r.stderr == ("Error: agent operation failed: read source file: Is a directory "
                        "(os error 21)\n")
    r = fake_smolvm.run("machine", "cp", str(tmp_path / "nope"), f"m:{tmp_path}/x")
    assert r.stderr == (f"Error: agent operation failed: read local file: {tmp_path}/nope: "
                        "No such file or directory (os error 2)\n")
    r = fake_smolvm.run("machine", "cp", str(src), f"off:{tmp_path}/x")
    assert r.returncode == 1 and "machine 'off' is not running" in r.stderr
    r = fake_smolvm.run("machine", "cp", str(src), f"nope:{tmp_path}/x")
    assert (r.returncode, r.stderr) == (1, "Error: vm not found: nope\n")
    # The first colon decides: a local path with a colon is taken for a machine name.
    odd = tmp_path / "a:b"
    odd.write_text("x")
    r = fake_smolvm.run("machine", "cp", str(odd), f"m:{tmp_path}/y")
    assert r.returncode == 1 and f"vm not found: {tmp_path}/a" in r.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_cp_download(fake_smolvm: FakeSmolvm, tmp_path: Path) -> None:
    running(fake_smolvm)
    guest = tmp_path / "guest.bin"
    guest.write_bytes(b"\x01\x02")
    local = tmp_path / "local.bin"
    r = fake_smolvm.run("machine", "cp", f"m:{guest}", str(local))
    assert (r.returncode, r.stdout) == (0, "")
    assert local.read_bytes() == b"\x01\x02"
    r = fake_smolvm.run("machine", "cp", "--mode", "644", f"m:{guest}", str(local))
    assert r.returncode == 1
    assert r.stderr == ("Error: config operation failed: cp: --mode/--uid/--gid apply to "
                        "uploads only (host -> machine)\n")
    r = fake_smolvm.run("machine", "cp", f"m:{tmp_path}", str(local))
    assert r.returncode == 1
    assert r.stderr == f"Error: agent operation failed: read file: not a regular file: {tmp_path}\n"
    assert not local.exists()  # created first, removed on the error (read_file_to_path_capped)
    r = fake_smolvm.run("machine", "cp", f"m:{tmp_path}/missing", str(local))
    assert r.stderr == (f"Error: agent operation failed: read file: failed to open "
                        f"{tmp_path}/missing: No such file or directory (os error 2)\n")


# --------------------------------------------------------------------------- exec -t on a pty

# A guest that reports its pty size at start and on every SIGWINCH (os.write: async-safe), echoes
# lines, and exits with status 5 on "quit".
SIZE_GUEST = r"""
import fcntl, os, signal, struct, sys, termios
def size():
    r, c, _, _ = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
    return f"{r}x{c}"
signal.signal(signal.SIGWINCH, lambda *a: os.write(1, f"size {size()}\n".encode()))
os.write(1, f"ready {size()} TERM={os.environ.get('TERM')}\n".encode())
for line in sys.stdin:
    os.write(1, f"line {line.strip()}\n".encode())
    if line.strip() == "quit":
        sys.exit(5)
"""


_SPAWNED: list[subprocess.Popen[bytes]] = []


def fake_on(
    term: Terminal, args: list[str], stdout: int | None = None
) -> subprocess.Popen[bytes]:
    """Run the fake smolvm with `term` as its stdin, stdout (unless given) and controlling tty,
    and its stderr on a pipe; killed at the end of the test if still running."""
    proc = term.spawn([str(FAKE_SMOLVM), *args], stdout=stdout, stderr=subprocess.PIPE)
    _SPAWNED.append(proc)
    return proc


@pytest.fixture
def terminal() -> Iterator[Any]:
    made: list[Terminal] = []

    def make(rows: int = 33, cols: int = 101) -> Terminal:
        made.append(Terminal(rows, cols))
        return made[-1]

    yield make
    while _SPAWNED:
        proc = _SPAWNED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    for t in made:
        t.close()


def test_tty_size_from_stdin_raw_mode_resize_and_restore(
    fake_smolvm: FakeSmolvm, terminal: Any
) -> None:
    running(fake_smolvm)
    term = terminal(33, 101)
    # stdout is another pty of a different size: the size must come from stdin (fd 0).
    other = terminal(50, 160)
    proc = fake_on(term, ["machine", "exec", "--name", "m", "-it", "--", sys.executable, "-c",
                       SIZE_GUEST], stdout=other.slave)
    other.expect(b"33x101")  # from the "ready" line or the guest's first SIGWINCH
    assert b"TERM=xterm-256color" in other.output()
    attrs = termios.tcgetattr(term.slave)
    iflag, oflag, _, lflag, _, _, cc = attrs
    assert not lflag & (termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)
    assert not oflag & termios.OPOST
    assert not iflag & (termios.ICRNL | termios.IXON)
    assert cc[termios.VMIN] == 1
    term.resize(40, 120)
    other.expect(b"size 40x120")
    other.resize(10, 10)  # stdout's size changes are not stdin's: nothing forwarded
    term.resize(41, 121)
    other.expect(b"size 41x121")
    assert b"10x10" not in other.output()
    os.write(term.master, b"quit\r")  # raw host stdin; the guest pty's ICRNL makes it a line
    other.expect(b"line quit")
    assert proc.wait(timeout=20) == 5
    assert termios.tcgetattr(term.slave) == term.saved  # restored on normal return


def test_tty_client_ends_when_its_terminal_hangs_up(
    fake_smolvm: FakeSmolvm, tmp_path: Path
) -> None:
    # The pty's master closed (a detached session's holder killed outright): the kernel hangs
    # the terminal up and SIGHUPs its session leader, smolvm's client, which has no handler
    # for it in the exec path (src/agent/client.rs, interactive_session): it dies, and the
    # agent kills the guest as on any disconnect.
    running(fake_smolvm)
    master, slave = os.openpty()
    guest_pid = tmp_path / "guest-pid"

    def take_terminal() -> None:
        import fcntl

        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(
        [str(FAKE_SMOLVM), "machine", "exec", "--name", "m", "-t", "--", "sh", "-c",
         f"echo $$ > {guest_pid}; exec sleep 300"],
        stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        preexec_fn=take_terminal,
    )  # fmt: skip
    os.close(slave)
    try:
        wait_for(lambda: guest_pid.exists() and guest_pid.read_text().strip(), "the guest")
        guest = int(guest_pid.read_text())
        os.close(master)
        master = -1
        assert proc.wait(timeout=20) == -signal.SIGHUP
        wait_for(lambda: not _alive(guest), "the guest to be killed")
    finally:
        if master >= 0:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_tty_raw_mode_only_after_delay_and_type_ahead_discarded(
    fake_smolvm: FakeSmolvm, terminal: Any
) -> None:
    running(fake_smolvm)
    fake_smolvm.set_fault(TTY_DELAY=3)
    term = terminal()
    fake_on(term, ["machine", "exec", "--name", "m", "-t", "--", sys.executable, "-c",
                "import sys; print('ready', flush=True); print('got', sys.stdin.readline())"])
    wait_for(lambda: len(fake_smolvm.calls()) == 1, "the fake to start")
    # The fake is running but still "connecting": the terminal is untouched.
    assert not term.is_raw()
    os.write(term.master, b"early\r")
    wait_for(term.is_raw, "raw mode")
    term.expect(b"ready")
    os.write(term.master, b"late\r")
    out = term.expect(b"got late")
    assert b"got early" not in out  # TCSAFLUSH dropped the type-ahead


def test_tty_raw_mode_is_smolvms_exactly(fake_smolvm: FakeSmolvm, terminal: Any) -> None:
    # src/agent/terminal.rs RawModeGuard::new: clears BRKINT ICRNL INPCK ISTRIP IXON, OPOST,
    # ECHO ICANON IEXTEN ISIG; sets CS8; VMIN 1, VTIME 0; TCSAFLUSH. Nothing else: bits a
    # cfmakeraw would also clear (INLCR, ECHONL, PARENB) stay as they were.
    running(fake_smolvm)
    fake_smolvm.set_fault(TTY_DELAY=0)
    term = terminal()
    attrs = termios.tcgetattr(term.slave)
    attrs[0] |= termios.INLCR | termios.ISTRIP
    attrs[2] |= termios.PARENB
    attrs[3] |= termios.ECHONL
    termios.tcsetattr(term.slave, termios.TCSANOW, attrs)
    before = termios.tcgetattr(term.slave)
    proc = fake_on(term, ["machine", "exec", "--name", "m", "-it", "--", "sh", "-c",
                       "echo started; read x; echo got $x"])
    term.expect(b"started")
    wait_for(term.is_raw, "raw mode")
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = before
    cc = list(cc)
    cc[termios.VMIN], cc[termios.VTIME] = 1, 0
    assert termios.tcgetattr(term.slave) == [
        iflag & ~(termios.BRKINT | termios.ICRNL | termios.INPCK | termios.ISTRIP | termios.IXON),
        oflag & ~termios.OPOST,
        cflag | termios.CS8,
        lflag & ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG),
        ispeed, ospeed, cc,
    ]
    os.write(term.master, b"x\r")
    term.expect(b"got x")
    assert proc.wait(timeout=20) == 0
    assert termios.tcgetattr(term.slave) == before  # restored with TCSAFLUSH


def test_tty_end_of_input_before_raw_mode_is_lost(fake_smolvm: FakeSmolvm, terminal: Any) -> None:
    # A line and its EOF (^D) typed before the TCSAFLUSH are discarded by the kernel: the guest
    # never sees either, and keeps reading.
    running(fake_smolvm)
    fake_smolvm.set_fault(TTY_DELAY=2)
    term = terminal()
    fake_on(term, ["machine", "exec", "--name", "m", "-it", "--", "sh", "-c",
                "echo ready; cat; echo cat-ended"])
    wait_for(lambda: len(fake_smolvm.calls()) == 1, "the fake to start")
    os.write(term.master, b"early\r\x04")
    wait_for(term.is_raw, "raw mode")
    term.expect(b"ready")
    os.write(term.master, b"late\r")
    term.expect(b"late\r\nlate")  # the guest pty's echo, then cat's copy
    os.write(term.master, b"\x04")
    out = term.expect(b"cat-ended")
    # Only the host terminal's own (cooked-mode) echo of "early", before the session started.
    assert out.count(b"early") == 1 and out.index(b"early") < out.index(b"ready")
    assert out.index(b"late") < out.index(b"cat-ended")  # cat was still reading: EOF lost


def test_tty_piped_input_and_its_end_reach_the_guest(fake_smolvm: FakeSmolvm) -> None:
    # With a pipe as stdin there is no raw mode and no flush: smolvm reads it after the guest
    # started and forwards it; its end becomes VEOF twice in the guest pty.
    running(fake_smolvm)
    fake_smolvm.set_fault(TTY_DELAY=1)
    r = subprocess.run(
        [str(FAKE_SMOLVM), "machine", "exec", "--name", "m", "-t", "--", "sh", "-c",
         "stty -echo; cat; echo done"],
        input=b"written before the guest started\n", capture_output=True, check=False,
        timeout=60,
    )
    assert r.returncode == 0
    assert r.stdout.endswith(b"written before the guest started\r\ndone\r\n")


def test_tty_non_tty_stdin_no_raw_no_resize_merged_stderr(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    r = subprocess.run(
        [str(FAKE_SMOLVM), "machine", "exec", "--name", "m", "-t", "--", "sh", "-c",
         "stty size; tty >/dev/null && echo is-tty; echo to-stderr >&2; exit 4"],
        stdin=subprocess.DEVNULL, capture_output=True, check=False,
    )
    assert r.returncode == 4
    assert r.stdout.split(b"\r\n")[:3] == [b"24 80", b"is-tty", b"to-stderr"]
    assert r.stderr == b""


def test_tty_stdin_eof_sends_veof_twice(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    # "abc" without a newline: the first VEOF pushes the partial line, the second is EOF.
    r = subprocess.run(
        [str(FAKE_SMOLVM), "machine", "exec", "--name", "m", "-i", "-t", "--", "sh", "-c",
         "stty -echo; cat; echo; echo done"],
        input=b"abc", capture_output=True, check=False, timeout=60,
    )
    assert r.returncode == 0
    assert r.stdout.endswith(b"abc\r\ndone\r\n")


def test_tty_term_override(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    r = subprocess.run(
        [str(FAKE_SMOLVM), "machine", "exec", "--name", "m", "-t", "-e", "TERM=dumb", "--",
         "sh", "-c", 'echo "$TERM"'], stdin=subprocess.DEVNULL, capture_output=True, check=False,
    )
    assert r.stdout == b"dumb\r\n"


def test_tty_machine_dies_mid_session(
    fake_smolvm: FakeSmolvm, terminal: Any, tmp_path: Path
) -> None:
    running(fake_smolvm)
    fake_smolvm.set_fault(DIE_AFTER=1, TTY_DELAY=0)
    term = terminal()
    pidfile = tmp_path / "guest.pid"
    proc = fake_on(term, ["machine", "exec", "--name", "m", "-it", "--", "sh", "-c",
                       f"echo $$ > {pidfile}; echo started; exec sleep 60"])
    term.expect(b"started")
    assert proc.wait(timeout=30) == 1
    assert proc.stderr is not None
    assert proc.stderr.read() == (
        b"Error: agent operation failed: vm exec interactive: connection to VM lost\n")
    assert termios.tcgetattr(term.slave) == term.saved  # error return restores the terminal
    rec = fake_smolvm.machine("m")
    assert rec is not None and rec["state"] == "stopped"
    wait_for(lambda: gone(int(pidfile.read_text())), "the guest to be killed")


def test_tty_fake_killed_leaves_terminal_raw_and_guest_killed(
    fake_smolvm: FakeSmolvm, terminal: Any, tmp_path: Path
) -> None:
    running(fake_smolvm)
    fake_smolvm.set_fault(TTY_DELAY=0)
    term = terminal()
    pidfile = tmp_path / "guest.pid"
    proc = fake_on(term, ["machine", "exec", "--name", "m", "-it", "--", "sh", "-c",
                       f"echo $$ > {pidfile}; echo started; exec sleep 60"])
    term.expect(b"started")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == -signal.SIGTERM
    # smolvm has no SIGTERM handler in the exec path: the terminal stays raw.
    assert term.is_raw()
    wait_for(lambda: gone(int(pidfile.read_text())), "the agent-side kill of the guest")


def test_tty_timeout(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    fake_smolvm.set_fault(TTY_DELAY=0)
    r = subprocess.run(
        [str(FAKE_SMOLVM), "machine", "exec", "--name", "m", "-t", "--timeout", "300ms", "--",
         "sleep", "60"], stdin=subprocess.DEVNULL, capture_output=True, check=False, timeout=60,
    )
    assert r.returncode == 124


def test_shell_is_exec_it_bin_sh(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    fake_smolvm.set_fault(TTY_DELAY=0)
    r = subprocess.run([str(FAKE_SMOLVM), "machine", "shell", "-n", "m"], input=b"exit 9\n",
                       capture_output=True, check=False, timeout=60)
    assert r.returncode == 9
    fake_smolvm.create("off", running=False)
    r = subprocess.run([str(FAKE_SMOLVM), "machine", "sh", "-n", "off"], input=b"",
                       capture_output=True, check=False, timeout=60)
    assert r.returncode == 1 and b"is not running" in r.stderr  # shell does not start it



def test_tty_ctrl_c_is_a_byte_for_the_guest(fake_smolvm: FakeSmolvm, terminal: Any) -> None:
    running(fake_smolvm)
    fake_smolvm.set_fault(TTY_DELAY=0)
    term = terminal()
    proc = fake_on(term, ["machine", "exec", "--name", "m", "-it", "--", "sh", "-c",
                       "echo started; exec sleep 60"])
    term.expect(b"started")
    wait_for(term.is_raw, "raw mode")
    os.write(term.master, b"\x03")  # ISIG is off on the host: the guest pty turns it into SIGINT
    assert proc.wait(timeout=20) == 130


def test_interactive_binary_data_round_trips(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    data = os.urandom(3 * 1024 * 1024)
    r = subprocess.run([str(FAKE_SMOLVM), "machine", "exec", "--name", "m", "-i", "--", "cat"],
                       input=data, capture_output=True, check=False, timeout=120)
    assert r.returncode == 0 and r.stdout == data


def test_buffered_large_output(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    r = subprocess.run([str(FAKE_SMOLVM), "machine", "exec", "--name", "m", "--", "sh", "-c",
                        "head -c 2000000 /dev/zero; head -c 1000000 /dev/zero >&2"],
                       capture_output=True, check=False, timeout=120)
    assert (r.returncode, len(r.stdout), len(r.stderr)) == (0, 2000000, 1000000)


def test_guest_gets_clean_signal_state_and_own_session(fake_smolvm: FakeSmolvm) -> None:
    running(fake_smolvm)
    r = fake_smolvm.run("machine", "exec", "--name", "m", "--", sys.executable, "-c",
                        "import os, signal; print(os.getsid(0) == os.getpid(), "
                        "signal.pthread_sigmask(signal.SIG_BLOCK, []))")
    assert r.stdout == "True set()\n"


def test_fake_sigkilled_non_tty_guest_group_killed(fake_smolvm: FakeSmolvm,
                                                     tmp_path: Path) -> None:
    running(fake_smolvm)
    pidfile = tmp_path / "bg.pid"
    p = subprocess.Popen([str(FAKE_SMOLVM), "machine", "exec", "--name", "m", "--", "sh", "-c",
                          f"sleep 60 & echo $! > {pidfile}; wait"])
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip() != "", "the guest")
    p.kill()
    p.wait()
    wait_for(lambda: gone(int(pidfile.read_text())), "the watcher to kill the guest group")
