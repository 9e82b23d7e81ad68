"""The relay's child processes: the command on the pty, and the resize command's runner."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Mapping

# On hang-up (and at the end) the child gets SIGHUP, then SIGKILL after this grace (seconds);
# a resize command still running at the end gets the same grace.
KILL_GRACE = 0.5


def exit_status(wait_status: int) -> int:
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


class Child:
    """The child process: its status, signals to its group, and waiting for it.

    With signal handling, SIGCHLD tells the loop to look; without (not the main thread), a
    thread waits for the child and makes ``fd`` readable when it has exited.
    """

    def __init__(self, pid: int, *, threaded: bool) -> None:
        self.pid = pid
        self.status: int | None = None
        self.fd = -1
        self._threaded = threaded
        if threaded:
            import threading

            self._done = threading.Event()
            self.fd, self._notify_fd = os.pipe()
            self._thread = threading.Thread(
                target=self._waiter, name="bottle-relay-wait", daemon=True
            )
            self._thread.start()

    def _waiter(self) -> None:
        try:
            self.status = self._reap(0)
        finally:
            # `end` joins this thread before it closes the pipe: once `status` is set the loop
            # may be gone, and a descriptor number closed early could be reused by then.
            try:
                os.write(self._notify_fd, b"x")
            finally:
                self._done.set()

    def _reap(self, options: int) -> int | None:
        try:
            pid, wait_status = os.waitpid(self.pid, options)
        except ChildProcessError:  # reaped behind our back: the status is lost
            return 255
        return exit_status(wait_status) if pid else None

    def poll(self) -> int | None:
        """The exit status if the child has exited, else None."""
        if self.status is None and not self._threaded:
            self.status = self._reap(os.WNOHANG)
        return self.status

    def wait(self, timeout: float | None) -> int | None:
        """Wait up to ``timeout`` seconds (None: forever) for the child's exit status."""
        if self._threaded:
            self._done.wait(timeout)
            return self.status
        if timeout is None:
            if self.status is None:
                self.status = self._reap(0)
            return self.status
        deadline = time.monotonic() + timeout
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.status

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the child's process group (it is a session leader)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def end(self) -> None:
        """Make sure the child is gone: SIGHUP, SIGKILL after a grace, then reap it."""
        if self.poll() is None:
            self.signal(signal.SIGHUP)
            if self.wait(KILL_GRACE) is None:
                self.signal(signal.SIGKILL)
                self.wait(None)
        if self._threaded:
            self._thread.join()  # reaped: it only has its notify byte left to write
            os.close(self.fd)
            os.close(self._notify_fd)


class ResizeWorker:
    """Runs the resize command off the copy loop: one at a time, the latest size wins."""

    def __init__(self, words: list[str], machine: str | None, env: Mapping[str, str]) -> None:
        import subprocess
        import threading

        self._subprocess = subprocess
        self._words = words
        self._machine = machine or ""
        self._env = dict(env)
        self._cond = threading.Condition()
        self._pending: tuple[int, int] | None = None
        self._stopping = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._main, name="bottle-relay-resize", daemon=True)
        self._thread.start()

    def post(self, size: tuple[int, int]) -> None:
        with self._cond:
            self._pending = size
            self._cond.notify()

    def _main(self) -> None:
        sp = self._subprocess
        while True:
            with self._cond:
                while self._pending is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                size, self._pending = self._pending, None
                assert size is not None  # the wait above ends only with a size or a stop
                rows, cols = size
                argv = [w.format(rows=rows, cols=cols, machine=self._machine) for w in self._words]
                try:
                    # Its own session and no terminal: it must not touch the user's.
                    self._proc = sp.Popen(
                        argv,
                        stdin=sp.DEVNULL,
                        stdout=sp.DEVNULL,
                        stderr=sp.DEVNULL,
                        env=self._env,
                        start_new_session=True,
                    )
                except OSError:
                    continue
                proc = self._proc
            proc.wait()
            with self._cond:
                self._proc = None

    def stop(self) -> None:
        """Stop taking sizes; give a running command a grace, then kill it."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(KILL_GRACE)
        with self._cond:
            proc = self._proc
        if proc is not None:
            proc.kill()
        self._thread.join()
