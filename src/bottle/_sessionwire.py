"""The session protocol: what a session holder and its clients say over the holder's socket.

A byte stream (a unix stream socket) of frames, each a 4-byte header, a type byte and a 24-bit
payload length (big-endian), then the payload. Integers in payloads are big-endian.

Client to holder (a payload of at most MAX_INPUT bytes; anything else ends the connection):

- ATTACH, first and once: version (u8), flags (u8: READONLY, REDRAW, DIRECT), rows (u16),
  cols (u16), since (u64: the output offset to resume from; 0 is the oldest output kept,
  SINCE_NOW only what comes next).
- KEYS: bytes for the program, as typed (a writer's only; a watcher's are dropped).
- RESIZE: rows (u16), cols (u16): the client's terminal changed size (a writer's only).
- REDRAW: make the program repaint (a size twitch); watchers may ask too.
- DETACH: the client is leaving; the holder closes the connection (closing it does the same).
  A direct client gets DETACHED first, once the holder has let go of its terminal.
- TERMINAL (direct clients, once ATTACHED granted DIRECT): the client's terminal, as one
  descriptor in SCM_RIGHTS ancillary data with the frame's first byte, and the detach keys
  (the payload, at most DETACH_KEYS_MAX bytes). From then on the holder reads the keys from
  that terminal and writes the output to it itself, one hop less each way: no KEYS and no
  OUTPUT frames, the rest as before. It never touches the terminal again once it has sent
  DETACHED (or closed the connection).

Holder to client:

- ATTACHED, first: version (u8), flags (u8: the client's, as taken), rows (u16), cols (u16)
  of the program's terminal now, offset (u64) of the first output byte that follows.
- OUTPUT: the program's output, in order, from the offset ATTACHED gave, at most MAX_OUTPUT
  bytes a frame.
- DROPPED: count (u64): output the client will never get (the holder no longer had it, or the
  client fell behind for too long); the output that follows starts that much later.
- EXIT: status (u16: the exit status, 128+N for signal N), after all the output; then the
  holder closes the connection.
- ERROR: a UTF-8 message (a refused peer, a bad frame, too many clients); then it closes.
- DETACHED (direct clients): why (u8: DETACHED_KEYS, the detach keys were typed on the
  terminal; DETACHED_HANGUP, the terminal went away; DETACHED_ASKED, the client sent DETACH)
  and the output offset (u64) written to the terminal up to then; the holder no longer holds
  the terminal, and closes the connection. Until it comes, a direct client's terminal is the
  holder's: where output was dropped for it, the holder writes DROPPED_NOTICE there itself
  (and makes the program repaint), besides the DROPPED frame.

A holder that does not know DIRECT ignores the flag (ATTACHED gives the flags as taken), and
the client goes on with frames.

Both relay cores implement the holder's side (`Hub`); this module is the one definition of the
numbers, and the native core's copies are checked against it by the tests.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

VERSION = 1
HEADER_SIZE = 4
MAX_INPUT = 4096
MAX_OUTPUT = 65536

# Client to holder.
ATTACH = 0x01
KEYS = 0x02
RESIZE = 0x03
REDRAW = 0x04
DETACH = 0x05
TERMINAL = 0x06
# Holder to client.
ATTACHED = 0x81
OUTPUT = 0x82
DROPPED = 0x83
EXIT = 0x84
ERROR = 0x85
DETACHED = 0x86

# ATTACH flags.
READONLY = 0x01
REDRAW_ON_ATTACH = 0x02
DIRECT = 0x04

# Why a direct client's terminal was given back (DETACHED).
DETACHED_KEYS = 0
DETACHED_HANGUP = 1
DETACHED_ASKED = 2
DETACH_KEYS_MAX = 32
# What a holder writes on a direct client's terminal where output was dropped for it (and what
# a framed client writes on its own), with the count.
DROPPED_NOTICE = "\r\n[bottle: {} bytes of output dropped here; redrawing]\r\n"

SINCE_OLDEST = 0
SINCE_NOW = (1 << 64) - 1

_ATTACH = struct.Struct(">BBHHQ")
_ATTACHED = struct.Struct(">BBHHQ")
_SIZE = struct.Struct(">HH")
_COUNT = struct.Struct(">Q")
_STATUS = struct.Struct(">H")
_DETACHED = struct.Struct(">BQ")

NAMES = {
    ATTACH: "ATTACH",
    KEYS: "KEYS",
    RESIZE: "RESIZE",
    REDRAW: "REDRAW",
    DETACH: "DETACH",
    TERMINAL: "TERMINAL",
    ATTACHED: "ATTACHED",
    OUTPUT: "OUTPUT",
    DROPPED: "DROPPED",
    EXIT: "EXIT",
    ERROR: "ERROR",
    DETACHED: "DETACHED",
}


class ProtocolError(ValueError):
    """A frame that breaks the protocol."""


def header(kind: int, length: int) -> bytes:
    """The 4-byte header of a frame of ``kind`` carrying ``length`` payload bytes."""
    if not 0 <= length < 1 << 24:
        raise ValueError(f"frame payload of {length} bytes does not fit a 24-bit length")
    return bytes((kind, length >> 16, (length >> 8) & 0xFF, length & 0xFF))


def frame(kind: int, payload: bytes = b"") -> bytes:
    """One whole frame."""
    return header(kind, len(payload)) + payload


def attach(
    rows: int,
    cols: int,
    *,
    readonly: bool = False,
    redraw: bool = False,
    direct: bool = False,
    since: int = SINCE_OLDEST,
) -> bytes:
    """An ATTACH frame: the client's terminal size, its role and where its output resumes."""
    flags = (READONLY if readonly else 0) | (REDRAW_ON_ATTACH if redraw else 0)
    flags |= DIRECT if direct else 0
    return frame(ATTACH, _ATTACH.pack(VERSION, flags, rows, cols, since))


def keys(data: bytes) -> Iterator[bytes]:
    """KEYS frames carrying ``data`` (as many as MAX_INPUT needs)."""
    for start in range(0, len(data), MAX_INPUT):
        yield frame(KEYS, data[start : start + MAX_INPUT])


def resize(rows: int, cols: int) -> bytes:
    """A RESIZE frame."""
    return frame(RESIZE, _SIZE.pack(rows, cols))


def parse_attach(payload: bytes) -> tuple[int, int, int, int, int]:
    """(version, flags, rows, cols, since) of an ATTACH payload."""
    if len(payload) != _ATTACH.size:
        raise ProtocolError(f"ATTACH payload of {len(payload)} bytes, not {_ATTACH.size}")
    version, flags, rows, cols, since = _ATTACH.unpack(payload)
    return version, flags, rows, cols, since


def attached(flags: int, rows: int, cols: int, offset: int) -> bytes:
    """An ATTACHED frame."""
    return frame(ATTACHED, _ATTACHED.pack(VERSION, flags, rows, cols, offset))


def parse_attached(payload: bytes) -> tuple[int, int, int, int, int]:
    """(version, flags, rows, cols, offset) of an ATTACHED payload."""
    if len(payload) != _ATTACHED.size:
        raise ProtocolError(f"ATTACHED payload of {len(payload)} bytes, not {_ATTACHED.size}")
    version, flags, rows, cols, offset = _ATTACHED.unpack(payload)
    return version, flags, rows, cols, offset


def parse_size(payload: bytes) -> tuple[int, int]:
    """(rows, cols) of a RESIZE payload."""
    if len(payload) != _SIZE.size:
        raise ProtocolError(f"RESIZE payload of {len(payload)} bytes, not {_SIZE.size}")
    rows, cols = _SIZE.unpack(payload)
    return rows, cols


def dropped(count: int) -> bytes:
    """A DROPPED frame."""
    return frame(DROPPED, _COUNT.pack(count))


def parse_dropped(payload: bytes) -> int:
    """The count of a DROPPED payload."""
    if len(payload) != _COUNT.size:
        raise ProtocolError(f"DROPPED payload of {len(payload)} bytes, not {_COUNT.size}")
    count: int = _COUNT.unpack(payload)[0]
    return count


def exit_frame(status: int) -> bytes:
    """An EXIT frame."""
    return frame(EXIT, _STATUS.pack(status))


def parse_exit(payload: bytes) -> int:
    """The status of an EXIT payload."""
    if len(payload) != _STATUS.size:
        raise ProtocolError(f"EXIT payload of {len(payload)} bytes, not {_STATUS.size}")
    status: int = _STATUS.unpack(payload)[0]
    return status


def detached(reason: int, offset: int) -> bytes:
    """A DETACHED frame."""
    return frame(DETACHED, _DETACHED.pack(reason, offset))


def parse_detached(payload: bytes) -> tuple[int, int]:
    """(reason, offset) of a DETACHED payload."""
    if len(payload) != _DETACHED.size:
        raise ProtocolError(f"DETACHED payload of {len(payload)} bytes, not {_DETACHED.size}")
    reason, offset = _DETACHED.unpack(payload)
    return reason, offset


def error(message: str) -> bytes:
    """An ERROR frame (the message cut to fit the holder's 200-byte limit)."""
    return frame(ERROR, message.encode()[:ERROR_MAX])


ERROR_MAX = 200


class Decoder:
    """Splits a received byte stream into (kind, payload) frames."""

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        self._buf = bytearray()
        self._limit = limit

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The frames that ``data`` completes, in order."""
        buf = self._buf
        buf += data
        out = []
        pos = 0
        while len(buf) - pos >= HEADER_SIZE:
            kind = buf[pos]
            length = (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]
            if length > self._limit:
                raise ProtocolError(
                    f"{NAMES.get(kind, hex(kind))} frame of {length} bytes (limit {self._limit})"
                )
            end = pos + HEADER_SIZE + length
            if end > len(buf):
                break
            out.append((kind, bytes(buf[pos + HEADER_SIZE : end])))
            pos = end
        del buf[:pos]
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame held back."""
        return len(self._buf)
