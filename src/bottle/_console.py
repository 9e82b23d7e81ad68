"""The first module of the `bottle` console script and of `python -m bottle`.

A Ctrl-C while Python is still importing the command line would end in a traceback, or be
swallowed by the import machinery (`Exception ignored in ... _get_module_lock`) so that the
command runs on. So this module is tiny and its first import is `bottle._sigint`, which turns
SIGINT into a quiet exit with status 130 at once (see there); the command's own `try`/`except`
gets KeyboardInterrupt back for its run through `interrupts()`. It sits beside `bottle.cli`,
not in it, so that only `bottle/__init__.py` (which imports `sys`) runs before it.
"""

from bottle._sigint import INTERRUPTED, interrupts

__all__ = ["INTERRUPTED", "interrupts", "main"]


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
