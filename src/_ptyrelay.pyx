# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: freethreading_compatible=True
"""Native core of the PTY relay: spawn a child on a pty, and a GIL-free copy loop.

The orchestration (terminal modes, signal handlers, waiting for the child) lives in
``bottle.relay``; this module and its twin ``bottle._ptyrelay_py`` only provide `spawn` and
`Pump`, with identical behaviour.
"""

import os

cimport cython
from libc.errno cimport (
    EAGAIN, EINTR, EIO, EPIPE, EINVAL, EBADF, ENOEXEC, ENOMEM, ETIMEDOUT, errno,
)
from libc.signal cimport SIG_DFL, SIGCHLD, SIGCONT, SIGWINCH, signal
from libc.stdio cimport snprintf
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcpy, memmove
from posix.fcntl cimport F_DUPFD_CLOEXEC, F_GETFL, F_SETFL, O_NONBLOCK, fcntl
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.types cimport off_t, pid_t, sigset_t
from posix.unistd cimport (
    SEEK_CUR, _exit, close, dup2, execve, fork, ftruncate, lseek, read, setsid, write,
)
from posix.wait cimport waitpid


cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    ctypedef unsigned int nfds_t
    enum: POLLIN, POLLOUT, POLLERR, POLLHUP, POLLNVAL
    int poll(pollfd *fds, nfds_t nfds, int timeout)


cdef extern from "<termios.h>" nogil:
    ctypedef unsigned int tcflag_t
    ctypedef unsigned char cc_t
    enum: NCCS, VEOF, ICANON
    struct termios:
        tcflag_t c_lflag
        cc_t c_cc[NCCS]
    int tcgetattr(int fd, termios *t)


cdef extern from "<sys/ioctl.h>" nogil:
    struct winsize:
        unsigned short ws_row
        unsigned short ws_col
    enum: TIOCGWINSZ, TIOCSWINSZ, TIOCSCTTY
    int ioctl(int fd, unsigned long request, ...)


cdef extern from "<signal.h>" nogil:
    enum: NSIG, SIG_SETMASK
    int pthread_sigmask(int how, const sigset_t *new, sigset_t *old)
    int sigfillset(sigset_t *s)
    int sigemptyset(sigset_t *s)


cdef extern from "<unistd.h>" nogil:
    enum: _POSIX_VDISABLE


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_t:
        pass
    int pthread_create(pthread_t *thread, const void *attr, void *(*start)(void *) noexcept nogil,
                       void *arg)
    int pthread_detach(pthread_t thread)


cdef extern from *:
    """
    #include <fcntl.h>
    #include <unistd.h>
    #if defined(__linux__)
    #include <sys/syscall.h>
    #ifndef CLOSE_RANGE_CLOEXEC
    #define CLOSE_RANGE_CLOEXEC (1U << 2)  /* linux/close_range.h, Linux 5.11 */
    #endif
    #endif
    /* Between fork and exec: mark every descriptor from lowfd up close-on-exec, so the child
       inherits only its stdio. close_range(CLOSE_RANGE_CLOEXEC) on Linux >= 5.11, else a
       loop of fcntl() (async-signal-safe) up to maxfd, computed before fork. */
    static void bottle_cloexec_from(int lowfd, int maxfd) {
        int fd, flags;
    #if defined(__linux__) && defined(SYS_close_range)
        if (syscall(SYS_close_range, (unsigned int)lowfd, ~0U, CLOSE_RANGE_CLOEXEC) == 0)
            return;
    #endif
        for (fd = lowfd; fd < maxfd; fd++) {
            flags = fcntl(fd, F_GETFD);
            if (flags >= 0 && !(flags & FD_CLOEXEC))
                fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
        }
    }
    """
    void bottle_cloexec_from(int lowfd, int maxfd) nogil


cdef extern from *:
    """
    #include <fcntl.h>
    #if defined(__linux__) && !defined(F_SETPIPE_SZ)
    #define F_SETPIPE_SZ 1031
    #endif
    /* A deeper pipe between the copy loop and the recording's writer thread (Linux; best
       effort): 1 MiB is the unprivileged maximum by default. */
    static void bottle_grow_pipe(int fd, int size) {
    #if defined(F_SETPIPE_SZ)
        (void)fcntl(fd, F_SETPIPE_SZ, size);
    #else
        (void)fd; (void)size;
    #endif
    }
    """
    void bottle_grow_pipe(int fd, int size) nogil


# Events returned by Pump.run() and Pump.drain(); the same numbers in the pure twin.
cdef enum:
    C_EV_DONE = 0
    C_EV_SIGNAL = 1
    C_EV_EOF = 2
    C_EV_HUP = 3
    C_EV_CHILD = 4
    C_EV_INTR = 5

EV_DONE = C_EV_DONE
EV_SIGNAL = C_EV_SIGNAL
EV_EOF = C_EV_EOF
EV_HUP = C_EV_HUP
EV_CHILD = C_EV_CHILD
EV_INTR = C_EV_INTR

DEFAULT_BUFSIZE = 128 * 1024
# While input (or its end) is held, the child's termios is re-checked at this interval; with
# nothing held the loop sets no timer at all.
cdef int HOLD_POLL_MS = 10
# Linux's EIO on a pty master is not always the end of the output. Seen under load (a child
# writing 5003 bytes in 5-byte writes and exiting at once): the relay read 80 bytes, the next
# read failed with EIO, and a read right after it returned the other 4923 (the bytes were still
# on their way from the pty's buffer to its line discipline; 8 of 8 such losses, both twins).
# So after EIO the drain reads again, at once and then after 1, 2, 4, 8 and 16 ms, and takes
# EIO as the end only when all of these find nothing (31 ms at the end of a session; poll
# cannot wait for it: it reports POLLHUP all along). Each read that finds data starts over.
# The holder's Hub drains the same way.
cdef int C_EOF_RECHECKS = 6
EOF_RECHECKS = C_EOF_RECHECKS


cdef inline long long _recheck_delay_us(int done) noexcept nogil:
    # The pause before the re-read after ``done`` empty ones: 0, 1, 2, 4, 8, 16 ms.
    return 0 if done == 0 else (<long long>1000) << (done - 1)

# Stages of the child between fork and exec, reported with errno through the exec pipe.
cdef int STAGE_EXEC = 0
cdef int STAGE_SETSID = 1
cdef int STAGE_CTTY = 2
cdef int STAGE_DUP = 3
STAGES = ("exec", "setsid", "TIOCSCTTY", "dup2")
# Where close_range() is missing, descriptors are swept one by one up to the limit, capped here.
MAX_FD_SWEEP = 65536


cdef long long _now_us() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <long long>ts.tv_sec * 1000000 + ts.tv_nsec // 1000


cdef long long _now_ms() noexcept nogil:
    return _now_us() // 1000


# A drain's re-reads after Linux's EIO (see EOF_RECHECKS), for the relay's and the holder's.
cdef struct eofcheck:
    int done  # re-reads in a row that found nothing
    long long at  # when the next one is due (microseconds; 0: not scheduled yet)


cdef inline bint _recheck_over(eofcheck *e) noexcept nogil:
    return e.done >= C_EOF_RECHECKS


cdef inline int _recheck_wait_ms(eofcheck *e) noexcept nogil:
    # Milliseconds until the next re-read, scheduling it if it is not yet.
    cdef long long left
    if not e.at:
        e.at = _now_us() + _recheck_delay_us(e.done)
    left = e.at - _now_us()
    return <int>((left + 999) // 1000) if left > 0 else 0


cdef inline bint _recheck_due(eofcheck *e) noexcept nogil:
    return _now_us() >= e.at


cdef inline void _recheck_read(eofcheck *e, bint found) noexcept nogil:
    # The re-read has been made: data found starts the schedule over.
    e.at = 0
    e.done = 0 if found else e.done + 1


cdef void _child(const char *path, char **argv, char **envp, char **sh_argv, int slave,
                 int out, int errfd, int maxfd) noexcept nogil:
    # Between fork and exec: async-signal-safe calls only (the parent may have threads).
    cdef int i, err = 0
    cdef int report[2]
    cdef sigset_t empty
    for i in range(1, NSIG):
        signal(i, SIG_DFL)  # SIGKILL/SIGSTOP fail harmlessly
    sigemptyset(&empty)
    pthread_sigmask(SIG_SETMASK, &empty, NULL)
    # Keep the slave and the report pipe clear of 0-2 so the dup2s below cannot clobber them.
    if errfd <= 2:
        errfd = fcntl(errfd, F_DUPFD_CLOEXEC, 3)
    if slave <= 2:
        slave = fcntl(slave, F_DUPFD_CLOEXEC, 3)
    report[0] = STAGE_SETSID
    if setsid() >= 0:
        report[0] = STAGE_CTTY
        if ioctl(slave, TIOCSCTTY, 0) >= 0:
            report[0] = STAGE_DUP
            if out < 0:
                out = slave
            elif out <= 2:  # like the slave: clear of the dup2s below
                out = fcntl(out, F_DUPFD_CLOEXEC, 3)
            if out >= 0 and dup2(slave, 0) >= 0 and dup2(out, 1) >= 0 and dup2(out, 2) >= 0:
                close(slave)
                bottle_cloexec_from(3, maxfd)
                report[0] = STAGE_EXEC
                execve(path, argv, envp)
                err = errno
                if err == ENOEXEC:
                    # What execvp does with a file the kernel cannot run as it is (a script
                    # without "#!"): /bin/sh runs it. Its own failure reports the first one.
                    execve(sh_argv[0], sh_argv, envp)
    report[1] = err if err != 0 else errno
    write(errfd, report, sizeof(report))
    _exit(127)


cdef char **_cstrings(tuple items, list keep) except NULL:
    # A tuple, not a list: nothing another thread does can change its length under the loop
    # (free-threaded builds run without the GIL).
    cdef Py_ssize_t i, n = len(items)
    cdef bytes item
    cdef char **out = <char **>malloc((n + 1) * sizeof(char *))
    if out == NULL:
        raise MemoryError()
    for i in range(n):
        obj = items[i]
        if not isinstance(obj, bytes):
            free(out)
            raise TypeError(f"expected bytes, got {type(obj).__name__}")
        item = <bytes>obj  # a subclass too, as in the twin
        if b"\0" in item:
            free(out)
            raise ValueError("embedded null byte")
        keep.append(item)
        out[i] = <char *>item
    out[n] = NULL
    return out


def spawn(bytes path, argv, envp, int slave_fd, int out_fd=-1):
    """Start ``path`` on the pty whose slave is ``slave_fd``; return its pid.

    The child is a session leader with the pty as its controlling terminal, stdin, stdout and
    stderr (and no other descriptor), default signal dispositions and an empty signal mask.
    With ``out_fd`` >= 0 its stdout and stderr are that descriptor instead of the pty. A file
    the kernel cannot execute as it is (ENOEXEC: a script without "#!") is run by /bin/sh, as
    execvp does. A failure before or at exec raises OSError in the parent, with ``args[2]``
    naming the stage that failed (see STAGES) when it is not exec itself.
    """
    cdef list keep = []
    cdef char **c_argv = NULL
    cdef char **c_envp = NULL
    cdef char **c_sh = NULL
    cdef const char *c_path
    cdef sigset_t all_signals, old_mask
    cdef pid_t pid
    cdef int fork_errno = 0, status, got = 0, r, rfd, wfd, maxfd
    cdef int report[2]
    cdef tuple args = tuple(argv), env = tuple(envp)
    if b"\0" in path:
        raise ValueError("embedded null byte")
    if not args:
        raise ValueError("argv must not be empty")
    c_path = path
    maxfd = min(os.sysconf("SC_OPEN_MAX"), MAX_FD_SWEEP)
    # Before the arrays are allocated: nothing to free when it fails (EMFILE).
    rfd, wfd = os.pipe()  # close-on-exec: EOF on it means exec succeeded
    try:
        c_argv = _cstrings(args, keep)
        c_envp = _cstrings(env, keep)
        # Made before fork: the child may not allocate (async-signal-safe calls only).
        c_sh = _cstrings((b"/bin/sh", path) + args[1:], keep)
    except BaseException:
        free(c_argv)
        free(c_envp)
        os.close(rfd)
        os.close(wfd)
        raise
    with nogil:
        # Block every signal across fork so no handler of ours runs in the child before the
        # dispositions are reset (Python's handler would write to the shared wakeup fd).
        sigfillset(&all_signals)
        pthread_sigmask(SIG_SETMASK, &all_signals, &old_mask)
        pid = fork()
        if pid == 0:
            _child(c_path, c_argv, c_envp, c_sh, slave_fd, out_fd, wfd, maxfd)
        fork_errno = errno
        pthread_sigmask(SIG_SETMASK, &old_mask, NULL)
        close(wfd)
        if pid > 0:
            while got < <int>sizeof(report):
                r = read(rfd, (<char *>report) + got, sizeof(report) - got)
                if r > 0:
                    got += r
                elif r == 0 or errno != EINTR:
                    break
            if got == <int>sizeof(report):
                while waitpid(pid, &status, 0) < 0 and errno == EINTR:
                    pass
        close(rfd)
    free(c_argv)
    free(c_envp)
    free(c_sh)
    if pid < 0:
        raise OSError(fork_errno, os.strerror(fork_errno))
    if got == <int>sizeof(report):
        if report[0] == STAGE_EXEC:
            raise OSError(report[1], os.strerror(report[1]))
        raise OSError(report[1], os.strerror(report[1]), STAGES[report[0]])
    return pid


# The recording (asciicast v2): its encoder, writer thread and recorder, which both the Pump and
# the Hub hold.
include "_recorder.pxi"


cdef inline size_t _ring_free(size_t head, size_t used, size_t size,
                              size_t *at) noexcept nogil:
    # Where the next read goes (at) and how much fits there in one piece: after the pending
    # bytes, up to the buffer's end or, once they have wrapped, up to their start.
    cdef size_t end = head + used
    if end >= size:
        at[0] = end - size
        return head - at[0]
    at[0] = end
    return size - end


cdef inline size_t _ring_pending(size_t head, size_t used, size_t size) noexcept nogil:
    # How many of the pending bytes lie in one piece from head (the rest wrapped to the front).
    return used if used < size - head else size - head


cdef inline void _ring_took(size_t *head, size_t *used, size_t n, size_t size) noexcept nogil:
    # n pending bytes have gone out; an empty ring starts over at the front, so reads into it
    # come whole.
    used[0] -= n
    head[0] += n
    if used[0] == 0 or head[0] == size:
        head[0] = 0


cdef class Pump:
    """Copy user input to a pty master and its output back, until something needs Python.

    ``in_fd``/``out_fd`` are the user's side, ``master_fd`` the pty; all three must be
    non-blocking (``in_fd`` may be -1: no input, end-of-input at once). ``wake_fd`` is the
    read end of the `signal.set_wakeup_fd` pipe, ``child_fd`` becomes readable when the child
    exits (both -1 when unused). ``size_fd`` is the user's terminal, read on SIGWINCH.
    With ``winch`` the loop applies SIGWINCH itself (reporting it only when the pty refuses
    the size). ``in_tty`` makes end-of-input a hang-up; otherwise it sends VEOF to the child.
    ``hold_ms`` > 0 holds all input and its end while the child's pty is in canonical mode,
    for at most that long from the Pump's creation; ``intr`` (the user's interrupt character,
    -1 for none) typed meanwhile drops everything held and ends the run with EV_INTR: the
    user gave up waiting for the child. One thread at a time may run or drain it.

    ``record_fd`` >= 0 records the session as asciicast v2 events into that file, after the
    header its caller wrote: an ``"o"`` event for what reaches ``out_fd``, ``"r"`` for each
    change of the pty's size and, with ``record_input``, ``"i"`` for what is read from
    ``in_fd``; times count from the Pump's creation. The Pump writes through a thread of its
    own onto a duplicate of ``record_fd``; `finish_recording` ends it. When that thread has
    taken nothing for ``record_stall_ms`` while events wait (a stuck disk), the recording is
    given up and the relay goes on without it.
    """

    cdef int in_fd, out_fd, master_fd, wake_fd, child_fd, size_fd
    cdef bint winch, in_tty, hold_active, in_eof, master_eof, master_eio, eof_reported, any_in
    cdef bint out_blocked, master_blocked, busy
    cdef int hold_ms, intr, veof_pending, nsigs, err
    cdef long long held_at
    cdef unsigned char last_in
    cdef unsigned char sigs[NSIG + 1]
    cdef char *ibuf
    cdef char *obuf
    # Ring buffers (head: where the pending bytes start; ilen/olen: how many): a full buffer
    # takes more the moment any of it has gone out, and no byte is ever moved. Under a stream
    # the terminal frees a few KiB per write. Sliding the ~124 KiB still unsent to the front
    # for each cost a sixth of the relay's CPU in memmove; waiting for half of it to go out
    # instead made each refill a 64 KiB burst of reads from a pty that holds 12 KiB, so the
    # burst waited on the child refilling it while the terminal ran dry (half the throughput
    # to a reader taking 64 KiB at a time). Read as much as went out, when it went out.
    cdef size_t bufsize, ihead, ilen, ohead, olen
    cdef unsigned long long master_got  # bytes read from the pty in all (see EOF_RECHECKS)
    cdef recorder rec  # off (rec.on false) unless recording

    def __cinit__(self, int in_fd, int out_fd, int master_fd, int wake_fd=-1, int child_fd=-1,
                  int size_fd=-1, *, bint winch=True, bint in_tty=False, int hold_ms=0,
                  int intr=-1, Py_ssize_t bufsize=DEFAULT_BUFSIZE, int record_fd=-1,
                  bint record_input=False, int record_stall_ms=REC_STALL_MS):
        self.rec.fd = self.rec.status = -1
        if bufsize < 1:
            raise ValueError("bufsize must be positive")
        if not -1 <= intr <= 255:
            raise ValueError(f"intr must be a byte value or -1 (got {intr})")
        if record_stall_ms < 1:
            raise ValueError("record_stall_ms must be positive")
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.master_fd = master_fd
        self.wake_fd = wake_fd
        self.child_fd = child_fd
        self.size_fd = size_fd
        self.winch = winch
        self.in_tty = in_tty
        self.hold_ms = hold_ms
        self.intr = intr
        self.hold_active = hold_ms > 0
        self.held_at = _now_ms()  # the front creates the Pump as the child starts
        self.bufsize = bufsize
        self.ibuf = <char *>malloc(bufsize)
        self.obuf = <char *>malloc(bufsize)
        if self.ibuf == NULL or self.obuf == NULL:
            raise MemoryError()
        if in_fd < 0:
            self.in_eof = True
            self.veof_pending = 1
        if record_fd >= 0:
            _rec_open(&self.rec, record_fd, record_input, record_stall_ms)

    def __dealloc__(self):
        free(self.ibuf)
        free(self.obuf)
        _rec_close(&self.rec)

    def run(self):
        """Relay until an event needs Python; return it (EV_SIGNAL, EV_EOF, EV_HUP, EV_CHILD or
        EV_INTR).

        EV_EOF (the child side closed the pty, output flushed) is returned once; later calls
        keep waiting for signals, the child and a hang-up.
        """
        cdef int ev
        self._enter()
        try:
            with nogil:
                ev = self._run()
        finally:
            self.busy = False
        if ev < 0:
            raise OSError(self.err, os.strerror(self.err))
        return ev

    def drain(self, int idle_ms, int cap_ms):
        """After the child's exit: copy its remaining output, then flush it to ``out_fd``.

        Reads the master until EOF, until it stays quiet for ``idle_ms``, or until it has been
        waited on for ``cap_ms`` in all (a grandchild may keep the pty open and busy; time
        blocked on a stalled ``out_fd`` does not count). Linux's EIO counts as the end only
        once reads at once and after 1, 2, 4, 8 and 16 ms found nothing more (EOF_RECHECKS),
        however early it came. Returns EV_DONE, EV_HUP when
        the user's side is gone, or EV_SIGNAL when a signal other than SIGWINCH, SIGCHLD or
        SIGCONT interrupts the flush.
        """
        cdef int ev
        if idle_ms < 0 or cap_ms < 0:
            raise ValueError(f"drain: idle_ms and cap_ms must not be negative "
                             f"(got {idle_ms}, {cap_ms})")
        self._enter()
        try:
            with nogil:
                ev = self._drain(idle_ms, cap_ms)
        finally:
            self.busy = False
        if ev < 0:
            raise OSError(self.err, os.strerror(self.err))
        return ev

    def signals(self):
        """Return the signal numbers received since the last call (each once, in order)."""
        out = (<char *>self.sigs)[:self.nsigs]
        self.nsigs = 0
        return out

    def resize(self):
        """Copy the user's terminal size to the pty; return (rows, cols), None when unknown.

        Raises OSError when the pty refuses the size.
        """
        cdef winsize ws
        cdef int err
        if self.size_fd < 0 or ioctl(self.size_fd, TIOCGWINSZ, &ws) < 0:
            return None
        if ws.ws_row == 0 or ws.ws_col == 0:
            return None
        if self._set_size(&ws) < 0:
            err = errno
            raise OSError(err, os.strerror(err))
        return (ws.ws_row, ws.ws_col)

    def finish_recording(self, int timeout_ms):
        """End the recording: flush its last events and wait for the file to be written.

        Waits at most ``timeout_ms`` in all. Returns 0 when the file holds the whole session,
        else the errno of what cut it short (ETIMEDOUT: the disk took too long, the session
        went on unrecorded from there). The file always ends with a whole event. Without a
        recording, or called again, returns the same as before (0 without one).
        """
        if timeout_ms < 0:
            raise ValueError(f"finish_recording: timeout_ms must not be negative "
                             f"(got {timeout_ms})")
        self._enter()
        try:
            with nogil:
                _rec_finish(&self.rec, timeout_ms)
        finally:
            self.busy = False
        return self.rec.err

    @property
    def holding(self):
        """Whether typed-ahead input is still being held back."""
        return self.hold_active

    @property
    def buffered(self):
        """Bytes waiting in (input, output) buffers."""
        return (self.ilen, self.olen)

    # ---------------------------------------------------------------- C helpers

    cdef int _enter(self) except -1:
        # Two loops on one Pump would share its buffers and silently corrupt the stream. The
        # critical section makes test-and-set atomic on free-threaded builds (the GIL does
        # elsewhere).
        with cython.critical_section(self):
            if self.busy:
                raise RuntimeError("this Pump is already running in another thread")
            self.busy = True
        return 0

    cdef int _resize_c(self) noexcept nogil:
        # -1 when the pty refuses the size (Python reports it), 0 otherwise.
        cdef winsize ws
        if self.size_fd < 0 or ioctl(self.size_fd, TIOCGWINSZ, &ws) < 0:
            return 0
        if ws.ws_row != 0 and ws.ws_col != 0:
            return self._set_size(&ws)
        return 0

    cdef int _set_size(self, winsize *ws) noexcept nogil:
        # Sets the pty's size (-1 with errno when refused); a change is a recording's "r" event.
        cdef winsize old
        cdef bint changed = True
        if self.rec.on and ioctl(self.master_fd, TIOCGWINSZ, &old) == 0:
            changed = old.ws_row != ws.ws_row or old.ws_col != ws.ws_col
        if ioctl(self.master_fd, TIOCSWINSZ, ws) < 0:
            return -1
        if changed:
            _rec_resized(&self.rec, ws.ws_row, ws.ws_col)
        return 0

    cdef void _add_signal(self, unsigned char sig) noexcept nogil:
        cdef int i
        for i in range(self.nsigs):
            if self.sigs[i] == sig:
                return
        if self.nsigs <= NSIG:
            self.sigs[self.nsigs] = sig
            self.nsigs += 1

    cdef int _read_wake(self, bint drain_mode) noexcept nogil:
        # Returns EV_SIGNAL when Python must act, 0 otherwise, -1 on error.
        cdef unsigned char b[128]
        cdef ssize_t r, i
        cdef bint winch = False, report = False
        while True:
            r = read(self.wake_fd, b, sizeof(b))
            if r > 0:
                for i in range(r):
                    if b[i] == SIGWINCH and self.winch:
                        winch = True
                    elif drain_mode and (b[i] == SIGWINCH or b[i] == SIGCHLD or b[i] == SIGCONT):
                        pass
                    else:
                        self._add_signal(b[i])
                        report = True
            elif r == 0:
                self.wake_fd = -1
                break
            elif errno == EINTR:
                continue
            elif errno == EAGAIN:
                break
            else:
                self.err = errno
                return -1
        if winch and not drain_mode and self._resize_c() < 0:
            self._add_signal(SIGWINCH)
            report = True
        return 1 if report else 0

    cdef int _read_master(self) noexcept nogil:
        # Each chunk is written out at once (lowest latency; the user's side drains while the
        # pty refills); only when the output is blocked does it pile up in the buffer.
        # Returns EV_HUP when the user's side is gone, 0 otherwise, -1 on error.
        cdef ssize_t r
        cdef int w
        cdef size_t at, room
        while self.olen < self.bufsize:
            room = _ring_free(self.ohead, self.olen, self.bufsize, &at)
            r = read(self.master_fd, self.obuf + at, room)
            if r > 0:
                self.olen += r
                self.master_got += <size_t>r
                if not self.out_blocked:
                    w = self._write_out()
                    if w != 0:
                        return w
            elif r == 0:  # BSD/macOS: end of the pty
                self.master_eof = True
                self.master_eio = False
                break
            elif errno == EINTR:
                continue
            elif errno == EAGAIN:
                break
            elif errno == EIO:  # Linux: the child side closed (the drain makes sure of the end)
                self.master_eof = self.master_eio = True
                break
            else:
                self.err = errno
                return -1
        return 0

    cdef int _write_out(self) noexcept nogil:
        # Returns EV_HUP when the user's side is gone, 0 otherwise, -1 on error.
        # A recording sees what the terminal took, when it took it; while its buffer is full
        # the output waits (see _rec_blocked).
        cdef ssize_t r
        cdef size_t n, room
        while self.olen > 0:
            n = _ring_pending(self.ohead, self.olen, self.bufsize)
            if self.rec.on:
                room = _rec_room(&self.rec)
                if room == 0:
                    break
                if n > room:
                    n = room
            r = write(self.out_fd, self.obuf + self.ohead, n)
            if r >= 0:
                if r > 0 and self.rec.on:
                    _rec_event(&self.rec, b'o', &self.rec.u8out, self.obuf + self.ohead, r)
                _ring_took(&self.ohead, &self.olen, r, self.bufsize)
            elif errno == EINTR:
                continue
            elif errno == EAGAIN:
                self.out_blocked = True
                break
            elif errno == EIO or errno == EPIPE:
                self.ohead = self.olen = 0
                return C_EV_HUP
            else:
                self.err = errno
                return -1
        return 0

    cdef int _read_in(self, short revents) noexcept nogil:
        # Returns EV_HUP when the user's terminal went away, EV_INTR when the user typed their
        # interrupt character while input was held, 0 otherwise, -1 on error.
        cdef ssize_t r, want
        cdef size_t room, at
        if self.in_tty and revents & (POLLHUP | POLLERR):
            return C_EV_HUP
        while self.ilen < self.bufsize:
            want = <ssize_t>_ring_free(self.ihead, self.ilen, self.bufsize, &at)
            if self.rec.on and self.rec.with_input:
                room = _rec_room(&self.rec)
                if room == 0:
                    break
                if <size_t>want > room:
                    want = <ssize_t>room
            r = read(self.in_fd, self.ibuf + at, want)
            if r > 0:
                if self.rec.on and self.rec.with_input:
                    _rec_event(&self.rec, b'i', &self.rec.u8in, self.ibuf + at, r)
                if (self.hold_active and self.intr >= 0
                        and memchr(self.ibuf + at, self.intr, r) != NULL):
                    self._hold_timeout()  # the child may have gone raw since the last look
                    if self.hold_active:
                        self.ihead = self.ilen = 0
                        return C_EV_INTR
                self.ilen += r
                self.last_in = <unsigned char>self.ibuf[at + r - 1]
                self.any_in = True
                if not self.master_blocked and self._write_master() < 0:
                    return -1
                if r < want:
                    # A terminal or pipe hands over all it holds: a short read drained it, and
                    # reading again would only return EAGAIN (one syscall per keystroke saved).
                    break
            elif r == 0:
                if self.in_tty:
                    return C_EV_HUP
                self.in_eof = True
                # A partial line needs one VEOF to be delivered and a second to read as EOF.
                self.veof_pending = 2 if self.any_in and self.last_in != 10 else 1
                break
            elif errno == EINTR:
                continue
            elif errno == EAGAIN:
                break
            elif errno == EIO:
                return C_EV_HUP
            else:
                self.err = errno
                return -1
        return 0

    cdef int _write_master(self) noexcept nogil:
        cdef ssize_t r
        cdef termios t
        cdef unsigned char veof[2]
        if self.master_eof or self.hold_active:
            return 0
        while self.ilen > 0:
            r = write(self.master_fd, self.ibuf + self.ihead,
                      _ring_pending(self.ihead, self.ilen, self.bufsize))
            if r >= 0:
                _ring_took(&self.ihead, &self.ilen, r, self.bufsize)
            elif errno == EINTR:
                continue
            elif errno == EAGAIN:
                self.master_blocked = True
                break
            elif errno == EIO:  # nobody holds the slave any more: input has no reader
                self.ihead = self.ilen = 0
                break
            else:
                self.err = errno
                return -1
        if self.ilen == 0:
            if self.in_eof and self.veof_pending > 0:
                if tcgetattr(self.master_fd, &t) < 0 or t.c_cc[VEOF] == _POSIX_VDISABLE:
                    self.veof_pending = 0
                    return 0
                veof[0] = veof[1] = t.c_cc[VEOF]
                r = write(self.master_fd, veof, self.veof_pending)
                if r > 0:
                    self.veof_pending -= <int>r
                elif r < 0 and errno == EIO:
                    self.veof_pending = 0
                elif r < 0 and errno != EAGAIN and errno != EINTR:
                    self.err = errno
                    return -1
        return 0

    cdef int _hold_timeout(self) noexcept nogil:
        # Poll timeout while input (or its end) is held; releases the hold once the child left
        # canonical mode or the bound, counted from the child's start, is over.
        cdef termios t
        cdef long long left
        if tcgetattr(self.master_fd, &t) < 0 or not (t.c_lflag & ICANON):
            self.hold_active = False
            return -1
        left = self.held_at + self.hold_ms - _now_ms()
        if left <= 0:
            self.hold_active = False
            return -1
        return <int>left if left < HOLD_POLL_MS else HOLD_POLL_MS

    cdef int _run(self) noexcept nogil:
        cdef pollfd fds[6]
        cdef int n, r, timeout, iw, ic, ii, im, io, ir, rec_wait
        cdef short ev
        cdef bint rec_blocked
        while True:
            timeout = -1
            if self.hold_active and (self.ilen > 0 or
                                     (self.in_eof and self.veof_pending > 0)):
                timeout = self._hold_timeout()
                if not self.hold_active:
                    if self._write_master() < 0:
                        return -1
            rec_wait = _rec_wait_ms(&self.rec)
            if rec_wait >= 0 and (timeout < 0 or rec_wait < timeout):
                timeout = rec_wait
            rec_blocked = _rec_blocked(&self.rec)
            n = 0
            iw = ic = ii = im = io = ir = -1
            if self.wake_fd >= 0:
                fds[n].fd = self.wake_fd
                fds[n].events = POLLIN
                iw = n
                n += 1
            if self.child_fd >= 0:
                fds[n].fd = self.child_fd
                fds[n].events = POLLIN
                ic = n
                n += 1
            if not self.master_eof:
                ev = 0
                if self.olen < self.bufsize:
                    ev |= POLLIN
                if self.ilen > 0 and not self.hold_active:
                    ev |= POLLOUT
                elif (self.in_eof and self.veof_pending > 0 and self.ilen == 0
                      and not self.hold_active):
                    ev |= POLLOUT
                if ev:
                    fds[n].fd = self.master_fd
                    fds[n].events = ev
                    im = n
                    n += 1
            if self.olen > 0 and not rec_blocked:
                fds[n].fd = self.out_fd
                fds[n].events = POLLOUT
                io = n
                n += 1
            if self.rec.on and self.rec.tail > self.rec.head:
                fds[n].fd = self.rec.fd
                fds[n].events = POLLOUT
                ir = n
                n += 1
            if self.in_fd >= 0 and not self.in_eof:
                if (not self.master_eof and self.ilen < self.bufsize
                        and not (rec_blocked and self.rec.with_input)):
                    fds[n].fd = self.in_fd
                    fds[n].events = POLLIN
                    ii = n
                    n += 1
                elif self.in_tty:
                    # Nothing to read for now, but a hang-up must still be seen.
                    fds[n].fd = self.in_fd
                    fds[n].events = 0
                    ii = n
                    n += 1
            if n == 0:
                self.err = EINVAL
                return -1
            r = poll(fds, n, timeout)
            if r < 0:
                if errno == EINTR:
                    continue
                self.err = errno
                return -1
            if r == 0:
                continue
            for r in range(n):
                if fds[r].revents & POLLNVAL:
                    self.err = EBADF
                    return -1
            if iw >= 0 and fds[iw].revents:
                r = self._read_wake(False)
                if r != 0:
                    return -1 if r < 0 else C_EV_SIGNAL
            if ic >= 0 and fds[ic].revents:
                return C_EV_CHILD
            if io >= 0 and fds[io].revents:
                self.out_blocked = False
            if ir >= 0 and fds[ir].revents:
                _rec_flush(&self.rec)
            if im >= 0 and fds[im].revents & (POLLOUT | POLLHUP | POLLERR):
                self.master_blocked = False
            if im >= 0 and fds[im].revents & (POLLIN | POLLHUP | POLLERR):
                r = self._read_master()
                if r != 0:
                    return r
            if self.olen > 0 and not self.out_blocked:
                r = self._write_out()
                if r != 0:
                    return r
            if ii >= 0 and fds[ii].revents:
                r = self._read_in(fds[ii].revents)
                if r != 0:
                    return r
            if not self.master_blocked and self._write_master() < 0:
                return -1
            if self.master_eof and self.olen == 0 and not self.eof_reported:
                self.eof_reported = True
                return C_EV_EOF

    cdef int _drain(self, int idle_ms, int cap_ms) noexcept nogil:
        cdef pollfd fds[4]
        cdef int n, r, w, timeout, iw, im, io, ir, rec_wait
        cdef long long started
        cdef unsigned long long got
        cdef bint recheck
        cdef eofcheck eio
        eio.done = 0
        eio.at = 0
        # Only time spent waiting for the pty counts against the cap: while a stalled
        # terminal blocks the output, what is already in the pty must not be dropped.
        cdef long long budget = <long long>cap_ms * 1000  # microseconds
        cdef bint reading = not self.master_eof or self.master_eio
        while True:
            if reading and (budget <= 0 or (self.master_eof and _recheck_over(&eio))):
                reading = False
            n = 0
            iw = im = io = ir = -1
            timeout = -1
            recheck = False
            rec_wait = _rec_wait_ms(&self.rec)
            if reading and self.olen < self.bufsize:
                if not self.master_eof:
                    fds[n].fd = self.master_fd
                    fds[n].events = POLLIN
                    im = n
                    n += 1
                    timeout = (<int>((budget + 999) // 1000)
                               if budget < <long long>idle_ms * 1000 else idle_ms)
                else:  # EIO: read again when the next re-read is due
                    recheck = True
                    timeout = _recheck_wait_ms(&eio)
            if self.olen > 0:
                if _rec_blocked(&self.rec):
                    fds[n].fd = self.rec.fd
                    fds[n].events = POLLOUT
                    ir = n
                    if rec_wait >= 0 and (timeout < 0 or rec_wait < timeout):
                        timeout = rec_wait
                else:
                    fds[n].fd = self.out_fd
                    fds[n].events = POLLOUT
                    io = n
                n += 1
            if n == 0 and not recheck:
                return C_EV_DONE
            if self.wake_fd >= 0:
                fds[n].fd = self.wake_fd
                fds[n].events = POLLIN
                iw = n
                n += 1
            started = _now_us()
            r = poll(fds, n, timeout)
            if im >= 0 or recheck:
                budget -= _now_us() - started
            if r < 0:
                if errno == EINTR:
                    continue
                self.err = errno
                return -1
            if recheck and _recheck_due(&eio):
                got = self.master_got
                self.master_eof = False
                w = self._read_master()
                if w != 0:
                    return w
                _recheck_read(&eio, self.master_got != got)
            if r == 0:
                if im >= 0:
                    reading = False
                continue
            if iw >= 0 and fds[iw].revents:
                r = self._read_wake(True)
                if r != 0:
                    return -1 if r < 0 else C_EV_SIGNAL
            if io >= 0 and fds[io].revents:
                self.out_blocked = False
            if ir >= 0 and fds[ir].revents:
                _rec_flush(&self.rec)
            if im >= 0 and fds[im].revents:
                if fds[im].revents & POLLNVAL:
                    self.err = EBADF
                    return -1
                r = self._read_master()
                if r != 0:
                    return r
                if self.master_eof and not self.master_eio:
                    reading = False
            if self.olen > 0 and not self.out_blocked:
                r = self._write_out()
                if r != 0:
                    return r


# The session holder's loop (Hub): a file of its own, compiled into this module.
include "_hub.pxi"
# The attach client's loop (Attach), after the Hub's protocol numbers it shares.
include "_attach.pxi"
