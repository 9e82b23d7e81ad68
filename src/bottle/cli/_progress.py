"""Progress on stderr: a status line on a terminal, one plain line per step elsewhere.

Drawn through `bottle.cli._stderr.CONSOLE`, which the log (`-v`) and error lines go through
too, so that a line is printed above the status line and never into it. On a terminal the
running step and its elapsed time stay on the bottom line, redrawn each second, with what
smolvm redraws in place (its image-pull bar) folded into it and smolvm's other lines printed
above. Elsewhere (a pipe, a file) each step is one line, begun when the step begins and ended
with its duration; smolvm's own lines are left to the log.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

from bottle.cli._errors import PROG
from bottle.cli._stderr import CONSOLE, LINES, STEPS, Console
from bottle.results import Progress

# Said on the status line while a teardown step runs (see `bottle.errors.TeardownInterrupted`).
TEARDOWN = ("stopping", "deleting")
TEARDOWN_HINT = "(Ctrl-C leaves it behind)"


class ProgressDisplay:
    """Shows a backend's `Progress` reports through a `Console` (see the module's docstring).

    `terminal`: a status line redrawn each second; else one line per step. Not `enabled`
    (`-q`): nothing at all.
    """

    def __init__(
        self, *, enabled: bool, terminal: bool | None = None, console: Console = CONSOLE
    ) -> None:
        self.enabled = enabled
        self.terminal = console.stream.isatty() if terminal is None else terminal
        self.console = console
        self._step = ""  # the step running
        self._head = ""  # its line, as it begins
        self._detail = ""  # what smolvm redraws in place, on a terminal
        self._began = 0.0
        self._paused = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
            self.console.shows = frozenset({STEPS, LINES} if self.terminal else {STEPS})
            if self.terminal:
                self._thread = threading.Thread(target=self._tick, daemon=True)
                self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self.console.lock:
            self._end_step()
        self.console.shows = frozenset()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing drawn meanwhile: a session owns the terminal."""
        with self.console.lock:
            self._end_step()
            self._paused = True
        try:
            yield
        finally:
            self._paused = False

    def update(self, event: Progress) -> None:
        if not self.enabled or self._paused or self._stop.is_set():
            return
        with self.console.lock:
            head = f"{PROG}: {event.step} {event.machine!r} …"
            if event.done:
                self._finish(head, event.elapsed)
            elif event.line is None:
                self._end_step()
                self._step, self._head, self._detail = event.step, head, ""
                self._began = time.monotonic() - event.elapsed
                if self.terminal:
                    self._draw()
                else:
                    self.console.begin_line(head)
            elif self.terminal and event.redrawn:
                self._detail = event.line
                self._draw()
            elif self.terminal:
                self._detail = ""
                self._draw()
                self.console.print(f"  {event.line}")

    def _finish(self, head: str, elapsed: float) -> None:
        done = f" done in {elapsed:.1f} s"
        if self.terminal:
            self.console.set_status("")
            self.console.print(head + done)
        elif self.console.partial == head:
            self.console.end_line(done)
        else:
            self.console.print(head + done)
        self._step = self._head = self._detail = ""

    def _end_step(self) -> None:
        """Take the running step's unfinished line away (it failed, or a session begins)."""
        if self.terminal:
            self.console.set_status("")
        else:
            self.console.drop_line()
        self._step = self._head = self._detail = ""

    def _draw(self) -> None:
        if not self._head:
            return
        text = f"{self._head} {time.monotonic() - self._began:.0f} s"
        if self._step in TEARDOWN:
            text += f" {TEARDOWN_HINT}"
        if self._detail:
            text += f"  {self._detail}"
        self.console.set_status(text)

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self.console.lock:
                if not self._paused:
                    self._draw()
