"""`bottle exec`'s light path (bottle._quickexec) against its full path, through the fake smolvm.

A plain `bottle exec [-u USER] [-w DIR] NAME [--] CMD…` with bottle's cache warm runs without the
full command line's imports; anything it cannot finish it hands to the full path with what its
run did. Each case runs the same command line twice from the same state (the cache directory put
back, the fake's kill counter reset): once as a user runs it, once with an empty config file,
which sends it down the full path from the start (a config file could give exec defaults, so the
light path leaves any to the full path; an empty one gives none). The two must make the same
smolvm calls (the wrapper's nonce aside) and print the same bytes with the same status. A third
run calls the light path directly and shows that it made that first call itself, and what it did
with it: finished (an int), or handed it on (a `Ran`), or left everything to the full path (None).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from harness.backend import AGENT_IMAGE, BOTTLE, CLI_FAILURE, ROOT_IMAGE, image_machine

pytestmark = pytest.mark.usefixtures("test_images")

HOUR_AGO = int(time.time()) - 3600
# The light path, called directly: what it returned goes to the file named first.
PROBE = """
import contextlib, sys
from bottle import _quickexec
r = _quickexec.run(sys.argv[2:], contextlib.nullcontext)
kind = "none" if r is None else "status" if isinstance(r, int) else "ran"
detail = "" if r is None else r if isinstance(r, int) else f"{r.status} {r.started} {r.refusal}"
with open(sys.argv[1], "w") as f:
    f.write(f"{kind} {detail}".strip())
"""


def _nonce_free(call: list[str]) -> list[str]:
    if "bottle-exec" in call:
        at = call.index("bottle-exec") + 1
        call = [*call[:at], "NONCE", *call[at + 1 :]]
    return call


class Both:
    """Runs a `bottle` command line down both paths from one state."""

    def __init__(self, fake_smolvm: Any, tmp_path: Path) -> None:
        self.fake = fake_smolvm
        self.cache = Path(os.environ["XDG_CACHE_HOME"]) / "bottle"
        self.config = tmp_path / "empty-config.toml"
        self.config.write_text("")
        self.probe_out = tmp_path / "probe"

    @property
    def light_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k != "BOTTLE_CONFIG"}  # the fake's faults

    @property
    def full_env(self) -> dict[str, str]:
        return {**self.light_env, "BOTTLE_CONFIG": str(self.config)}

    def _saved(self) -> dict[str, bytes]:
        if not self.cache.is_dir():
            return {}
        return {p.name: p.read_bytes() for p in self.cache.iterdir()}

    def _restore(self, saved: dict[str, bytes]) -> None:
        if self.cache.is_dir():
            shutil.rmtree(self.cache)
        if saved:
            self.cache.mkdir(mode=0o700)
            for name, data in saved.items():
                (self.cache / name).write_bytes(data)
                (self.cache / name).chmod(0o600)
        (self.fake.state_dir / "exec_kills").unlink(missing_ok=True)

    def _run(self, argv: list[str], env: dict[str, str]) -> tuple[Any, ...]:
        before = len(self.fake.calls())
        proc = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=90,
            check=False,
        )  # fmt: skip
        calls = [_nonce_free(c) for c in self.fake.calls()[before:]]
        # A machine's age, told in a retry's reason, moves on between the runs.
        err = re.sub(rb"\d+\.\d s after the machine came up", b"N s after the machine came up",
                     proc.stderr)  # fmt: skip
        return proc.returncode, proc.stdout, err, calls

    def run(self, *args: str) -> tuple[tuple[int, bytes, bytes, list[list[str]]], str]:
        """(status, stdout, stderr, smolvm calls) of `bottle ARGS`, the same down both paths;
        and what the light path did with its run."""
        saved = self._saved()
        light = self._run([*BOTTLE, *args], self.light_env)
        self._restore(saved)
        full = self._run([*BOTTLE, *args], self.full_env)
        assert light == full
        self._restore(saved)
        assert args[0] == "exec"
        probe = self._run(
            [sys.executable, "-c", PROBE, str(self.probe_out), *args[1:]], self.light_env
        )
        did = self.probe_out.read_text()
        if did != "none":
            # The light path made the first call itself, the very one of both runs above.
            assert probe[3] == light[3][:1], (probe[3], light[3])
        self._restore(saved)
        return light, did  # type: ignore[return-value]


@pytest.fixture
def both(fake_smolvm: Any, tmp_path: Path) -> Both:
    fake_smolvm.set_fault(VERSION="1.9.3")  # no exec --user, no paste warning
    return Both(fake_smolvm, tmp_path)


def warm(name: str = "m") -> None:
    proc = subprocess.run([*BOTTLE, "exec", name, "true"], stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=90, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("version", ["1.9.3", "1.14.0"])
@pytest.mark.parametrize("image", [ROOT_IMAGE, AGENT_IMAGE])
def test_a_success(both: Both, fake_smolvm: Any, version: str, image: str) -> None:
    """As root and as the agent user, behind the check of the kept user (1.9.3) or with
    smolvm's --user (1.14.0); output byte for byte, options before and after NAME."""
    fake_smolvm.set_fault(VERSION=version)
    image_machine(fake_smolvm, "m", image=image)
    warm()
    (status, out, err, calls), did = both.run(
        "exec", "-w", "/tmp", "m", "--user=node", "--", "sh", "-c",
        r"pwd; id -un; printf '\377\000x'; echo e >&2",
    )  # fmt: skip
    assert (status, out, err) == (0, b"/tmp\nnode\n\xff\x00x", b"e\n")
    assert len(calls) == 1 and did == "status 0"
    (status, out, err, calls), did = both.run("exec", "-uroot", "m", "id", "-un")
    if image == AGENT_IMAGE and version == "1.9.3":
        # node cannot become root: the full path asks the guest again, then says why.
        assert status == CLI_FAILURE and b"runs guest commands as 'node'" in err
        assert did == "none"
    else:
        assert (status, out, err) == (0, b"root\n", b"") and did == "status 0"


@pytest.mark.parametrize(
    ("script", "expected"),
    [("echo out; echo err >&2; exit 3", 3),
     ("echo out; echo 'err: no Error: here' >&2; kill -9 $$", 137)],  # killed after it started
)  # fmt: skip
def test_a_guest_status(both: Both, fake_smolvm: Any, script: str, expected: int) -> None:
    """The command's own status, with nothing from smolvm: the light path ends it."""
    image_machine(fake_smolvm, "m", created_at=HOUR_AGO)
    warm()
    (status, out, err, calls), did = both.run("exec", "m", "sh", "-c", script)
    assert (status, out, len(calls)) == (expected, b"out\n", 1)
    assert err.startswith(b"err") and b"bottle" not in err, err
    assert did == f"status {expected}"


def test_a_guest_error_line(both: Both, fake_smolvm: Any) -> None:
    """A last line in smolvm's shape that bottle cannot read is settled by the machine's
    state (running: the guest's, shown) in both."""
    image_machine(fake_smolvm, "m")
    warm()
    (status, out, err, calls), did = both.run(
        "exec", "m", "sh", "-c", "echo 'Error: not smolvm' >&2; exit 1"
    )
    assert (status, out, err) == (1, b"", b"Error: not smolvm\n")
    assert [c[1] for c in calls] == ["exec", "status"]
    assert did == "ran 1 True None"


def test_a_refusal_on_a_machine_made_again(both: Both, fake_smolvm: Any, shared_dir: Path) -> None:
    """Kept: node runs commands. Made again as root: the wrapper refuses (nothing ran), and the
    command runs once, through runuser, as the refusal said."""
    image_machine(fake_smolvm, "m", image=AGENT_IMAGE)
    warm()
    fake_smolvm.run("machine", "delete", "-n", "m", "-f")
    image_machine(fake_smolvm, "m", image=ROOT_IMAGE)
    log = shared_dir / "runs"
    (status, out, err, calls), did = both.run("exec", "m", "sh", "-c", f"id -un >> {log}; id -un")
    assert (status, out, err) == (0, b"node\n", b"")
    assert log.read_text() == "node\n" * 2  # once a run (the probe's run was refused)
    refused, then = calls
    assert "runuser" not in refused and then[then.index("runuser") + 2] == "node"
    assert did.startswith("ran 125 False uid=0(root) ")


def test_a_kill_during_bring_up(both: Both, fake_smolvm: Any, shared_dir: Path) -> None:
    image_machine(fake_smolvm, "m")
    warm()
    fake_smolvm.set_fault(KILL_EXECS=1)
    log = shared_dir / "runs"
    (status, out, err, calls), did = both.run("exec", "m", "sh", "-c", f"echo x >> {log}; echo ok")
    assert (status, out) == (0, b"ok\n")
    assert re.fullmatch(
        rb"bottle: exec in machine 'm' exited with status 137 and no output before the command "
        rb"started, N s after the machine came up \(timed from its creation\), within its 60 s "
        rb"bring-up \(attempt 1 of 2\); running it again in 1\.0 s\n", err,
    ), err  # fmt: skip
    assert [c[1] for c in calls] == ["exec", "status", "exec"]
    assert did == "ran 137 False None"


def test_a_kill_after_bring_up(both: Both, fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m", created_at=HOUR_AGO)
    warm()
    fake_smolvm.set_fault(KILL_EXECS=1)
    (status, out, err, calls), did = both.run("exec", "m", "echo", "never")
    assert (status, out, err) == (137, b"", b"")
    assert [c[1] for c in calls] == ["exec", "status"]
    assert did == "ran 137 False None"


@pytest.mark.parametrize("then", ["delete", "stop"])
def test_a_smolvm_error(both: Both, fake_smolvm: Any, then: str) -> None:
    image_machine(fake_smolvm, "m")
    warm()
    fake_smolvm.run("machine", then, "-n", "m", *(["-f"] if then == "delete" else []))
    (status, out, err, calls), did = both.run("exec", "m", "echo", "never")
    assert (status, out) == (CLI_FAILURE, b"")
    said = b"does not exist" if then == "delete" else b"is not running"
    assert err.startswith(b"bottle: error: machine 'm' ") and said in err, err
    assert calls[0][1] == "exec"
    assert did == "ran 1 False None"


def test_a_cold_cache(both: Both, fake_smolvm: Any) -> None:
    image_machine(fake_smolvm, "m")
    (status, out, err, calls), did = both.run("exec", "m", "id", "-un")
    assert (status, out, err) == (0, b"node\n", b"")
    assert [c[0] if c[0].startswith("-") else c[1] for c in calls] == [
        "--version", "exec", "exec", "exec"
    ]  # exec --help, id, the command
    assert did == "none"


@pytest.mark.parametrize(
    "args",
    [
        ["-i", "m", "true"], ["-e", "A=1", "m", "true"], ["m", "-c", "true"], ["-n", "m", "true"],
        ["--no-retry", "m", "true"], ["-q", "m", "true"], ["--us", "node", "m", "true"],
        ["-u", "-x", "m", "true"], ["m", "A=1", "true"], ["-w", "rel", "m", "true"],
        ["bad--name", "true"], ["m"], ["--", "m", "true"],
    ],
)  # fmt: skip
def test_what_is_not_plain_is_left_to_the_full_path(
    both: Both, fake_smolvm: Any, args: list[str]
) -> None:
    image_machine(fake_smolvm, "m")
    warm()
    _, did = both.run("exec", *args)
    assert did == "none"


def test_a_plain_warm_exec_loads_none_of_the_full_path(both: Both, fake_smolvm: Any) -> None:
    """What makes it light: none of the standard modules that cost ms each, none of bottle's
    command line or backend; down the full path (a config file) they are all there."""
    image_machine(fake_smolvm, "m")
    warm()
    heavy = {"re", "json", "subprocess", "threading", "argparse", "dataclasses", "typing",
             "enum", "logging", "bottle.smolvm", "bottle.backend", "bottle.cli",
             "bottle.cli._main", "bottle.backend.smolmachines"}  # fmt: skip

    def loaded(env: dict[str, str]) -> set[str]:
        # -X importtime, not PYTHONVERBOSE: the fake smolvm, a Python program too, would
        # inherit that and list its own imports on the same stderr.
        proc = subprocess.run(
            [BOTTLE[0], "-X", "importtime", *BOTTLE[1:], "exec", "m", "true"], env=env,
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return set(re.findall(r"^import time:.*\| +([\w.]+)$", proc.stderr, re.M))

    light = loaded(both.light_env)
    assert "bottle._quickexec" in light
    assert sorted(light & heavy) == []
    assert heavy - {"logging"} <= loaded(both.full_env)
