"""tmux as the user's terminal, as a person would see it (a real terminal emulator draws it:
"\\r", erase-line and wrapping included).

`Tmux`: a private server with one pane running a shell command. `TmuxServer`: a private server
whose windows each run one shell command, each a terminal of its own (a pty that tmux draws),
so a test can attach from one, lose it (`kill`: tmux closes the pty, and the processes in it
are hung up), and attach again from another of a different size, reading what each one shows.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from harness.relay import MARK_VAR, describe_pids, kill_quietly, marked_pids, wait_until


def require_tmux() -> str:
    path = shutil.which("tmux")
    if path is None:
        pytest.fail("tmux is not installed (scripts/bootstrap installs it)")
    return path


class Tmux:
    """A private tmux server whose one pane runs `command` under `sh -c`."""

    def __init__(
        self, command: str, env: Mapping[str, str], *, cols: int = 120, rows: int = 40
    ) -> None:
        require_tmux()
        self.socket = f"bottle-test-{uuid.uuid4().hex[:12]}"
        self.env = {**env, "TERM": "xterm-256color"}
        # The pane stays after the command ends, so its last screen can still be read.
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "main", "-x", str(cols),
                  "-y", str(rows), f"{command}; echo EXIT=$?; sleep 600")  # fmt: skip
        self.tmux("set-option", "-g", "status", "off")
        self.tmux("set-option", "-g", "history-limit", "10000")

    def tmux(self, *args: str) -> str:
        proc = subprocess.run(
            ["tmux", "-L", self.socket, *args], env=self.env, capture_output=True, text=True,
            timeout=30, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"tmux {args}: {proc.stderr}"
        return proc.stdout

    def lines(self) -> list[str]:
        """Every line the pane has shown (its scrollback too), wrapped lines joined."""
        text = self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "main")
        return [line.rstrip() for line in text.rstrip("\n").split("\n")]

    def send(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "main", *keys)

    def wait(
        self, predicate: Callable[[list[str]], object], what: str, timeout: float = 60
    ) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            lines = self.lines()
            if predicate(lines):
                return lines
            if time.monotonic() > deadline:
                joined = "\n".join(lines)
                pytest.fail(f"{what}: never shown; the pane:\n{joined}")
            time.sleep(0.05)

    def exit_status(self, timeout: float = 60) -> int:
        """Wait for the command to end; its status."""
        lines = self.wait(lambda ls: any(x.startswith("EXIT=") for x in ls), "the end")
        return int(next(x for x in lines if x.startswith("EXIT="))[5:])

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


class TmuxServer:
    """A private tmux server; windows by name, each running ``sh -c COMMAND``.

    What a window's command starts carries ``mark`` (MARK_VAR); tmux itself and the shell's
    wait after the command do not, so that a test can tell what was left behind.
    """

    def __init__(self, env: Mapping[str, str], mark: str, tmp: Path) -> None:
        require_tmux()
        self.socket = f"bottle-test-{uuid.uuid4().hex[:12]}"
        self.env = {k: v for k, v in env.items() if k != MARK_VAR}
        self.env["TERM"] = "xterm-256color"
        self.mark = mark
        self.tmp = tmp
        self._started = False

    def tmux(self, *args: str) -> str:
        proc = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            env=self.env, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 0, f"tmux {args}: {proc.stderr}"
        return proc.stdout

    def window(self, name: str, command: str, size: tuple[int, int] = (30, 100)) -> None:
        """A new window ``name`` of ``size`` (rows, cols) running ``command``; once it ends,
        its status is in the file `status(name)` and the window stays (a shell's prompt
        would come next)."""
        status = shlex.quote(str(self.status_file(name)))
        shell = (f"export {MARK_VAR}={self.mark}; {command}; echo $? > {status}; "
                 f"exec env -u {MARK_VAR} sleep 600")  # fmt: skip
        rows, cols = size
        if not self._started:
            # A window of its own keeps the server up while the test's come and go.
            self.tmux("new-session", "-d", "-s", "main", "-n", "keep", "sleep 600")
            self.tmux("set-option", "-g", "status", "off")
            self._started = True
        self.tmux("new-window", "-d", "-t", "main", "-n", name, shell)
        self.tmux("resize-window", "-t", f"main:{name}", "-x", str(cols), "-y", str(rows))

    def status_file(self, name: str) -> Path:
        return self.tmp / f"{name}.status"

    def status(self, name: str) -> str:
        """The window's command's exit status, once it has ended."""
        path = self.status_file(name)
        found = wait_until(lambda: path.exists() and path.read_text().strip(), 20)
        assert found, f"{name} did not end:\n{self.screen(name)}"
        return str(found)

    def screen(self, name: str, *, joined: bool = True) -> str:
        """What the window shows (lines that wrapped joined again, unless ``joined`` is
        False: then one line per row)."""
        return self.tmux("capture-pane", "-p", *(["-J"] if joined else []), "-t", f"main:{name}")

    def wait_screen(self, name: str, predicate: Callable[[str], object], what: str) -> str:
        found = wait_until(lambda: predicate(self.screen(name)), 20, 0.05)
        if not found:
            pytest.fail(f"{what} never shown in {name}; screen:\n{self.screen(name)}\n"
                        f"processes:\n{describe_pids(marked_pids(self.mark))}")  # fmt: skip
        return self.screen(name)

    def keys(self, name: str, *keys: str) -> None:
        """Press ``keys`` (tmux key names such as ``C-p`` or ``Enter``)."""
        self.tmux("send-keys", "-t", f"main:{name}", *keys)

    def type(self, name: str, text: str) -> None:
        self.tmux("send-keys", "-t", f"main:{name}", "-l", text)

    def kill(self, name: str) -> None:
        """Close the window's terminal: what runs in it is hung up."""
        self.tmux("kill-window", "-t", f"main:{name}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=30, check=False)  # fmt: skip
        for pid in marked_pids(self.mark):
            kill_quietly(pid)
