"""The process-wide state a test can change, taken before each test and put back after it.

tests/conftest.py's autouse fixture `clean_process` calls `take()` and `Snapshot.restore()`
around every test (benchmarks/conftest.py imports the same fixture), so no test can leave
anything behind for the next one in its xdist worker, whatever order the tests come in:

- bottle's own module-level state: every module-level dict, set and list of every `bottle`
  module (the smolvm version and `exec --user` caches, the warned-old-smolvm set, and any cache
  added later) goes back to its contents at import, and every module-level name to the object it
  was bound to then; `functools` caches are cleared. All of bottle is imported here, once, so
  that this baseline is the state at import and not some test's leftovers.
- the environment (`os.environ`), the current directory, the umask;
- signal dispositions (those set from Python) and the signal mask;
- logging: every logger's level, handlers, filters, `propagate` and `disabled`, and
  `logging.disable()`. pytest's own capture handlers, which it adds and removes around each
  phase of a test, are left to pytest.
- `sys.stdin`, `sys.stdout`, `sys.stderr` and `sys.path`.

What the first test finds is set here too: SIGINT and SIGQUIT handled as in a foreground job and
no signal blocked, however pytest itself was started (see _start_as_a_foreground_job).
"""

from __future__ import annotations

import copy
import importlib
import logging
import os
import pkgutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import bottle

# Variables pytest itself rewrites between a test's phases.
_PYTEST_OWNED_ENV = frozenset({"PYTEST_CURRENT_TEST"})
# Dispositions that cannot be changed, and SIGALRM, which pytest-timeout sets for each test and
# puts back to SIG_DFL itself (sooner, when a test fails).
_NOT_OURS = frozenset({signal.SIGKILL, signal.SIGSTOP, signal.SIGALRM})
_SIGNALS = sorted(set(signal.valid_signals()) - _NOT_OURS)


# Modules whose import acts on the process, which a test process must not import for nothing:
# the `__main__` modules run their command, and `_console` (the console script's first module)
# and `_sigint` (which the entry modules import first) make SIGINT a quiet exit.
_ENTRY_MODULES = frozenset({"__main__", "_console", "_sigint"})


def _handlers() -> dict[int, Any]:
    return {signum: signal.getsignal(signum) for signum in _SIGNALS}


def _import_all_of_bottle() -> list[ModuleType]:
    """Every module of the installed bottle package but the entry points."""
    modules = [bottle]
    for info in pkgutil.walk_packages(bottle.__path__, "bottle."):
        if info.name.rsplit(".", 1)[-1] in _ENTRY_MODULES:
            continue
        before = _handlers()
        try:
            modules.append(importlib.import_module(info.name))
        except ImportError:
            # e.g. the native relay where this run refuses it: the tests that need it say so.
            continue
        if _handlers() != before:
            raise RuntimeError(
                f"importing {info.name} changes signal handlers: add it to _ENTRY_MODULES in "
                f"{__file__} (the tests must not import it just to take a baseline)"
            )
    return modules


def _is_container(value: Any) -> bool:
    return isinstance(value, (dict, set, list))


@dataclass(frozen=True)
class _ModuleBaseline:
    module: ModuleType
    bindings: dict[str, Any]
    contents: dict[str, Any]  # a copy of each container's contents at import
    caches: list[Any]  # functools.cache/lru_cache wrappers defined in the module


def _baseline(module: ModuleType) -> _ModuleBaseline:
    names = {k: v for k, v in vars(module).items() if not k.startswith("__")}
    return _ModuleBaseline(
        module=module,
        bindings=names,
        contents={k: copy.copy(v) for k, v in names.items() if _is_container(v)},
        caches=[
            v
            for v in names.values()
            if callable(getattr(v, "cache_clear", None))
            and getattr(v, "__module__", None) == module.__name__
        ],
    )


BOTTLE_BASELINE = [_baseline(m) for m in _import_all_of_bottle()]


def _start_as_a_foreground_job() -> None:
    """The tests' own start: Ctrl-C raises KeyboardInterrupt, SIGQUIT is default, nothing is
    blocked, whoever started pytest. A shell starts a background job (`pytest &` in a script)
    with SIGINT and SIGQUIT ignored, which Python and every child a test starts inherit: tests
    of Ctrl-C then saw their signal vanish (5 failed, every time, in backend/test_decoration.py
    and test_backend_e2e.py)."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGQUIT) is signal.SIG_IGN:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


_start_as_a_foreground_job()


def bottle_state_names() -> list[str]:
    """`module.name` of every module-level container and functools cache the reset covers."""
    found = [
        f"{b.module.__name__}.{name}" for b in BOTTLE_BASELINE for name in sorted(b.contents)
    ]
    found += [f"{b.module.__name__}.{c.__name__}" for b in BOTTLE_BASELINE for c in b.caches]
    return found


def reset_bottle() -> list[str]:
    """Put every bottle module back as it was at import; returns what had changed."""
    changed: list[str] = []
    for b in BOTTLE_BASELINE:
        now = vars(b.module)
        for name, value in b.bindings.items():
            if now.get(name, _MISSING) is not value:
                setattr(b.module, name, value)
                changed.append(f"{b.module.__name__}.{name}")
        for name, saved in b.contents.items():
            live = b.bindings[name]
            if live != saved:
                if isinstance(live, list):
                    live[:] = saved
                else:
                    live.clear()
                    live.update(saved)
                changed.append(f"{b.module.__name__}.{name}")
        for cache in b.caches:
            if cache.cache_info().currsize:
                cache.cache_clear()
                changed.append(f"{b.module.__name__}.{cache.__name__}")
    return changed


_MISSING = object()


def _is_pytests(handler: logging.Handler) -> bool:
    """pytest's capture and live-log handlers: it adds and removes them itself, per phase."""
    return type(handler).__module__.startswith("_pytest.")


@dataclass(frozen=True)
class _LoggerState:
    level: int
    propagate: bool
    disabled: bool
    handlers: tuple[logging.Handler, ...]
    filters: tuple[Any, ...]

    @classmethod
    def of(cls, logger: logging.Logger) -> _LoggerState:
        return cls(
            logger.level,
            logger.propagate,
            logger.disabled,
            tuple(h for h in logger.handlers if not _is_pytests(h)),
            tuple(logger.filters),
        )

    def put_back(self, logger: logging.Logger) -> None:
        logger.setLevel(self.level)
        logger.propagate = self.propagate
        logger.disabled = self.disabled
        logger.handlers[:] = [h for h in logger.handlers if _is_pytests(h)] + list(self.handlers)
        logger.filters[:] = list(self.filters)


_NEW_LOGGER = _LoggerState(logging.NOTSET, True, False, (), ())


def _loggers() -> dict[str, logging.Logger]:
    """Every logger there is, with the names that so far only hold a place for their children
    ("bottle" for "bottle.smolvm") made loggers: getLogger(name) later hands out the same one."""
    found = {name: logging.getLogger(name) for name in logging.Logger.manager.loggerDict}
    found[""] = logging.getLogger()
    return found


@dataclass
class Snapshot:
    """What `take()` saw; `restore()` puts it back and says what it had to change."""

    environ: dict[str, str]
    cwd: str
    umask: int
    handlers: dict[int, Any]
    mask: set[int]
    loggers: dict[str, _LoggerState]
    logging_disable: int
    stdio: tuple[Any, Any, Any]
    path: list[str]

    def restore(self) -> list[str]:
        changed = reset_bottle()
        env = {k: v for k, v in os.environ.items() if k not in _PYTEST_OWNED_ENV}
        for name in env.keys() - self.environ.keys():
            del os.environ[name]
            changed.append(f"environ {name} (added)")
        for name, value in self.environ.items():
            if env.get(name) != value:
                os.environ[name] = value
                changed.append(f"environ {name}")
        if _cwd() != self.cwd:
            os.chdir(self.cwd)
            changed.append("cwd")
        if os.umask(self.umask) != self.umask:
            changed.append("umask")
        for signum, handler in self.handlers.items():
            if signal.getsignal(signum) is not handler:
                signal.signal(signum, handler)
                changed.append(f"signal {signal.Signals(signum).name}")
        if signal.pthread_sigmask(signal.SIG_SETMASK, self.mask) != self.mask:
            changed.append("signal mask")
        for name, logger in _loggers().items():
            saved = self.loggers.get(name, _NEW_LOGGER)
            if _LoggerState.of(logger) != saved:
                saved.put_back(logger)
                changed.append(f"logger {name or 'root'}")
        if logging.root.manager.disable != self.logging_disable:
            logging.disable(self.logging_disable)
            changed.append("logging.disable")
        if (sys.stdin, sys.stdout, sys.stderr) != self.stdio:
            sys.stdin, sys.stdout, sys.stderr = self.stdio
            changed.append("sys.stdin/stdout/stderr")
        if sys.path != self.path:
            sys.path[:] = self.path
            changed.append("sys.path")
        return changed


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except FileNotFoundError:  # a test removed the directory it had moved into
        return None


def take() -> Snapshot:
    """The process-wide state as it is now (bottle's own is put back to import first)."""
    reset_bottle()
    umask = os.umask(0o022)
    os.umask(umask)
    cwd = _cwd()
    assert cwd is not None, "the tests started in a directory that no longer exists"
    handlers = {}
    for signum in _SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not None:  # None: set outside Python, cannot be put back from here
            handlers[signum] = handler
    return Snapshot(
        environ={k: v for k, v in os.environ.items() if k not in _PYTEST_OWNED_ENV},
        cwd=cwd,
        umask=umask,
        handlers=handlers,
        mask=signal.pthread_sigmask(signal.SIG_BLOCK, []),
        loggers={name: _LoggerState.of(logger) for name, logger in _loggers().items()},
        logging_disable=logging.root.manager.disable,
        stdio=(sys.stdin, sys.stdout, sys.stderr),
        path=list(sys.path),
    )


# The user's own directories, where bottle keeps state across processes (its cache, its config
# file, its sessions): each test gets fresh ones, so none reads the state of whoever runs the
# suite, or of an earlier test.
USER_DIRS = ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR")


@pytest.fixture(autouse=True)
def clean_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every test starts from the state the one before it found (see this module's doc), with
    directories of its own as the user's cache, config and runtime directories (outside
    tmp_path, which some tests list) and no BOTTLE_CONFIG."""
    snapshot = take()
    for var in USER_DIRS:
        path = tmp_path_factory.mktemp(var.lower().replace("_", "-"))
        path.chmod(0o700)
        os.environ[var] = str(path)
    os.environ.pop("BOTTLE_CONFIG", None)
    yield
    snapshot.restore()


@pytest.fixture
def private_cache() -> Path:
    """The test's own $XDG_CACHE_HOME (bottle's cache is `<it>/bottle/`)."""
    return Path(os.environ["XDG_CACHE_HOME"])
