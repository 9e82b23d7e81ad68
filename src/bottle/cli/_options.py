"""Option groups and value types that several commands share, named alike in each."""

from __future__ import annotations

import argparse

from bottle.backend.smolmachines import BRING_UP_RETRY, NO_RETRY, RetryPolicy


def env_pair(text: str) -> tuple[str, str]:
    """`-e KEY=VALUE`."""
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_name(p: argparse.ArgumentParser) -> None:
    p.add_argument("-n", "--name", required=True, help="machine name")


def add_env(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-e",
        "--env",
        action="append",
        type=env_pair,
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


def add_retry(p: argparse.ArgumentParser, *, before: str = "it printed anything") -> None:
    """`--no-retry`; `before` says when a kill is the bring-up's for this command."""
    p.add_argument(
        "--no-retry",
        action="store_true",
        help="never run a guest command a second time (by default, one that smolvm killed "
        f"(status 137) in its machine's first minute, before {before}, runs once more)",
    )


def retry_policy(ns: argparse.Namespace) -> RetryPolicy:
    """The retry policy of a command with `add_retry`'s option."""
    return NO_RETRY if ns.no_retry else BRING_UP_RETRY


def _action(parser: argparse.ArgumentParser, option: str) -> argparse.Action | None:
    """The action of `option` as argparse would find it (a long one may be shortened while
    unique); None when argparse would not know it, and will say so."""
    actions = parser._option_string_actions
    if option in actions or not option.startswith("--"):
        return actions.get(option)
    found = {id(a): a for o, a in actions.items() if o.startswith("--") and o.startswith(option)}
    return next(iter(found.values())) if len(found) == 1 else None


def split_at_command(
    parser: argparse.ArgumentParser, args: list[str], *, name_option: str
) -> tuple[list[str], list[str], bool]:
    """bottle's own arguments, the guest command, and whether `--` came before the command.

    The command is the first word that is none of: an option, an option's value, the NAME
    before it (none once the option whose dest is `name_option` has given it). From there on
    every word is the command's, options included, as docker and smolvm read an exec.
    """
    own: list[str] = []
    named = False  # the machine is given: the next plain word is the command
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return own, args[i + 1 :], True
        if not arg.startswith("-") or arg == "-":
            if named:
                return own, args[i:], False
            own.append(arg)
            named = True
            i += 1
            continue
        own.append(arg)
        takes_next = False
        if arg.startswith("--"):
            option, eq, _ = arg.partition("=")
            action = _action(parser, option)
            takes_next = action is not None and action.nargs != 0 and not eq
        else:
            for at, letter in enumerate(arg[1:], 1):
                action = _action(parser, f"-{letter}")
                if action is None or action.nargs == 0:
                    continue
                takes_next = at == len(arg) - 1  # else the rest of the word is its value
                break
        if action is not None and action.dest == name_option:
            named = True
        if takes_next and i + 1 < len(args):
            own.append(args[i + 1])
            i += 1
        i += 1
    return own, [], False
