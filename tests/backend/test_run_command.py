"""`SmolmachinesBottle.run_command`, `upload` and `download`: what `bottle exec` and `bottle cp`
do, in the Python API, against the fake smolvm.

`run_command` runs an argv uncaptured: the guest's bytes reach this process's own stdout and
stderr (read here with `capfd`, at the descriptor level). `upload`/`download` copy files by
smolvm's `machine cp` and directories as a tar stream through `exec -i`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import stat
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from harness.backend import AGENT_IMAGE, image_machine

from bottle import smolvm as sv
from bottle.backend.smolmachines import NO_RETRY, RetryPolicy, SmolmachinesBottle
from bottle.errors import (
    BottleError,
    ConnectionLostError,
    GuestCommandError,
    GuestUserError,
    InvalidInputError,
    MachineNotFoundError,
    MachineNotRunningError,
    SmolvmError,
)
from bottle.results import AgentResult

pytestmark = pytest.mark.usefixtures("test_images")


@pytest.fixture(autouse=True)
def _fresh_version_cache() -> None:
    sv.clear_version_cache()


@pytest.fixture
def m(fake_smolvm: Any, require_node_user: Any) -> SmolmachinesBottle:
    fake_smolvm.set_fault(VERSION="1.9.3")
    image_machine(fake_smolvm, "m")
    return SmolmachinesBottle("m")


# --- run_command -------------------------------------------------------------------------------


def test_run_command_passes_bytes_through_and_returns_the_status(
    m: SmolmachinesBottle, shared_dir: Path, capfdbinary: Any
) -> None:
    every = bytes(range(256))
    (shared_dir / "b").write_bytes(every)
    result = m.run_command(["sh", "-c", f'cat {shared_dir / "b"}; echo "$(id -un)" >&2; exit 5'])
    assert result == AgentResult(5)
    assert result.error is None and result.check() is result
    assert capfdbinary.readouterr() == (every, b"node\n")


def test_run_command_as_user_in_workdir(m: SmolmachinesBottle, capfd: Any) -> None:
    assert m.run_command(["pwd"], user="root", workdir="/tmp").returncode == 0
    assert m.run_command(["id", "-un"], user="root").returncode == 0
    assert capfd.readouterr().out == "/tmp\nroot\n"


def test_run_command_failures_come_in_the_result(
    fake_smolvm: Any, m: SmolmachinesBottle, capfd: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """smolvm's own `Error:` line is not shown: the result carries the error (and the log)."""
    fake_smolvm.create("idle", running=False)
    ghost = SmolmachinesBottle("ghost").run_command(["true"])
    idle = SmolmachinesBottle("idle").run_command(["true"])
    nowhere = m.run_command(["true"], workdir="/no/such/dir")
    assert (ghost.returncode, type(ghost.error)) == (1, MachineNotFoundError)
    assert (idle.returncode, type(idle.error)) == (1, MachineNotRunningError)
    assert (nowhere.returncode, type(nowhere.error)) == (1, SmolvmError)
    assert "No such file" in str(nowhere.error)
    with pytest.raises(MachineNotFoundError):
        ghost.check()
    assert capfd.readouterr() == ("", "")
    assert "vm not found: ghost" in caplog.text


def test_run_command_as_a_user_the_guest_cannot_become(
    fake_smolvm: Any, require_node_user: Any
) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")  # the image's USER applies (1.3.0 and later)
    image_machine(fake_smolvm, "a", image=AGENT_IMAGE)  # USER node: no root to switch from
    result = SmolmachinesBottle("a").run_command(["true"], user="root")
    assert (result.returncode, type(result.error)) == (1, GuestUserError)


@pytest.mark.parametrize(
    ("version", "image", "users"),
    [
        ("1.0.2", None, {"node": "node", "root": "root"}),  # root everywhere: runuser to node
        ("1.6.0", None, {"node": "node", "root": "root"}),
        ("1.4.0", AGENT_IMAGE, {"node": "node", "root": None}),  # -i runs as USER already
        ("1.9.3", AGENT_IMAGE, {"node": "node", "root": None}),
    ],
)
def test_run_command_users_across_smolvm_releases(
    fake_smolvm: Any, require_node_user: Any, capfd: Any, version: str, image: str | None,
    users: dict[str, str | None],
) -> None:  # fmt: skip
    fake_smolvm.set_fault(VERSION=version)
    if image is None:
        image_machine(fake_smolvm, "v")
    else:
        image_machine(fake_smolvm, "v", image=image)
    bottle = SmolmachinesBottle("v")
    for user, shown in users.items():
        result = bottle.run_command(["id", "-un"], user=user)
        if shown is None:
            assert isinstance(result.error, GuestUserError), result
        else:
            assert result == AgentResult(0) and result.error is None, result
            assert capfd.readouterr().out == f"{shown}\n"


def test_run_command_runs_again_only_a_bring_up_kill(
    fake_smolvm: Any, m: SmolmachinesBottle, shared_dir: Path, capfd: Any
) -> None:
    """The default: a command smolvm killed before it started, on a machine in its first 60 s,
    runs once more; on a machine long up, or with NO_RETRY, the 137 is the result."""
    fake_smolvm.set_fault(VERSION="1.14.0")  # exec --user (smolvm PR #1148)
    sv.clear_version_cache()
    image_machine(fake_smolvm, "old", created_at=int(time.time()) - 3600)
    runs = shared_dir / "runs"
    command = ["sh", "-c", f"echo x >> {runs}; echo out"]
    quick = RetryPolicy(delay=0.01)  # the bring-up limit is BRING_UP_RETRY's
    for name, retry, result, ran in (
        ("m", quick, AgentResult(0), "x\n"),
        ("old", quick, AgentResult(137), ""),
        ("m", NO_RETRY, AgentResult(137), ""),
    ):
        fake_smolvm.set_fault(KILL_EXECS=1)
        assert SmolmachinesBottle(name, retry=retry).run_command(command) == result, name
        assert capfd.readouterr().out == ("out\n" if ran else "")
        assert (runs.read_text() if runs.exists() else "") == ran
        runs.unlink(missing_ok=True)
        (fake_smolvm.state_dir / "exec_kills").unlink()


def test_run_command_vm_lost(fake_smolvm: Any, m: SmolmachinesBottle, capfd: Any) -> None:
    fake_smolvm.set_fault(DIE_AFTER=0.5)
    result = m.run_command(["sh", "-c", "echo up; sleep 30"])
    assert (result.returncode, type(result.error)) == (1, ConnectionLostError)
    assert capfd.readouterr() == ("up\n", "")


def test_run_command_stdin(m: SmolmachinesBottle, tmp_path: Path) -> None:
    """`stdin` forwards this process's stdin, its end included; without it, the command reads
    end-of-input at once even while ours stays open."""
    r, w = os.pipe()
    saved = os.dup(0)
    out = tmp_path / "out"
    try:
        os.dup2(r, 0)
        result = m.run_command(["sh", "-c", f"cat > {out}; echo $? >> {out}"], user="root")
        assert result.returncode == 0
        assert out.read_text() == "0\n"
        os.write(w, b"typed\x00\xff")
        os.close(w)
        result = m.run_command(["sh", "-c", f"cat > {out}"], user="root", stdin=True)
        assert result.returncode == 0
        assert out.read_bytes() == b"typed\x00\xff"
    finally:
        os.dup2(saved, 0)
        os.close(saved)
        os.close(r)


@pytest.mark.parametrize(
    ("command", "needle"),
    [([], "empty"), (["A=1", "env"], "variable assignment"), ("ls", "sequence of strings"),
     (["a\0"], "NUL")],
)  # fmt: skip
def test_run_command_bad_input(m: SmolmachinesBottle, command: Any, needle: str) -> None:
    with pytest.raises(InvalidInputError, match=needle):
        m.run_command(command)


# --- upload and download -------------------------------------------------------------------------


def make_tree(root: Path) -> None:
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "bin").write_bytes(bytes(range(256)) * 5000)
    (root / "sub" / "run.sh").write_text("#!/bin/sh\n")
    (root / "sub" / "deep" / "secret").write_text("s")
    (root / "link").symlink_to("sub/run.sh")
    os.link(root / "bin", root / "hard")
    (root / "sub" / "run.sh").chmod(0o750)
    (root / "sub" / "deep" / "secret").chmod(0o600)
    (root / "sub" / "deep").chmod(0o710)
    (root / "empty").chmod(0o775)
    os.utime(root / "bin", (1_000_000_000, 1_000_000_000))


def listing(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Every entry under root: kind, permission bits, content (or link target)."""
    out: dict[str, tuple[str, int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", 0, os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", stat.S_IMODE(st.st_mode), b"")
        else:
            out[rel] = ("file", stat.S_IMODE(st.st_mode), path.read_bytes())
    return out


def test_a_tree_goes_up_and_comes_back_byte_for_byte(
    m: SmolmachinesBottle, shared_dir: Path, tmp_path: Path
) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    make_tree(src)
    up = m.upload(src, str(shared_dir / "up"))
    assert up == str(shared_dir / "up")
    assert listing(shared_dir / "up") == listing(src)
    assert (shared_dir / "up" / "bin").stat().st_mtime == 1_000_000_000
    assert (shared_dir / "up" / "hard").stat().st_ino == (shared_dir / "up" / "bin").stat().st_ino
    assert {p.stat().st_uid for p in (shared_dir / "up").rglob("*")} == {0}  # root's, as smolvm's
    down = m.download(str(shared_dir / "up"), tmp_path / "down")
    assert down == str(tmp_path / "down")
    assert listing(tmp_path / "down") == listing(src)
    assert (tmp_path / "down" / "hard").stat().st_nlink == 2


def test_into_a_directory_by_slash_or_because_it_is_one(
    m: SmolmachinesBottle, shared_dir: Path, tmp_path: Path
) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("f")
    (tmp_path / "file").write_text("x")
    (shared_dir / "there").mkdir()
    assert m.upload(tmp_path / "d", f"{shared_dir}/new/") == f"{shared_dir}/new/d"
    assert m.upload(tmp_path / "d", str(shared_dir / "there")) == f"{shared_dir}/there/d"
    assert m.upload(tmp_path / "file", f"{shared_dir}/new/") == f"{shared_dir}/new/file"
    assert m.upload(tmp_path / "file", str(shared_dir / "there")) == f"{shared_dir}/there/file"
    assert (shared_dir / "there" / "d" / "f").read_text() == "f"
    assert (shared_dir / "there" / "file").read_text() == "x"
    out = tmp_path / "out"
    assert m.download(f"{shared_dir}/there/file", f"{out}/") == f"{out}/file"
    assert m.download(f"{shared_dir}/there/d", out) == f"{out}/d"
    assert m.download(f"{shared_dir}/there/d/f", out / "d") == f"{out}/d/f"
    assert (out / "file").read_text() == "x"
    assert (out / "d" / "f").read_text() == "f"


def test_upload_owner(m: SmolmachinesBottle, shared_dir: Path, tmp_path: Path,
                      require_node_user: Any) -> None:  # fmt: skip
    src = tmp_path / "tree"
    src.mkdir()
    make_tree(src)
    m.upload(src, str(shared_dir / "t"), owner="node")
    owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in (shared_dir / "t").rglob("*")}
    assert owners == {(require_node_user.pw_uid, require_node_user.pw_gid)}
    assert (shared_dir / "t").stat().st_uid == require_node_user.pw_uid


def test_a_guest_running_as_its_user_owns_what_it_unpacks(
    fake_smolvm: Any, shared_dir: Path, tmp_path: Path, require_node_user: Any
) -> None:
    fake_smolvm.set_fault(VERSION="1.9.3")
    image_machine(fake_smolvm, "a", image=AGENT_IMAGE)  # USER node
    bottle = SmolmachinesBottle("a")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("f")
    bottle.upload(tmp_path / "d", str(shared_dir / "d"))
    assert (shared_dir / "d" / "f").stat().st_uid == require_node_user.pw_uid
    with pytest.raises(GuestUserError, match="belongs to 'node'"):
        bottle.upload(tmp_path / "d", str(shared_dir / "e"), owner="root")
    assert not (shared_dir / "e").exists()


def test_a_failed_download_leaves_the_file_there_alone(
    m: SmolmachinesBottle, tmp_path: Path
) -> None:
    """smolvm's cp makes its local file first and removes it on failure: never ours."""
    (tmp_path / "here").mkdir()
    keep = tmp_path / "here" / "keep"
    keep.write_text("mine")
    with pytest.raises(SmolvmError, match="failed to open"):
        m.download("/no/such/file", keep)
    assert keep.read_text() == "mine"
    assert os.listdir(tmp_path / "here") == ["keep"]
    with pytest.raises(SmolvmError, match="failed to open"):
        m.download("/no/such/file", f"{tmp_path}/here/new/")
    assert os.listdir(tmp_path / "here") == ["keep"]  # the directory asked for is not left


def test_kinds_that_do_not_fit(m: SmolmachinesBottle, shared_dir: Path, tmp_path: Path) -> None:
    (shared_dir / "d").mkdir()
    (shared_dir / "d" / "x").write_text("x")
    (tmp_path / "file").write_text("mine")
    with pytest.raises(InvalidInputError, match="not a directory"):
        m.download(str(shared_dir / "d"), tmp_path / "file")
    assert (tmp_path / "file").read_text() == "mine"
    (tmp_path / "x").mkdir()
    with pytest.raises(InvalidInputError, match="overwrite directory"):
        m.download(str(shared_dir / "d" / "x"), tmp_path / "x" / "..")  # …/x is a directory
    with pytest.raises(InvalidInputError, match="does not exist"):
        m.upload(tmp_path / "nope", "/tmp/x")
    with pytest.raises(InvalidInputError, match="absolute"):
        m.upload(tmp_path / "file", "tmp/x")
    with pytest.raises(InvalidInputError, match="as a whole"):
        m.download("/", tmp_path)


def test_guest_tar_failure_is_an_error(m: SmolmachinesBottle, shared_dir: Path,
                                       tmp_path: Path) -> None:  # fmt: skip
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("f")
    (shared_dir / "d").write_text("a file where the copy goes")
    with pytest.raises(GuestCommandError, match="tar in machine 'm' exited with status"):
        m.upload(tmp_path / "d", str(shared_dir / "d" / "sub"))
    with pytest.raises(MachineNotFoundError):
        SmolmachinesBottle("ghost").upload(tmp_path / "d", "/tmp/x")


def test_host_side_failures_of_a_copy_are_said_as_they_are(
    m: SmolmachinesBottle, shared_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A host file that cannot be read, or a host disk that takes no more, is that OSError,
    not smolvm "not executable" or "disappeared" (those are said only when smolvm cannot
    start); a directory made for a download goes again."""
    from bottle.backend import smolmachines

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("f")
    (shared_dir / "g").mkdir()
    (shared_dir / "g" / "f").write_text("f")

    def unreadable(*args: Any) -> None:
        raise PermissionError(13, "Permission denied", "d/f")

    def full(*args: Any) -> None:
        raise OSError(28, "No space left on device", "d/f")

    monkeypatch.setattr(smolmachines, "_pack", unreadable)
    monkeypatch.setattr(smolmachines, "_unpack", full)
    with pytest.raises(PermissionError, match="Permission denied") as up:
        m.upload(tmp_path / "d", str(shared_dir / "up"))
    with pytest.raises(OSError, match="No space left") as down:
        m.download(str(shared_dir / "g"), tmp_path / "down")
    assert not isinstance(up.value, BottleError) and not isinstance(down.value, BottleError)
    assert not (tmp_path / "down").exists()


# --- unpacking what the guest sends: never outside the target -------------------------------------


def archive(*members: tuple[str, str, bytes | str]) -> io.BytesIO:
    """A tar stream of (name, kind, content or link target) members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "sym": tarfile.SYMTYPE,
                         "hard": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]  # fmt: skip
            info.mode = 0o755 if kind == "dir" else 0o644
            info.linkname = data if isinstance(data, str) else ""
            tar.addfile(info)
    buf.seek(0)
    return buf


@pytest.mark.parametrize(
    "members",
    [
        [("../evil", "file", b"x")],
        [("./a/../../evil", "file", b"x")],
        [("out", "sym", "{outside}"), ("out/evil", "file", b"x")],  # through a link to a dir
        [("out", "sym", "{outside}/evil"), ("out", "file", b"x")],  # over a link to a file
        [("h", "hard", "../evil")],
    ],
)
def test_an_archive_cannot_write_outside_the_target(
    tmp_path: Path, members: list[tuple[str, str, Any]]
) -> None:
    from bottle.backend import smolmachines

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "evil").write_text("untouched")
    target = tmp_path / "target"
    target.mkdir()
    filled = [(n, k, d.format(outside=outside) if isinstance(d, str) else d)
              for n, k, d in members]  # fmt: skip
    with contextlib.suppress(InvalidInputError):  # refused, or made harmless
        smolmachines._unpack(archive(*filled), str(target), [])
    assert (outside / "evil").read_text() == "untouched"
    assert os.listdir(outside) == ["evil"]


def test_special_files_are_left_out(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from bottle.backend import smolmachines

    left: list[str] = []
    smolmachines._unpack(archive(("p", "fifo", ""), ("f", "file", b"f")), str(tmp_path), left)
    assert left == ["p"]
    assert os.listdir(tmp_path) == ["f"]


def test_download_logs_what_it_left_out(
    m: SmolmachinesBottle, shared_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (shared_dir / "d").mkdir()
    os.mkfifo(shared_dir / "d" / "pipe")
    (shared_dir / "d" / "f").write_text("f")
    with caplog.at_level(logging.WARNING):
        m.download(str(shared_dir / "d"), tmp_path / "d")
    assert os.listdir(tmp_path / "d") == ["f"]
    assert "left out" in caplog.text and "pipe" in caplog.text
