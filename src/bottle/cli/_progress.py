"""`launch`'s progress on a terminal: the running step and its time, smolvm's lines above it."""

from __future__ import annotations

import sys
import threading
import time

from bottle.cli._errors import PROG
from bottle.results import Progress


class ProgressDisplay:
    """On a terminal: the running step and its elapsed time on one stderr line, redrawn each
    second, with smolvm's own progress lines printed above it."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._status = ""
        self._began = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ProgressDisplay:
        if self.enabled:
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
        with self._lock:
            self._clear()
            self._status = ""

    def update(self, event: Progress) -> None:
        if not self.enabled or self._stop.is_set():
            return
        with self._lock:
            self._clear()
            if event.line is not None:
                sys.stderr.write(f"  {event.line}\n")
            if event.done:
                sys.stderr.write(f"{PROG}: {event.step} {event.machine!r}: done in "
                                 f"{event.elapsed:.0f} s\n")  # fmt: skip
                self._status = ""
            else:
                self._status = f"{PROG}: {event.step} {event.machine!r}"
                self._began = time.monotonic() - event.elapsed
            self._draw()

    def _clear(self) -> None:
        if self._status:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def _draw(self) -> None:
        if self._status:
            sys.stderr.write(f"{self._status} … {time.monotonic() - self._began:.0f} s")
        sys.stderr.flush()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                self._clear()
                self._draw()
