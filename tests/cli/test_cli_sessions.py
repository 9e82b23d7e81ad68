"""The session commands, run as real processes against the fake smolvm: `launch --detach` and
`agent --detach` (the name, at once), `bottle sessions` (the list, JSON, `rm`), `bottle attach`
without a terminal (the output, the keys piped in, the status), and their errors in flags.
The terminal side of `bottle attach` is tests/sessions/test_attach_tmux.py's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from harness.backend import CLI_FAILURE, image_machine
from harness.relay import MARK_VAR, marked_pids
from harness.sessions import runtime_dir, wait_for

from bottle import sessions

BOTTLE = [sys.executable, "-m", "bottle"]

pytestmark = pytest.mark.usefixtures("test_images")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """The environment of every command: a private session directory, and a mark on what the
    sessions start."""
    with runtime_dir() as runtime:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        monkeypatch.setenv(MARK_VAR, os.urandom(8).hex())
        yield dict(os.environ)
        for pid in marked_pids(os.environ[MARK_VAR]):
            os.kill(pid, 9)


def bottle(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BOTTLE, *args], input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip


def one_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == CLI_FAILURE, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bottle: error: "), proc.stderr
    return lines[0].removeprefix("bottle: error: ")


AGENT = ["--user", "root", "--agent-command", "/bin/sh", "--detach", "--",
         "-c", 'echo started; read x; echo "got $x"; exit 4']  # fmt: skip


def test_launch_detached_list_attach_and_remove(fake_smolvm: Any, env: dict[str, str]) -> None:
    started = bottle(env, "launch", "-n", "m1", *AGENT)
    assert (started.returncode, started.stdout) == (0, "m1\n"), started.stderr
    assert "session 'm1' runs detached: bottle attach m1" in started.stderr
    assert fake_smolvm.machine("m1")["state"] == "running"  # the session's now
    listing = bottle(env, "sessions")
    assert listing.returncode == 0, listing.stderr
    head, row = listing.stdout.splitlines()
    assert head.split() == ["NAME", "MACHINE", "STARTED", "STATE", "CLIENTS", "STATUS"]
    name, machine, _, _, state, clients, status = row.split()
    assert (name, machine, state, clients, status) == ("m1", "m1", "running", "0", "-")
    (info,) = json.loads(bottle(env, "sessions", "--json").stdout)
    assert (info["name"], info["state"], info["teardown"]) == ("m1", "running", "pending")
    # No terminal: the output comes, the piped keys go, and the status is bottle's.
    attached = bottle(env, "attach", "m1", stdin="hi\n")
    assert attached.returncode == 4, attached.stderr
    assert attached.stdout.replace("\r\n", "\n") == "started\nhi\ngot hi\n"
    assert attached.stderr == "bottle: session 'm1' exited with status 4\n"
    wait_for(lambda: fake_smolvm.machine("m1") is None, "the holder's teardown")
    row = bottle(env, "sessions").stdout.splitlines()[1]
    assert row.split()[4:] == ["exited", "-", "4"]
    # An ended session: its last screen and its status.
    again = bottle(env, "attach", "m1")
    assert again.returncode == 4
    assert again.stdout.replace("\r\n", "\n") == "started\nhi\ngot hi\n"
    assert again.stderr == "bottle: session 'm1' exited with status 4\n"
    removed = bottle(env, "sessions", "rm", "m1")
    assert (removed.returncode, removed.stdout) == (0, "m1\n")
    assert bottle(env, "sessions").stdout.splitlines()[1:] == []


def test_agent_detached_with_a_name(fake_smolvm: Any, env: dict[str, str]) -> None:
    image_machine(fake_smolvm, "m")
    started = bottle(env, "-q", "agent", "-n", "m", "--session", "work", *AGENT)
    assert (started.returncode, started.stdout, started.stderr) == (0, "work\n", "")
    running = one_error(bottle(env, "sessions", "rm", "work"))
    assert running.startswith("session 'work' is still running")
    assert running.endswith("(end it first: quit its program in bottle attach work, or bottle "
                            "sessions rm -f work)")  # fmt: skip
    bottle(env, "attach", "work", stdin="x\n")
    wait_for(lambda: json.loads(bottle(env, "sessions", "--json").stdout)[0]["state"] == "exited",
             "the session to end")  # fmt: skip
    assert fake_smolvm.machine("m")["state"] == "running"  # an agent's machine is not its own
    assert bottle(env, "sessions", "rm", "work").returncode == 0


def test_errors_name_flags(fake_smolvm: Any, env: dict[str, str]) -> None:
    image_machine(fake_smolvm, "m")
    assert one_error(bottle(env, "agent", "-n", "m", "--detach", "--no-tty")) == (
        "--detach needs a terminal session (drop --no-tty)"
    )
    assert one_error(bottle(env, "agent", "-n", "m", "--session", "x")) == (
        "--session names a detached session: give --detach too"
    )
    bad_keys = one_error(bottle(env, "attach", "--detach-keys", "ctrl-p,ctrl-ä", "work"))
    assert bad_keys.startswith("--detach-keys 'ctrl-p,ctrl-ä': unknown key 'ctrl-ä'")
    bottle(env, "-q", "agent", "-n", "m", "--session", "work", *AGENT)
    missing = one_error(bottle(env, "attach", "wrok"))
    assert missing.startswith("no session 'wrok'") and "(did you mean 'work'?)" in missing
    assert "needs a session's name" in one_error(bottle(env, "sessions", "rm"))
    assert "takes no names" in one_error(bottle(env, "sessions", "ls", "work"))
    unknown = bottle(env, "sessions", "work")  # argparse's usage error, in bottle's status
    assert unknown.returncode == CLI_FAILURE and "invalid choice: 'work'" in unknown.stderr
    bottle(env, "attach", "work", stdin="x\n")


def test_a_lost_holder_is_torn_down_by_the_next_command(
    fake_smolvm: Any, env: dict[str, str]
) -> None:
    started = bottle(env, "launch", "-n", "m1", *AGENT)
    assert started.returncode == 0, started.stderr
    session = sessions.find_session("m1")
    wait_for(lambda: session.pid is not None, "the holder's state")
    assert session.pid is not None
    os.kill(session.pid, 9)
    wait_for(lambda: not session.running(), "the holder to die")
    assert fake_smolvm.machine("m1")["state"] == "running"
    noticed = bottle(env, "ls")  # the machines' list: it is not there any more
    assert noticed.stderr == (
        "bottle: session 'm1' was lost (its holder died): its machine 'm1' is stopped and "
        "deleted\n"
    )
    assert fake_smolvm.machine("m1") is None
    assert "m1" not in noticed.stdout
    listing = bottle(env, "sessions")
    assert listing.stdout.splitlines()[1].split()[4:] == ["lost", "-", "-"]
    # Once: the next command has nothing left to do.
    assert bottle(env, "sessions").stderr == ""
    attached = bottle(env, "attach", "m1")
    assert attached.returncode == CLI_FAILURE
    assert attached.stderr == "bottle: error: session 'm1' was lost: its holder died\n"


def test_rm_force_ends_running_sessions(fake_smolvm: Any, env: dict[str, str]) -> None:
    # smolvm's client dies of the SIGTERM (it has no handler), its guest command with it; the
    # holder tears the machine down, and the session is forgotten.
    for name in ("m1", "m2"):
        assert bottle(env, "launch", "-n", name, *AGENT).returncode == 0
    assert len(marked_pids(env[MARK_VAR])) > 2  # the holders, smolvm's clients, the commands
    removed = bottle(env, "sessions", "rm", "-f", "m1", "m2", "-q")  # options anywhere
    assert (removed.returncode, removed.stdout, removed.stderr) == (0, "m1\nm2\n", "")
    assert fake_smolvm.machine("m1") is None and fake_smolvm.machine("m2") is None
    assert bottle(env, "sessions").stdout.splitlines()[1:] == []
    assert marked_pids(env[MARK_VAR]) == []
    assert "--force is for bottle sessions rm" in one_error(bottle(env, "sessions", "-f"))


def test_a_failed_teardown_keeps_the_session(fake_smolvm: Any, env: dict[str, str]) -> None:
    fault = "agent operation failed: delete machine: Device or resource busy (os error 16)"
    fake_smolvm.set_fault(FAIL_DELETE=fault)
    env = dict(os.environ)  # the fault, for the holder and for the commands
    assert bottle(env, "launch", "-n", "m1", *AGENT).returncode == 0
    assert bottle(env, "attach", "m1", stdin="x\n").returncode == 4
    wait_for(lambda: not sessions.find_session("m1").running(), "the holder's teardown")
    (info,) = json.loads(bottle(env, "sessions", "--json").stdout)
    assert info["teardown"].startswith("failed: delete")
    kept = one_error(bottle(env, "sessions", "rm", "m1"))
    assert kept.startswith("session 'm1': tearing its machine 'm1' down failed: delete")
    assert kept.endswith("(the session is kept: removing it again tries again)")
    assert fake_smolvm.machine("m1")["state"] == "stopped"  # the stop went through
    assert [s.name for s in sessions.list_sessions()] == ["m1"]
    fake_smolvm.set_fault(FAIL_DELETE=None)
    again = bottle(dict(os.environ), "sessions", "rm", "m1")
    assert (again.returncode, again.stdout) == (0, "m1\n"), again.stderr
    assert fake_smolvm.machine("m1") is None


def test_a_session_whose_machine_is_removed_ends(fake_smolvm: Any, env: dict[str, str]) -> None:
    # `bottle rm -f` of the machine under a detached session: smolvm's client loses its VM,
    # the session ends with its status, and the teardown has nothing left to do.
    assert bottle(env, "launch", "-n", "m1", *AGENT).returncode == 0
    assert bottle(env, "-q", "rm", "-f", "m1").returncode == 0
    session = sessions.find_session("m1")
    assert session.wait(30) == 1
    info = session.info()
    assert (info.state, info.teardown) == ("exited", "done")
    assert b"connection to VM lost" in session.screen()
    removed = bottle(env, "sessions", "rm", "m1")
    assert (removed.returncode, removed.stdout, removed.stderr) == (0, "m1\n", "")
    assert marked_pids(env[MARK_VAR]) == []


def test_sessions_without_any(env: dict[str, str]) -> None:
    listing = bottle(env, "sessions")
    assert listing.returncode == 0
    assert listing.stdout.split() == ["NAME", "MACHINE", "STARTED", "STATE", "CLIENTS", "STATUS"]
    assert bottle(env, "sessions", "--json").stdout == "[]\n"
