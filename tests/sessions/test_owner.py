"""Only the session's user gets in: another uid is refused by the holder (peer credentials),
and the client side refuses session directories and sockets that are not safely its user's.

Another user is `node`, for real (runuser), running a raw client in a Python it can execute.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
from pathlib import Path

import pytest
from harness.sessions import Client, Sessions

from bottle import _sessionwire as wire
from bottle import sessions
from bottle.errors import SessionPathError

# A client as raw as can be: connect, ATTACH, type, print every frame it gets until EOF.
RAW_CLIENT = r"""
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print("connect:", e.strerror)
    sys.exit(0)
attach = struct.pack(">BBHHQ", 1, 0, 24, 80, 0)
keys = b"evil"
try:  # a holder that refuses closes at once: the keys may find the socket shut
    s.sendall(bytes([1, 0, 0, len(attach)]) + attach + bytes([2, 0, 0, len(keys)]) + keys)
except OSError:
    pass
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break
    if not chunk:
        break
    data += chunk
while data:
    kind, length = data[0], int.from_bytes(data[1:4], "big")
    print(hex(kind), data[4:4 + length].decode(errors="replace"))
    data = data[4 + length:]
"""


@functools.cache
def python_for(user: str) -> str:
    """A Python interpreter ``user`` can run (this one lives where only root may go)."""
    candidates = [os.path.realpath(p) for p in ("/usr/bin/python3", "/usr/local/bin/python3")]
    found = shutil.which("python3")
    if found:
        candidates.insert(0, os.path.realpath(found))
    for exe in candidates:
        probe = subprocess.run(
            ["runuser", "-u", user, "--", exe, "-I", "-S", "-c", "pass"],
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0:
            return exe
    pytest.fail(f"no Python that user {user!r} can run (tried {candidates})")


def as_node(socket_path: str) -> str:
    python = python_for("node")
    proc = subprocess.run(
        ["runuser", "-u", "node", "--", python, "-I", "-S", "-c", RAW_CLIENT, socket_path],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def open_up(session: sessions.Session, runtime: Path) -> None:
    """Let anyone reach the socket: what the holder's own check must then stop."""
    for d in (runtime, runtime / "bottle", Path(session.directory)):
        d.chmod(0o711)
    os.chmod(session.socket_path, 0o777)


def test_another_uid_cannot_reach_the_socket(
    holders: Sessions, require_node_user: pwd.struct_passwd
) -> None:
    s = holders.start()
    assert as_node(s.socket_path) == "connect: Permission denied\n"


def test_holder_refuses_another_uid(
    holders: Sessions, runtime: Path, require_node_user: pwd.struct_passwd
) -> None:
    s = holders.start()
    open_up(s, runtime)
    node = require_node_user.pw_uid
    assert as_node(s.socket_path) == (
        f"{hex(wire.ERROR)} refused: uid {node} is not this session's owner\n"
    )
    # The refused peer's keys never reached the program, and the session runs on.
    for d in (runtime, runtime / "bottle", Path(s.directory)):
        d.chmod(0o700)
    c = Client.attach(s)
    c.expect(b";")
    c.sync()
    assert b"Ke" not in c.got.output
    assert s.info().state == "running"
    assert "refused 1 connection(s)" in Path(s.log_path).read_text()


def test_symlinked_session_directory_refused(holders: Sessions, runtime: Path) -> None:
    real = runtime / "elsewhere"
    real.mkdir(mode=0o700)
    (runtime / "bottle").symlink_to(real)
    calls = (sessions.list_sessions, lambda: holders.start(), lambda: sessions.find_session("x"))
    for call in calls:
        with pytest.raises(SessionPathError, match="is a symlink; bottle refuses it"):
            call()
    assert list(real.iterdir()) == []


def test_foreign_or_open_session_directory_refused(
    holders: Sessions, runtime: Path, require_node_user: pwd.struct_passwd
) -> None:
    base = runtime / "bottle"
    base.mkdir(mode=0o700)
    os.chown(base, require_node_user.pw_uid, require_node_user.pw_gid)
    with pytest.raises(SessionPathError, match=f"belongs to uid {require_node_user.pw_uid}"):
        holders.start()
    os.chown(base, 0, 0)
    base.chmod(0o755)
    with pytest.raises(SessionPathError, match="has mode 0755"):
        sessions.list_sessions()
    base.chmod(0o700)
    s = holders.start(name="one")
    os.chown(s.directory, require_node_user.pw_uid, -1)
    with pytest.raises(SessionPathError, match=r"'one': directory .* belongs to uid"):
        sessions.connect("one")
    assert sessions.list_sessions() == []  # left out, and logged


def test_symlinked_or_foreign_socket_refused(
    holders: Sessions, require_node_user: pwd.struct_passwd
) -> None:
    s = holders.start(name="one")
    real = s.socket_path + ".real"
    os.rename(s.socket_path, real)
    os.symlink(real, s.socket_path)
    with pytest.raises(SessionPathError, match="sock is a symlink; refused"):
        sessions.connect("one")
    os.unlink(s.socket_path)
    os.rename(real, s.socket_path)
    os.chown(s.socket_path, require_node_user.pw_uid, -1, follow_symlinks=False)
    with pytest.raises(SessionPathError, match=r"the socket .* belongs to uid"):
        sessions.connect("one")
    os.chown(s.socket_path, 0, -1, follow_symlinks=False)
    c = Client.attach(s)
    c.expect(b";")  # the program is up (and raw)
    c.sync()


def test_session_directory_fallback_without_xdg_runtime_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert sessions.list_sessions() == []
    from bottle.sessions._dirs import base_dir, ensure_base

    assert base_dir() == str(tmp_path / f"bottle-{os.geteuid()}")
    assert ensure_base() == base_dir()
    assert (tmp_path / f"bottle-{os.geteuid()}").stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/dir")  # not absolute: ignored, as XDG says
    assert base_dir() == str(tmp_path / f"bottle-{os.geteuid()}")
