"""bottle's stderr while a command runs: whole lines, and at most one unfinished line.

The log (`-v`), error lines and the progress display (`bottle.cli._progress`) all write
through `CONSOLE`, so that nothing is written into a status line: it is erased first and drawn
again after.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import TextIO

# What a progress display shows, by the mark the backend puts on the same log records
# (`bottle.backend.smolmachines.PROGRESS_STEP` / `PROGRESS_LINE`): those records are left out
# of the log while it does.
STEPS = "step"
LINES = "line"


class Console:
    """bottle's stderr: whole lines, and at most one unfinished line at the bottom.

    On a terminal the unfinished line is a status line, erased before anything else is
    written and drawn again after it. Elsewhere it is the start of a step's line, which
    anything else written first ends with a newline. A stderr that fails (a terminal gone)
    is not an error of the command: progress is a courtesy.
    """

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self.lock = threading.RLock()
        self.status = ""  # on a terminal: shown at the bottom
        self.partial = ""  # elsewhere: the start of a line, written without its end
        self._broken = False  # something came after the partial line: it was ended
        self.shows: frozenset[str] = frozenset()

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    def width(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (OSError, ValueError):
            return 80

    def write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.stream.write(text)
            self.stream.flush()

    def print(self, line: str) -> None:
        """One whole line, above the status line or after the unfinished one."""
        with self.lock:
            self._lift()
            self.write(line + "\n")
            self._put_back()

    def set_status(self, text: str) -> None:
        with self.lock:
            self._lift()
            self.status = text
            self._put_back()

    def begin_line(self, text: str) -> None:
        with self.lock:
            self.drop_line()
            self._lift()
            self.partial, self._broken = text, False
            self.write(text)

    def end_line(self, rest: str) -> None:
        """End the line `begin_line` began with `rest`; if something came between, write it
        again, whole."""
        with self.lock:
            if not self._broken:
                self.write(rest + "\n")
            else:
                self.write(self.partial + rest + "\n")
            self.partial, self._broken = "", False

    def drop_line(self) -> None:
        """End the line `begin_line` began as it is (its step did not finish)."""
        with self.lock:
            if self.partial and not self._broken:
                self.write("\n")
            self.partial, self._broken = "", False

    def _lift(self) -> None:
        if self.status:
            self.write("\r\x1b[K")
        elif self.partial and not self._broken:
            self.write("\n")
            self._broken = True

    def _put_back(self) -> None:
        if self.status:
            # A status line that wraps could not be erased with "\r": it stays within a row.
            self.write(self.status[: max(1, self.width() - 1)])


CONSOLE = Console()
