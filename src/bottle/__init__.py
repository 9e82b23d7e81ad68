"""bottle: run AI agent CLIs inside smolvm microVMs, relayed through a native PTY loop."""

import sys

if sys.platform == "win32":
    # Only reachable through a copied tree or a forced install: setup.py refuses Windows.
    raise ImportError(
        "bottle does not support Windows: its terminal relay needs POSIX pseudo-terminals (pty). "
        "Use Linux or macOS, or run it inside WSL."
    )

__version__ = "0.1.0"
