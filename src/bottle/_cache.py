"""What bottle learnt about an installed smolvm and its machines, kept across processes.

Each `bottle exec` is a new process, and asking smolvm its version, its `exec --help` and the
guest's `id` again costs three smolvm runs for one command. The answers go into small files under
`$XDG_CACHE_HOME/bottle/` (`~/.cache/bottle/` without it): one file per key, so concurrent
writers of different keys never meet, and each written whole to a temporary file and renamed over
the old one, so a reader sees an old answer or a new one, never half of one. An entry holds its
own key: a file that does not parse, holds another key or is not ours reads as a miss, and the
next answer replaces it. An entry is a `marshal` dump, not JSON: `bottle._quickexec` reads it,
and there `json` (with `re` under it) would be a tenth of the command's cost. Only files of ours
are read (our uid, a private directory), and an entry holds plain values only: anything else in
it is a miss too.

The directory is made mode 0700 and its files 0600; a directory that is not a real directory, or
that belongs to someone else, is not used at all (every lookup misses, nothing is written). What
a key must contain so that a stale answer cannot be used is the caller's business: smolvm's
answers are keyed by the executable's file identity; a guest user is only ever used behind a
check in the guest (see `bottle.backend.smolmachines`).
"""

from __future__ import annotations

import binascii
import marshal
import os
import stat

from bottle import _log

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (bottle._quickexec)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

__all__ = ["clear", "directory", "forget", "load", "store"]

log = _log.get_logger(__name__)

# Bumped when an entry's meaning changes: entries of another format are misses. (1: JSON.)
_FORMAT = 2
_SUFFIX = ".entry"
# An entry is a few hundred bytes; anything much larger is not ours.
_MAX_BYTES = 64 * 1024
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _base() -> str | None:
    # The XDG base directory rules: a relative XDG_CACHE_HOME is to be ignored.
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return xdg
    home = os.environ.get("HOME", "")
    return os.path.join(home, ".cache") if os.path.isabs(home) else None


def directory() -> str | None:
    """The cache directory, made private; None when there is none that can be used safely."""
    base = _base()
    if base is None:
        return None
    path = os.path.join(base, "bottle")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            log.debug("cache directory %s is not a directory of ours: not used", path)
            return None
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, 0o700)
    except OSError as exc:
        log.debug("cache directory %s cannot be used: %s", path, exc)
        return None
    return path


def _file(where: str, kind: str, key: Sequence[object]) -> str:
    # A name for the key, not a proof of it: the entry holds its key, and two keys with one
    # name only take turns in one file. Two CRC-32s, not hashlib, whose import alone costs
    # every command about 2 ms. Of the key's repr, which is the same in every process (a
    # marshal dump is not: it marks interned and shared strings).
    data = repr([kind, *key]).encode("utf-8", "backslashreplace")
    digest = f"{binascii.crc32(data):08x}{binascii.crc32(data[::-1]):08x}"
    return os.path.join(where, f"{kind}-{digest}{_SUFFIX}")


def _plain(value: object) -> bool:
    """Whether `value` is made of what an entry may hold (None, bool, int, str, list, dict)."""
    if value is None or isinstance(value, (bool, int, str)):
        return True
    if type(value) is list:
        return all(_plain(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and _plain(v) for k, v in value.items())
    return False


def load(kind: str, key: Sequence[object]) -> dict[str, Any] | None:
    """The value stored under (`kind`, `key`), or None: none stored, unreadable, or not ours."""
    where = directory()
    if where is None:
        return None
    try:
        fd = os.open(_file(where, kind, key), os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return None
        data = os.read(fd, _MAX_BYTES + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(data) > _MAX_BYTES:
        return None
    try:
        entry = marshal.loads(data)
    except Exception:  # whatever a file that is not an entry makes it raise: a miss
        return None
    if (
        type(entry) is not dict
        or entry.get("format") != _FORMAT
        or entry.get("kind") != kind
        or entry.get("key") != list(key)
        or type(entry.get("value")) is not dict
        or not _plain(entry["value"])
    ):
        return None
    value: dict[str, Any] = entry["value"]
    return value


def store(kind: str, key: Sequence[object], value: dict[str, Any]) -> None:
    """Keep `value` under (`kind`, `key`), replacing what was there; a failure is only logged."""
    where = directory()
    if where is None:
        return
    import tempfile  # only on a miss: it costs a few ms of start-up (random, shutil)

    if not _plain(value):
        raise TypeError(f"a cache entry holds None, bool, int, str, list and dict only: {value!r}")
    data = marshal.dumps({"format": _FORMAT, "kind": kind, "key": list(key), "value": value})
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=_SUFFIX, dir=where)  # mode 0600
    except OSError as exc:
        log.debug("cache: cannot write in %s: %s", where, exc)
        return
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, _file(where, kind, key))
    except OSError as exc:
        log.debug("cache: cannot write in %s: %s", where, exc)
        _unlink(tmp)


def _unlink(path: str) -> None:
    try:  # noqa: SIM105 - contextlib is ms of bottle._quickexec's start-up
        os.unlink(path)
    except OSError:
        pass


def forget(kind: str, key: Sequence[object]) -> None:
    """Remove the entry under (`kind`, `key`), if any."""
    where = directory()
    if where is not None:
        _unlink(_file(where, kind, key))


def clear(kind: str | None = None) -> None:
    """Remove every entry (of `kind`, when given)."""
    where = directory()
    if where is None:
        return
    prefix = "" if kind is None else f"{kind}-"
    try:
        names = os.listdir(where)
    except OSError:
        return
    for name in names:
        # `.json`: entries of the first format, which nothing reads any more.
        if (
            name.endswith((_SUFFIX, ".json")) and name.startswith(prefix)
            and not name.startswith(".tmp-")
        ):  # fmt: skip
            _unlink(os.path.join(where, name))
