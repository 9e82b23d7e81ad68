"""`bottle shell` and `bottle exec -it`/`-t` in a real terminal: tmux plays the user's, both
relay twins carry the session, the fake smolvm runs the guest on a pty of its own.

What the guest reports about itself (user, shell, its terminal's size) is read off the screen,
as a user would; the window is resized with tmux and the guest must see the new size.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.backend import AGENT_IMAGE, image_machine, run_bottle
from harness.relay import IMPLEMENTATIONS, implementation_env, require_implementation
from harness.tmux import Tmux

pytestmark = [pytest.mark.usefixtures("test_images"), pytest.mark.timeout(120)]

BOTTLE = shlex.join([sys.executable, "-m", "bottle"])
ROWS, COLS = 30, 100


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    require_implementation(request.param)
    return str(request.param)


@pytest.fixture
def run_in_tmux(fake_smolvm: Any, impl: str) -> Iterator[Callable[[str], Tmux]]:
    """Start `bottle ARGS` in a tmux pane (30x100) against machine m."""
    image_machine(fake_smolvm, "m")
    panes: list[Tmux] = []

    def start(args: str) -> Tmux:
        pane = Tmux(f"{BOTTLE} {args}", implementation_env(impl), cols=COLS, rows=ROWS)
        panes.append(pane)
        return pane

    yield start
    for pane in panes:
        pane.close()


def shows(text: str) -> Callable[[list[str]], bool]:
    return lambda lines: any(text in line for line in lines)


def test_shell_is_the_agent_users_interactive_shell(run_in_tmux: Any) -> None:
    t = run_in_tmux("shell m")
    t.send('echo "ME=$(id -un) HOME=$HOME SIZE=$(stty size)"', "Enter")
    t.wait(shows(f"ME=node HOME=/home/node SIZE={ROWS} {COLS}"), "whoami")
    t.tmux("resize-window", "-t", "main", "-x", "120", "-y", "40")
    t.send('echo "NOW=$(stty size)"', "Enter")
    t.wait(shows("NOW=40 120"), "the new size")
    # Ctrl-C is the guest's: it ends the guest's sleep, and the shell goes on.
    t.send("sleep 30; echo AFTER-$?", "Enter")
    t.wait(lambda ls: sum("sleep 30" in x for x in ls) == 1, "the typed sleep")
    t.send("C-c")
    t.send('echo "STILL=$(id -un)"', "Enter")
    t.wait(shows("STILL=node"), "the shell after the interrupt")
    t.send("exit 3", "Enter")
    assert t.exit_status() == 3


def test_shell_as_another_user_is_that_users_shell(run_in_tmux: Any) -> None:
    """root's shell in the guest's passwd (this host's, under the fake) runs, as itself, not
    as a login shell (whose $0 would start with '-')."""
    shell = pwd.getpwnam("root").pw_shell
    if not os.access(shell, os.X_OK) or shell.endswith(("/nologin", "/false")):
        shell = "/bin/sh"
    t = run_in_tmux("shell -u root -w /tmp m")
    t.send('echo "ME=$(id -un) AT=$(pwd) SH=$SHELL ZERO=$0"; exit', "Enter")
    t.wait(shows(f"ME=root AT=/tmp SH={shell} ZERO={shell}"), "whoami")
    assert t.exit_status() == 0


def test_exec_it_reads_the_terminal(run_in_tmux: Any) -> None:
    """What is typed reaches the command, and by then its terminal has the user's size.

    Not before: smolvm starts the command on an 80x24 pty and sends the size once it has
    started (its `-t` client, smolvm issue #156; the fake does the same), so a `stty size` run
    first races the size (seen: `24 80` under load). Typed keys travel behind the size."""
    t = run_in_tmux("exec -it m sh -c 'read line; echo \"GOT=$line\"; stty size; exit 5'")
    t.send("typed words", "Enter")
    t.wait(shows("GOT=typed words"), "the line read")
    t.wait(lambda ls: any(re.fullmatch(rf"{ROWS} {COLS}", x) for x in ls), "the size")
    assert t.exit_status() == 5


def test_exec_t_without_i_gives_the_command_no_input(run_in_tmux: Any) -> None:
    """As docker's `-t` alone: a terminal, nothing typed reaches it; it reads end-of-input."""
    t = run_in_tmux("exec -t m sh -c 'test -t 0 && echo ON-A-TTY; cat; echo EOF-SEEN'")
    lines = t.wait(shows("EOF-SEEN"), "the end of input")
    assert any("ON-A-TTY" in x for x in lines)
    assert t.exit_status() == 0


def test_shell_errors_are_bottles(run_in_tmux: Any, fake_smolvm: Any) -> None:
    fake_smolvm.create("idle", running=False)
    t = run_in_tmux("shell idle")
    assert t.exit_status() == 125
    errors = [x for x in t.lines() if x.startswith("bottle: error:")]
    assert len(errors) == 1 and "machine 'idle' is not running" in errors[0], t.lines()


# --- the guest user kept across processes, on a terminal ---------------------------------------
# Who a machine runs commands as comes from bottle's cache, behind a check in the guest. On a
# terminal the check refuses without a word and exits 125; bottle then asks the guest itself.


def test_a_machine_made_again_runs_a_terminal_command_once_as_it_must(
    run_in_tmux: Any, fake_smolvm: Any, shared_dir: Path
) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")  # no `exec --user`: the guest user matters
    assert run_bottle("exec", "m", "true").returncode == 0  # m runs commands as root: kept
    fake_smolvm.run("machine", "delete", "-n", "m", "-f")
    image_machine(fake_smolvm, "m", image=AGENT_IMAGE)  # now as node: runuser would fail
    before = len(fake_smolvm.calls())
    runs = shared_dir / "runs"
    t = run_in_tmux(f"exec -it m sh -c 'echo x >> {runs}; echo \"ME=$(id -un)\"; exit 4'")
    assert t.exit_status() == 4
    assert any(x == "ME=node" for x in t.lines()), t.lines()
    assert not any("bottle" in x for x in t.lines()[:-1]), t.lines()  # nothing said but EXIT
    assert runs.read_text() == "x\n"
    guests = [c[c.index("--") + 1 :] for c in fake_smolvm.calls()[before:] if "--" in c]
    assert [g[0] for g in guests] == ["/bin/sh", "id", "env"]  # refused, asked, run directly
    # Learnt, and kept: the next session is one smolvm exec (and the state asked first).
    before = len(fake_smolvm.calls())
    t = run_in_tmux("exec -t m id -un")
    assert t.exit_status() == 0
    assert [c[1] for c in fake_smolvm.calls()[before:]] == ["status", "exec"]


def test_a_terminal_commands_own_125_is_not_run_again(
    run_in_tmux: Any, fake_smolvm: Any, shared_dir: Path
) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")
    assert run_bottle("exec", "m", "true").returncode == 0
    runs = shared_dir / "runs"
    before = len(fake_smolvm.calls())
    t = run_in_tmux("shell m")
    t.wait(lambda lines: lines[-1].startswith("$"), "the prompt")
    t.send(f"echo x >> {runs}; exit 125", "Enter")
    assert t.exit_status() == 125
    assert runs.read_text() == "x\n"
    guests = [c[c.index("--") + 1 :] for c in fake_smolvm.calls()[before:] if "--" in c]
    assert [g[0] for g in guests] == ["/bin/sh", "id"]  # the shell, then the guest asked
