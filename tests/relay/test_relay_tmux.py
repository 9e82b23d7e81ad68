"""End to end: tmux plays the user's terminal, the relay runs real full-screen programs.

``tmux resize-window`` changes the size of the terminal the relay sits in; the programs'
own view of their size (a curses program's ``getmaxyx`` after KEY_RESIZE, vim's ``&lines``
and ``&columns``) must follow, in both output modes (in direct mode they draw on the pane
themselves).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness.relay import (
    MARK_VAR,
    PY,
    RELAY_ARGV,
    describe_pids,
    implementation_env,
    kill_quietly,
    marked_pids,
    output_args,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

CURSES_PROGRAM = textwrap.dedent(
    """
    import curses

    def main(scr):
        last = "-"
        while True:
            rows, cols = scr.getmaxyx()
            scr.erase()
            scr.addstr(0, 0, f"SIZE {rows}x{cols} LAST {last}")
            scr.refresh()
            key = scr.getch()
            if key == ord("q"):
                return
            last = "RESIZE" if key == curses.KEY_RESIZE else chr(key)

    curses.wrapper(main)
    """
)


class Tmux:
    """A private tmux server whose one pane runs a command under the relay."""

    def __init__(self, impl: str, mode: str, tmp: Path) -> None:
        self.mode = mode
        self.socket = f"bottle-test-{uuid.uuid4().hex[:12]}"
        self.mark = uuid.uuid4().hex
        self.tmp = tmp
        self.env = implementation_env(impl)
        self.env[MARK_VAR] = self.mark
        self.env["TERM"] = "xterm-256color"

    def tmux(self, *args: str) -> str:
        """Run a tmux command against the private server; its stdout."""
        proc = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            env=self.env, capture_output=True, text=True, timeout=30,
        )
        assert proc.returncode == 0, f"tmux {args}: {proc.stderr}"
        return proc.stdout

    def start(self, program: list[str], status: Path) -> None:
        """Start the session: the relay runs ``program``, its status goes to ``status``."""
        relay = shlex.join([*RELAY_ARGV, *output_args(self.mode), "--", *program])
        shell = f"{relay}; echo $? > {shlex.quote(str(status))}; sleep 60"
        self.tmux("new-session", "-d", "-s", "main", "-x", "100", "-y", "30", shell)
        self.tmux("set-option", "-g", "status", "off")

    def screen(self) -> str:
        """The visible pane contents."""
        return self.tmux("capture-pane", "-p", "-t", "main")

    def pane_size(self) -> tuple[int, int]:
        """(rows, cols) of the pane, as tmux sees it."""
        rows, cols = self.tmux("display-message", "-p", "-t", "main",
                               "#{pane_height} #{pane_width}").split()
        return int(rows), int(cols)

    def close(self) -> None:
        """Kill the server and anything the session left."""
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)
        for pid in marked_pids(self.mark):
            kill_quietly(pid)


@pytest.fixture
def tmux_session(impl: str, mode: str, tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (scripts/bootstrap installs it)")
    session = Tmux(impl, mode, tmp_path)
    yield session
    session.close()


def wait_screen(t: Tmux, predicate: Callable[[str], object], what: str) -> str:
    """Wait until the pane shows what ``predicate`` looks for."""
    found = wait_until(lambda: predicate(t.screen()), 20, 0.05)
    if not found:
        pytest.fail(f"{what} never shown; screen:\n{t.screen()}\nprocesses:\n"
                    f"{describe_pids(marked_pids(t.mark))}")
    return t.screen()


# Copy mode only: ncurses sets its terminal modes (cbreak, noecho) on the terminal behind its
# stdout, which in direct mode is the user's and not the pty it reads keys from. Direct mode is
# for clients that set their modes on stdin, like smolvm -i -t (and vim, below).
@pytest.mark.parametrize("mode", ["copy"])
def test_curses_program_follows_resize(tmux_session: Tmux, tmp_path: Path) -> None:
    t = tmux_session
    program, status = tmp_path / "sizes.py", tmp_path / "status"
    program.write_text(CURSES_PROGRAM)
    t.start([PY, str(program)], status)

    def shows_size(rows: int, cols: int) -> Callable[[str], bool]:
        return lambda screen: f"SIZE {rows}x{cols} " in screen

    rows, cols = t.pane_size()
    wait_screen(t, shows_size(rows, cols), f"initial size {rows}x{cols}")
    t.tmux("resize-window", "-t", "main", "-x", "120", "-y", "40")
    new = t.pane_size()
    assert new != (rows, cols)
    wait_screen(t, shows_size(*new), f"new size {new}")
    t.tmux("resize-window", "-t", "main", "-x", "83", "-y", "21")
    wait_screen(t, shows_size(*t.pane_size()), "second size")
    # Keys still reach the program after the resizes.
    t.tmux("send-keys", "-t", "main", "k")
    wait_screen(t, lambda s: "LAST k" in s, "typed key")
    t.tmux("send-keys", "-t", "main", "q")
    assert wait_until(lambda: status.exists() and status.read_text().strip(), 20), t.screen()
    assert status.read_text().strip() == "0"


def test_vim_follows_resize(tmux_session: Tmux, tmp_path: Path) -> None:
    vim = shutil.which("vim") or shutil.which("vi")
    if vim is None:
        pytest.fail("vim is not installed")
    t = tmux_session
    status = tmp_path / "status"
    t.start([vim, "-u", "NONE", "-N", "-n", "-i", "NONE"], status)
    wait_screen(t, lambda s: "~" in s, "vim's empty buffer")

    def vim_size() -> str:
        t.tmux("send-keys", "-t", "main", "Escape", ":echo 'VIM' &lines &columns", "Enter")
        return t.screen()

    t.tmux("resize-window", "-t", "main", "-x", "120", "-y", "40")
    rows, cols = t.pane_size()
    seen = wait_until(lambda: re.search(rf"VIM {rows} {cols}\b", vim_size()), 20, 0.2)
    assert seen, f"vim never saw {rows}x{cols}:\n{t.screen()}"
    t.tmux("send-keys", "-t", "main", "Escape", ":qa!", "Enter")
    assert wait_until(lambda: status.exists() and status.read_text().strip(), 20), t.screen()
    assert status.read_text().strip() == "0"
