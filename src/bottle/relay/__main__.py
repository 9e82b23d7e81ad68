"""Command line: ``python -m bottle.relay [OPTIONS] -- CMD [ARG…]`` (also ``bottle relay``).

Exits with the command's status (128+N when signal N killed it), 127 when it cannot be found,
126 when it cannot be executed, 2 on a usage error, 130 (quietly) on Ctrl-C before the relay
has taken over its signals. Run as a program, it imports `bottle._sigint` first, which makes
a Ctrl-C while the relay loads a quiet exit (the import machinery could swallow the
KeyboardInterrupt otherwise, and the relay would run on); the relay's own modules are loaded
here, before the command's run begins. Nothing else is loaded: the relay's own CPU time is
what gets measured.
"""

import sys

if __name__ == "__main__":  # run as a program, not imported: take Ctrl-C over first
    from bottle import _sigint  # noqa: F401  # importing it is the take-over

from bottle.relay._session import run as _run

USAGE = (
    "usage: bottle relay [--output copy|direct] [--machine NAME] [--resize-command TEMPLATE]"
    " [--hold-until-raw] [--record FILE.cast [--record-input]] -- CMD [ARG...]"
)
HELP = f"""{USAGE}

Run CMD on a new pseudo-terminal relayed to this terminal; exit with its status.

options:
  --output copy|direct       copy (default): CMD writes to the pty and the relay copies it;
                             direct: CMD writes to this terminal itself, the pty is only its
                             input and controlling terminal (for raw terminal clients such as
                             smolvm machine exec -i -t; copied after all when stdout is a
                             socket)
  --machine NAME             machine name, for {{machine}} in the resize command
  --resize-command TEMPLATE  run after each window change, off the copy loop (one at a time,
                             the latest size wins); {{rows}}, {{cols}} and {{machine}} are
                             replaced. For smolvm builds whose resizes never reach image-machine
                             ptys (0.5.1 to 0.8.0).
  --hold-until-raw           hold input and its end from CMD's start until its terminal
                             leaves canonical mode (at most 30 s): for clients that flush
                             their input when they go raw, like smolvm -i -t; Ctrl-C
                             meanwhile ends CMD (status 130)
  --record FILE.cast         record the session into FILE.cast (asciicast v2, a new file,
                             mode 0600; play it with `asciinema play`); needs --output copy
  --record-input             record typed input too (off by default: typed secrets would
                             land in the file)
  -h, --help                 show this help
"""


class _UsageError(Exception):
    pass


def _parse(argv: list[str]) -> tuple[dict[str, str], set[str], list[str]]:
    options: dict[str, str] = {}
    flags: set[str] = set()
    names = {
        "--machine": "machine",
        "--resize-command": "resize_command",
        "--output": "output",
        "--record": "record",
    }
    switches = {"--hold-until-raw": "hold_until_raw", "--record-input": "record_input"}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return options, flags, argv[i + 1 :]
        if not arg.startswith("-") or arg == "-":
            return options, flags, argv[i:]
        if arg in switches:
            flags.add(switches[arg])
            i += 1
            continue
        name, eq, value = arg.partition("=")
        if name in switches:
            raise _UsageError(f"{name} takes no value")
        if name not in names:
            raise _UsageError(f"unknown option {arg!r}")
        if not eq:
            i += 1
            if i == len(argv):
                raise _UsageError(f"{name} needs a value")
            value = argv[i]
        options[names[name]] = value
        i += 1
    return options, flags, []


class _NoTakeOver:
    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc: object) -> None:
        pass


def _interrupts() -> _NoTakeOver:
    """The span of the run, in which Ctrl-C is KeyboardInterrupt again where an entry module
    (this one run as a program, or the console script's) took it over; nothing otherwise."""
    taken = sys.modules.get("bottle._sigint")
    return _NoTakeOver() if taken is None else taken.interrupts()


def main(argv: list[str] | None = None) -> int:
    """Run the relay command line; return the exit status."""
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        # Ctrl-C before the relay's handlers exist (or after they are gone) is the user
        # ending the command, not a crash: no traceback.
        return 130


def _main(args: list[str]) -> int:
    if args and args[0] in ("-h", "--help"):
        sys.stdout.write(HELP)
        return 0
    try:
        options, flags, command = _parse(args)
        if not command:
            raise _UsageError("no command given")
    except _UsageError as exc:
        sys.stderr.write(f"{USAGE}\nbottle relay: error: {exc}\n")
        return 2

    try:
        with _interrupts():
            return _run(
                command,
                machine=options.get("machine"),
                resize_command=options.get("resize_command"),
                hold_until_raw="hold_until_raw" in flags,
                output=options.get("output", "copy"),
                record=options.get("record"),
                record_input="record_input" in flags,
            )
    except FileNotFoundError as exc:
        sys.stderr.write(f"bottle relay: {exc.filename}: command not found ({exc.strerror})\n")
        return 127
    except PermissionError as exc:
        sys.stderr.write(f"bottle relay: {exc.filename}: cannot execute ({exc.strerror})\n")
        return 126
    except ValueError as exc:
        sys.stderr.write(f"{USAGE}\nbottle relay: error: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"bottle relay: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
