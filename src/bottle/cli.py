"""The `bottle` command line: launch, agent, exec, cp (plus relay and bench, delegated)."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from types import FrameType
from typing import TYPE_CHECKING

from bottle import __version__
from bottle.errors import BottleError, GuestCommandError, InvalidInputError
from bottle.results import Progress

if TYPE_CHECKING:
    from bottle.backend import Bottle, BottleBackend, LaunchSpec
    from bottle.backend.smolmachines import SmolmachinesBottle
    from bottle.relay import Recording

__all__ = ["main"]

PROG = "bottle"
_DELEGATED = {
    "relay": ("bottle.relay.__main__", "run an interactive command through the PTY relay"),
    "bench": ("bottle.bench", "measure the relay side by side with its peers"),
}

_EPILOG = """\
Secrets: --secret-env NAME takes a variable NAME from bottle's own environment and hands it to
the guest by name only; the value never appears on any command line.
"""


def _env_pair(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_name(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--name", required=True, help="machine name")


def _add_env(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-e",
        "--env",
        action="append",
        type=_env_pair,
        default=[],
        metavar="KEY=VALUE",
        help="guest environment variable (repeatable; visible on command lines)",
    )
    p.add_argument(
        "--secret-env",
        action="append",
        default=[],
        metavar="NAME",
        help="pass variable NAME from this environment to the guest as a secret (repeatable)",
    )


def _add_agent(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider", default="claude", help="agent provider (default: claude)")
    p.add_argument("--agent-command", help="program to run (default: the provider's)")
    p.add_argument(
        "--workdir", help="guest directory the agent starts in (default: the user's home)"
    )
    p.add_argument("--user", default="node", help="guest user running the agent (default: node)")
    p.add_argument("--title", default="", help="terminal title for the session")
    p.add_argument("--color", default="", help="terminal background colour (#rgb, #rrggbb, name)")
    p.add_argument("--no-tty", action="store_true", help="run without a terminal (no relay)")
    p.add_argument(
        "--record",
        metavar="FILE.cast",
        help="record the session into a new file (asciicast v2, mode 0600; "
        "play it with `asciinema play FILE.cast`)",
    )
    p.add_argument(
        "--record-input",
        action="store_true",
        help="record typed input too (off by default: typed secrets would land in the file)",
    )
    _add_env(p)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (agent arguments go after `--` and are split off before it)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run AI agent CLIs inside smolvm microVMs.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log each smolvm call")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress display while launching"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "launch",
        help="create and start a machine, run the agent in it, then tear it down",
        description="Create and start a machine, provision it, run the agent interactively, "
        "then stop and delete the machine. Agent arguments go after `--`.",
        usage="%(prog)s -n NAME [options] [-- AGENT_ARG...]",
        epilog=_EPILOG,
    )
    _add_name(p)
    p.add_argument("--backend", default="smolmachines", help="backend (default: smolmachines)")
    p.add_argument("--image", help="OCI image for the machine")
    p.add_argument("--cpus", type=_positive_int, help="virtual CPUs")
    p.add_argument("--memory", type=_positive_int, metavar="MIB", help="memory in MiB")
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
    _add_agent(p)

    p = sub.add_parser(
        "agent",
        help="run the agent in an existing, running machine",
        description="Run the agent in an existing, running machine. Agent arguments go "
        "after `--`.",
        usage="%(prog)s -n NAME [options] [-- AGENT_ARG...]",
        epilog=_EPILOG,
    )
    _add_name(p)
    p.add_argument("--prompt-path", help="guest path of a prompt file already in the machine")
    p.add_argument(
        "--prompt-mode", help="append_file, read_prompt_file or none (default: the provider's)"
    )
    _add_agent(p)

    p = sub.add_parser(
        "exec",
        help="run a shell script in a machine, print its output, exit with its status",
        description="Run SCRIPT with /bin/sh -c in the machine as USER; print its output and "
        "exit with its status. SCRIPT '-' reads the script from standard input.",
        epilog=_EPILOG,
    )
    _add_name(p)
    p.add_argument("-u", "--user", default="node", help="guest user (default: node)")
    p.add_argument("-w", "--workdir", help="guest directory the script runs in")
    _add_env(p)
    p.add_argument("script", metavar="SCRIPT", help="POSIX shell script, or '-' for stdin")

    p = sub.add_parser(
        "cp",
        help="copy a host file into a machine",
        description="Copy a regular host file into a running machine (directories are refused).",
    )
    _add_name(p)
    p.add_argument("--owner", help="guest user to own the copy (default: root, smolvm's)")
    p.add_argument("host_path", metavar="HOST_PATH")
    p.add_argument("guest_path", metavar="GUEST_PATH", help="absolute guest path")

    for name, (_module, text) in _DELEGATED.items():
        sub.add_parser(name, help=text, add_help=False)
    return parser


def _secrets(names: Sequence[str]) -> dict[str, str]:
    from bottle._validate import env_name

    out = {}
    for name in names:
        env_name(name)  # first: the message below shows the name raw
        value = os.environ.get(name)
        if value is None:
            raise InvalidInputError(f"--secret-env {name}: {name} is not set in the environment")
        out[name] = value
    return out


def _agent_bottle(ns: argparse.Namespace) -> SmolmachinesBottle:
    from bottle.backend import LaunchSpec
    from bottle.backend.smolmachines import SmolmachinesBottle

    spec = LaunchSpec(
        machine_name=ns.name,
        env=dict(ns.env),
        secret_env=_secrets(ns.secret_env),
        agent_provider=ns.provider,
        agent_command=ns.agent_command,
        prompt_mode=ns.prompt_mode,
        workdir=ns.workdir,
        agent_user=ns.user,
        terminal_title=ns.title,
        terminal_color=ns.color,
    )
    return SmolmachinesBottle.from_spec(spec, prompt_path=ns.prompt_path)


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


def _check_record(ns: argparse.Namespace) -> None:
    """Refuse recording options that cannot work together, before anything runs."""
    if ns.record is None:
        if ns.record_input:
            raise InvalidInputError("--record-input needs --record FILE.cast")
        return
    if ns.no_tty:
        raise InvalidInputError("--record needs a terminal session (drop --no-tty)")


def _recording(ns: argparse.Namespace) -> AbstractContextManager[Recording | None]:
    """The --record file, made now (before any machine is touched: making it is the check that
    it can be) and removed on the way out if no session ran into it."""
    if ns.record is None:
        return nullcontext()
    from bottle.relay import Recording

    return Recording(ns.record)


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


def _cmd_launch(ns: argparse.Namespace, agent_args: list[str]) -> int:
    from bottle.backend import LaunchSpec, get_backend

    _check_record(ns)
    spec = LaunchSpec(
        machine_name=ns.name,
        image=ns.image,
        cpus=ns.cpus,
        memory_mib=ns.memory,
        env=dict(ns.env),
        secret_env=_secrets(ns.secret_env),
        prompt_file=ns.prompt_file,
        agent_provider=ns.provider,
        agent_command=ns.agent_command,
        workdir=ns.workdir,
        network=_network(ns),
        agent_user=ns.user,
        terminal_title=ns.title,
        terminal_color=ns.color,
        allow_hosts=ns.allow_host,
        allow_cidrs=ns.allow_cidr,
    )
    backend = get_backend(ns.backend)
    display = _ProgressDisplay(enabled=not ns.quiet and sys.stderr.isatty())
    with _teardown_on_signals(), _recording(ns) as record, display, _launch(
        backend, spec, display
    ) as bottle:
        display.close()  # the session owns the terminal from here
        return _run_agent(bottle, ns, agent_args, record)


def _run_agent(
    bottle: Bottle, ns: argparse.Namespace, agent_args: list[str], record: Recording | None
) -> int:
    result = bottle.run_agent(
        agent_args, tty=not ns.no_tty, record=record, record_input=ns.record_input
    )
    return result.check().returncode


def _launch(
    backend: BottleBackend, spec: LaunchSpec, display: _ProgressDisplay
) -> AbstractContextManager[Bottle]:
    from bottle.backend.smolmachines import SmolmachinesBottleBackend

    if isinstance(backend, SmolmachinesBottleBackend):
        return backend.launch(spec, progress=display.update)
    return backend.launch(spec)


class _ProgressDisplay:
    """On a terminal: the running step and its elapsed time on one stderr line, redrawn each
    second, with smolvm's own progress lines printed above it."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._lock = threading.Lock()
        self._status = ""
        self._began = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _ProgressDisplay:
        if self.enabled:
            self._thread = threading.Thread(target=self._tick, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            self._clear()
            self._status = ""

    def update(self, event: Progress) -> None:
        if not self.enabled or self._stop.is_set():
            return
        with self._lock:
            self._clear()
            if event.line is not None:
                sys.stderr.write(f"  {event.line}\n")
            if event.done:
                sys.stderr.write(f"{PROG}: {event.step} {event.machine!r}: done in "
                                 f"{event.elapsed:.0f} s\n")  # fmt: skip
                self._status = ""
            else:
                self._status = f"{PROG}: {event.step} {event.machine!r}"
                self._began = time.monotonic() - event.elapsed
            self._draw()

    def _clear(self) -> None:
        if self._status:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()

    def _draw(self) -> None:
        if self._status:
            sys.stderr.write(f"{self._status} … {time.monotonic() - self._began:.0f} s")
        sys.stderr.flush()

    def _tick(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                self._clear()
                self._draw()


def _cmd_agent(ns: argparse.Namespace, agent_args: list[str]) -> int:
    _check_record(ns)
    bottle = _agent_bottle(ns)
    with _recording(ns) as record, bottle:
        return _run_agent(bottle, ns, agent_args, record)


def _cmd_exec(ns: argparse.Namespace) -> int:
    from bottle.backend.smolmachines import SmolmachinesBottle

    script = sys.stdin.read() if ns.script == "-" else ns.script
    bottle = SmolmachinesBottle(ns.name, guest_env=dict(ns.env), secret_env=_secrets(ns.secret_env))
    with bottle:
        result = bottle.exec(script, user=ns.user, workdir=ns.workdir)
    if result.error is not None or result.retry_exhausted:
        # smolvm's failure, or every attempt killed: say so precisely.
        result.check(f"exec in machine {ns.name!r}")
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.write(result.stderr)
    sys.stderr.flush()
    return result.returncode


def _cmd_cp(ns: argparse.Namespace) -> int:
    from bottle.backend.smolmachines import SmolmachinesBottle

    with SmolmachinesBottle(ns.name) as bottle:
        bottle.cp_in(ns.host_path, ns.guest_path, owner=ns.owner)
    return 0


def _not_returned(record: logging.LogRecord) -> bool:
    # A failure the library logs *and* returns in a result: the commands below raise it from
    # the result (`check()`) and print it once, as an error line.
    return not getattr(record, "returned_error", False)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `bottle` and `python -m bottle`; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in _DELEGATED:
        module = importlib.import_module(_DELEGATED[args[0]][0])
        status = module.main(args[1:])
        return int(status or 0)

    agent_args: list[str] = []
    if "--" in args:
        cut = args.index("--")
        args, agent_args = args[:cut], args[cut + 1 :]
    parser = build_parser()
    ns = parser.parse_args(args)
    if agent_args and ns.command not in ("launch", "agent"):
        parser.error(f"{ns.command} takes no arguments after '--'")
    logging.basicConfig(
        level=logging.DEBUG if ns.verbose else logging.WARNING,
        format=f"{PROG}: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(_not_returned)
    try:
        if ns.command == "launch":
            return _cmd_launch(ns, agent_args)
        if ns.command == "agent":
            return _cmd_agent(ns, agent_args)
        if ns.command == "exec":
            return _cmd_exec(ns)
        if ns.command == "cp":
            return _cmd_cp(ns)
        parser.error(f"unknown command {ns.command!r}")
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except GuestCommandError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return exc.result.returncode or 1
    except (BottleError, ValueError, OSError) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    return 0
