"""How much to measure (`Settings`: FULL, QUICK, SMOKE) and the payloads streamed through."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass

from bottle.bench._common import MIB


@dataclass(frozen=True)
class Settings:
    """Sizes and counts of one run; presets below."""

    stream_bytes: int
    echo_trips: int
    resize_trips: int
    resize_burst: int
    idle_seconds: float
    startup_spawns: int
    many_sessions: int
    many_bytes: int
    runs: int
    stream_blocks: int = 8  # throughput takes turns between the relays in this many blocks


# The stream is large (128 MiB, as the report that found the copy loop's refill bursts used):
# the reader's pace, not the relay's start, must set the figure.
FULL = Settings(128 * MIB, 5000, 1000, 300, 3.0, 20, 16, 8 * MIB, 3, 8)
QUICK = Settings(16 * MIB, 1000, 200, 300, 1.0, 5, 16, 1 * MIB, 1, 4)
SMOKE = Settings(1 * MIB, 50, 20, 50, 0.3, 1, 16, 128 * 1024, 1, 2)


@dataclass(frozen=True)
class Payload:
    """A file of bytes the producer child cats (random, or terminal text), with its digest."""

    path: str
    size: int
    sha256: str


class Payloads:
    """Random payload files in a scratch directory (tmpfs when there is one)."""

    def __init__(self) -> None:
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self._dir = tempfile.TemporaryDirectory(prefix="bottle-bench-", dir=base)
        self._files: dict[int, Payload] = {}

    def get(self, size: int) -> Payload:
        """Return a payload of exactly ``size`` random bytes."""
        if size not in self._files:
            path = os.path.join(self._dir.name, f"payload-{size}")
            digest = hashlib.sha256()
            with open(path, "wb") as f:
                left = size
                while left:
                    chunk = os.urandom(min(left, MIB))
                    f.write(chunk)
                    digest.update(chunk)
                    left -= len(chunk)
            self._files[size] = Payload(path, size, digest.hexdigest())
        return self._files[size]

    def text(self, size: int) -> Payload:
        """Return ``size`` bytes of what terminals mostly get: lines of text with colour
        escapes, tabs and UTF-8 (a build log, an agent's answer), the same every run."""
        key = -size
        if key not in self._files:
            lines = [
                "\x1b[32m✓\x1b[0m compiled src/bottle/relay/_session.py in 0.42 s\r\n",
                "\x1b[1;33mwarning\x1b[0m: unused variable `résumé`\tat line 1234\r\n",
                "│ agent │ Voilà: the tests pass — 128 passed, 0 failed (€0.00) │\r\n",
                "plain ASCII output of a long-running command, line after line\r\n",
            ]
            block = "".join(lines).encode()
            data = (block * (size // len(block) + 1))[:size]
            path = os.path.join(self._dir.name, f"text-{size}")
            with open(path, "wb") as f:
                f.write(data)
            self._files[key] = Payload(path, size, hashlib.sha256(data).hexdigest())
        return self._files[key]

    def close(self) -> None:
        """Delete the payload files."""
        self._dir.cleanup()

    def __enter__(self) -> Payloads:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
