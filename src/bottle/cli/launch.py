"""`bottle launch`: create, start and provision a machine, run the agent, tear it all down."""

from __future__ import annotations

import argparse
import shlex
import signal
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from types import FrameType

from bottle.backend import Bottle, BottleBackend, LaunchSpec, get_backend
from bottle.backend.smolmachines import SmolmachinesBottleBackend
from bottle.cli._agent import (
    add_agent_options,
    check_record,
    recording,
    run_session,
    said_where,
    session_fields,
)
from bottle.cli._command import SECRETS_NOTE, Command, Parser
from bottle.cli._options import add_name, positive_int, retry_policy
from bottle.cli._progress import ProgressDisplay
from bottle.cli._sessions import settle
from bottle.errors import InvalidInputError


class Launch(Command):
    description = (
        "Create and start a machine, provision it, run the agent interactively, then stop and "
        "delete the machine. Agent arguments go after `--`."
    )
    usage = "%(prog)s -n NAME [options] [-- AGENT_ARG...]"
    epilog = SECRETS_NOTE
    takes_extra = True

    def configure(self, parser: Parser) -> None:
        p = parser
        add_name(p)
        p.add_argument("--backend", default="smolmachines", help="backend (default: smolmachines)")
        p.add_argument("--image", help="OCI image for the machine")
        p.add_argument("--cpus", type=positive_int, help="virtual CPUs")
        p.add_argument("--memory", type=positive_int, metavar="MIB", help="memory in MiB")
        p.add_argument(
            "--network",
            choices=["open", "off", "agent", "allow"],
            help="what the machine may reach: anything, nothing, the agent provider's API hosts "
            "(plus --allow-host/--allow-cidr), or only --allow-host/--allow-cidr (default: open "
            "for a registry image, off for a local one)",
        )
        p.add_argument(
            "--net",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="same as --network open / --network off",
        )
        p.add_argument(
            "--allow-host",
            action="append",
            default=[],
            metavar="HOST",
            help="with --network agent or allow: also allow this host and its subdomains, every "
            "port (repeatable)",
        )
        p.add_argument(
            "--allow-cidr",
            action="append",
            default=[],
            metavar="CIDR",
            help="with --network agent or allow: also allow this address range, e.g. 10.0.0.0/8 "
            "(repeatable)",
        )
        p.add_argument("--prompt-file", help="host file copied into the guest as the system prompt")
        add_agent_options(p)
        p.add_argument(
            "--dry-run",
            action="store_true",
            help="print the smolvm commands the launch would run, and run none (secret values "
            "are never shown: they travel by name)",
        )

    def run(self, ns: argparse.Namespace, extra: list[str]) -> int:
        check_record(ns)
        settle()
        spec = LaunchSpec(
            machine_name=ns.name,
            image=ns.image,
            cpus=ns.cpus,
            memory_mib=ns.memory,
            prompt_file=ns.prompt_file,
            network=_network(ns),
            allow_hosts=ns.allow_host,
            allow_cidrs=ns.allow_cidr,
            **session_fields(ns),
        )
        backend = get_backend(ns.backend)
        if isinstance(backend, SmolmachinesBottleBackend):
            backend.retry = retry_policy(ns)
        if ns.dry_run:
            return _dry_run(backend, spec, extra, tty=not ns.no_tty)
        display = ProgressDisplay(enabled=not ns.quiet)
        with _teardown_on_signals(), recording(ns) as record:
            try:
                with display, _launch(backend, spec, display) as bottle, display.paused():
                    # The session owns the terminal; the display is back for the teardown.
                    return run_session(bottle, ns, extra, record)
            finally:
                said_where(record, detached=ns.detach)


def _network(ns: argparse.Namespace) -> bool | str | None:
    if ns.net is not None and ns.network is not None:
        raise InvalidInputError(
            f"--{'' if ns.net else 'no-'}net and --network {ns.network} both choose the "
            "network; give one"
        )
    if (ns.allow_host or ns.allow_cidr) and ns.network not in ("agent", "allow"):
        raise InvalidInputError(
            "--allow-host and --allow-cidr need --network agent (the agent provider's hosts "
            "plus these) or --network allow (these only)"
        )
    network: bool | str | None = ns.network if ns.network is not None else ns.net
    return network


@contextmanager
def _teardown_on_signals() -> Iterator[None]:
    """Turn SIGTERM/SIGHUP into SystemExit so `launch` tears the machine down."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _dry_run(backend: BottleBackend, spec: LaunchSpec, argv: list[str], *, tty: bool) -> int:
    if not isinstance(backend, SmolmachinesBottleBackend):
        raise InvalidInputError(f"the {backend.name} backend cannot tell its commands (--dry-run)")
    step = ""
    for call in backend.dry_run(spec, argv, tty=tty):
        if call.step != step:
            step = call.step
            print(f"# {step}")
        if call.note:
            print(f"#   {call.note}:")
        print(shlex.join(call.argv))
    return 0


def _launch(
    backend: BottleBackend, spec: LaunchSpec, display: ProgressDisplay
) -> AbstractContextManager[Bottle]:
    if isinstance(backend, SmolmachinesBottleBackend):
        return backend.launch(spec, progress=display.update)
    return backend.launch(spec)
