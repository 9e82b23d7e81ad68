"""The `bottle` command line, run as a real process against the fake smolvm."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness.backend import CLI_FAILURE, LAUNCH, ROOT_IMAGE, image_machine, wait_for_file
from harness.terminal import run_in_pty

BOTTLE = [sys.executable, "-m", "bottle"]

pytestmark = pytest.mark.usefixtures("test_images")


def bottle(*args: str, input: str | None = None, timeout: float = 60,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [*BOTTLE, *args],
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == CLI_FAILURE, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("bottle: error: "), lines[0]
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- help and delegation -------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    proc = bottle("--help")
    assert proc.returncode == 0
    for command in ("launch", "agent", "exec", "cp", "relay", "bench"):
        assert command in proc.stdout
    for command in ("launch", "agent", "exec", "cp"):
        sub = bottle(command, "--help")
        assert sub.returncode == 0
        assert "--name" in sub.stdout


def test_console_script_is_installed() -> None:
    # Next to the running interpreter, where pip put it: a fresh machine's venv is not
    # activated, and a `bottle` found on PATH could be another install's.
    exe = Path(sys.executable).parent / "bottle"
    assert exe.is_file(), f"the `bottle` console script is not installed next to {sys.executable}"
    assert os.access(exe, os.X_OK), f"{exe} is not executable"
    env = {**os.environ, "PATH": os.defpath}
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False, env=env)
    assert proc.returncode == 0
    assert proc.stdout.startswith("bottle ")


CI_PATH = Path(__file__).resolve().parents[2] / "scripts" / "ci_path"


def test_ci_path_keeps_only_the_venvs_bottle(tmp_path: Path) -> None:
    """.ci/run runs the suite on this PATH: another install's `bottle` cannot stand in."""
    venv = Path(sys.executable).parent.parent
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "bottle").write_text("#!/bin/sh\necho decoy\n")
    (decoy / "bottle").chmod(0o755)
    path = f"{decoy}:{venv / 'bin'}:/usr/bin:/bin"
    proc = subprocess.run(
        ["bash", str(CI_PATH), str(venv)], capture_output=True, text=True, check=False,
        env={**os.environ, "PATH": path},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{venv / 'bin'}:/usr/bin:/bin"
    assert f"leaving {decoy} off PATH" in proc.stderr
    found = shutil.which("bottle", path=proc.stdout.strip())
    assert found is not None
    assert Path(found).parent.resolve() == (venv / "bin").resolve()


def test_ci_path_fails_loudly_without_the_venvs_bottle(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    proc = subprocess.run(
        ["bash", str(CI_PATH), str(tmp_path)], capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert f"{tmp_path / 'bin'}/bottle is missing" in proc.stderr


def test_relay_is_delegated() -> None:
    run = run_in_pty([*BOTTLE, "relay", "--", "sh", "-c", "echo relayed; exit 3"])
    assert run.status == 3
    assert b"relayed" in run.output
    proc = bottle("relay", "--help")
    assert proc.returncode == 0
    assert "--machine" in proc.stdout


def test_bench_is_delegated() -> None:
    proc = bottle("bench", "--help")
    assert proc.returncode == 0
    assert "bottle bench" in proc.stdout


def test_usage_errors_exit_with_bottles_own_status() -> None:
    assert bottle("exec", "true").returncode == CLI_FAILURE  # no --name
    assert bottle("frobnicate").returncode == CLI_FAILURE
    proc = bottle("cp", "a", "m:/b", "--", "x")  # exec's `--` is the guest command's
    assert proc.returncode == CLI_FAILURE
    assert "cp takes no arguments after '--'" in proc.stderr


# --- exec ------------------------------------------------------------------------------------


def test_exec_prints_output_and_exits_with_the_scripts_status(
    fake_smolvm: Any, require_node_user: Any
) -> None:
    # Exact output: a smolvm older than 1.8.1 puts its paste warning first (pytest
    # --fake-smolvm-version; test_bottle_launch_shows_no_progress_when_stderr_is_not_a_terminal).
    fake_smolvm.set_fault(VERSION="1.9.3")
    image_machine(fake_smolvm, "m")
    proc = bottle("exec", "-n", "m", "-e", "A=x y", 'id -un; echo "$A"; echo warn >&2; exit 4')
    assert (proc.returncode, proc.stdout, proc.stderr) == (4, "node\nx y\n", "warn\n")
    proc = bottle("exec", "-n", "m", "-u", "root", "id -un")
    assert (proc.returncode, proc.stdout) == (0, "root\n")
    proc = bottle("exec", "-n", "m", "-", input="echo from-stdin\n")
    assert proc.stdout == "from-stdin\n"


def test_exec_secret_env_passes_by_name(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    env = {**os.environ, "MY_TOKEN": "hunter2-secret"}
    proc = bottle("exec", "-n", "m", "--secret-env", "MY_TOKEN", 'echo "len=${#MY_TOKEN}"',
                  env=env)  # fmt: skip
    assert proc.stdout == "len=14\n"
    exec_call = fake_smolvm.calls()[-1]
    assert exec_call[exec_call.index("-e") + 1] == "MY_TOKEN"
    assert "hunter2-secret" not in json.dumps(fake_smolvm.calls())
    proc = bottle("exec", "-n", "m", "--secret-env", "UNSET_TOKEN_XYZ", "true")
    assert_one_line_error(proc, "UNSET_TOKEN_XYZ is not set")


def test_exec_errors_are_one_line(fake_smolvm: Any) -> None:
    # Exact output: a smolvm older than 1.8.1 puts its paste warning first (pytest
    # --fake-smolvm-version; test_bottle_launch_shows_no_progress_when_stderr_is_not_a_terminal).
    fake_smolvm.set_fault(VERSION="1.9.3")
    assert_one_line_error(bottle("exec", "-n", "ghost", "true"), "machine 'ghost' does not exist")
    fake_smolvm.create("idle", running=False)
    assert_one_line_error(bottle("exec", "-n", "idle", "true"), "not running")
    assert_one_line_error(bottle("exec", "-n", "bad name", "true"), "invalid machine name")
    assert_one_line_error(bottle("exec", "-n", "m", "--user=-x", "true"), "invalid user name")
    assert_one_line_error(bottle("exec", "-n", "m", "-e", "1X=2", "true"), "variable name")
    image_machine(fake_smolvm, "m")
    fake_smolvm.set_fault(DIE_AFTER=0.3)
    # The VM dying under the exec (smolvm's `exec -i`): "… run interactive: connection to VM
    # lost".
    assert_one_line_error(bottle("exec", "-n", "m", "sleep 5"), "connection to VM lost")


def test_exec_vm_killed_in_words_bottle_has_never_seen(fake_smolvm: Any) -> None:
    # smolvm 1.14.1 and later say so in words of their own (smolvm PR #1154; the fake's text is
    # a stand-in): bottle asks for the machine's state and reports the lost connection.
    fake_smolvm.set_fault(VERSION="1.16.0")
    image_machine(fake_smolvm, "m")
    fake_smolvm.set_fault(DIE_AFTER=0.3)
    proc = bottle("exec", "-n", "m", "sleep 5")
    assert_one_line_error(proc, "connection to the VM lost: machine 'm' is stopped",
                          "killed by signal 9")  # fmt: skip


def test_missing_and_too_old_smolvm(fake_smolvm: Any, tmp_path: Path) -> None:
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    assert_one_line_error(bottle("exec", "-n", "m", "true", env=env), "BOTTLE_SMOLVM",
                          "/usr/bin:/bin")  # fmt: skip
    plain = tmp_path / "smolvm"
    plain.write_text("#!/bin/sh\n")
    plain.chmod(0o644)
    env = {**os.environ, "BOTTLE_SMOLVM": str(plain)}
    assert_one_line_error(bottle("exec", "-n", "m", "true", env=env), "not an executable")
    env = {**os.environ, "FAKE_SMOLVM_VERSION": "1.0.1"}
    assert_one_line_error(bottle("exec", "-n", "m", "true", env=env), "1.0.2 or later")


# --- cp --------------------------------------------------------------------------------------


def test_cp(fake_smolvm: Any, shared_dir: Path, tmp_path: Path) -> None:
    image_machine(fake_smolvm, "m")
    src = tmp_path / "f.txt"
    src.write_text("hello\n")
    dst = shared_dir / "sub" / "f.txt"
    proc = bottle("cp", "-n", "m", "--owner", "node", str(src), str(dst))
    assert proc.returncode == 0, proc.stderr
    assert dst.read_text() == "hello\n"
    assert dst.stat().st_uid == pwd.getpwnam("node").pw_uid
    assert_one_line_error(bottle("cp", "-n", "m", str(src), "x"), "absolute")
    assert_one_line_error(bottle("cp", "-n", "m", str(tmp_path / "nope"), "/x"), "does not exist")


# --- launch and agent ------------------------------------------------------------------------


def test_launch_runs_the_agent_and_tears_down(fake_smolvm: Any, shared_dir: Path) -> None:
    prompt = shared_dir / "prompt.md"
    prompt.write_text("p")
    out = shared_dir / "out"
    proc = bottle(
        *LAUNCH, "--cpus", "2", "--memory", "512", "--no-tty",
        "--agent-command", "/bin/sh", "--workdir", str(shared_dir),
        "--", "-c", f'pwd > {out}; id -un >> {out}; exit 6',
    )  # fmt: skip
    assert proc.returncode == 6, proc.stderr
    assert out.read_text() == f"{shared_dir}\nnode\n"
    assert fake_smolvm.machine("m1") is None
    assert fake_smolvm.subcommands()[-2:] == ["stop", "delete"]


def test_launch_in_a_terminal(fake_smolvm: Any) -> None:
    run = run_in_pty(
        [*BOTTLE, *LAUNCH, "--agent-command", "/bin/sh", "--title", "work",
         "--color", "navy", "--", "-c", "echo agent-here; exit 2"],
    )  # fmt: skip
    assert run.status == 2
    assert b"agent-here" in run.output
    # The progress display (stderr is the terminal) ends before the session decorates it.
    deco = b"\x1b[22;0t\x1b]0;work\x07\x1b]11;navy\x07"
    done = "bottle: provisioning 'm1' … done in ".encode()
    assert run.output.index(done) < run.output.index(deco) < run.output.index(b"agent-here")
    assert run.output.count(b"\x1b[K") >= 1
    assert run.termios_after == run.termios_before
    assert fake_smolvm.machine("m1") is None


def test_launch_refuses_an_existing_machine(fake_smolvm: Any) -> None:
    # Exact output: a smolvm older than 1.8.1 puts its paste warning first (pytest
    # --fake-smolvm-version; test_bottle_launch_shows_no_progress_when_stderr_is_not_a_terminal).
    fake_smolvm.set_fault(VERSION="1.9.3")
    before = fake_smolvm.create("m1")
    proc = bottle(*LAUNCH, "--no-tty")
    assert_one_line_error(proc, "already exists")
    assert fake_smolvm.machine("m1") == before


def test_launch_bad_input(fake_smolvm: Any, tmp_path: Path) -> None:
    proc = bottle(*LAUNCH, "--provider", "gpt")
    assert_one_line_error(proc, "unknown agent provider")
    assert_one_line_error(bottle(*LAUNCH, "--color", "\x1b[31m"), "colour")
    assert_one_line_error(bottle(*LAUNCH, "--workdir", "rel"), "absolute")
    assert_one_line_error(bottle(*LAUNCH, "--prompt-file", str(tmp_path)),
                          "directory")  # fmt: skip
    assert_one_line_error(bottle(*LAUNCH, "--backend", "qemu"), "known backends")
    assert bottle(*LAUNCH, "--cpus", "0").returncode == CLI_FAILURE
    assert fake_smolvm.calls() == []


def test_launch_sigterm_tears_down(fake_smolvm: Any, shared_dir: Path) -> None:
    ready = shared_dir / "ready"
    proc = subprocess.Popen(
        [*BOTTLE, *LAUNCH, "--no-tty", "--agent-command", "/bin/sh",
         "--", "-c", f"touch {ready}; sleep 60"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_file(ready)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    assert fake_smolvm.machine("m1") is None
    assert fake_smolvm.subcommands()[-2:] == ["stop", "delete"]


def test_agent_in_an_existing_machine(fake_smolvm: Any, shared_dir: Path) -> None:
    before = fake_smolvm.create("m", image=ROOT_IMAGE)
    out = shared_dir / "args"
    proc = bottle(
        "agent", "-n", "m", "--no-tty", "--agent-command", "/bin/sh",
        "--prompt-path", "/etc/p.md", "--prompt-mode", "read_prompt_file", "--provider", "codex",
        "--", "-c", f'printf "%s|" "$@" > {out}', "zero", "one",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # read_prompt_file: the user's arguments first, then the read-the-file argument.
    fields = out.read_text().split("|")
    assert fields[0] == "one"
    assert "/etc/p.md" in fields[1]
    assert fake_smolvm.machine("m") == before  # left running, untouched


def test_agent_takes_the_machine_as_exec_does(fake_smolvm: Any, shared_dir: Path) -> None:
    # NAME, as `bottle exec NAME` and docker exec take it; -n NAME, the older form, too.
    fake_smolvm.create("m", image=ROOT_IMAGE)
    out = shared_dir / "args"
    for where in (["m"], ["-n", "m"]):
        proc = bottle("agent", "--no-tty", *where, "--agent-command", "/bin/sh", "--",
                      "-c", f'echo "$1" > {out}', "zero", "one")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert out.read_text() == "one\n"
        out.unlink()
    assert_one_line_error(bottle("agent", "m", "-n", "m2"),
                          "the machine is given twice ('m' and -n 'm2'): give NAME once")
    assert_one_line_error(bottle("agent", "--no-tty"), "bottle agent needs the machine's NAME")
    assert_one_line_error(bottle("agent", "ghost", "--no-tty"), "machine 'ghost' does not exist")


def test_agent_on_a_stopped_machine(fake_smolvm: Any) -> None:
    # Exact output: a smolvm older than 1.8.1 puts its paste warning first (pytest
    # --fake-smolvm-version; test_bottle_launch_shows_no_progress_when_stderr_is_not_a_terminal).
    fake_smolvm.set_fault(VERSION="1.9.3")
    fake_smolvm.create("idle", running=False)
    assert_one_line_error(bottle("agent", "-n", "idle", "--no-tty"), "not running")
    assert_one_line_error(bottle("agent", "-n", "ghost", "--no-tty"), "does not exist")


def test_agent_connection_lost(fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    fake_smolvm.set_fault(DIE_AFTER=0.5)
    start = time.monotonic()
    proc = bottle("agent", "-n", "m", "--no-tty", "--agent-command", "/bin/sh", "--",
                  "-c", "sleep 30")  # fmt: skip
    assert time.monotonic() - start < 30
    assert proc.returncode == CLI_FAILURE
    assert proc.stderr.splitlines()[-1].startswith("bottle: error: connection to the VM lost")
