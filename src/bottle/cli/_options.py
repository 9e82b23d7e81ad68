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


def add_retry(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-retry",
        action="store_true",
        help="never run a guest command a second time (by default, one that smolvm killed "
        "(status 137) in its machine's first minute, before it printed anything, runs once "
        "more)",
    )


def retry_policy(ns: argparse.Namespace) -> RetryPolicy:
    """The retry policy of a command with `add_retry`'s option."""
    return NO_RETRY if ns.no_retry else BRING_UP_RETRY
