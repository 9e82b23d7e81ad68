"""The `bottle` command line: one module per command family, each thin over the Python API.

`_main` holds the table of commands and imports a command's module only when that command runs,
so `bottle --help` and `bottle --version` load no backend. The console script and `python -m
bottle` enter through `bottle._console`, which takes Ctrl-C over before anything is imported.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on `argv` (default: `sys.argv[1:]`); return the exit status."""
    from bottle.cli._main import main as run

    return run(argv)
