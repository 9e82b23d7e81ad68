"""bottle: run AI agent CLIs inside smolvm microVMs, relayed through a native PTY loop."""

__version__ = "0.1.0"
