"""Native core of the PTY relay (src/_ptyrelay.pyx); bottle._ptyrelay_py is its twin."""

from collections.abc import Sequence

EV_DONE: int
EV_SIGNAL: int
EV_EOF: int
EV_HUP: int
EV_CHILD: int
EV_INTR: int
DEFAULT_BUFSIZE: int
EOF_RECHECKS: int
STAGES: tuple[str, ...]
MAX_FD_SWEEP: int
REC_BUFSIZE: int
REC_STALL_MS: int

def spawn(
    path: bytes, argv: Sequence[bytes], envp: Sequence[bytes], slave_fd: int, out_fd: int = -1
) -> int:
    """Start ``path`` on the pty whose slave is ``slave_fd``; return its pid."""

class Pump:
    """Copy user input to a pty master and its output back, until something needs Python."""

    def __init__(
        self,
        in_fd: int,
        out_fd: int,
        master_fd: int,
        wake_fd: int = -1,
        child_fd: int = -1,
        size_fd: int = -1,
        *,
        winch: bool = True,
        in_tty: bool = False,
        hold_ms: int = 0,
        intr: int = -1,
        bufsize: int = ...,
        record_fd: int = -1,
        record_input: bool = False,
        record_stall_ms: int = ...,
    ) -> None: ...
    def run(self) -> int:
        """Relay until an event needs Python; return it (RuntimeError if already running)."""
    def drain(self, idle_ms: int, cap_ms: int) -> int:
        """After the child's exit: copy its remaining output, then flush it."""
    def signals(self) -> bytes:
        """Return the signal numbers received since the last call."""
    def resize(self) -> tuple[int, int] | None:
        """Copy the user's terminal size to the pty; return (rows, cols), None when unknown.

        Raises OSError when the pty refuses the size.
        """
    def finish_recording(self, timeout_ms: int) -> int:
        """End the recording; 0 when the file holds the whole session, else an errno."""
    @property
    def holding(self) -> bool:
        """Whether typed-ahead input is still being held back."""
    @property
    def buffered(self) -> tuple[int, int]:
        """Bytes waiting in (input, output) buffers."""

# The session holder's loop (src/_hub.pxi); bottle._hub_py is its twin.
EV_CLIENTS: int
DEFAULT_HISTORY: int
MIN_HISTORY: int
MAX_CLIENTS: int
STALL_MS: int
STALL_PROGRESS: int
TWITCH_MS: int
WIRE: dict[str, int]

class Hub:
    """Copy a pty master's output to the clients of a unix socket, and their keys back."""

    def __init__(
        self,
        master_fd: int,
        listen_fd: int,
        wake_fd: int = -1,
        child_fd: int = -1,
        *,
        history: int = ...,
        owner_uid: int = -1,
        hold_ms: int = 0,
        stall_ms: int = ...,
        record_fd: int = -1,
        record_input: bool = False,
        record_stall_ms: int = ...,
    ) -> None: ...
    def close(self) -> None:
        """Close every client connection; idempotent."""
    def run(self) -> int:
        """Relay until an event needs Python (EV_SIGNAL, EV_CHILD, EV_CLIENTS)."""
    def drain(self, idle_ms: int, cap_ms: int) -> None:
        """After the child's exit: pass on its last output."""
    def finish(self, status: int, flush_ms: int) -> None:
        """Send the rest and an EXIT frame to every client, then close them."""
    def signals(self) -> bytes:
        """Return the signal numbers received since the last call."""
    def history(self) -> bytes:
        """The output the ring still holds, oldest first."""
    def finish_recording(self, timeout_ms: int) -> int:
        """End the recording; 0 when complete, else an errno."""
    @property
    def total(self) -> int: ...
    @property
    def clients(self) -> tuple[int, int, int]: ...
    @property
    def refused(self) -> int: ...
    @property
    def lagged(self) -> int: ...
    @property
    def size(self) -> tuple[int, int]: ...
    @property
    def holding(self) -> bool: ...

# The attach client's loop (src/_attach.pxi); bottle._attach_py is its twin.
EV_DETACH: int
EV_FRAME: int
EV_CLOSED: int
CONTROL_MAX: int
DETACH_KEYS_MAX: int

class Attach:
    """Copy the user's keys to a session holder's socket and its output back."""

    def __init__(
        self,
        in_fd: int,
        out_fd: int,
        sock_fd: int,
        wake_fd: int = -1,
        size_fd: int = -1,
        *,
        winch: bool = True,
        in_tty: bool = False,
        detach_keys: bytes = b"",
        readonly: bool = False,
        keys: bool = True,
        offset: int = 0,
    ) -> None: ...
    def run(self, timeout_ms: int = -1) -> int:
        """Relay until an event needs Python (EV_FRAME, EV_DETACH, EV_HUP, EV_CLOSED,
        EV_SIGNAL; EV_DONE when ``timeout_ms`` ran out)."""
    def frame(self) -> tuple[int, bytes]:
        """The (kind, payload) of the frame that ended the last run with EV_FRAME."""
    def send(self, data: bytes) -> None:
        """Queue whole frames for the holder."""
    def flush(self, timeout_ms: int) -> bool:
        """Send what is queued, waiting at most ``timeout_ms``; whether it all went."""
    def signals(self) -> bytes:
        """Return the signal numbers received since the last call."""
    def resize(self) -> tuple[int, int] | None:
        """Send the terminal's size to the holder; (rows, cols), None when there is none."""
    @property
    def offset(self) -> int: ...
    @property
    def buffered(self) -> tuple[int, int]: ...
