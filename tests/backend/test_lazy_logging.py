"""bottle._log: loggers that load `logging` only once a record could go somewhere, and pass
every such record to `logging` as if they were `logging.getLogger(name)`."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from bottle import _log

UNLOADED = """
import sys
from bottle import _log
log = _log.get_logger("bottle.x")
_log.when_loaded(lambda: print("configured", file=sys.stderr))
log.debug("not %s", "shown")
log.info("nor this")
assert "logging" not in sys.modules, "a record below WARNING loaded logging"
log.warning("shown %s", "once")
assert "logging" in sys.modules
log.info("loaded now, but not configured: dropped by logging itself")
log.error("and %d", 2)
"""


def test_below_warning_nothing_is_loaded_and_nothing_lost() -> None:
    """Without `logging` loaded nothing has configured it: it would show warnings and errors
    only (its last-resort handler), and that is what comes out."""
    proc = subprocess.run([sys.executable, "-c", UNLOADED], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert proc.stderr == "configured\nshown once\nand 2\n"


def test_records_reach_logging_from_their_caller(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="bottle.test")
    log = _log.get_logger("bottle.test")
    log.debug("a %s", "debug line"); line = sys._getframe().f_lineno  # noqa: E702
    log.error("an error", extra={"returned_error": True})
    first, second = caplog.records
    assert (first.name, first.levelno, first.getMessage()) == ("bottle.test", 10, "a debug line")
    assert (first.pathname, first.lineno, first.funcName) == (
        __file__, line, "test_records_reach_logging_from_their_caller")  # fmt: skip
    assert (second.levelno, second.returned_error) == (40, True)  # type: ignore[attr-defined]


def test_a_callback_runs_at_once_when_logging_is_loaded() -> None:
    ran: list[int] = []
    _log.when_loaded(lambda: ran.append(1))  # loaded in this process (pytest's)
    assert ran == [1]
