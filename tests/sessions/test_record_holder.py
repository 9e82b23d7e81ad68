"""A detached session records as the relay does (the same asciicast v2 events), from the
holder: what the program printed, each size it took, and typed keys only when asked for."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from harness.sessions import Client, Sessions

# asciinema playback and the file checks are the relay's recording tests' own.
from relay.test_record import asciinema_cat, load, shown

from bottle import sessions
from bottle.errors import InvalidInputError


def test_recording_in_the_holder(holders: Sessions, tmp_path: Path) -> None:
    cast = tmp_path / "session.cast"
    s = holders.start(size=(24, 80), record=cast, record_title="a title")
    a = Client.attach(s, size=(30, 100))
    a.expect(b"S30x100;")
    a.keys("é".encode() + b"\x1b[1mbold\xff")  # the echo splits the é: U+FFFD, twice
    a.keys(b"X")
    a.until(lambda g: g.exit_status is not None, "EXIT")
    assert s.wait(10) == 0
    assert stat.S_IMODE(cast.stat().st_mode) == 0o600
    header, events = load(cast)
    assert (header["width"], header["height"], header["title"]) == (80, 24, "a title")
    assert [e[2] for e in events if e[1] == "r"] == ["100x30"]
    assert not [e for e in events if e[1] == "i"]  # keys are not recorded unless asked
    assert asciinema_cat(cast) == shown(bytes(a.got.output))
    assert sessions.find_session(s.name).info().exit_status == 0


def test_recording_input_when_asked(holders: Sessions, tmp_path: Path) -> None:
    cast = tmp_path / "session.cast"
    s = holders.start(record=cast, record_input=True)
    a = Client.attach(s)
    a.expect(b";")
    watcher = Client.attach(s, readonly=True)
    watcher.keys(b"w")  # a watcher's keys go nowhere, the recording included
    a.keys(b"ab")
    a.keys(b"X")
    a.until(lambda g: g.exit_status is not None, "EXIT")
    s.wait(10)
    _, events = load(cast)
    assert "".join(e[2] for e in events if e[1] == "i") == "abX"


def test_the_recording_file_is_made_first_and_removed_if_no_session_ran(
    holders: Sessions, tmp_path: Path, runtime: Path
) -> None:
    cast = tmp_path / "session.cast"
    cast.write_text("someone's")
    with pytest.raises(InvalidInputError, match="already exists"):
        holders.start(record=cast)
    assert cast.read_text() == "someone's"
    cast.unlink()
    with pytest.raises(PermissionError):
        holders.start([str(runtime)], record=cast)  # exec fails in the holder's child
    assert not cast.exists()
    assert sessions.list_sessions() == []
