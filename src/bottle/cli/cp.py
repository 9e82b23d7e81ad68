"""`bottle cp`: copy files and directories between the host and a machine, either way."""

from __future__ import annotations

import argparse

# What a copy loads, loaded with the command, before Ctrl-C is handed to it (bottle._console):
# an import that a KeyboardInterrupt lands in can swallow it.
import tarfile  # noqa: F401
import tempfile  # noqa: F401

from bottle._validate import MachineName
from bottle.backend.smolmachines import SmolmachinesBottle
from bottle.cli._command import Command, Parser
from bottle.errors import InvalidInputError


class Cp(Command):
    defers_logging = True  # the backend logs through bottle._log
    description = (
        "Copy a file or a directory between the host and a machine: SRC or DST is NAME:PATH, "
        "a path in machine NAME (smolvm's syntax; a host path with ':' is written ./a:b). A "
        "DST ending in '/', or naming a directory, receives SRC under its own name; any other "
        "DST becomes the copy. Directories keep their files' bytes, modes and times; links are "
        "copied as links. The older form `cp -n NAME HOST_PATH GUEST_PATH` copies into NAME."
    )
    usage = "%(prog)s [--owner USER] SRC DST\n       %(prog)s -n NAME [--owner USER] SRC GUEST_PATH"

    def configure(self, parser: Parser) -> None:
        parser.add_argument("src", metavar="SRC", help="HOST_PATH or NAME:PATH")
        parser.add_argument("dst", metavar="DST", help="HOST_PATH or NAME:PATH")
        parser.add_argument(
            "--owner",
            metavar="USER",
            help="guest user to own what is copied into a machine (default: root, as smolvm's)",
        )
        parser.add_argument("-n", "--name", help="machine to copy into (the older form)")

    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        if ns.name is not None:
            with SmolmachinesBottle(ns.name) as bottle:
                bottle.upload(ns.src, ns.dst, owner=ns.owner)
            return 0
        src, dst = _side(ns.src), _side(ns.dst)
        if src is not None and dst is not None:
            raise InvalidInputError(
                "both SRC and DST are in a machine; copy through the host, one side at a time"
            )
        if dst is not None:
            with SmolmachinesBottle(dst[0]) as bottle:
                bottle.upload(ns.src, dst[1], owner=ns.owner)
        elif src is not None:
            if ns.owner is not None:
                raise InvalidInputError("--owner is for copies into a machine (DST NAME:PATH)")
            with SmolmachinesBottle(src[0]) as bottle:
                bottle.download(src[1], ns.dst)
        else:
            raise InvalidInputError(
                "neither SRC nor DST is in a machine: write one as NAME:PATH (e.g. demo:/tmp)"
            )
        return 0


def _side(arg: str) -> tuple[MachineName, str] | None:
    """`NAME:PATH` as (NAME, PATH); None for a host path. As docker reads it: a path that
    starts with `/` or `.` is the host's whatever it holds, so `./a:b` is a host file."""
    if arg.startswith(("/", ".")) or ":" not in arg:
        return None
    name, _, path = arg.partition(":")
    if not path.startswith("/"):
        raise InvalidInputError(
            f"the machine path in {arg!r} must be absolute ({name}:/…); a host path with "
            f"':' in it is written ./{arg}"
        )
    return MachineName(name), path
