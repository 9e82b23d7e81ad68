"""Input checks shared by the smolvm wrapper and the backends.

Each check raises `InvalidInputError` (a `ValueError`) naming the problem, so bad input is
refused before any process starts. Values are checked once, where they enter (the spec, the
public constructors and methods, the CLI): a machine name, user name or guest path that passed
comes back as `MachineName`, `UserName` or `GuestPath` (plain `str` subclasses), and a check
handed one of those again returns it at once, so the layers below pass them on unchecked. Those
types check in their constructor, so no unchecked one can be made, even by hand.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping

from bottle._execwire import (
    USER_NAME_MAX,
    env_name_chars,
    guest_path_ok,
    machine_name_problem,
    user_name_ok,
)
from bottle.errors import InvalidInputError, Message, Param


class MachineName(str):
    """A machine name within smolvm's rules: constructing one checks it (`InvalidInputError`),
    as `ipaddress` types check theirs, so there is no unchecked one."""

    __slots__ = ()

    def __new__(cls, name: object) -> MachineName:
        if type(name) is cls:
            return name  # checked when it was made
        return super().__new__(cls, _check_machine_name(name))


class UserName(str):
    """A guest user name: constructing one checks it (`InvalidInputError`)."""

    __slots__ = ()

    def __new__(cls, name: object) -> UserName:
        if type(name) is cls:
            return name
        return super().__new__(cls, _check_user_name(name))


class GuestPath(str):
    """A guest path, absolute without '.' or '..' segments: constructing one checks it
    (`InvalidInputError`; `what` names the value in the message)."""

    __slots__ = ()

    def __new__(cls, path: object, what: str | Param = "guest path") -> GuestPath:
        if type(path) is cls:
            return path
        return super().__new__(cls, _check_guest_path(path, what))


def _check_machine_name(name: object) -> str:
    if not isinstance(name, str):
        raise InvalidInputError(f"machine name must be a string, not {type(name).__name__}")
    problem = machine_name_problem(name)
    if problem:
        raise InvalidInputError(f"invalid machine name {name!r}: {problem}")
    return name


def _check_user_name(name: object) -> str:
    if not isinstance(name, str) or not user_name_ok(name):
        raise InvalidInputError(
            f"invalid user name {name!r}: use letters, digits, '_', '.', '-' "
            f"(not starting with '-' or a digit, at most {USER_NAME_MAX} characters)"
        )
    return name


def _check_guest_path(path: object, what: str | Param) -> str:
    text = no_nul(path, str(what))
    if guest_path_ok(text):
        return text
    if not text.startswith("/"):
        raise InvalidInputError(
            Message("{what} {path!r} must be absolute (start with '/')", what=what, path=text)
        )
    raise InvalidInputError(
        Message("{what} {path!r} must not contain '.' or '..' segments", what=what, path=text)
    )


def machine_name(name: str) -> MachineName:
    """Check a machine name against smolvm's rules (`MachineName(name)`)."""
    return MachineName(name)


def no_nul(value: object, what: str) -> str:
    """Refuse a string holding a NUL byte (it cannot be passed to a process)."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, not {type(value).__name__}")
    if "\0" in value:
        raise InvalidInputError(f"{what} contains a NUL byte")
    return value


def argv(args: Iterable[str], what: str = "argument", name: str = "argv") -> list[str]:
    """Check every element of an argument vector (the parameter `name`); return it as a list."""
    if isinstance(args, (str, bytes)) or not isinstance(args, Iterable):
        raise InvalidInputError(
            f"{name} must be a sequence of strings, not {_a(args)}"
        )
    out = list(args)
    for i, arg in enumerate(out):
        no_nul(arg, f"{what} {i}")
    return out


def env_name(name: str) -> str:
    """Check an environment variable name (a shell identifier)."""
    if not isinstance(name, str) or not env_name_chars(name):
        raise InvalidInputError(
            f"invalid environment variable name {name!r}: "
            "use letters, digits and '_', not starting with a digit"
        )
    return name


def env_mapping(env: Mapping[str, str] | None, what: str = "env") -> dict[str, str]:
    """Check names and values of an environment mapping; return an ordered copy.

    Values are never included in error messages: the mapping may hold secrets.
    """
    if env is None:
        return {}
    if not isinstance(env, Mapping):
        raise InvalidInputError(
            f"{what} must be a mapping of variable names to strings (a dict), not {_a(env)}"
        )
    out: dict[str, str] = {}
    for key, value in env.items():
        env_name(key)
        if not isinstance(value, str):
            raise InvalidInputError(f"{what}[{key!r}] must be a string")
        if "\0" in value:
            raise InvalidInputError(f"{what}[{key!r}] contains a NUL byte")
        out[key] = value
    return out


def user_name(name: str) -> UserName:
    """Check a guest user name (`UserName(name)`)."""
    return UserName(name)


def guest_path(path: str, what: str | Param = "guest path") -> GuestPath:
    """Check a guest path: absolute, no NUL, no '.' or '..' segments (`GuestPath(path)`)."""
    return GuestPath(path, what)


def host_file(path: str | os.PathLike[str], what: str = "host file") -> str:
    """Check that a host path names an existing regular file; return it as a string.

    Directories are refused (smolvm's cp copies regular files only).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"{what} must be a path (str or os.PathLike), not {_a(path)}")
    text = os.fspath(path)
    no_nul(text, what)
    try:
        st = os.stat(text)
    except FileNotFoundError:
        raise InvalidInputError(f"{what} {text!r} does not exist") from None
    except OSError as exc:
        raise InvalidInputError(f"{what} {text!r} cannot be read: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidInputError(
            f"{what} {text!r} is a directory; only regular files can be copied "
            "(copy each file, or pack the directory into an archive first)"
        )
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(f"{what} {text!r} is not a regular file")
    if not os.access(text, os.R_OK):
        raise InvalidInputError(f"{what} {text!r} is not readable")
    return text


def _a(value: object) -> str:
    """How a wrong value is named in a message: its type, or "a string"."""
    return "a string" if isinstance(value, str) else type(value).__name__


def optional_text(value: object, what: str) -> str | None:
    """None, or a string without NUL (the parameter `what`)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string or None, not {_a(value)}")
    return no_nul(value, what)


def text(value: object, what: str) -> str:
    """A string (the parameter `what`); NUL is left to the checks that know where it goes."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, not {_a(value)}")
    return value


def flag(value: object, what: str) -> bool:
    """True or False (the parameter `what`): a truthy string must not pass for a choice."""
    if not isinstance(value, bool):
        raise InvalidInputError(f"{what} must be True or False, not {value!r}")
    return value


def count(
    value: object, what: str, *, minimum: int | None = None, optional: bool = False
) -> int | None:
    """An integer (None too when `optional`), at least `minimum` if given; bool is no count."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        kind = "an integer or None" if optional else "an integer"
        raise InvalidInputError(f"{what} must be {kind}, not {_a(value)}")
    if minimum is not None and value < minimum:
        raise InvalidInputError(f"{what} must be at least {minimum}, not {value}")
    return value
