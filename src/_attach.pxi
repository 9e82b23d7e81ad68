# The attach client's loop: the relay's copy loop with a session holder's socket in place of the
# child's pty. Included by _ptyrelay.pyx after _hub.pxi (whose W_* protocol numbers it uses),
# so it is part of bottle._ptyrelay; its pure twin is bottle._attach_py, whose module docstring
# states the behaviour (frames, the detach keys, backpressure) that both implement.

from libc.errno cimport EPROTO


cdef enum:
    C_EV_DETACH = 6
    C_EV_FRAME = 7
    C_EV_CLOSED = 8
    A_CONTROL_MAX = 256
    A_RBUF = 256 * 1024
    A_SEND_MAX = 64 * 1024
    A_SEND_SLACK = 256
    A_KEYS_READ = 4096  # W_MAX_INPUT: one KEYS frame's payload

EV_DETACH = C_EV_DETACH
EV_FRAME = C_EV_FRAME
EV_CLOSED = C_EV_CLOSED
CONTROL_MAX = A_CONTROL_MAX
DETACH_KEYS_MAX = W_DETACH_KEYS_MAX


cdef class Attach:
    """Copy the user's keys to a session holder's socket and its output back, until something
    needs Python. See `bottle._attach_py.Attach`, its twin, for the contract.
    """

    cdef int in_fd, out_fd, sock_fd, wake_fd, size_fd, nsigs, err
    cdef bint winch, in_tty, readonly, keys, in_eof, sock_eof, sock_blocked, out_blocked, busy
    cdef dmatch dk
    cdef unsigned char *rbuf
    cdef size_t rpos, rlen
    cdef unsigned char head[4]
    cdef int hlen, kind
    cdef size_t left
    cdef unsigned char ctrl[A_CONTROL_MAX]
    cdef size_t clen
    cdef unsigned char frame_buf[A_CONTROL_MAX]
    cdef int frame_kind
    cdef size_t frame_len
    cdef unsigned char *sbuf
    cdef size_t shead, stail
    cdef unsigned char kbuf[A_KEYS_READ]
    cdef unsigned long long off
    cdef unsigned char sigs[NSIG + 1]

    def __cinit__(self, int in_fd, int out_fd, int sock_fd, int wake_fd=-1, int size_fd=-1, *,
                  bint winch=True, bint in_tty=False, detach_keys=b"", bint readonly=False,
                  bint keys=True, unsigned long long offset=0):
        cdef Py_ssize_t i
        if not isinstance(detach_keys, bytes):
            raise TypeError(f"detach_keys must be bytes, not {type(detach_keys).__name__}")
        if len(detach_keys) > W_DETACH_KEYS_MAX:
            raise ValueError(
                f"detach_keys: at most {W_DETACH_KEYS_MAX} keys, not {len(detach_keys)}")
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.sock_fd = sock_fd
        self.wake_fd = wake_fd
        self.size_fd = size_fd
        self.winch = winch
        self.in_tty = in_tty
        self.readonly = readonly
        self.keys = keys
        self.in_eof = in_fd < 0
        self.off = offset
        self.kind = -1
        self.frame_kind = -1
        self.dk.len = <int>len(detach_keys)
        for i in range(self.dk.len):
            self.dk.keys[i] = detach_keys[i]
        self.rbuf = <unsigned char *>malloc(A_RBUF)
        self.sbuf = <unsigned char *>malloc(A_SEND_MAX + A_SEND_SLACK)
        if self.rbuf == NULL or self.sbuf == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.rbuf)
        free(self.sbuf)

    # ------------------------------------------------------------------ public

    def run(self, int timeout_ms=-1):
        """Relay until an event needs Python; return it (EV_FRAME, EV_DETACH, EV_HUP,
        EV_CLOSED or EV_SIGNAL; EV_DONE when ``timeout_ms`` >= 0 ran out first)."""
        cdef int ev
        self._enter()
        try:
            with nogil:
                ev = self._run(timeout_ms)
        finally:
            self.busy = False
        if ev < 0:
            if self.err == EPROTO:
                raise OSError(EPROTO, "the holder sent a frame that breaks the protocol")
            raise OSError(self.err, os.strerror(self.err))
        return ev

    def frame(self):
        """The (kind, payload) of the frame that ended the last run with EV_FRAME."""
        if self.frame_kind < 0:
            raise RuntimeError("no frame: run() did not return EV_FRAME")
        return (self.frame_kind, (<char *>self.frame_buf)[:self.frame_len])

    def send(self, bytes data):
        """Queue whole frames for the holder (sent by the loop, or by `flush`)."""
        cdef Py_ssize_t n = len(data)
        self._compact(<size_t>n)
        if self.stail + <size_t>n > A_SEND_MAX + A_SEND_SLACK:
            raise BlockingIOError(EAGAIN, "the holder is not taking frames")
        memcpy(self.sbuf + self.stail, <char *>data, n)
        self.stail += n

    def flush(self, int timeout_ms):
        """Send what is queued for the holder, waiting at most ``timeout_ms``; whether it all
        went (False too when the connection broke)."""
        cdef bint done
        if timeout_ms < 0:
            raise ValueError(f"flush: timeout_ms must not be negative (got {timeout_ms})")
        with nogil:
            done = self._flush(timeout_ms)
        return done

    def signals(self):
        """Return the signal numbers received since the last call (each once, in order)."""
        out = (<char *>self.sigs)[:self.nsigs]
        self.nsigs = 0
        return out

    def resize(self):
        """Send the terminal's size to the holder (a RESIZE frame); (rows, cols), None when
        unknown or a watcher."""
        cdef winsize ws
        if self._resize_c(&ws) < 0:
            return None
        return (ws.ws_row, ws.ws_col)

    @property
    def offset(self):
        """The session's output offset of the next byte to come (see the twin)."""
        return self.off

    @property
    def buffered(self):
        """Bytes waiting: (for the holder, from the holder)."""
        return (self.stail - self.shead, self.rlen - self.rpos)

    cdef int _enter(self) except -1:
        with cython.critical_section(self):
            if self.busy:
                raise RuntimeError("this Attach is already running in another thread")
            self.busy = True
        return 0

    # ------------------------------------------------------------------ the loop

    cdef int _run(self, int timeout_ms) noexcept nogil:
        cdef pollfd fds[4]
        cdef int n, r, iw, isk, io, ii, timeout = -1
        cdef short sock_ev, rev
        cdef long long deadline = _now_us() + <long long>timeout_ms * 1000, left
        while True:
            r = self._consume()
            if r != 0:
                return r
            if self.stail > self.shead and not self.sock_blocked:
                self._write_sock()
            if self.sock_eof and self.rpos == self.rlen and not self.out_blocked:
                return C_EV_CLOSED
            n = 0
            iw = isk = io = ii = -1
            if self.wake_fd >= 0:
                fds[n].fd = self.wake_fd
                fds[n].events = POLLIN
                iw = n
                n += 1
            sock_ev = 0
            if not self.sock_eof and not self.out_blocked:
                sock_ev |= POLLIN
            if self.stail > self.shead and self.sock_blocked:
                sock_ev |= POLLOUT
            if sock_ev:
                fds[n].fd = self.sock_fd
                fds[n].events = sock_ev
                isk = n
                n += 1
            if self.out_blocked:
                fds[n].fd = self.out_fd
                fds[n].events = POLLOUT
                io = n
                n += 1
            if not self.in_eof:
                if self.keys and self._keys_room():
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
            if timeout_ms >= 0:
                left = deadline - _now_us()
                if left <= 0:
                    return C_EV_DONE
                timeout = <int>((left + 999) // 1000)
            r = poll(fds, n, timeout)
            if r < 0:
                if errno == EINTR:
                    continue
                self.err = errno
                return -1
            for r in range(n):
                if fds[r].revents & POLLNVAL:
                    self.err = EBADF
                    return -1
            if iw >= 0 and fds[iw].revents:
                r = self._read_wake()
                if r != 0:
                    return -1 if r < 0 else C_EV_SIGNAL
            if io >= 0 and fds[io].revents:
                self.out_blocked = False
            if isk >= 0:
                rev = fds[isk].revents
                if rev & (POLLOUT | POLLHUP | POLLERR):
                    self.sock_blocked = False
                if sock_ev & POLLIN and rev & (POLLIN | POLLHUP | POLLERR):
                    self._read_sock()
            if ii >= 0 and fds[ii].revents:
                if not self.keys:
                    # The holder reads this terminal (a direct client): only its end matters.
                    if fds[ii].revents & (POLLHUP | POLLERR):
                        return C_EV_HUP
                    continue
                r = self._read_in(fds[ii].revents)
                if r != 0:
                    return r

    # ------------------------------------------------------------------ holder to terminal

    cdef void _read_sock(self) noexcept nogil:
        cdef ssize_t r
        cdef size_t want
        if self.rpos > 0:
            # What is left is a frame header or a control frame in pieces: a few bytes.
            memmove(self.rbuf, self.rbuf + self.rpos, self.rlen - self.rpos)
            self.rlen -= self.rpos
            self.rpos = 0
        while self.rlen < A_RBUF:
            want = A_RBUF - self.rlen
            r = read(self.sock_fd, self.rbuf + self.rlen, want)
            if r > 0:
                self.rlen += r
                if <size_t>r < want:
                    return  # a short read took all there was
            elif r == 0:
                self.sock_eof = True
                return
            elif errno == EINTR:
                continue
            elif errno == EAGAIN:
                return
            else:  # ECONNRESET: the holder is gone
                self.sock_eof = True
                return

    cdef int _consume(self) noexcept nogil:
        # Take apart what was read: OUTPUT to the terminal, any other frame to Python.
        cdef size_t take, limit, length
        cdef ssize_t w
        cdef int r
        while self.rpos < self.rlen and not self.out_blocked:
            if self.kind < 0:
                while self.hlen < 4 and self.rpos < self.rlen:
                    self.head[self.hlen] = self.rbuf[self.rpos]
                    self.hlen += 1
                    self.rpos += 1
                if self.hlen < 4:
                    break
                self.hlen = 0
                length = (<size_t>self.head[1] << 16) | (<size_t>self.head[2] << 8) | self.head[3]
                limit = W_MAX_OUTPUT if self.head[0] == W_OUTPUT else A_CONTROL_MAX
                if length > limit:
                    self.err = EPROTO
                    return -1
                self.kind = self.head[0]
                self.left = length
                self.clen = 0
                if length == 0:
                    r = self._frame_done()
                    if r != 0:
                        return r
                continue
            take = self.rlen - self.rpos
            if take > self.left:
                take = self.left
            if self.kind == W_OUTPUT:
                w = write(self.out_fd, self.rbuf + self.rpos, take)
                if w > 0:
                    self.rpos += w
                    self.left -= w
                    self.off += w
                    if self.left == 0:
                        self.kind = -1
                elif w < 0 and errno == EINTR:
                    continue
                elif w < 0 and errno == EAGAIN:
                    self.out_blocked = True
                elif w < 0 and (errno == EIO or errno == EPIPE):
                    return C_EV_HUP
                else:
                    self.err = errno if w < 0 else EIO
                    return -1
                continue
            memcpy(self.ctrl + self.clen, self.rbuf + self.rpos, take)
            self.clen += take
            self.rpos += take
            self.left -= take
            if self.left == 0:
                r = self._frame_done()
                if r != 0:
                    return r
        if self.rpos == self.rlen:
            self.rpos = self.rlen = 0
        return 0

    cdef int _frame_done(self) noexcept nogil:
        cdef int kind = self.kind
        cdef unsigned long long v = 0
        cdef int i
        self.kind = -1
        if kind == W_OUTPUT:
            return 0
        if kind == W_ATTACHED and self.clen == 14:
            for i in range(8):
                v = (v << 8) | self.ctrl[6 + i]
            self.off = v
        elif kind == W_DROPPED and self.clen == 8:
            for i in range(8):
                v = (v << 8) | self.ctrl[i]
            self.off += v
        memcpy(self.frame_buf, self.ctrl, self.clen)
        self.frame_len = self.clen
        self.frame_kind = kind
        return C_EV_FRAME

    # ------------------------------------------------------------------ terminal to holder

    cdef void _compact(self, size_t need) noexcept nogil:
        # Before appending ``need`` bytes: rewind an empty buffer, or slide a partly sent one.
        if self.shead == self.stail:
            self.shead = self.stail = 0
        elif self.shead > 0 and self.stail + need > A_SEND_MAX + A_SEND_SLACK:
            memmove(self.sbuf, self.sbuf + self.shead, self.stail - self.shead)
            self.stail -= self.shead
            self.shead = 0

    cdef inline bint _keys_room(self) noexcept nogil:
        return self.stail - self.shead <= A_SEND_MAX - (W_HEADER + A_KEYS_READ)

    cdef void _write_sock(self) noexcept nogil:
        cdef ssize_t r
        while self.stail > self.shead:
            r = write(self.sock_fd, self.sbuf + self.shead, self.stail - self.shead)
            if r > 0:
                self.shead += r
            elif r < 0 and errno == EINTR:
                continue
            elif r < 0 and errno == EAGAIN:
                self.sock_blocked = True
                break
            else:  # EPIPE, ECONNRESET: the holder is gone
                self.shead = self.stail = 0
                self.sock_eof = True
                break
        if self.shead == self.stail:
            self.shead = self.stail = 0

    cdef bint _flush(self, int timeout_ms) noexcept nogil:
        cdef pollfd p
        cdef long long deadline = _now_us() + <long long>timeout_ms * 1000, left
        while self.stail > self.shead:
            self._write_sock()
            if self.sock_eof:
                return False
            if self.stail == self.shead:
                break
            left = deadline - _now_us()
            if left <= 0:
                return False
            p.fd = self.sock_fd
            p.events = POLLOUT
            if poll(&p, 1, <int>((left + 999) // 1000)) < 0 and errno != EINTR:
                return False
            self.sock_blocked = False
        return True

    cdef int _read_in(self, short revents) noexcept nogil:
        cdef ssize_t r, want
        cdef size_t n
        cdef bint detached
        if self.in_tty and revents & (POLLHUP | POLLERR):
            return C_EV_HUP
        while self._keys_room():
            self._compact(W_HEADER + A_KEYS_READ)
            want = A_KEYS_READ - self.dk.pos
            r = read(self.in_fd, self.kbuf, want)
            if r > 0:
                detached = False
                n = _dmatch(&self.dk, self.kbuf, <size_t>r, self.sbuf + self.stail + W_HEADER,
                            &detached)
                if n > 0 and not self.readonly:
                    _header(self.sbuf + self.stail, W_KEYS, n)
                    self.stail += W_HEADER + n
                if detached:
                    return C_EV_DETACH
                if not self.sock_blocked:
                    self._write_sock()
                if r < want:
                    # A terminal or pipe hands over all it holds: a short read drained it.
                    return 0
            elif r == 0:
                if self.in_tty:
                    return C_EV_HUP
                self.in_eof = True
                return 0
            elif errno == EINTR:
                continue
            elif errno == EAGAIN:
                return 0
            elif errno == EIO:
                return C_EV_HUP
            else:
                self.err = errno
                return -1
        return 0

    # ------------------------------------------------------------------ signals and size

    cdef int _read_wake(self) noexcept nogil:
        cdef unsigned char b[128]
        cdef ssize_t r, i
        cdef int j
        cdef bint report = False, seen
        cdef winsize ws
        while True:
            r = read(self.wake_fd, b, sizeof(b))
            if r > 0:
                for i in range(r):
                    if b[i] == SIGWINCH and self.winch:
                        self._resize_c(&ws)
                        continue
                    seen = False
                    for j in range(self.nsigs):
                        if self.sigs[j] == b[i]:
                            seen = True
                    if not seen and self.nsigs <= NSIG:
                        self.sigs[self.nsigs] = b[i]
                        self.nsigs += 1
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
        return 1 if report else 0

    cdef int _resize_c(self, winsize *ws) noexcept nogil:
        # Queues a RESIZE frame with the terminal's size; -1 when there is none to send.
        cdef unsigned char frame[8]
        if self.readonly or self.size_fd < 0:
            return -1
        if ioctl(self.size_fd, TIOCGWINSZ, ws) < 0 or ws.ws_row == 0 or ws.ws_col == 0:
            return -1
        _header(frame, W_RESIZE, 4)
        _be16(frame + 4, ws.ws_row)
        _be16(frame + 6, ws.ws_col)
        self._compact(8)
        if self.stail + 8 <= A_SEND_MAX + A_SEND_SLACK:
            memcpy(self.sbuf + self.stail, frame, 8)
            self.stail += 8
        return 0
