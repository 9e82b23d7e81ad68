"""End to end: tmux plays the user's terminal, the relay runs real full-screen programs.

``tmux resize-window`` changes the size of the terminal the relay sits in; the programs'
own view of their size (a curses program's ``getmaxyx`` after KEY_RESIZE, vim's ``&lines``
and ``&columns``) must follow, in both output modes (in direct mode they draw on the pane
themselves).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import textwrap
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from harness.backend import image_machine
from harness.fakevm import FakeSmolvm
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

    def start(
        self, program: list[str], status: Path, then: str = "", options: Sequence[str] = ()
    ) -> None:
        """Start the session: the relay (with ``options``) runs ``program``, its status goes to
        ``status``; then the pane's shell runs ``then`` (it writes where the relay left the
        cursor)."""
        relay = shlex.join([*RELAY_ARGV, *output_args(self.mode), *options, "--", *program])
        shell = f"{relay}; echo $? > {shlex.quote(str(status))}; {then} sleep 60"
        self.tmux("new-session", "-d", "-s", "main", "-x", "100", "-y", "30", shell)
        self.tmux("set-option", "-g", "status", "off")

    def screen(self) -> str:
        """The visible pane contents."""
        return self.tmux("capture-pane", "-p", "-t", "main")

    def screen_and_cursor(self) -> str:
        """The visible pane contents and where the cursor is."""
        cursor = self.tmux("display-message", "-p", "-t", "main", "#{cursor_x},#{cursor_y}")
        return f"{self.screen()}cursor at {cursor}"

    def keys(self, *keys: str) -> None:
        """Press ``keys`` in the pane (tmux key names such as ``C-w`` or ``Enter``)."""
        self.tmux("send-keys", "-t", "main", *keys)

    def type(self, text: str) -> None:
        """Type ``text`` into the pane, literally."""
        self.tmux("send-keys", "-t", "main", "-l", text)

    def cursor(self) -> tuple[int, int]:
        """(x, y) of the cursor in the pane."""
        x, y = self.tmux("display-message", "-p", "-t", "main", "#{cursor_x} #{cursor_y}").split()
        return int(x), int(y)

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


def require(program: str) -> str:
    """The path of ``program``; fails (never skips) when it is missing."""
    path = shutil.which(program)
    if path is None:
        pytest.fail(f"{program} is not installed (scripts/bootstrap installs it)")
    return path


@pytest.fixture
def tmux_session(impl: str, mode: str, tmp_path: Path) -> Iterator[Tmux]:
    require("tmux")
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


# --------------------------------------------------------------------------- copy and direct


class Twins:
    """The same program in two panes of the same size, one relayed in copy mode and one in
    direct mode, driven by the same keys."""

    def __init__(self, impl: str, tmp: Path) -> None:
        require("tmux")
        self.copy = Tmux(impl, "copy", tmp / "copy")
        self.direct = Tmux(impl, "direct", tmp / "direct")
        self.panes = (self.copy, self.direct)
        self.status = {t: t.tmp / "status" for t in self.panes}

    def start(self, program: list[str], then: str = "", options: Sequence[str] = ()) -> None:
        for t in self.panes:
            t.tmp.mkdir(exist_ok=True)
            t.start(program, self.status[t], then, options)

    def keys(self, *keys: str) -> None:
        for t in self.panes:
            t.keys(*keys)

    def type(self, text: str) -> None:
        for t in self.panes:
            t.type(text)

    def same_screen(self, marker: str, check: Callable[[str], bool] = lambda _: True) -> str:
        """Wait until both panes show ``marker`` and the same screen, cursor included, that
        passes ``check`` (each pane may take its time to draw); that screen."""

        def alike() -> str | None:
            copy, direct = (t.screen_and_cursor() for t in self.panes)
            return copy if marker in copy and copy == direct and check(copy) else None

        screen = wait_until(alike, 20, 0.05)
        if screen is None:
            copy, direct = (t.screen_and_cursor() for t in self.panes)
            pytest.fail(f"copy and direct mode draw different screens (waiting for {marker!r})"
                        f"\n--- copy:\n{copy}\n--- direct:\n{direct}")
        return str(screen)

    def statuses(self) -> list[str]:
        """Both relays' exit statuses, once both have ended."""

        def read() -> list[str] | None:
            found = [p.read_text().strip() if p.exists() else "" for p in self.status.values()]
            return found if all(found) else None

        found = wait_until(read, 20)
        assert found, [t.screen() for t in self.panes]
        return list(found)

    def close(self) -> None:
        for t in self.panes:
            t.close()


@pytest.fixture
def twins(impl: str, tmp_path: Path) -> Iterator[Twins]:
    pair = Twins(impl, tmp_path)
    yield pair
    pair.close()


# vim without terminal queries (cursor position, version, colours): their answers come back as
# input, and a vim that reads one in pieces (late, under load) takes the rest for keys.
VIM_ARGS = ["--cmd", "set t_u7= t_RV= t_RF= t_RB= t_RS= t_RC=", "-u", "NONE", "-N", "-n",
            "-i", "NONE"]


def vim_text(path: Path) -> None:
    """A file for vim to show: tabs, lines longer than the pane, 200 of them."""
    path.write_text("".join(
        f"line {n}\tcolumn\t{'long ' * (n % 7) * 6}end {n}\n" for n in range(1, 201)
    ))


def lines(screen: str) -> list[str]:
    """The screen's non-empty lines (the cursor line left out)."""
    return [line for line in screen.splitlines()[:-1] if line.strip()]


class TestCopyAndDirectLookAlike:
    """Raw mode is for the keyboard: direct mode keeps the terminal's output processing, so
    that a program writing to it directly draws what copy mode (through the pty's output
    processing) draws."""

    def test_plain_output(self, twins: Twins) -> None:
        twins.start(["printf", "a1\\nb2\\nc3\\n"], then="echo PROMPT;")
        screen = twins.same_screen("PROMPT")
        assert lines(screen) == ["a1", "b2", "c3", "PROMPT"], screen
        assert twins.statuses() == ["0", "0"]

    def test_full_screen_program(self, twins: Twins, tmp_path: Path) -> None:
        vim = require("vim")
        text = tmp_path / "text.txt"
        vim_text(text)
        twins.start([vim, *VIM_ARGS, str(text)])
        twins.same_screen("line 1 ")
        twins.keys("Escape")
        twins.type(":set nu list")
        twins.keys("Enter")
        twins.same_screen("line 1^Icolumn")
        twins.type("G")
        twins.same_screen("end 200$")
        twins.type("gg")
        twins.keys("C-f", "C-f", "C-b")
        twins.type(":echo 'MARK' line('.')")
        twins.keys("Enter")
        twins.same_screen("MARK")
        twins.keys("Escape")
        twins.type(":qa!")
        twins.keys("Enter")
        assert twins.statuses() == ["0", "0"]

    def test_zsh_line_editor(self, twins: Twins, tmp_path: Path) -> None:
        zsh = require("zsh")
        listing = tmp_path / "complete"
        listing.mkdir()
        for name in ("alpha-one", "alpha-two", "alpha-three", "beta"):
            (listing / name).touch()
        # Only this .zshrc (-d: no system-wide start-up files).
        (tmp_path / ".zshrc").write_text("PS1='zsh%# '\nbindkey -e\nunset HISTFILE\n")
        for t in twins.panes:
            t.env["ZDOTDIR"] = str(tmp_path)
        twins.start([zsh, "-d", "-i"])
        twins.same_screen("zsh#")
        # Editing: words typed, two deleted, the start of the line changed.
        twins.type("echo alpha beta gamma")
        twins.keys("C-w", "C-w")
        twins.type("omega")
        twins.keys("C-a")
        twins.type(": ")
        twins.keys("C-e")
        twins.same_screen("zsh# : echo alpha omega")
        twins.keys("C-u")
        # A completion listing below the line, and the line drawn again above it.
        twins.type(f"ls {listing}/al")
        twins.keys("Tab", "Tab")
        screen = twins.same_screen("alpha-three")
        assert "alpha-one" in screen and "beta" not in screen, screen
        twins.keys("C-u")
        # A line longer than the pane wraps.
        twins.type(": " + "wrap " * 30 + "END")
        twins.same_screen("END")
        twins.keys("C-u")
        # A command's own output (straight to the terminal in direct mode). It waits for a
        # key, typed once the line editor has finished its line: in direct mode what goes
        # through the pty (the line editor's drawing) arrives after what is written to the
        # terminal itself, and the two would race.
        command = "read -sk1 key </dev/tty; print -l one two three"
        twins.type(command)
        twins.keys("Enter")

        def below_the_command(screen: str) -> bool:
            rows = screen.splitlines()
            at = max(i for i, row in enumerate(rows) if command in row)
            return rows[-1] == f"cursor at 0,{at + 1}"

        twins.same_screen(command, below_the_command)
        twins.type("x")
        screen = twins.same_screen("three")
        assert f"{command}\none\ntwo\nthree\nzsh#" in screen, screen
        twins.type("exit")
        twins.keys("Enter")
        assert twins.statuses() == ["0", "0"]

    def test_smolvm_client(self, fake_smolvm: FakeSmolvm, twins: Twins, tmp_path: Path) -> None:
        """smolvm's -t client writes what its guest's pty already processed (LF made CR LF) to
        a terminal whose output processing direct mode keeps: CR CR LF, the same screen. Its own
        raw mode (OPOST off) lands on the relay's pty, its stdin. Through the fake smolvm, which
        copies the client: plain output, then vim (which turns ONLCR off in the guest)."""
        vim = require("vim")
        text = tmp_path / "text.txt"
        vim_text(text)
        image_machine(fake_smolvm, "m")
        for t in twins.panes:  # the fake, first on PATH, and its state
            t.env.update(PATH=os.environ["PATH"], FAKE_SMOLVM_STATE=os.environ["FAKE_SMOLVM_STATE"])
        # smolvm's guest pty starts at 80x24 and gets the client's size once the command runs
        # (the fake copies that): the guest waits for it, or vim might miss the change.
        guest = ('while [ "$(stty size)" = "24 80" ]; do sleep 0.02; done; '
                 f"printf 'a1\\nb2\\nc3\\n'; exec {shlex.join([vim, *VIM_ARGS, str(text)])}")
        twins.start(["smolvm", "machine", "exec", "--name", "m", "-i", "-t", "--",
                     "sh", "-c", guest], then="echo PROMPT;", options=["--hold-until-raw"])
        twins.same_screen("line 1 ")
        twins.type("G")
        twins.same_screen("end 200")
        twins.keys("Escape")
        twins.type(":qa!")
        twins.keys("Enter")
        screen = twins.same_screen("PROMPT")
        assert lines(screen) == ["a1", "b2", "c3", "PROMPT"], screen
        assert twins.statuses() == ["0", "0"]
