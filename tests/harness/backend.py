"""Helpers for the backend and CLI tests: test images, sessions of `exec_agent` and `bottle
agent` in a process of their own, /proc scanners (secrets on command lines, processes left
behind), the exact sequences of terminal decoration, and the fake smolvm's call log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bottle.backend import LaunchSpec

# Images in the fake smolvm's image table (registry references, so launch turns networking on).
# ROOT_IMAGE is like docker's node:22: no USER (commands run as root), a `node` user inside, so
# bottle switches with runuser. AGENT_IMAGE is the agent image this backend serves: USER node.
ROOT_IMAGE = "bottle-test/node22:1"
AGENT_IMAGE = "bottle-test/agent:1"
# `bottle launch` of machine m1 on ROOT_IMAGE.
LAUNCH = ["launch", "-n", "m1", "--image", ROOT_IMAGE]


def fake_release() -> tuple[int, ...]:
    """The smolvm release the fake fakes in this test: FAKE_SMOLVM_VERSION (which the fixture sets
    from --fake-smolvm-version, and set_fault(VERSION=…) changes), else the fake's 1.9.3."""
    return tuple(int(n) for n in (os.environ.get("FAKE_SMOLVM_VERSION") or "1.9.3").split("."))


def vm_lost_line(machine: str, op: str) -> str:
    """smolvm's own line when the VM dies under a `-i`/`-t` session (`op`: "run interactive" on
    an image machine): 1.9.3's (src/agent/client.rs), or from 1.14.1 the fake's stand-in for the
    text of smolvm PR #1154, which nobody here has seen (tests/fake_smolvm/README.md)."""
    if fake_release() >= (1, 14, 1):
        return f"Error: the VM of machine '{machine}' ended: killed by signal 9 (SIGKILL)"
    return f"Error: agent operation failed: {op}: connection to VM lost"


def add_test_images(fake_smolvm: Any) -> None:
    """Register ROOT_IMAGE and AGENT_IMAGE with the fake."""
    fake_smolvm.add_image(ROOT_IMAGE)
    fake_smolvm.add_image(AGENT_IMAGE, user="node", workdir="/home/node")


# An image like docker's node:22 (no USER, npm on its PATH) that has no agent CLI: its npm is
# tests/harness/fake_npm/npm, which installs stubs of the agent CLIs into the test's prefix.
NPM_IMAGE = "bottle-test/node-npm:1"
FAKE_NPM_DIR = Path(__file__).resolve().parent / "fake_npm"
# crun's PATH for an image that sets none (crates/smolvm-agent/src/crun.rs ensure_path_in_env).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def npm_image_env(prefix: Path) -> list[str]:
    """The ENV of an image whose npm is the fake one, installing into `prefix` (a directory the
    guest's users can enter: its bin is on the image's PATH)."""
    return [f"PATH={FAKE_NPM_DIR}:{prefix}/bin:{DEFAULT_PATH}", f"NPM_CONFIG_PREFIX={prefix}"]


def add_npm_image(fake_smolvm: Any, prefix: Path, *, ref: str = NPM_IMAGE, **config: Any) -> str:
    """Register `ref` (default NPM_IMAGE) with the fake npm installing into `prefix`."""
    fake_smolvm.add_image(ref, env=npm_image_env(prefix), **config)
    return ref


def root_spec(name: str = "m1", **kw: Any) -> LaunchSpec:
    """A LaunchSpec on ROOT_IMAGE (agent user node, reached with runuser)."""
    return LaunchSpec(name, image=ROOT_IMAGE, **kw)


def image_machine(fake_smolvm: Any, name: str, *, image: str = ROOT_IMAGE, **fields: Any) -> None:
    """Pre-seed a running machine on one of the test images (registered on first use)."""
    add_test_images(fake_smolvm)
    fake_smolvm.create(name, image=image, **fields)


def guest_execs(fake_smolvm: Any) -> list[list[str]]:
    """The `machine exec` calls that ran a guest command (not `exec --help`)."""
    return [c for c in fake_smolvm.calls() if c[1:2] == ["exec"] and "--" in c]


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # the process went away, or is not ours to read
        return b""


@dataclass
class ProcScan:
    """Scans every process's command line (and, to prove the scan saw the secret in flight,
    its environment) for a secret, in a background thread, until stopped."""

    secret: bytes
    cmdline_hits: list[tuple[int, bytes]] = field(default_factory=list)
    environ_pids: set[int] = field(default_factory=set)
    rounds: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def scan_once(self) -> None:
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            cmdline = _read(f"/proc/{pid}/cmdline")
            if self.secret in cmdline:
                self.cmdline_hits.append((pid, cmdline))
            if pid != me and self.secret in _read(f"/proc/{pid}/environ"):
                self.environ_pids.add(pid)
        self.rounds += 1

    def wait_rounds(self, n: int, timeout: float = 30.0) -> None:
        """Block until `n` more full scans have finished."""
        target = self.rounds + n
        deadline = time.monotonic() + timeout
        while self.rounds < target:
            assert time.monotonic() < deadline, "the /proc scan thread stalled"
            time.sleep(0.005)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.scan_once()
            time.sleep(0.005)

    def __enter__(self) -> ProcScan:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join(10)


def wait_for_file(path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


CHILD = """
import os, sys, json
from bottle.backend.smolmachines import SmolmachinesBottle
cfg = json.loads(os.environ["BOTTLE_TEST_CFG"])
secret = os.environ.get("BOTTLE_TEST_SECRET_SRC")
b = SmolmachinesBottle(
    cfg["machine"], agent_command="/bin/sh", agent_prompt_mode="none",
    terminal_title=cfg.get("title", ""), terminal_color=cfg.get("color", ""),
    agent_workdir=cfg.get("workdir", "/home/node"),
    secret_env={"BOTTLE_TOKEN": secret} if secret else None,
)
try:
    status = b.run_agent(sys.argv[1:], tty=True).check().returncode
except Exception as exc:
    print(f"\\r\\nRESULT=ERROR:{type(exc).__name__}:{exc}", flush=True)
    sys.exit(99)
print(f"\\r\\nRESULT=STATUS:{status}", flush=True)
"""


def child_argv(agent_args: Sequence[str]) -> list[str]:
    return [sys.executable, "-c", CHILD, *agent_args]


PY = sys.executable
BOTTLE = (PY, "-m", "bottle")


def run_bottle(
    *args: str, env: Mapping[str, str] | None = None, timeout: float = 90,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """`bottle ARGS…` as a process of its own, no terminal (stdin /dev/null, or a pipe that
    gives `input`), output captured."""
    return subprocess.run(
        [*BOTTLE, *args], stdin=subprocess.DEVNULL if input is None else None, input=input,
        capture_output=True, text=True, timeout=timeout, check=False,
        env=None if env is None else dict(env),
    )  # fmt: skip


# The status of bottle's own failures on the command line (README "Command line"), docker's 125.
CLI_FAILURE = 125
TIMEOUT = 60.0


# The exact fixed sequences bottle writes around a decorated session (see backend/terminal.py);
# written out here independently so that a change there has to be a deliberate one here too.
PUSH_TITLE = b"\x1b[22;0t"
POP_TITLE = b"\x1b[23;0t"
RESET_BG = b"\x1b]111\x07"


def set_title(text: str) -> bytes:
    return b"\x1b]0;" + text.encode() + b"\x07"


def set_bg(color: str) -> bytes:
    return b"\x1b]11;" + color.encode() + b"\x07"


def control_characters(data: bytes) -> list[str]:
    """ESC, BEL, NUL, other C0 controls but CR/LF/TAB/BS, DEL, and C1 controls found in `data`.

    C1 counts both as UTF-8 characters U+0080..U+009F and as raw bytes 0x80..0x9F that are not
    part of valid UTF-8 (an 8-bit terminal reads those as C1 too).
    """
    text = data.decode("utf-8", "surrogateescape")
    found = []
    for ch in text:
        code = ord(ch)
        if code in (0x0A, 0x0D, 0x09, 0x08):
            continue
        if code < 0x20 or code == 0x7F or 0x80 <= code <= 0x9F or 0xDC80 <= code <= 0xDC9F:
            found.append(repr(ch))
    return found


# --------------------------------------------------------------------------- processes


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time, state) of `pid`, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[1]), int(fields[19]), fields[0].decode()


def _pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


class ProcWatch:
    """Background scan of /proc while a session runs.

    Records every descendant of `root` (pid, start time, command line). With `secret`, also
    records every process (anyone's) whose command line holds it, and, to show the secret was
    really in flight, the descendants whose environment holds it.

    Leaving the block kills what is still alive only when the test is failing: an exception,
    or `leftovers` found some. A passing test's processes may rightly outlive the block (a
    detached session's holder ending its session): killing them there made
    test_exec_agent_detached lose its EXIT frame under load (the holder SIGKILLed by the test
    process itself mid-ending, seen in kernel signal tracing).
    """

    def __init__(self, root: int, secret: bytes | None = None, interval: float = 0.01) -> None:
        self.root = root
        self.secret = secret
        self.interval = interval
        self.seen: dict[int, tuple[int, str]] = {}
        self.cmdline_hits: list[tuple[int, bytes]] = []
        self.environ_holders: dict[int, str] = {}
        self.rounds = 0
        self._found_leftovers = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def scan_once(self) -> None:
        parents: dict[int, list[int]] = {}
        starts: dict[int, int] = {}
        for pid in _pids():
            st = _stat(pid)
            if st is None:
                continue
            parents.setdefault(st[0], []).append(pid)
            starts[pid] = st[1]
            if self.secret is not None:
                cmdline = _read(f"/proc/{pid}/cmdline")
                if self.secret in cmdline:
                    self.cmdline_hits.append((pid, cmdline))
        todo = list(parents.get(self.root, []))
        while todo:
            pid = todo.pop()
            todo += parents.get(pid, [])
            cmdline = _read(f"/proc/{pid}/cmdline")
            if pid not in self.seen:
                shown = cmdline.replace(b"\0", b" ").decode(errors="replace").strip()
                self.seen[pid] = (starts[pid], shown)
            if self.secret is not None and self.secret in _read(f"/proc/{pid}/environ"):
                self.environ_holders[pid] = cmdline.replace(b"\0", b" ").decode(errors="replace")
        self.rounds += 1

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.scan_once()
            self._stop.wait(self.interval)

    def wait_rounds(self, n: int = 3) -> None:
        """Block until the scanner has completed `n` more rounds."""
        target = self.rounds + n
        deadline = time.monotonic() + 30
        while self.rounds < target and time.monotonic() < deadline:
            time.sleep(0.005)

    def start(self) -> ProcWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def __enter__(self) -> ProcWatch:
        return self.start()

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.stop()
        if exc_type is not None or self._found_leftovers:
            self.kill_leftovers()

    def _alive(self) -> list[int]:
        alive = []
        for pid, (start, _) in self.seen.items():
            st = _stat(pid)
            if st is not None and st[1] == start and st[2] != "Z":
                alive.append(pid)
        return alive

    def leftovers(self, timeout: float = 10) -> list[str]:
        """Descendants seen during the session still alive after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self._alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        found = [f"{pid}: {self.seen[pid][1]}" for pid in self._alive()]
        self._found_leftovers = self._found_leftovers or bool(found)
        return found

    def kill_leftovers(self) -> None:
        """Clean up after a failed test: SIGKILL whatever is still there."""
        for pid in self._alive():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------- sessions

# run_agent(argv, tty=True).check() (exec_agent's status, with the precise error raised) in a
# process of its own: configuration in $BOTTLE_TEST_SESSION (JSON, so
# a title may hold any character), the secret (if any) taken from the variable it names.
AGENT_CHILD = r"""
import json, os, sys
from bottle.backend.smolmachines import SmolmachinesBottle
cfg = json.loads(os.environ.pop("BOTTLE_TEST_SESSION"))
kw = {}
if cfg.get("secret_name"):
    kw["secret_env"] = {cfg["secret_name"]: os.environ.pop(cfg["secret_name"])}
bottle = SmolmachinesBottle(
    cfg["machine"], agent_command="/bin/sh", agent_prompt_mode="none",
    terminal_title=cfg.get("title", ""), terminal_color=cfg.get("color", ""), **kw,
)
try:
    status = bottle.run_agent(cfg["argv"], tty=True).check().returncode
except Exception as exc:
    sys.stdout.write(f"\r\nRESULT=ERROR:{type(exc).__name__}:{exc}\r\n")
    sys.stdout.flush()
    sys.exit(99)
sys.stdout.write(f"\r\nRESULT=STATUS:{status}\r\n")
sys.stdout.flush()
sys.exit(status)
"""


def agent_session(
    route: str,
    machine: str,
    script: str,
    *,
    title: str = "",
    color: str = "",
    secret_name: str | None = None,
    base_env: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """argv and env of an interactive agent session running `/bin/sh -c SCRIPT` as node.

    route "api": `SmolmachinesBottle.exec_agent(tty=True)` in a child process (exit status: the
    agent's, or 99 after printing `RESULT=ERROR:<class>:<message>`); route "cli": `bottle agent`.
    """
    env = dict(os.environ if base_env is None else base_env)
    if route == "api":
        cfg = {"machine": machine, "argv": ["-c", script], "title": title, "color": color,
               "secret_name": secret_name}  # fmt: skip
        env["BOTTLE_TEST_SESSION"] = json.dumps(cfg)
        return [PY, "-c", AGENT_CHILD], env
    if route != "cli":
        raise ValueError(route)
    argv = [*BOTTLE, "agent", "-n", machine, "--agent-command", "/bin/sh"]
    if title:
        argv += ["--title", title]
    if color:
        argv += ["--color", color]
    if secret_name:
        argv += ["--secret-env", secret_name]
    return [*argv, "--", "-c", script], env


def call_log(state_dir: Path) -> list[dict[str, Any]]:
    """The fake smolvm's call log entries ({"argv", "pid", "stdin_tty"})."""
    path = state_dir / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def machines_named(calls: Sequence[Sequence[str]]) -> set[str]:
    """Every machine name a list of smolvm calls addressed (-n/--name NAME, NAME:PATH)."""
    names = set()
    for argv in calls:
        if "--" in argv:  # the guest command's own arguments are not smolvm's
            argv = argv[: argv.index("--")]
        for i, arg in enumerate(argv):
            if arg in ("-n", "--name") and i + 1 < len(argv):
                names.add(argv[i + 1])
            elif arg.startswith("--name="):
                names.add(arg.split("=", 1)[1])
        if argv[1:2] == ["cp"]:
            names.update(a.split(":", 1)[0] for a in argv[2:] if ":" in a)
    return names


def wait_for(predicate: Any, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)
