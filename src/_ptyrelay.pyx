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

# Recording (asciicast v2). The loop encodes events into a buffer of REC_BUFSIZE bytes and writes
# them to a pipe; a writer thread moves them from the pipe to the file, so that a slow or stuck
# disk can only stall the recording, never the loop in a write(2) it cannot interrupt. When the
# pipe has taken nothing for REC_STALL_MS while events wait, the recording is given up (the
# session goes on unrecorded); until then the output waits for it, as for a slow terminal.
REC_BUFSIZE = 256 * 1024
REC_STALL_MS = 5000
cdef size_t C_REC_BUFSIZE = 256 * 1024
cdef int REC_PIPE_SIZE = 1 << 20
cdef size_t REC_CHUNK = 64 * 1024
# Room always kept free past an event's data: its time and type, the sequence carried from the
# previous event, the closing bracket, and a resize event.
cdef size_t REC_SLACK = 128

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


# ------------------------------------------------------------------------- recording helpers

cdef struct u8state:
    # A UTF-8 sequence begun at the end of one read and carried to the next event.
    unsigned char pend[4]
    int have
    int need


cdef inline size_t _put_fffd(char *out) noexcept nogil:
    out[0] = <char>0xEF
    out[1] = <char>0xBF
    out[2] = <char>0xBD
    return 3


# What each byte becomes when it stands alone, as 8 bytes (copied whole: a fixed-size copy is a
# couple of moves, with no branch on the byte; random output took half the time this way) and a
# length: itself (ASCII), its JSON escape as json.dumps writes it, or U+FFFD (a continuation
# byte alone, C0, C1, F5-FF). A length of 0 marks the lead byte of a sequence; U8_NEED gives
# its length.
cdef unsigned char U8_OUT[256][8]
cdef unsigned char U8_LEN[256]
cdef unsigned char U8_NEED[256]
_SHORT_ESCAPES = {0x22: b'\\"', 0x5C: b"\\\\", 0x0A: b"\\n", 0x0D: b"\\r", 0x09: b"\\t",
                  0x08: b"\\b", 0x0C: b"\\f"}
for _b in range(256):
    if 0xC2 <= _b <= 0xF4:
        _alone = b""
        U8_NEED[_b] = 2 if _b < 0xE0 else (3 if _b < 0xF0 else 4)
    else:
        U8_NEED[_b] = 0
        if _b in _SHORT_ESCAPES:
            _alone = _SHORT_ESCAPES[_b]
        elif _b < 0x20:
            _alone = b"\\u%04x" % _b
        elif _b < 0x80:
            _alone = bytes([_b])
        else:
            _alone = "\ufffd".encode()
    U8_LEN[_b] = len(_alone)
    for _i in range(8):
        U8_OUT[_b][_i] = _alone[_i] if _i < len(_alone) else 0


cdef inline bint _u8_next_ok(unsigned char lead, int pos, unsigned char b) noexcept nogil:
    # Whether b may follow at position pos (1-3) of a sequence begun by lead (Table 3-7 of
    # the Unicode standard: no overlongs, no surrogates, nothing past U+10FFFF).
    if pos == 1:
        if lead == 0xE0:
            return 0xA0 <= b <= 0xBF
        if lead == 0xED:
            return 0x80 <= b <= 0x9F
        if lead == 0xF0:
            return 0x90 <= b <= 0xBF
        if lead == 0xF4:
            return 0x80 <= b <= 0x8F
    return 0x80 <= b <= 0xBF


cdef size_t _json_utf8(u8state *st, const unsigned char *s, size_t n, char *out) noexcept nogil:
    # Appends s to out as the inside of a JSON string, at most 6 bytes per input byte (plus
    # the carried sequence); returns the bytes written. Invalid UTF-8 becomes U+FFFD, one per
    # maximal ill-formed subpart, exactly as Python's "replace" decoder (which asciinema's own
    # recorder uses) does; escapes are json.dumps's (ensure_ascii=False). A sequence still
    # open at the end is kept in st for the next call.
    cdef size_t i = 0, o = 0, j, k, need
    cdef unsigned char b
    # A sequence carried from the previous call: complete it, or replace what it had.
    while st.have and i < n:
        b = s[i]
        if not _u8_next_ok(st.pend[0], st.have, b):
            o += _put_fffd(out + o)
            st.have = 0
            break  # b starts afresh below
        st.pend[st.have] = b
        st.have += 1
        i += 1
        if st.have == st.need:
            memcpy(out + o, st.pend, st.need)
            o += st.need
            st.have = 0
    while i < n:
        b = s[i]
        if U8_LEN[b]:
            memcpy(out + o, U8_OUT[b], 8)  # out has room: 6 per byte, and REC_SLACK after
            o += U8_LEN[b]
            i += 1
            continue
        need = U8_NEED[b]
        k = 1
        while k < need and i + k < n and _u8_next_ok(b, <int>k, s[i + k]):
            k += 1
        if k == need:
            for j in range(need):
                out[o + j] = s[i + j]
            o += need
            i += need
        elif i + k == n:  # cut by the end of this read: carried to the next event
            memcpy(st.pend, s + i, k)
            st.have = <int>k
            st.need = <int>need
            break
        else:  # the maximal ill-formed subpart is one U+FFFD; the next byte starts afresh
            o += _put_fffd(out + o)
            i += k
    return o


cdef struct rec_writer:
    int src  # the pipe's read end
    int dst  # the recording file
    int status  # where the outcome (an errno, 0 for success) goes


cdef void *_rec_writer_main(void *arg) noexcept nogil:
    # The recording's writer thread: pipe -> file until the pipe's end. It owns its three
    # descriptors. On a failed write it closes the pipe at once (the loop sees EPIPE and stops
    # recording); either way the file is cut back to its last whole line, so that it stays a
    # valid asciicast, and the outcome is reported on the status pipe.
    cdef rec_writer w = (<rec_writer *>arg)[0]
    cdef char *buf
    cdef ssize_t r, done, k, j
    cdef long long total = 0, good = 0
    cdef off_t start
    cdef int err = 0
    free(arg)
    start = lseek(w.dst, 0, SEEK_CUR)
    buf = <char *>malloc(REC_CHUNK)
    if buf == NULL:
        err = ENOMEM
    while err == 0:
        r = read(w.src, buf, REC_CHUNK)
        if r == 0:
            break
        if r < 0:
            if errno == EINTR:
                continue
            err = errno
            break
        done = 0
        while done < r:
            k = write(w.dst, buf + done, r - done)
            if k < 0:
                if errno == EINTR:
                    continue
                err = errno
                break
            done += k
        # The whole events in what did reach the file.
        j = done - 1
        while j >= 0 and buf[j] != 10:
            j -= 1
        if j >= 0:
            good = total + j + 1
        total += done
    close(w.src)
    if total != good and start >= 0:
        ftruncate(w.dst, start + good)
    close(w.dst)
    free(buf)
    write(w.status, &err, sizeof(err))
    close(w.status)
    return NULL


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
    cdef bint winch, in_tty, hold_active, in_eof, master_eof, eof_reported, any_in
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
    # Recording: rec_fd is the pipe to the writer thread (-1 when not, or no longer, recording)
    cdef int rec_fd, rec_status, rec_err, rec_rows, rec_cols
    cdef bint rec_input, rec_on, rec_finished, rec_resize_pending
    cdef long long rec_t0, rec_stall_at, rec_stall_us
    cdef char *rbuf
    cdef size_t rhead, rtail
    cdef u8state u8out, u8in

    def __cinit__(self, int in_fd, int out_fd, int master_fd, int wake_fd=-1, int child_fd=-1,
                  int size_fd=-1, *, bint winch=True, bint in_tty=False, int hold_ms=0,
                  int intr=-1, Py_ssize_t bufsize=DEFAULT_BUFSIZE, int record_fd=-1,
                  bint record_input=False, int record_stall_ms=REC_STALL_MS):
        self.rec_fd = self.rec_status = -1
        if bufsize < 1:
            raise ValueError("bufsize must be positive")
        if not -1 <= intr <= 255:
            raise ValueError(f"intr must be a byte value or -1 (got {intr})")
        if record_stall_ms < 1:
            raise ValueError("record_stall_ms must be positive")
        self.rec_stall_us = <long long>record_stall_ms * 1000
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
            self.rec_input = record_input
            self._start_recording(record_fd)

    def __dealloc__(self):
        free(self.ibuf)
        free(self.obuf)
        free(self.rbuf)
        # The writer thread ends by itself once its pipe is closed.
        if self.rec_fd >= 0:
            close(self.rec_fd)
        if self.rec_status >= 0:
            close(self.rec_status)

    cdef int _start_recording(self, int record_fd) except -1:
        cdef int data[2]
        cdef int status[2]
        cdef int dst, flags, rc
        cdef rec_writer *w
        cdef pthread_t tid
        cdef sigset_t all_signals, old_mask
        self.rbuf = <char *>malloc(C_REC_BUFSIZE)
        if self.rbuf == NULL:
            raise MemoryError()
        dst = fcntl(record_fd, F_DUPFD_CLOEXEC, 3)
        if dst < 0:
            rc = errno
            raise OSError(rc, os.strerror(rc))
        # os.pipe: close-on-exec, like every descriptor Python makes.
        try:
            data[0], data[1] = os.pipe()
        except BaseException:
            close(dst)
            raise
        try:
            status[0], status[1] = os.pipe()
        except BaseException:
            close(dst)
            close(data[0])
            close(data[1])
            raise
        w = <rec_writer *>malloc(sizeof(rec_writer))
        rc = ENOMEM
        if w != NULL:
            w.src = data[0]
            w.dst = dst
            w.status = status[1]
            # Every signal blocked in the writer: handlers and SIGPIPE belong to the loop's
            # thread.
            sigfillset(&all_signals)
            pthread_sigmask(SIG_SETMASK, &all_signals, &old_mask)
            rc = pthread_create(&tid, NULL, _rec_writer_main, w)
            pthread_sigmask(SIG_SETMASK, &old_mask, NULL)
            if rc == 0:
                pthread_detach(tid)
        if rc != 0:
            free(w)
            close(dst)
            close(data[0])
            close(data[1])
            close(status[0])
            close(status[1])
            raise OSError(rc, os.strerror(rc))
        flags = fcntl(data[1], F_GETFL)
        fcntl(data[1], F_SETFL, flags | O_NONBLOCK)
        bottle_grow_pipe(data[1], REC_PIPE_SIZE)
        self.rec_fd = data[1]
        self.rec_status = status[0]
        self.rec_on = True
        self.rec_t0 = _now_us()
        return 0

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
        blocked on a stalled ``out_fd`` does not count). Returns EV_DONE, EV_HUP when
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
                self._finish_recording(timeout_ms)
        finally:
            self.busy = False
        return self.rec_err

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
        if self.rec_on and ioctl(self.master_fd, TIOCGWINSZ, &old) == 0:
            changed = old.ws_row != ws.ws_row or old.ws_col != ws.ws_col
        if ioctl(self.master_fd, TIOCSWINSZ, ws) < 0:
            return -1
        if self.rec_on and changed:
            # Emitted before any later output (see _rec_room), whatever room there is now.
            self.rec_rows = ws.ws_row
            self.rec_cols = ws.ws_col
            self.rec_resize_pending = True
            self._rec_room()
            self._rec_flush()
        return 0

    # ---------------------------------------------------------------- recording

    cdef inline long long _rec_time(self, char *out) noexcept nogil:
        cdef long long t = _now_us() - self.rec_t0
        if t < 0:
            t = 0
        return snprintf(out, 32, "[%lld.%06lld, \"", t // 1000000, t % 1000000)

    cdef size_t _rec_room(self) noexcept nogil:
        # How many bytes of data the next event may carry (0: wait for the writer). Makes room
        # at the front of the buffer, and emits a pending resize first.
        cdef size_t n
        if not self.rec_on:
            return <size_t>-1
        if self.rhead == self.rtail:
            self.rhead = self.rtail = 0
        elif self.rhead > 0 and C_REC_BUFSIZE - self.rtail < C_REC_BUFSIZE // 2:
            memmove(self.rbuf, self.rbuf + self.rhead, self.rtail - self.rhead)
            self.rtail -= self.rhead
            self.rhead = 0
        if self.rec_resize_pending and C_REC_BUFSIZE - self.rtail >= 64:
            self.rec_resize_pending = False
            n = self._rec_time(self.rbuf + self.rtail)
            n += snprintf(self.rbuf + self.rtail + n, 32, "r\", \"%dx%d\"]\n",
                          self.rec_cols, self.rec_rows)
            self.rtail += n
        if self.rec_resize_pending or C_REC_BUFSIZE - self.rtail < REC_SLACK + 6:
            return 0
        return (C_REC_BUFSIZE - self.rtail - REC_SLACK) // 6

    cdef void _rec_event(self, char kind, u8state *st, const char *data,
                         size_t n) noexcept nogil:
        # One event for n bytes (n <= _rec_room()), or for the end of a carried sequence
        # (n == 0); none when nothing would show. Written to the pipe at once.
        cdef char *out = self.rbuf + self.rtail
        cdef size_t o, body
        o = self._rec_time(out)
        out[o] = kind
        out[o + 1] = 0x22  # "
        out[o + 2] = 0x2C  # ,
        out[o + 3] = 0x20
        out[o + 4] = 0x22
        o += 5
        if n:
            body = _json_utf8(st, <const unsigned char *>data, n, out + o)
        elif st.have:
            st.have = 0
            body = _put_fffd(out + o)
        else:
            body = 0
        if body == 0:
            return
        o += body
        out[o] = 0x22
        out[o + 1] = 0x5D  # ]
        out[o + 2] = 0x0A
        self.rtail += o + 3
        self._rec_flush()

    cdef void _rec_flush(self) noexcept nogil:
        cdef ssize_t r
        while self.rtail > self.rhead:
            r = write(self.rec_fd, self.rbuf + self.rhead, self.rtail - self.rhead)
            if r > 0:
                self.rhead += r
                self.rec_stall_at = 0
            elif r < 0 and errno == EINTR:
                continue
            elif r < 0 and errno == EAGAIN:
                if self.rec_stall_at == 0:
                    self.rec_stall_at = _now_us()
                return
            else:  # EPIPE: the writer failed and said why on its status pipe
                self._rec_stop(errno if r < 0 else EIO)
                return
        self.rhead = self.rtail = 0
        self.rec_stall_at = 0

    cdef void _rec_stop(self, int err) noexcept nogil:
        # Give the recording up and relay on; the writer cuts the file to its last event.
        if self.rec_err == 0:
            self.rec_err = err
        self.rec_on = False
        self.rec_resize_pending = False
        self.rhead = self.rtail = 0
        if self.rec_fd >= 0:
            close(self.rec_fd)
            self.rec_fd = -1

    cdef inline bint _rec_blocked(self) noexcept nogil:
        # Whether output (and recorded input) must wait for the writer to take events.
        return self.rec_on and self._rec_room() == 0

    cdef int _rec_wait_ms(self) noexcept nogil:
        # Poll timeout while events wait for the pipe (-1: none); gives up a stalled recording.
        cdef long long left
        if not self.rec_on or self.rtail == self.rhead or self.rec_stall_at == 0:
            return -1
        left = self.rec_stall_at + self.rec_stall_us - _now_us()
        if left <= 0:
            self._rec_stop(ETIMEDOUT)
            return -1
        return <int>((left + 999) // 1000)

    cdef void _finish_recording(self, int timeout_ms) noexcept nogil:
        cdef pollfd p
        cdef long long deadline = _now_us() + <long long>timeout_ms * 1000, left
        cdef int werr = 0, r
        if self.rec_finished:
            return
        self.rec_finished = True
        if self.rec_on:
            if self._rec_room() > 0:  # a sequence cut short by the end shows as U+FFFD
                self._rec_event(b'o', &self.u8out, NULL, 0)
            if self._rec_room() > 0:
                self._rec_event(b'i', &self.u8in, NULL, 0)
            while self.rec_on and (self.rtail > self.rhead or self.rec_resize_pending):
                left = deadline - _now_us()
                if left <= 0:
                    self._rec_stop(ETIMEDOUT)
                    break
                p.fd = self.rec_fd
                p.events = POLLOUT
                if poll(&p, 1, <int>((left + 999) // 1000)) > 0:
                    self._rec_room()
                    self._rec_flush()
            self.rec_on = False
            if self.rec_fd >= 0:
                close(self.rec_fd)
                self.rec_fd = -1
        if self.rec_status < 0:
            return
        while True:
            left = deadline - _now_us()
            p.fd = self.rec_status
            p.events = POLLIN
            r = poll(&p, 1, <int>((left + 999) // 1000) if left > 0 else 0)
            if r < 0 and errno == EINTR:
                continue
            break
        if r > 0 and read(self.rec_status, &werr, sizeof(werr)) == sizeof(werr):
            if werr != 0:  # the writer's own failure is the cause (the loop saw only EPIPE)
                self.rec_err = werr
        elif self.rec_err == 0:
            self.rec_err = ETIMEDOUT
        close(self.rec_status)
        self.rec_status = -1

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
                if not self.out_blocked:
                    w = self._write_out()
                    if w != 0:
                        return w
            elif r == 0:  # BSD/macOS: end of the pty
                self.master_eof = True
                break
            elif errno == EINTR:
                continue
            elif errno == EAGAIN:
                break
            elif errno == EIO:  # Linux: end of the pty
                self.master_eof = True
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
            if self.rec_on:
                room = self._rec_room()
                if room == 0:
                    break
                if n > room:
                    n = room
            r = write(self.out_fd, self.obuf + self.ohead, n)
            if r >= 0:
                if r > 0 and self.rec_on:
                    self._rec_event(b'o', &self.u8out, self.obuf + self.ohead, r)
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
            if self.rec_on and self.rec_input:
                room = self._rec_room()
                if room == 0:
                    break
                if <size_t>want > room:
                    want = <ssize_t>room
            r = read(self.in_fd, self.ibuf + at, want)
            if r > 0:
                if self.rec_on and self.rec_input:
                    self._rec_event(b'i', &self.u8in, self.ibuf + at, r)
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
            rec_wait = self._rec_wait_ms()
            if rec_wait >= 0 and (timeout < 0 or rec_wait < timeout):
                timeout = rec_wait
            rec_blocked = self._rec_blocked()
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
            if self.rec_on and self.rtail > self.rhead:
                fds[n].fd = self.rec_fd
                fds[n].events = POLLOUT
                ir = n
                n += 1
            if self.in_fd >= 0 and not self.in_eof:
                if (not self.master_eof and self.ilen < self.bufsize
                        and not (rec_blocked and self.rec_input)):
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
                self._rec_flush()
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
        cdef int n, r, timeout, iw, im, io, ir, rec_wait
        cdef long long started
        # Only time spent waiting for the pty counts against the cap: while a stalled
        # terminal blocks the output, what is already in the pty must not be dropped.
        cdef long long budget = <long long>cap_ms * 1000  # microseconds
        cdef bint reading = not self.master_eof
        while True:
            if reading and budget <= 0:
                reading = False
            n = 0
            iw = im = io = ir = -1
            timeout = -1
            rec_wait = self._rec_wait_ms()
            if reading and self.olen < self.bufsize:
                fds[n].fd = self.master_fd
                fds[n].events = POLLIN
                im = n
                n += 1
                timeout = (<int>((budget + 999) // 1000) if budget < <long long>idle_ms * 1000
                           else idle_ms)
            if self.olen > 0:
                if self._rec_blocked():
                    fds[n].fd = self.rec_fd
                    fds[n].events = POLLOUT
                    ir = n
                    if rec_wait >= 0 and (timeout < 0 or rec_wait < timeout):
                        timeout = rec_wait
                else:
                    fds[n].fd = self.out_fd
                    fds[n].events = POLLOUT
                    io = n
                n += 1
            if n == 0:
                return C_EV_DONE
            if self.wake_fd >= 0:
                fds[n].fd = self.wake_fd
                fds[n].events = POLLIN
                iw = n
                n += 1
            started = _now_us()
            r = poll(fds, n, timeout)
            if im >= 0:
                budget -= _now_us() - started
            if r < 0:
                if errno == EINTR:
                    continue
                self.err = errno
                return -1
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
                self._rec_flush()
            if im >= 0 and fds[im].revents:
                if fds[im].revents & POLLNVAL:
                    self.err = EBADF
                    return -1
                r = self._read_master()
                if r != 0:
                    return r
                if self.master_eof:
                    reading = False
            if self.olen > 0 and not self.out_blocked:
                r = self._write_out()
                if r != 0:
                    return r


# The session holder's loop (Hub): a file of its own, compiled into this module.
include "_hub.pxi"
# The attach client's loop (Attach), after the Hub's protocol numbers it shares.
include "_attach.pxi"
