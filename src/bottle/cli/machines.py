"""`bottle ls`, `bottle stop`, `bottle rm`: the machines smolvm has, whoever made them."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence

from bottle.backend import MachineInfo
from bottle.backend.smolmachines import SmolmachinesBottleBackend
from bottle.cli._command import Command, Parser
from bottle.cli._errors import PROG, report
from bottle.cli._progress import ProgressDisplay
from bottle.cli._sessions import settle
from bottle.errors import BottleError, MachineRunningError


def age(seconds: float | None) -> str:
    """kubectl's way: the largest whole unit (`45s`, `12m`, `3h`, `2d`)."""
    if seconds is None:
        return "-"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def table(machines: Sequence[MachineInfo], now: float) -> str:
    rows = [("NAME", "STATE", "IMAGE", "NETWORK", "AGE", "CREATED BY")]
    for m in machines:
        rows.append((
            m.name, m.state, m.image or "-", m.network or "-", age(m.age(now)),
            PROG if m.launched_by_bottle else "-",
        ))  # fmt: skip
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ("   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "".join(line.rstrip() + "\n" for line in lines)


def as_json(machine: MachineInfo) -> dict[str, object]:
    created = machine.created_at
    return {
        "name": machine.name,
        "state": machine.state,
        "image": machine.image,
        "network": machine.network,
        "allow_hosts": list(machine.allow_hosts),
        "allow_cidrs": list(machine.allow_cidrs),
        "created_at": None if created is None else round(created),
        "launched_by_bottle": machine.launched_by_bottle,
        "cpus": machine.cpus,
        "memory_mib": machine.memory_mib,
    }


class Ls(Command):
    description = (
        "List every machine smolvm has: its state, image, network and age, and whether a "
        f"`{PROG} launch` created it (smolvm 1.8.0 and later keep that mark). NETWORK is the "
        f"policy `{PROG} launch` gave (open, off, agent, allow); for another machine `on` "
        "(smolvm does not show its allow-list, if any) or `off`."
    )

    def configure(self, parser: Parser) -> None:
        shown = parser.add_mutually_exclusive_group()
        shown.add_argument("--json", action="store_true", help="a JSON array, one object each")
        shown.add_argument("--names", action="store_true", help="only the names, one a line")

    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        if not ns.names:  # completion's quick question stays quick
            settle()  # a dead holder's machine: torn down before it is listed
        machines = SmolmachinesBottleBackend().list_machines()
        if ns.json:
            text = json.dumps([as_json(m) for m in machines], indent=2) + "\n"
        elif ns.names:
            text = "".join(f"{m.name}\n" for m in machines)
        else:
            text = table(machines, time.time())
        sys.stdout.write(text)
        return 0


def _each(names: Sequence[str], action: Callable[[str], None]) -> int:
    """Do `action` for every name, as docker does: on past a failure, which is reported."""
    status = 0
    for name in names:
        try:
            action(name)
        except (BottleError, ValueError, OSError) as exc:
            status = report(exc)
    return status


def _add_names(parser: Parser) -> None:
    parser.add_argument("names", nargs="+", metavar="NAME", help="machine name")


class Stop(Command):
    description = "Stop machines (one that is not running stays as it is)."

    def configure(self, parser: Parser) -> None:
        _add_names(parser)

    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        backend = SmolmachinesBottleBackend()
        with ProgressDisplay(enabled=not ns.quiet) as display:
            return _each(ns.names, lambda n: backend.stop_machine(n, progress=display.update))


class Rm(Command):
    description = (
        "Remove machines. A running one is refused unless -f is given, which stops it first "
        "(docker's rm -f)."
    )

    def configure(self, parser: Parser) -> None:
        parser.add_argument(
            "-f", "--force", action="store_true", help="remove running machines too"
        )
        _add_names(parser)

    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        backend = SmolmachinesBottleBackend()

        def remove(name: str) -> None:
            try:
                backend.remove_machine(name, force=ns.force, progress=display.update)
            except MachineRunningError as exc:
                # The API names its parameter; the command line, the command to use.
                raise MachineRunningError(
                    f"machine {exc.machine!r} is {exc.state}; stop it first ({PROG} stop "
                    f"{exc.machine}), or stop and remove it at once: {PROG} rm -f {exc.machine}",
                    machine=exc.machine,
                    state=exc.state,
                ) from None

        with ProgressDisplay(enabled=not ns.quiet) as display:
            return _each(ns.names, remove)
