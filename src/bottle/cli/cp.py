"""`bottle cp`: copy a host file into a running machine."""

from __future__ import annotations

import argparse

from bottle.backend.smolmachines import SmolmachinesBottle
from bottle.cli._command import Command, Parser
from bottle.cli._options import add_name


class Cp(Command):
    description = "Copy a regular host file into a running machine (directories are refused)."

    def configure(self, parser: Parser) -> None:
        add_name(parser)
        parser.add_argument("--owner", help="guest user to own the copy (default: root, smolvm's)")
        parser.add_argument("host_path", metavar="HOST_PATH")
        parser.add_argument("guest_path", metavar="GUEST_PATH", help="absolute guest path")

    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        with SmolmachinesBottle(ns.name) as bottle:
            bottle.cp_in(ns.host_path, ns.guest_path, owner=ns.owner)
        return 0
