"""Option groups and value types that several commands share, named alike in each."""

from __future__ import annotations

import argparse


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
