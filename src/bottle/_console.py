"""The first module of the `bottle` console script and of `python -m bottle`.

A Ctrl-C while Python is still importing the command line would end in a traceback, or be
swallowed by the import machinery (`Exception ignored in ... _get_module_lock`) so that the
command runs on. So this module is tiny, imports nothing that the interpreter has not loaded
already (`_signal`, not `signal`, which imports `enum`), and at once turns SIGINT into a quiet
exit with status 130: nothing has touched the terminal or started anything yet. The command's
own `try`/`except` gets KeyboardInterrupt back for its run (`launch` tears down on it) through
`interrupts()`, and the quiet exit returns for the way out. It sits beside `bottle.cli`, not
in it, so that only `bottle/__init__.py` (which imports `sys`) runs before it.
"""

import _signal  # type: ignore[import-not-found]  # no typeshed stub: the C half of `signal`
import posix

INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a Ctrl-C


def _quiet_exit(signum: int, frame: object) -> None:
    posix._exit(INTERRUPTED)


# A SIGINT that was ignored when Python started (`nohup`, a background job of a script) stays
# ignored: Python then leaves it alone, and so does bottle.
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


def main() -> int:
    """Entry point of the `bottle` console script and `python -m bottle`."""
    from bottle import _quickexec

    # A plain, warm `bottle exec` runs without the full command line's imports; anything else
    # (or what such a run leaves to finish: `ran`) goes on there.
    ran = _quickexec.main(interrupts)
    if isinstance(ran, int):
        return ran
    from bottle.cli._main import main as run

    return run(interrupts=interrupts, ran=ran)
