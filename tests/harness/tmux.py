"""tmux as the user's terminal: a private server, one pane running a shell command, and the
screen as a person would see it (a real terminal emulator draws it: "\\r", erase-line and
wrapping included)."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping

import pytest


class Tmux:
    """A private tmux server whose one pane runs `command` under `sh -c`."""

    def __init__(
        self, command: str, env: Mapping[str, str], *, cols: int = 120, rows: int = 40
    ) -> None:
        if shutil.which("tmux") is None:
            pytest.fail("tmux is not installed (scripts/bootstrap installs it)")
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
