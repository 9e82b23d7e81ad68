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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness.backend import image_machine
from harness.relay import IMPLEMENTATIONS, implementation_env, require_implementation
from harness.terminal import wait_until
from harness.tmux import Pane

pytestmark = [pytest.mark.usefixtures("test_images"), pytest.mark.timeout(120)]

BOTTLE = shlex.join([sys.executable, "-m", "bottle"])


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> str:
    require_implementation(request.param)
    return str(request.param)


@pytest.fixture
def run_in_tmux(fake_smolvm: Any, impl: str, tmp_path: Path) -> Iterator[Any]:
    """Start `bottle ARGS` in a tmux pane (30x100) on machine m; its status lands in a file."""
    image_machine(fake_smolvm, "m")
    panes: list[Pane] = []
    status = tmp_path / "status"

    def start(args: str) -> tuple[Pane, Path]:
        line = f"{BOTTLE} {args}; echo $? > {status}; sleep 60"
        pane = Pane(line, implementation_env(impl))
        panes.append(pane)
        return pane, status

    yield start
    for pane in panes:
        pane.close()


def exit_status(path: Path) -> int:
    assert wait_until(lambda: path.exists() and path.read_text().strip(), 60), "no exit status"
    return int(path.read_text())


def test_shell_is_the_agent_users_interactive_shell(run_in_tmux: Any) -> None:
    pane, status = run_in_tmux("shell m")
    pane.keys('echo "ME=$(id -un) HOME=$HOME SIZE=$(stty size)"', "Enter")
    pane.wait(lambda s: "ME=node HOME=/home/node SIZE=30 100" in s, "whoami")
    pane.resize(40, 120)
    pane.keys('echo "NOW=$(stty size)"', "Enter")
    pane.wait(lambda s: "NOW=40 120" in s, "the new size")
    # Ctrl-C is the guest's: it ends the guest's sleep, the shell stays.
    pane.keys("sleep 30; echo AFTER-$?", "Enter")
    pane.wait(lambda s: s.count("sleep 30") == 1, "the typed sleep")
    pane.keys("C-c")
    pane.wait(lambda s: "AFTER-130" in s or re.search(r"\^C\s*\n\$", s), "the interrupted sleep")
    pane.keys("exit 3", "Enter")
    assert exit_status(status) == 3


def test_shell_as_another_user_is_that_users_shell(run_in_tmux: Any) -> None:
    """root's shell in the guest's passwd (this host's, under the fake) runs, as itself, not
    as a login shell (whose $0 would start with '-')."""
    shell = pwd.getpwnam("root").pw_shell
    if not os.access(shell, os.X_OK) or shell.endswith(("/nologin", "/false")):
        shell = "/bin/sh"
    pane, status = run_in_tmux("shell -u root -w /tmp m")
    pane.keys('echo "ME=$(id -un) AT=$(pwd) SH=$SHELL ZERO=$0"; exit', "Enter")
    pane.wait(lambda s: f"ME=root AT=/tmp SH={shell} ZERO={shell}" in s, "whoami")
    assert exit_status(status) == 0


def test_exec_it_reads_the_terminal(run_in_tmux: Any) -> None:
    pane, status = run_in_tmux(
        "exec -it m sh -c 'stty size; read line; echo \"GOT=$line\"; exit 5'"
    )
    pane.wait(lambda s: "30 100" in s, "the size")
    pane.keys("typed words", "Enter")
    pane.wait(lambda s: "GOT=typed words" in s, "the line read")
    assert exit_status(status) == 5


def test_exec_t_without_i_gives_the_command_no_input(run_in_tmux: Any) -> None:
    """As docker's `-t` alone: a terminal, nothing typed reaches it; it reads end-of-input."""
    pane, status = run_in_tmux("exec -t m sh -c 'test -t 0 && echo ON-A-TTY; cat; echo EOF-SEEN'")
    pane.wait(lambda s: "EOF-SEEN" in s, "the end of input")
    assert "ON-A-TTY" in pane.screen()
    assert exit_status(status) == 0


def test_shell_errors_are_bottles(run_in_tmux: Any, fake_smolvm: Any) -> None:
    fake_smolvm.create("idle", running=False)
    pane, status = run_in_tmux("shell idle")
    screen = pane.wait(lambda s: "bottle: error:" in s, "the error")
    assert "machine 'idle' is not running" in screen
    assert exit_status(status) == 125
