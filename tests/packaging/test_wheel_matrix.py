"""The wheel matrix that [tool.cibuildwheel] selects, as cibuildwheel itself reports it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# CPython 3.10-3.14 plus free-threaded 3.14t, each one wheel per platform and architecture.
PYTHONS = ["cp310", "cp311", "cp312", "cp313", "cp314", "cp314t"]
EXPECTED = {
    "linux": {
        f"{py}-{libc}_{arch}"
        for py in PYTHONS
        for libc in ("manylinux", "musllinux")
        for arch in ("x86_64", "aarch64")
    },
    "macos": {f"{py}-macosx_{arch}" for py in PYTHONS for arch in ("x86_64", "arm64")},
    "windows": set(),  # no ptys on Windows: nothing is built there
}


def build_identifiers(platform: str) -> list[str]:
    """Ask cibuildwheel which builds pyproject.toml selects for `platform`."""
    # CIBW_* variables in the caller's environment would override pyproject.toml.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBW_")}
    proc = subprocess.run(
        [sys.executable, "-m", "cibuildwheel", "--print-build-identifiers",
         "--platform", platform, str(ROOT)],
        env=env, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0 and "No module named cibuildwheel" in proc.stderr:
        pytest.fail("cibuildwheel is not installed: install the test extra (pip install '.[test]')")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.parametrize("platform", sorted(EXPECTED))
def test_cibuildwheel_selects_exactly_the_intended_matrix(platform: str) -> None:
    identifiers = build_identifiers(platform)
    assert len(identifiers) == len(set(identifiers)), identifiers
    assert set(identifiers) == EXPECTED[platform]
