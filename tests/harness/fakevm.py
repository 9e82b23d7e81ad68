"""The fake smolvm's location and the handle tests use on it (see tests/fake_smolvm/README.md).

Kept out of conftest.py so that test modules can import it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bottle import smolvm as sv

FAKE_DIR = Path(__file__).parents[1] / "fake_smolvm"
FAKE_SMOLVM = FAKE_DIR / "smolvm"


class FakeSmolvm:
    """Handle on one test's fake smolvm.

    Attributes:
        path: the fake executable (also first on PATH as `smolvm`).
        state_dir: its state directory ($FAKE_SMOLVM_STATE): machines/NAME.json, calls.jsonl.
    """

    def __init__(self, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = FAKE_SMOLVM
        self.state_dir = state_dir
        self._mp = monkeypatch

    def calls(self) -> list[list[str]]:
        """Every invocation's arguments (without argv[0]) in order, e.g. ["machine", "start", …]."""
        log = self.state_dir / "calls.jsonl"
        if not log.exists():
            return []
        return [json.loads(line)["argv"] for line in log.read_text().splitlines() if line]

    def subcommands(self) -> list[str]:
        """The `machine` subcommand of each call (`--version` for version checks)."""
        return [c[1] if len(c) > 1 and c[0] in ("machine", "vm") else c[0] for c in self.calls()]

    def machine(self, name: str) -> dict[str, Any] | None:
        """The stored record of machine `name` (keys: name, state, pid, cpus, …) or None."""
        path = self.state_dir / "machines" / f"{name}.json"
        if not path.exists():
            return None
        data: dict[str, Any] = json.loads(path.read_text())
        return data

    def add_image(
        self,
        ref: str,
        *,
        user: str | None = None,
        workdir: str | None = None,
        env: list[str] | None = None,
    ) -> None:
        """Put image `ref` (exactly as given to `--image`) in the fake's image table
        ($FAKE_SMOLVM_IMAGES) with that USER, WORKDIR and ENV ("K=V" strings)."""
        path = self.state_dir / "images.json"
        with self._locked():
            table = json.loads(path.read_text()) if path.exists() else {}
            table[ref] = {"user": user, "workdir": workdir, "env": list(env or [])}
            path.write_text(json.dumps(table, indent=1, sort_keys=True))
        self._mp.setenv("FAKE_SMOLVM_IMAGES", str(path))

    def add_host(self, name: str, *addresses: str) -> None:
        """Put `name` in the fake's host table ($FAKE_SMOLVM_HOSTS): it resolves to `addresses`,
        or, given none, fails to resolve like an unknown name. Names not in the table go to this
        host's resolver, as smolvm's do."""
        path = self.state_dir / "hosts.json"
        with self._locked():
            table = json.loads(path.read_text()) if path.exists() else {}
            table[name] = list(addresses) or None
            path.write_text(json.dumps(table, indent=1, sort_keys=True))
        self._mp.setenv("FAKE_SMOLVM_HOSTS", str(path))

    def create(
        self, name: str, *, running: bool = True, image: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Pre-seed machine `name` (state running or created; `fields` override the record).

        `image`: an image machine of that ref, as if created with `--image ref` and started once;
        a registry ref must be in the image table (add_image) first.
        """
        config = None
        if image is not None:
            path = self.state_dir / "images.json"
            table = json.loads(path.read_text()) if path.exists() else {}
            if image not in table:
                pytest.fail(f"fake_smolvm.create(image={image!r}): call add_image({image!r}) first")
            config = table[image]
        rec: dict[str, Any] = {
            "name": name,
            "state": "running" if running else "created",
            "pid": 4242 if running else None,
            "cpus": 4,
            "memory_mib": 8192,
            "image": image,
            "image_key": image,
            "image_local": False,
            "image_config": config,
            "init_completed": image is not None,
            "created_at": int(time.time()),
            "storage_gb": None,
            "overlay_gb": None,
            "volumes": [],
            "ports": [],
            "network": image is not None,
            "init": [],
            "env": [],
            "workdir": None,
            "labels": {},
            "cmd": [],
            "gpu": False,
        }
        rec.update(fields)
        machines = self.state_dir / "machines"
        machines.mkdir(parents=True, exist_ok=True)
        with self._locked():
            tmp = machines / f".{name}.seed"
            tmp.write_text(json.dumps(rec, indent=1, sort_keys=True))
            tmp.replace(machines / f"{name}.json")
        return rec

    def set_fault(self, **env: str | int | float | None) -> None:
        """Set fault variables for the rest of the test: set_fault(KILL_EXECS=1) sets
        FAKE_SMOLVM_KILL_EXECS=1; None unsets one.

        A new VERSION is a different smolvm in the same file, which bottle's caches (keyed by
        the file) cannot notice as they notice a real upgrade: they are emptied."""
        for key, value in env.items():
            var = key if key.startswith("FAKE_SMOLVM_") else f"FAKE_SMOLVM_{key.upper()}"
            if value is None:
                self._mp.delenv(var, raising=False)
            else:
                self._mp.setenv(var, str(value))
            if var == "FAKE_SMOLVM_VERSION":
                # bottle keeps smolvm's answers by the executable's file (in this process and
                # in its cache directory), and another release of the fake is the same file.
                sv.clear_version_cache()

    def run(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """Run `smolvm ARGS…` (text mode, output captured, stdin /dev/null unless given)."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(
            [str(self.path), *args], capture_output=True, text=True, check=False, **kwargs
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.state_dir / "lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield
