"""Ctrl-C at any moment of `bottle`'s start: a quiet 130, never a traceback, never swallowed.

Issue 19 (item 8) sent SIGINT to `bottle relay -- sleep 1` at 21 delays between 0 and 80 ms and
saw tracebacks from the command line's imports, and a Ctrl-C the import machinery swallowed (the
relay then ran on to exit 0). The console script's first module, `bottle._console`, now takes
SIGINT over before anything else loads (its first import, `bottle._sigint`, does it), and so does
`python -m bottle.relay` (the relay's package loads nothing, its `__main__` imports `_sigint`
first: before, the signal storm of tests/relay/test_relay_fuzz.py saw the import machinery
swallow a Ctrl-C there, about 1 start in 1,000 under load, and the relay ran on). What is left
before it is the interpreter's own start-up (site, .pth files, the check of argv[0]) and the
lookup of the `bottle` package: a Ctrl-C there is Python's to handle, not bottle's.

The runs do not depend on timing to pass: each run's output says on which side of the takeover
the signal landed. Under `PYTHONVERBOSE` the import system prints `import 'bottle._sigint'`
once that module's code has run to its end (a failed import prints nothing), so a traceback
printed before that line is the interpreter's, and anything after it is bottle's.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness.terminal import user_terminal, wait_status

import bottle

PY = sys.executable
CONSOLE_SCRIPT = str(Path(PY).parent / "bottle")
# Each runs the relay: the console script's and `python -m bottle`'s `relay` command, and the
# relay's own program, which the backend runs for an agent session.
ENTRIES = {
    "console script": [CONSOLE_SCRIPT, "relay"],
    "python -m bottle": [PY, "-m", "bottle", "relay"],
    "python -m bottle.relay": [PY, "-m", "bottle.relay"],
}
DELAYS = [i * 0.004 for i in range(21)]  # 0 to 80 ms, as the issue measured

TAKEN_OVER = re.compile(rb"^import 'bottle\._sigint' # ", re.M)
TROUBLE = re.compile(rb"Traceback \(most recent call last\)|Exception ignored|Failed checking")
FRAME = re.compile(rb'File "([^"]+)"')
PACKAGE = Path(bottle.__file__).resolve().parent
# The only code of bottle's that may run before the takeover: the package's own `__init__`
# (a version string and a platform check), `__main__`'s import of `_console` (for `python -m`),
# `_console` up to its first statement, the relay package's `__init__` (which loads nothing),
# its `__main__` up to its import of `_sigint`, and `_sigint` itself.
FIRST = {
    PACKAGE / "__init__.py", PACKAGE / "__main__.py", PACKAGE / "_console.py",
    PACKAGE / "_sigint.py", PACKAGE / "relay" / "__init__.py", PACKAGE / "relay" / "__main__.py",
}  # fmt: skip


def _bottle_code_before_the_takeover(text: bytes) -> list[str]:
    files = {Path(m.decode(errors="replace")) for m in FRAME.findall(text)}
    return sorted(
        str(f) for f in files if f.is_absolute() and f.resolve().is_relative_to(PACKAGE)
        and f.resolve() not in FIRST
    )  # fmt: skip


def _imported(env_argv: list[str]) -> list[str]:
    """The modules a run imports, in the order their imports finish."""
    proc = subprocess.run(
        env_argv, capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return [
        line.rsplit("|", 1)[1].strip()
        for line in proc.stderr.splitlines()
        if line.startswith("import time:") and "imported package" not in line
    ]


@pytest.mark.parametrize("entry", ENTRIES)
def test_the_first_module_loads_nothing_before_it_takes_ctrl_c_over(entry: str) -> None:
    """What the delays below rest on: of bottle, only the packages (which import nothing
    new) are loaded before `bottle._sigint` takes Ctrl-C over, and `_sigint` loads nothing."""
    names = _imported([*ENTRIES[entry], "--help"])
    ours = [n for n in names if n == "bottle" or n.startswith("bottle.")]
    packages = ["bottle", "bottle.relay"] if entry == "python -m bottle.relay" else ["bottle"]
    assert ours[: len(packages) + 1] == [*packages, "bottle._sigint"], ours
    at = names.index("bottle._sigint")
    assert names[at - 1] == packages[-1], names[: at + 1]  # nothing new between them


def _interrupted(argv: list[str], delay: float) -> tuple[str, str]:
    """SIGINT `delay` seconds after the start; (outcome, detail)."""
    env = {**os.environ, "PYTHONVERBOSE": "1"}
    with user_terminal() as term:
        proc = term.spawn([*argv, "--", "sleep", "1"], env)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        status = wait_status(proc)  # 130 also when SIGINT killed it before Python's handler
        term.drain()
        out = term.output()
        restored = term.attrs() == term.saved and term.flags() == term.flags_before
    taken = TAKEN_OVER.search(out)
    before, after = (out[: taken.start()], out[taken.start() :]) if taken else (out, b"")
    trouble = TROUBLE.search(before)
    tail = out[-400:].decode(errors="replace")
    if not restored:
        return "terminal changed", tail
    early = _bottle_code_before_the_takeover(before)
    if early:
        return f"traceback from bottle before the takeover ({', '.join(early)})", tail
    if taken is None or trouble is not None:
        # Python's own start-up met the signal before bottle's first module had run: it may
        # die of it (130), print it and exit 1, or, in its check of argv[0], swallow it.
        return ("quiet 130, before bottle" if status == 130 and not trouble
                else "interpreter start-up"), tail  # fmt: skip
    if TROUBLE.search(after):
        return "traceback", tail
    if status != 130:
        return f"swallowed (status {status})", tail
    return "quiet 130", ""


def _storm(entry: str, tries: int) -> None:
    outcomes: collections.Counter[str] = collections.Counter()
    bad = []
    for _ in range(tries):
        for delay in DELAYS:
            outcome, detail = _interrupted(ENTRIES[entry], delay)
            outcomes[outcome] += 1
            if not outcome.startswith(("quiet 130", "interpreter start-up")):
                bad.append(f"{delay * 1000:.0f} ms: {outcome}\n{detail}")
    print(f"{entry}: {dict(outcomes)}")
    assert not bad, f"{dict(outcomes)}\n" + "\n---\n".join(bad)


@pytest.mark.parametrize("entry", ENTRIES)
def test_ctrl_c_during_start_up_is_a_quiet_130(entry: str) -> None:
    _storm(entry, tries=2)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("entry", ENTRIES)
def test_ctrl_c_during_start_up_is_a_quiet_130_many_times(entry: str) -> None:
    _storm(entry, tries=16)


@pytest.mark.parametrize("entry", ENTRIES)
def test_an_ignored_ctrl_c_stays_ignored(entry: str) -> None:
    """Started with SIGINT ignored (`nohup`, a script's background job), bottle leaves it so:
    the signal changes nothing and the command runs to its end."""
    proc = subprocess.Popen(
        [*ENTRIES[entry], "--", "sh", "-c", "sleep 0.5; echo done"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    for _ in range(10):
        time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert (proc.returncode, out.replace(b"\r\n", b"\n")) == (0, b"done\n")
