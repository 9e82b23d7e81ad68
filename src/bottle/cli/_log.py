"""The command line's log: records through the console (`CONSOLE`), as `bottle: message`."""

from __future__ import annotations

import logging

from bottle.cli._errors import PROG
from bottle.cli._stderr import CONSOLE, Console


class ConsoleHandler(logging.Handler):
    """The log, written through a `Console`: above the status line, never into it."""

    def __init__(self, console: Console = CONSOLE) -> None:
        super().__init__()
        self.console = console

    def filter(self, record: logging.LogRecord) -> bool:
        shown = getattr(record, "bottle_progress", None)
        return shown not in self.console.shows and super().filter(record)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record))
        except Exception:
            self.handleError(record)


def configure(*, verbose: bool) -> None:
    """Send the log to the console: every record with `verbose`, else warnings and errors."""
    handler = ConsoleHandler()
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    handler.addFilter(_not_returned)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, ConsoleHandler)]:
        root.removeHandler(old)  # run again in one process (tests): one handler, not two
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)


def _not_returned(record: logging.LogRecord) -> bool:
    # A failure the library logs *and* returns in a result: the commands raise it from the
    # result (`check()`) and print it once, as an error line.
    return not getattr(record, "returned_error", False)
