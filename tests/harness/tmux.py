"""tmux as the user's terminal: a private server whose one pane runs a shell command line.

The test reads the pane as the user sees it (`screen`), types into it (`keys`) and changes its
size (`resize`, which makes the kernel send SIGWINCH to whatever runs in it).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Callable, Mapping

import pytest

from harness.terminal import wait_until


class Pane:
    """A private tmux server with one window of `rows` x `cols` running `command` (a shell
    command line) with `env`."""

    def __init__(self, command: str, env: Mapping[str, str], *, rows: int = 30,
                 cols: int = 100) -> None:  # fmt: skip
        if shutil.which("tmux") is None:
            pytest.fail("tmux is not installed (scripts/bootstrap installs it)")
        self.socket = f"bottle-test-{uuid.uuid4().hex[:12]}"
        self.env = {**env, "TERM": "xterm-256color"}
        self.tmux("new-session", "-d", "-s", "main", "-x", str(cols), "-y", str(rows), command)
        self.tmux("set-option", "-g", "status", "off")

    def tmux(self, *args: str) -> str:
        """Run a tmux command against the private server; its stdout."""
        proc = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            env=self.env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, f"tmux {args}: {proc.stderr}"
        return proc.stdout

    def screen(self) -> str:
        """The visible pane contents."""
        return self.tmux("capture-pane", "-p", "-t", "main")

    def keys(self, *keys: str) -> None:
        """Type: each argument is a tmux key name (`Enter`, `C-c`) or literal text."""
        self.tmux("send-keys", "-t", "main", *keys)

    def resize(self, rows: int, cols: int) -> None:
        self.tmux("resize-window", "-t", "main", "-x", str(cols), "-y", str(rows))

    def wait(self, predicate: Callable[[str], object], what: str, timeout: float = 30) -> str:
        """Wait until the screen shows what `predicate` looks for; the screen then."""
        if not wait_until(lambda: predicate(self.screen()), timeout, 0.05):
            pytest.fail(f"{what} never shown; screen:\n{self.screen()}")
        return self.screen()

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True,
                       timeout=30, check=False)  # fmt: skip
