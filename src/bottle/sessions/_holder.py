"""The session holder: the process that owns a detached session's pty, its program and its
recording, and serves the session's clients over a unix socket.

Started by `bottle.sessions.start` as ``python -m bottle.sessions._holder DIR READY_FD
LOCK_FD``: it forks once more and the first process exits, so the holder is nobody's child
(its starter reaps the first) and, not being a session leader, can never gain a controlling
terminal. Its stdin and stdout are /dev/null and its stderr is ``holder.log`` in the session
directory. It inherits the session's lock (``LOCK_FD``, held from the start so that no listing
ever sees a session without a holder) and tells the starter on ``READY_FD`` whether it came up:
one JSON line, then EOF.

The copy loop is the relay core's `Hub` (native, or the pure twin: the same choice as the
relay). Secrets reach the program as they reach smolvm's client in a session run in process:
in the environment this process was started with, which the program inherits; their names are
taken out of the holder's own environment once the program runs, so the teardown's smolvm
calls do not carry them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import sys
import termios
import time
from collections.abc import Mapping
from contextlib import ExitStack
from typing import Any

from bottle.relay._children import Child
from bottle.relay._impl import IMPLEMENTATION, core, hub
from bottle.relay._recording import write_header
from bottle.relay._tty import DEFAULT_SIZE, WINSIZE, window_size
from bottle.sessions import run_teardown
from bottle.sessions._dirs import LOG, SCREEN, STATE, SessionDir

log = logging.getLogger("bottle.sessions.holder")

# Signals the holder takes: the program's exit, and those it passes on to the program.
_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)
# At the end: the program's last output is read until the pty stays quiet this long, or this
# long in all (a grandchild may keep it open); then the clients get it and the exit status
# within FLUSH_MS.
DRAIN_IDLE_MS = 100
DRAIN_CAP_MS = 2000
FLUSH_MS = 2000
RECORD_FINISH_MS = 5000


def _on_signal(signum: int, frame: object) -> None:
    """The work happens in the loop, woken by the wakeup-fd byte."""


class Holder:
    """One session: set up (`start`), serve until the program exits (`serve`), end (`end`)."""

    def __init__(self, directory: SessionDir, spec: Mapping[str, Any], lock_fd: int) -> None:
        self.dir = directory
        self.spec = spec
        self.lock_fd = lock_fd
        self.undo = ExitStack()
        self.child: Child | None = None
        self.hub: Any = None
        self.listener: socket.socket | None = None
        self.started = time.time()
        self.clients = (0, 0)

    # ------------------------------------------------------------------ set-up

    def start(self) -> None:
        spec = self.spec
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a client gone is EPIPE, not death
        wake_fd = self._catch_signals()
        self.listener = self._listen()
        master, slave = os.openpty()
        self.undo.callback(os.close, master)
        try:
            rows, cols = spec.get("rows") or DEFAULT_SIZE[0], spec.get("cols") or DEFAULT_SIZE[1]
            with contextlib.suppress(OSError):
                fcntl.ioctl(master, termios.TIOCSWINSZ, WINSIZE.pack(rows, cols, 0, 0))
            record_fd = self._open_recording(master)
            args = [os.fsencode(a) for a in spec["argv"]]
            envp = [os.fsencode(f"{k}={v}") for k, v in os.environ.items()]
            pid = core.spawn(os.fsencode(spec["path"]), args, envp, slave)
        finally:
            os.close(slave)
        self.child = Child(pid, threaded=False)
        self.undo.callback(self.child.end)
        for name in spec.get("secret_names", ()):
            os.environ.pop(name, None)
        os.set_blocking(master, False)
        self.hub = hub.Hub(
            master,
            self.listener.fileno(),
            wake_fd,
            -1,
            history=spec["history"],
            hold_ms=spec.get("hold_ms", 0),
            record_fd=record_fd,
            record_input=bool(spec.get("record_input")),
        )
        self.undo.callback(self.hub.close)
        self.write_state()
        log.info(
            "holding session %r: pid %d runs %s (%s relay core); socket %s",
            self.dir.name,
            pid,
            spec["argv"][0],
            IMPLEMENTATION,
            self.dir.socket_path,
        )

    def _catch_signals(self) -> int:
        rfd, wfd = os.pipe()
        self.undo.callback(os.close, rfd)
        self.undo.callback(os.close, wfd)
        os.set_blocking(rfd, False)
        os.set_blocking(wfd, False)
        signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
        # Undone before the pipe closes (callbacks run last-in first-out): a signal during the
        # teardown must not write into a descriptor number reused by then, and SIGTERM must
        # end a holder that has nothing left to pass it on to.
        self.undo.callback(signal.set_wakeup_fd, -1)
        for sig in (*_FORWARDED, signal.SIGCHLD):
            signal.signal(sig, _on_signal)
            self.undo.callback(signal.signal, sig, signal.SIG_DFL)
        return rfd

    def _listen(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.undo.callback(sock.close)
        path = self.dir.socket_path
        # Created 0600 (the umask applies to a socket's file): the directory keeps others out
        # already, and the peer check refuses anyone else who gets in.
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        self.undo.callback(self._unlink_socket)
        sock.listen(16)
        sock.setblocking(False)
        return sock

    def _unlink_socket(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.dir.socket_path)

    def _open_recording(self, master: int) -> int:
        # The starter made the file (bottle.relay.Recording) and passed its descriptor.
        given = self.spec.get("record_fd")
        if given is None:
            return -1
        fd = int(given)
        os.set_inheritable(fd, False)
        self.undo.callback(os.close, fd)
        rows, cols = window_size(master) or DEFAULT_SIZE
        title = self.spec.get("record_title") or os.path.basename(self.spec["argv"][0])
        write_header(fd, rows, cols, title)
        return fd

    # ------------------------------------------------------------------ state

    def write_state(self, **more: Any) -> None:
        writers, watchers, _ = self.hub.clients if self.hub is not None else (0, 0, 0)
        state = {
            "pid": os.getpid(),
            "child_pid": self.child.pid if self.child is not None else None,
            "relay": IMPLEMENTATION,
            "clients": writers + watchers,
            "writers": writers,
            "watchers": watchers,
            "exit_status": None,
            "ended": None,
            "teardown": self.spec.get("teardown") and "pending",
        }
        old = self.dir.read_json(STATE) or {}
        for key in ("exit_status", "ended", "teardown", "recording_error"):
            if old.get(key) is not None:
                state[key] = old[key]
        state.update(more)
        self.dir.write_json(STATE, state)

    # ------------------------------------------------------------------ running

    def serve(self) -> int:
        """Relay until the program exits; its status (128+N for signal N)."""
        assert self.child is not None
        status: int | None = None
        refused = lagged = 0
        while status is None:
            event = self.hub.run()
            if event == hub.EV_SIGNAL:
                for sig in self.hub.signals():
                    if sig == signal.SIGCHLD:
                        status = self.child.poll()
                    elif sig in _FORWARDED:
                        log.info("signal %d: passed on to the program", sig)
                        self.child.signal(sig)
            elif event == hub.EV_CLIENTS:
                writers, watchers, _ = self.hub.clients
                if (writers, watchers) != self.clients:
                    log.info("clients: %d writer(s), %d watcher(s)", writers, watchers)
                    self.clients = (writers, watchers)
                    self.write_state()
                if self.hub.refused != refused:
                    log.warning("refused %d connection(s)", self.hub.refused - refused)
                    refused = self.hub.refused
                if self.hub.lagged != lagged:
                    log.warning(
                        "%d client(s) stopped taking output for %d ms: output goes on "
                        "without them, and what they miss is dropped for them",
                        self.hub.lagged - lagged,
                        hub.STALL_MS,
                    )
                    lagged = self.hub.lagged
        return status

    def end(self, status: int) -> None:
        """The program exited: last output, exit status and screen kept, clients told."""
        self.hub.drain(DRAIN_IDLE_MS, DRAIN_CAP_MS)
        self._save_screen(self.hub.history())
        err = self.hub.finish_recording(RECORD_FINISH_MS)
        more: dict[str, Any] = {"exit_status": status, "ended": time.time()}
        if err:
            more["recording_error"] = os.strerror(err)
            log.warning("the recording is incomplete: %s", os.strerror(err))
        self.write_state(**more)
        log.info("the program exited with status %d", status)
        # Nobody new: a client arriving now reads the outcome from the directory.
        self._unlink_socket()
        self.hub.finish(status, FLUSH_MS)
        self.write_state(clients=0, writers=0, watchers=0)

    def _save_screen(self, data: bytes) -> None:
        path = self.dir.file(SCREEN)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(path, flags, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)

    def teardown(self) -> None:
        """Stop and delete the machine a launch handed over, as the launch would have."""
        plan = self.spec.get("teardown")
        if not plan:
            return
        outcome = run_teardown(plan)
        log.info("teardown of machine %r: %s", plan["machine"], outcome)
        self.write_state(teardown=outcome)


def _report(fd: int, message: Mapping[str, Any]) -> None:
    with contextlib.suppress(OSError):
        os.write(fd, (json.dumps(message) + "\n").encode())
    with contextlib.suppress(OSError):
        os.close(fd)


def hold(directory: str, ready_fd: int, lock_fd: int) -> int:
    """Run the holder of the session in ``directory`` (after the fork); its exit code."""
    os.chdir("/")
    os.set_inheritable(lock_fd, False)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    sdir = SessionDir(directory)
    holder = None
    try:
        spec = sdir.read_json("session.json")
        if spec is None:
            raise RuntimeError(f"{directory}: no readable session.json")
        holder = Holder(sdir, spec, lock_fd)
        holder.start()
    except BaseException as exc:
        log.error("session %r could not start: %s", sdir.name, exc)
        if holder is not None:
            holder.undo.close()
        code = exc.errno if isinstance(exc, OSError) else None
        filename = exc.filename if isinstance(exc, OSError) else None
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        _report(ready_fd, {"ok": False, "errno": code, "message": text, "filename": filename})
        return 1
    assert holder.child is not None
    _report(ready_fd, {"ok": True, "pid": os.getpid(), "child_pid": holder.child.pid})
    with holder.undo:
        status = holder.serve()
        holder.end(status)
    holder.teardown()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        sys.stderr.write(f"usage: python -m bottle.sessions._holder DIR READY_FD LOCK_FD ({LOG})\n")
        return 2
    directory, ready_fd, lock_fd = argv[1], int(argv[2]), int(argv[3])
    if os.fork():
        os._exit(0)
    return hold(directory, ready_fd, lock_fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
