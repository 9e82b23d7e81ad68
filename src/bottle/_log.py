"""bottle's loggers, which load the `logging` package only once a record could go somewhere.

Loading `logging` (with traceback, string, weakref, … under it) is several ms of every bottle
command's start-up, and a plain `bottle exec` logs nothing that anyone sees. Until something
has loaded `logging`, nothing can have configured it, so it would pass on only records at
WARNING and above (to its last-resort handler): a record below that is dropped here, as
`logging` would drop it. Every other record, and every record once `logging` is loaded by
anyone, goes to `logging.getLogger(name)` unchanged (the record names the caller, not this
module).
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: `bottle._quickexec`
if TYPE_CHECKING:  # loads this module, and each standard module costs it ms
    import logging
    from collections.abc import Callable
    from typing import Any

__all__ = ["Logger", "get_logger", "when_loaded"]

DEBUG, INFO, WARNING, ERROR = 10, 20, 30, 40  # logging's levels
# Called, in order, before the first record this module hands to `logging`.
_pending: list[Callable[[], None]] = []


def when_loaded(callback: Callable[[], None]) -> None:
    """Run `callback` before a record of bottle's first reaches `logging` (at once when
    `logging` is loaded already): the command line sets its handler up there."""
    if "logging" in sys.modules:
        callback()
    else:
        _pending.append(callback)


def _loaded() -> bool:
    return "logging" in sys.modules


class Logger:
    """What bottle uses of a `logging.Logger`, under the same names."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<bottle._log.Logger {self.name}>"

    def real(self) -> logging.Logger:
        """The `logging.Logger` of this name (`logging` is loaded now)."""
        import logging

        while _pending:
            _pending.pop(0)()
        return logging.getLogger(self.name)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(DEBUG, msg, args, kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(INFO, msg, args, kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(WARNING, msg, args, kwargs)

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        self._log(ERROR, msg, args, kwargs)

    def _log(self, level: int, msg: object, args: tuple[object, ...], kwargs: Any) -> None:
        if level < WARNING and not _loaded():
            return
        # Two frames of this module stand between the caller and `logging`.
        kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 2
        self.real().log(level, msg, *args, **kwargs)


def get_logger(name: str) -> Logger:
    """The logger of `name` (a module's `__name__`), as `logging.getLogger(name)` would be."""
    return Logger(name)
