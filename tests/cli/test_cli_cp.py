"""`bottle cp SRC DST` with `NAME:PATH` on either side, as `docker cp` and `smolvm machine cp`
are used: files and directories, a destination ending in `/`, ownership of uploads, and the
older `cp -n NAME HOST_PATH GUEST_PATH`; against the fake smolvm (its guest is this host)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness.backend import CLI_FAILURE, image_machine

BOTTLE = [sys.executable, "-m", "bottle"]

pytestmark = pytest.mark.usefixtures("test_images")


def cp(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*BOTTLE, "cp", *args], capture_output=True, text=True, timeout=60,
                          check=False, cwd=cwd, stdin=subprocess.DEVNULL)  # fmt: skip


def ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), proc.stderr


def error(proc: subprocess.CompletedProcess[str], needle: str) -> None:
    assert proc.returncode == CLI_FAILURE, proc
    (line,) = proc.stderr.splitlines()
    assert line.startswith("bottle: error: ") and needle in line, line


def tree(root: Path) -> dict[str, tuple[int, bytes | str]]:
    out: dict[str, tuple[int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        mode = path.lstat().st_mode
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(mode):
            out[rel] = (0, os.readlink(path))
        else:
            out[rel] = (stat.S_IMODE(mode), b"" if path.is_dir() else path.read_bytes())
    return out


@pytest.fixture
def machine(fake_smolvm: Any, require_node_user: Any) -> Any:
    fake_smolvm.set_fault(VERSION="1.9.3")
    image_machine(fake_smolvm, "m")
    return fake_smolvm


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    (d / "sub").mkdir(parents=True)
    (d / "data").write_bytes(bytes(range(256)))
    (d / "sub" / "tool").write_text("#!/bin/sh\n")
    (d / "sub" / "tool").chmod(0o755)
    (d / "sub").chmod(0o750)
    (d / "link").symlink_to("sub/tool")
    return d


def test_a_directory_both_ways(machine: Any, src: Path, shared_dir: Path, tmp_path: Path) -> None:
    ok(cp(str(src), f"m:{shared_dir}/up"))
    assert tree(shared_dir / "up") == tree(src)
    ok(cp(f"m:{shared_dir}/up", str(tmp_path / "down")))
    assert tree(tmp_path / "down") == tree(src)


def test_a_destination_ending_in_slash_receives_the_source_by_name(
    machine: Any, src: Path, shared_dir: Path, tmp_path: Path
) -> None:
    ok(cp(str(src), f"m:{shared_dir}/in/"))
    ok(cp(str(src / "data"), f"m:{shared_dir}/in/"))
    assert tree(shared_dir / "in" / "src") == tree(src)
    assert (shared_dir / "in" / "data").read_bytes() == bytes(range(256))
    ok(cp(f"m:{shared_dir}/in/src", f"{tmp_path}/out/"))
    ok(cp(f"m:{shared_dir}/in/data", f"{tmp_path}/out/"))
    assert tree(tmp_path / "out" / "src") == tree(src)
    assert (tmp_path / "out" / "data").read_bytes() == bytes(range(256))
    # An existing directory without the slash: the same, as cp does.
    ok(cp(str(src / "data"), f"m:{shared_dir}/in/src"))
    assert (shared_dir / "in" / "src" / "data").exists()


def test_uploads_are_roots_or_owners(machine: Any, src: Path, shared_dir: Path) -> None:
    node = pwd.getpwnam("node")
    ok(cp("--owner", "node", str(src), f"m:{shared_dir}/owned"))
    ok(cp(str(src / "data"), f"m:{shared_dir}/roots"))
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in (shared_dir / "owned").rglob("*")}
    assert owners == {(node.pw_uid, node.pw_gid)}
    assert (shared_dir / "roots").stat().st_uid == 0


def test_the_older_form_still_uploads(machine: Any, src: Path, shared_dir: Path) -> None:
    ok(cp("-n", "m", "--owner", "node", str(src / "data"), f"{shared_dir}/old"))
    assert (shared_dir / "old").read_bytes() == bytes(range(256))
    assert (shared_dir / "old").stat().st_uid == pwd.getpwnam("node").pw_uid


def test_a_host_path_with_a_colon(machine: Any, shared_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "a:b").write_text("colon")
    ok(cp("./a:b", f"m:{shared_dir}/c", cwd=tmp_path))
    assert (shared_dir / "c").read_text() == "colon"
    error(cp("a:b", f"m:{shared_dir}/c", cwd=tmp_path), "written ./a:b")


def test_mistakes(machine: Any, src: Path, tmp_path: Path) -> None:
    error(cp(str(src), str(tmp_path / "x")), "neither SRC nor DST is in a machine")
    error(cp("m:/tmp", "m:/x"), "both SRC and DST are in a machine")
    error(cp("--owner", "node", "m:/etc/hostname", str(tmp_path / "h")), "--owner is for")
    error(cp(str(tmp_path / "nope"), "m:/tmp/x"), "does not exist")
    error(cp(str(src), "ghost:/tmp/x"), "machine 'ghost' does not exist")
    error(cp("m:/no/such/file", str(tmp_path / "f")), "failed to open /no/such/file")
    error(cp("bad_name!:/x", str(tmp_path / "f")), "invalid machine name")
    assert not (tmp_path / "f").exists()
