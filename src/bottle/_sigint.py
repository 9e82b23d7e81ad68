"""Ctrl-C while a program of bottle's is still loading: a quiet exit with status 130.

A SIGINT that lands while Python imports a module raises KeyboardInterrupt wherever the import
is, and the import machinery can swallow it (`Exception ignored in ... _get_module_lock`): the
program then runs on as if nothing had been typed. So the entry modules (`bottle._console` for
the console script and `python -m bottle`, `bottle.relay.__main__` for `python -m
bottle.relay`) import this one first, and importing it turns SIGINT into a quiet exit with
status 130: nothing has touched the terminal or started anything yet. It imports nothing that
the interpreter has not loaded already (`_signal`, not `signal`, which imports `enum`). The
command's own `try`/`except` gets KeyboardInterrupt back for its run through `interrupts()`,
and the quiet exit returns for the way out. Importing it anywhere else would change how the
importing process handles Ctrl-C: only entry modules do.
"""

import _signal  # type: ignore[import-not-found]  # no typeshed stub: the C half of `signal`
import posix

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C


def _quiet_exit(signum: int, frame: object) -> None:
    posix._exit(INTERRUPTED)


# A SIGINT that was ignored when Python started (`nohup`, a background job of a script) stays
# ignored: Python then leaves it alone, and so does bottle. Taken once per process, by whichever
# entry module comes first.
_TAKEN = _signal.getsignal(_signal.SIGINT) is _signal.default_int_handler
if _TAKEN:
    _signal.signal(_signal.SIGINT, _quiet_exit)


class _KeyboardInterrupts:
    """Within: Ctrl-C raises KeyboardInterrupt for the command to handle. After: quiet again."""

    def __enter__(self) -> None:
        if _TAKEN:
            _signal.signal(_signal.SIGINT, _signal.default_int_handler)

    def __exit__(self, *exc: object) -> None:
        if _TAKEN:
            _signal.signal(_signal.SIGINT, _quiet_exit)


def interrupts() -> _KeyboardInterrupts:
    """Context manager for the span in which Ctrl-C is the command's KeyboardInterrupt."""
    return _KeyboardInterrupts()
