"""What a guest command or an agent session gave back: a status first, the precise error on ask.

The drop-in contract returns statuses rather than raising (the replaced class did), so each
result also carries what bottle learnt about the run, and `check()` turns that into the precise
exception: `MachineNotFoundError`, `ConnectionLostError`, `RetryExhaustedError`, … These types
sit below `bottle.backend` and `bottle.smolvm`; they import only `bottle.errors`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bottle import _execwire as ew
from bottle.errors import BottleError, GuestCommandError, RetryExhaustedError

__all__ = ["AgentResult", "ExecResult", "Progress", "exit_status"]


exit_status = ew.exit_status


@dataclass(frozen=True)
class ExecResult:
    """The outcome of a captured guest command: `ExecResult(returncode, stdout, stderr)`.

    Two keyword-only extras never take part in equality and show in `repr` only when set:
    `error`, the smolvm failure behind a status (`stderr` then holds smolvm's `Error:` line),
    and `retried`, the earlier attempts when the retry policy ran the command again.
    """

    returncode: int
    stdout: str
    stderr: str
    error: BottleError | None = field(default=None, compare=False, repr=False, kw_only=True)
    retried: tuple[ExecResult, ...] = field(default=(), compare=False, repr=False, kw_only=True)
    retry_exhausted: bool = field(default=False, compare=False, repr=False, kw_only=True)

    def __repr__(self) -> str:
        text = (
            f"ExecResult(returncode={self.returncode!r}, stdout={self.stdout!r}, "
            f"stderr={self.stderr!r}"
        )
        if self.error is not None:
            text += f", error={type(self.error).__name__}"
        if self.retried:
            text += f", attempts={len(self.retried) + 1}"
        return text + ")"

    @property
    def ok(self) -> bool:
        """True when the command exited with status 0 and smolvm reported no failure."""
        return self.returncode == 0 and self.error is None

    @property
    def attempts(self) -> tuple[ExecResult, ...]:
        """Every run of the command, this one last."""
        return (*self.retried, self)

    def check(self, what: str = "guest command") -> ExecResult:
        """Return self if the command ran and succeeded; else raise what went wrong.

        Raises:
            SmolvmError (MachineNotFoundError, MachineNotRunningError, ConnectionLostError, …):
                smolvm itself failed; the guest command may not have run.
            RetryExhaustedError: every attempt ended with a retryable status.
            GuestCommandError: the guest command exited non-zero.
        """
        if self.error is not None:
            raise self.error
        if self.returncode == 0:
            return self
        detail = self.stderr.strip().splitlines()[-1:] or self.stdout.strip().splitlines()[-1:]
        tail = f": {detail[0][:300]}" if detail else ""
        if self.retry_exhausted:
            statuses = ", ".join(str(r.returncode) for r in self.attempts)
            raise RetryExhaustedError(
                f"{what} failed {len(self.attempts)} times (statuses: {statuses}); giving up"
                f"{tail}",
                self.attempts,
            )
        raise GuestCommandError(f"{what} exited with status {self.returncode}{tail}", self)


@dataclass(frozen=True)
class AgentResult:
    """The outcome of an agent session: its status, and what bottle learnt went wrong, if anything.

    `returncode` is what the replaced class returned: smolvm's status (128+N when it died of
    signal N). `error` is set when the status is smolvm's or bottle's failure rather than the
    agent's own (the machine was missing or stopped, the VM died mid-session, …).
    """

    returncode: int
    error: BottleError | None = field(default=None, compare=False)

    @property
    def ok(self) -> bool:
        """True when the agent exited with status 0 and nothing went wrong around it."""
        return self.returncode == 0 and self.error is None

    def check(self) -> AgentResult:
        """Return self unless smolvm or bottle failed around the session; then raise that error.

        The agent's own non-zero status is the agent's answer, not an error: it is returned.
        """
        if self.error is not None:
            raise self.error
        return self


@dataclass(frozen=True)
class Progress:
    """One report from a long step of `launch`: it began, smolvm printed a line, or it ended.

    `step` is `creating`, `starting` or `provisioning` on the way up, `stopping` or `deleting`
    on the way down; `elapsed` counts seconds since the step began; `line` is a line smolvm
    printed (image pull, boot), when this report carries one, and `redrawn` says that smolvm
    redraws that line in place (a progress bar: the next line replaces it); `done` marks the
    step's end.
    """

    step: str
    machine: str
    elapsed: float = 0.0
    line: str | None = None
    done: bool = False
    redrawn: bool = False
