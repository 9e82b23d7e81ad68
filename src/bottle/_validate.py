"""Input checks shared by the smolvm wrapper and the backends.

Each check raises `InvalidInputError` (a `ValueError`) naming the problem, so bad input is
refused before any process starts. Values are checked once, where they enter (the spec, the
public constructors and methods, the CLI): a machine name, user name or guest path that passed
comes back as `MachineName`, `UserName` or `GuestPath` (plain `str` subclasses), and a check
handed one of those again returns it at once, so the layers below pass them on unchecked.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Mapping

from bottle.errors import InvalidInputError, Message, Param

# smolvm's validate_vm_name: first char alphanumeric, then [A-Za-z0-9_-], no "--",
# no trailing "-", at most 128 characters.
_MACHINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
MACHINE_NAME_MAX = 128
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Portable user names (useradd's rules without the odd corners): no leading '-', no ':' or '/'.
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")
USER_NAME_MAX = 32


class MachineName(str):
    """A machine name that `machine_name` accepted."""

    __slots__ = ()


class UserName(str):
    """A user name that `user_name` accepted."""

    __slots__ = ()


class GuestPath(str):
    """A guest path that `guest_path` accepted."""

    __slots__ = ()


def machine_name(name: str) -> MachineName:
    """Check a machine name against smolvm's rules."""
    if type(name) is MachineName:
        return name
    if not isinstance(name, str):
        raise InvalidInputError(f"machine name must be a string, not {type(name).__name__}")
    problem = None
    if not name:
        problem = "it is empty"
    elif len(name) > MACHINE_NAME_MAX:
        problem = f"it is longer than {MACHINE_NAME_MAX} characters"
    elif not _MACHINE_NAME.fullmatch(name):
        problem = (
            "it must start with a letter or digit and contain only letters, digits, '_' and '-'"
        )
    elif "--" in name:
        problem = "it contains '--'"
    elif name.endswith("-"):
        problem = "it ends with '-'"
    if problem:
        raise InvalidInputError(f"invalid machine name {name!r}: {problem}")
    return MachineName(name)


def no_nul(value: str, what: str) -> str:
    """Refuse a string holding a NUL byte (it cannot be passed to a process)."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, not {type(value).__name__}")
    if "\0" in value:
        raise InvalidInputError(f"{what} contains a NUL byte")
    return value


def argv(args: Iterable[str], what: str = "argument") -> list[str]:
    """Check every element of an argument vector and return it as a list."""
    if isinstance(args, str):
        raise InvalidInputError(f"{what} list must be a sequence of strings, not a string")
    out = list(args)
    for i, arg in enumerate(out):
        no_nul(arg, f"{what} {i}")
    return out


def env_name(name: str) -> str:
    """Check an environment variable name (a shell identifier)."""
    if not isinstance(name, str) or not _ENV_NAME.fullmatch(name):
        raise InvalidInputError(
            f"invalid environment variable name {name!r}: "
            "use letters, digits and '_', not starting with a digit"
        )
    return name


def env_mapping(env: Mapping[str, str] | None, what: str = "env") -> dict[str, str]:
    """Check names and values of an environment mapping; return an ordered copy.

    Values are never included in error messages: the mapping may hold secrets.
    """
    out: dict[str, str] = {}
    for key, value in (env or {}).items():
        env_name(key)
        if not isinstance(value, str):
            raise InvalidInputError(f"{what}[{key!r}] must be a string")
        if "\0" in value:
            raise InvalidInputError(f"{what}[{key!r}] contains a NUL byte")
        out[key] = value
    return out


def user_name(name: str) -> UserName:
    """Check a guest user name."""
    if type(name) is UserName:
        return name
    if (
        not isinstance(name, str)
        or len(name) > USER_NAME_MAX
        or not _USER_NAME.fullmatch(name)
    ):
        raise InvalidInputError(
            f"invalid user name {name!r}: use letters, digits, '_', '.', '-' "
            f"(not starting with '-' or a digit, at most {USER_NAME_MAX} characters)"
        )
    return UserName(name)


def guest_path(path: str, what: str | Param = "guest path") -> GuestPath:
    """Check a guest path: absolute, no NUL, no '.' or '..' segments."""
    if type(path) is GuestPath:
        return path
    no_nul(path, str(what))
    if not path.startswith("/"):
        raise InvalidInputError(
            Message("{what} {path!r} must be absolute (start with '/')", what=what, path=path)
        )
    if any(seg in (".", "..") for seg in path.split("/")):
        raise InvalidInputError(
            Message("{what} {path!r} must not contain '.' or '..' segments", what=what, path=path)
        )
    return GuestPath(path)


def host_file(path: str | os.PathLike[str], what: str = "host file") -> str:
    """Check that a host path names an existing regular file; return it as a string.

    Directories are refused (smolvm's cp copies regular files only).
    """
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


def new_file(path: str | os.PathLike[str], what: str = "recording file") -> str:
    """Check that a host path can become a new file: free, in an existing directory."""
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"{what} must be a path, not {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} must be a text path, not {type(text).__name__}")
    no_nul(text, what)
    if not text:
        raise InvalidInputError(f"{what} name is empty")
    if os.path.lexists(text):
        raise InvalidInputError(f"{what} {text!r} already exists (bottle never overwrites one)")
    parent = os.path.dirname(text) or "."
    if not os.path.isdir(parent):
        raise InvalidInputError(f"{what} {text!r}: directory {parent!r} does not exist")
    return text
