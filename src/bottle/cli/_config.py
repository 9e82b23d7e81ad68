"""Defaults a user repeats, from a TOML file: `$XDG_CONFIG_HOME/bottle/config.toml`
(`~/.config/bottle/config.toml` when XDG_CONFIG_HOME is unset; `BOTTLE_CONFIG=PATH` names
another file, `BOTTLE_CONFIG=` none at all).

A key is a flag without its dashes and gives that flag's default; a flag given on the command
line wins. At the top of the file a key is the default of every command that has the flag; in
a `[COMMAND]` table only of that command (and over the top's). A list flag (`allow-hosts`,
`secret-env`) is replaced by the flags given, not added to. A key, table or value that is not
one is an error naming the file and the line.

    image = "node:22"
    network = "agent"
    allow-hosts = ["github.com"]
    secret-env = ["ANTHROPIC_API_KEY"]

    [launch]
    cpus = 4
    memory = 8192
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bottle._quickexec import CONFIG_ENV, config_path
from bottle.cli._errors import did_you_mean
from bottle.errors import BottleError, InvalidInputError

ENV = CONFIG_ENV


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, not {_toml_type(value)}")
    if not value:
        raise ValueError("must not be empty")
    return value


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number, not {_toml_type(value)}")
    if value < 1:
        raise ValueError(f"must be 1 or more, not {value}")
    return value


def _texts(value: object) -> list[str]:
    if not isinstance(value, list):
        raise ValueError(f'must be an array of strings (["a", "b"]), not {_toml_type(value)}')
    return [_text(item) for item in value]


def _image(value: object) -> str:
    image = _text(value)
    if image.startswith("-") or "\0" in image:
        raise ValueError(f"{image!r} is not an image reference")
    return image


def _provider(value: object) -> str:
    from bottle.agent_provider import get_provider

    return get_provider(_text(value)).name


def _network(value: object) -> str:
    from bottle.network import NetworkMode

    modes = [str(mode) for mode in NetworkMode]
    if _text(value) not in modes:
        raise ValueError(f"must be one of {', '.join(modes)}, not {value!r}")
    return str(value)


def _hosts(value: object) -> list[str]:
    from bottle.network import check_hosts

    return list(check_hosts(_texts(value)))


def _cidrs(value: object) -> list[str]:
    from bottle.network import check_cidrs

    return list(check_cidrs(_texts(value)))


def _env_names(value: object) -> list[str]:
    from bottle._validate import env_name

    return [env_name(name) for name in _texts(value)]


@dataclass(frozen=True)
class Key:
    flag: str  # the long option whose default it gives
    value: Callable[[object], Any]  # checks a TOML value, returns what the option would hold


KEYS: dict[str, Key] = {
    "image": Key("--image", _image),
    "cpus": Key("--cpus", _count),
    "memory": Key("--memory", _count),
    "network": Key("--network", _network),
    "allow-hosts": Key("--allow-host", _hosts),
    "allow-cidrs": Key("--allow-cidr", _cidrs),
    "secret-env": Key("--secret-env", _env_names),
    "provider": Key("--provider", _provider),
}


def _toml_type(value: object) -> str:
    kinds: list[tuple[type, str]] = [(bool, "a boolean"), (int, "a number"), (float, "a number")]
    kinds += [(str, "a string"), (list, "an array"), (dict, "a table")]
    return next((name for kind, name in kinds if isinstance(value, kind)), "a date or time")


def path(environ: Mapping[str, str] | None = None) -> str | None:
    """The config file to read (it may not exist), or None for none."""
    return config_path(os.environ if environ is None else environ)


class Config:
    """A parsed config file: the keys at its top and in each command's table, checked."""

    def __init__(self, file: str, text: str, commands: Mapping[str, object]) -> None:
        self.file = file
        self._lines = text.splitlines()
        # Here, not at the top: most runs have no file, and the parser (datetime with it) is a
        # few ms of every command's start-up.
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # the same parser, before it joined the standard library (a dependency on 3.10)
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            m = re.search(r"\s*\(at line (\d+), column \d+\)$", str(exc))
            where = f"{file}:{m.group(1)}" if m else file
            message = str(exc)[: m.start()] if m else str(exc)
            raise InvalidInputError(f"{where}: {message}") from None
        self.top: dict[str, object] = {}
        self.tables: dict[str, dict[str, object]] = {}
        for key, value in data.items():
            if isinstance(value, dict) and key not in KEYS:
                if key not in commands:
                    raise self.error(
                        None, key, f"[{key}] is not a command{did_you_mean(key, commands)}"
                    )
                self.tables[key] = {k: self._check(key, k, v) for k, v in value.items()}
            else:
                self.top[key] = self._check(None, key, value)

    def _check(self, table: str | None, key: str, value: object) -> object:
        if key not in KEYS:
            raise self.error(table, key, f"unknown key {key!r}{did_you_mean(key, KEYS)}")
        try:
            return KEYS[key].value(value)
        except (ValueError, BottleError) as exc:
            raise self.error(table, key, f"{key}: {exc}") from None

    def error(self, table: str | None, key: str, message: str) -> InvalidInputError:
        line = self.line(table, key)
        return InvalidInputError(f"{self.file}{f':{line}' if line else ''}: {message}")

    def line(self, table: str | None, key: str) -> int | None:
        """The line where `key` is set (in `[table]`), or where `[key]` opens."""
        current: str | None = None
        spelt = "|".join(re.escape(f"{q}{key}{q}") for q in ("", '"', "'"))
        for number, text in enumerate(self._lines, 1):
            header = re.match(r"\s*\[\s*([^\]]+?)\s*\]\s*(#.*)?$", text)
            if header:
                current = header.group(1).strip("\"'")
                if table is None and current == key:
                    return number
                continue
            if current == table and re.match(rf"\s*(?:{spelt})\s*=", text):
                return number
        return None

    def defaults(self, command: str) -> dict[str, tuple[object, str | None]]:
        """For `command`: each key's value, with the table that gave it (None: the top)."""
        out: dict[str, tuple[object, str | None]] = {k: (v, None) for k, v in self.top.items()}
        out.update({k: (v, command) for k, v in self.tables.get(command, {}).items()})
        return out


def load(commands: Mapping[str, object], environ: Mapping[str, str] | None = None) -> Config | None:
    """The user's config file, parsed and checked; None when there is none."""
    file = path(environ)
    if file is None:
        return None
    try:
        with open(file, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInputError(f"cannot read {file}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"{file}: not UTF-8 text") from None
    return Config(file, text, commands)


def apply(
    config: Config, command: str, parser: argparse.ArgumentParser
) -> Callable[[argparse.Namespace], None]:
    """Make the config's keys `parser`'s defaults for `command`; the function that fills a
    parsed namespace with them, where the command line gave nothing.

    Each option the config sets is parsed with no default (argparse's SUPPRESS), so that an
    option the command line gave, even with the default's value, is told apart.
    """
    options = parser._option_string_actions
    wanted: dict[str, tuple[object, object]] = {}  # dest -> (config value, parser's default)
    for key, (value, table) in config.defaults(command).items():
        action = options.get(KEYS[key].flag)
        if action is None:
            if table is not None:
                raise config.error(table, key, f"{command} has no {KEYS[key].flag}")
            continue  # a key at the top: only for the commands that have the flag
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise config.error(table, key, f"{key}: must be one of {choices}, not {value!r}")
        wanted[action.dest] = (value, action.default)
        action.default = argparse.SUPPRESS

    def fill(ns: argparse.Namespace) -> None:
        given = {dest for dest in wanted if hasattr(ns, dest)}
        if getattr(ns, "net", None) is not None:
            given.add("network")  # --net/--no-net chose the network on the command line
        if "network" in given and getattr(ns, "network", None) not in ("agent", "allow"):
            # A network given without an allow-list drops the config's allow-list with it.
            given |= {"allow_host", "allow_cidr"}
        for dest, (value, default) in wanted.items():
            if not hasattr(ns, dest):
                setattr(ns, dest, default if dest in given else value)

    return fill
