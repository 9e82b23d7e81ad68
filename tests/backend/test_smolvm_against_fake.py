"""bottle.smolvm.Smolvm end to end against the fake smolvm: calls, outputs, error classes."""

from __future__ import annotations

from pathlib import Path

import pytest
from harness.fakevm import FakeSmolvm

from bottle import smolvm as sv
from bottle.errors import (
    MachineExistsError,
    MachineNotFoundError,
    MachineNotRunningError,
    SmolvmError,
    SmolvmNotFoundError,
    SmolvmTooOldError,
    SmolvmUsageError,
)


@pytest.fixture(autouse=True)
def _smolvm_1_9_3(fake_smolvm: FakeSmolvm) -> None:
    fake_smolvm.set_fault(VERSION=None)  # these tests describe 1.9.3


def test_lifecycle_calls_and_state(fake_smolvm) -> None:
    s = sv.Smolvm()
    assert s.path == str(fake_smolvm.path)
    assert s.version == (1, 9, 3)
    assert s.state("m1") is None
    s.create("m1", cpus=2, memory_mib=512, network=True)
    assert s.state("m1") in ("created", "stopped")
    s.start("m1")
    assert s.state("m1") == "running"
    assert s.status("m1")["cpus"] == 2
    assert [m["name"] for m in s.ls()] == ["m1"]
    s.stop("m1")
    s.stop("m1")  # stopping a stopped machine is fine (exit 0)
    s.delete("m1")
    assert s.state("m1") is None
    assert s.ls() == []
    assert fake_smolvm.calls()[0] == ["--version"]
    assert ["machine", "delete", "-n", "m1", "-f"] in fake_smolvm.calls()
    # --version ran once for all these calls.
    assert fake_smolvm.subcommands().count("--version") == 1


def test_exec_captures_output_and_guest_status(fake_smolvm) -> None:
    fake_smolvm.create("m")
    s = sv.Smolvm()
    proc = s.exec("m", ["/bin/sh", "-c", "echo out; echo err >&2; printf '\\377\\n'; exit 3"])
    assert proc.returncode == 3
    assert proc.stdout == "out\n\ufffd\n"
    assert proc.stderr == "err\n"


def test_guest_error_line_with_status_1_is_the_guests(fake_smolvm) -> None:
    fake_smolvm.create("m")
    proc = sv.Smolvm().exec("m", ["/bin/sh", "-c", "echo 'Error: my own' >&2; exit 1"])
    assert proc.returncode == 1
    assert proc.stderr == "Error: my own\n"


def test_error_classes(fake_smolvm) -> None:
    s = sv.Smolvm()
    with pytest.raises(MachineNotFoundError, match="vm not found: ghost"):
        s.exec("ghost", ["true"])
    with pytest.raises(MachineNotFoundError):
        s.start("ghost")
    with pytest.raises(MachineNotFoundError):
        s.status("ghost")
    fake_smolvm.create("idle", running=False)
    with pytest.raises(MachineNotRunningError, match="not running"):
        s.exec("idle", ["true"])
    fake_smolvm.create("busy")
    with pytest.raises(MachineExistsError, match="already exists"):
        s.create("busy")
    with pytest.raises(SmolvmUsageError, match="unexpected argument"):
        s.run(["machine", "exec", "-n", "busy", "--", "true"])
    fake_smolvm.set_fault(FAIL_STOP="disk on fire")
    with pytest.raises(SmolvmError, match="disk on fire") as info:
        s.stop("busy")
    assert info.value.returncode == 1
    assert info.value.machine == "busy"


def test_cp_in_uploads_a_file(fake_smolvm, tmp_path: Path) -> None:
    fake_smolvm.create("m")
    src = tmp_path / "src.txt"
    src.write_text("payload\n")
    dst = tmp_path / "guest" / "dir" / "dst.txt"
    sv.Smolvm().cp_in(str(src), "m", str(dst))
    assert dst.read_text() == "payload\n"


def test_too_old_fake_is_refused(fake_smolvm) -> None:
    fake_smolvm.set_fault(VERSION="1.0.1")
    with pytest.raises(SmolvmTooOldError, match=r"1\.0\.1.*1\.0\.2"):
        sv.Smolvm().start("m")
    assert fake_smolvm.subcommands() == ["--version"]


def test_smolvm_missing_from_path(fake_smolvm, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SmolvmNotFoundError, match="BOTTLE_SMOLVM"):
        sv.Smolvm().start("m")


def test_override_env_variable(fake_smolvm, monkeypatch) -> None:
    # PATH keeps python3 (the fake's interpreter) but loses the fake's directory.
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("BOTTLE_SMOLVM", str(fake_smolvm.path))
    assert sv.Smolvm().state("m") is None
