# The session hub: a session holder's copy loop between one pty master and the clients of a
# unix socket (bottle._sessionwire is their protocol). Included by _ptyrelay.pyx, so it is part
# of bottle._ptyrelay; its pure twin is bottle._hub_py, whose module docstring states the
# behaviour (the ring, backpressure and lagging clients, the size policy, direct clients) that
# both implement.

from libc.errno cimport ECONNABORTED, EMFILE, ENFILE, EPROTO
from libc.string cimport memset, strlen
from posix.unistd cimport geteuid, isatty


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int iovcnt)


cdef extern from *:
    """
    #include <sys/types.h>
    #include <sys/socket.h>
    #include <sys/uio.h>
    #include <fcntl.h>
    #include <string.h>
    #include <unistd.h>
    /* The user id of the process at the other end of a unix socket; -1 when unknown.
       Linux: SO_PEERCRED (Python.h's pyconfig defines _GNU_SOURCE, which struct ucred needs);
       the BSDs and macOS: getpeereid(). */
    static long bottle_peer_uid(int fd) {
    #if defined(SO_PEERCRED)
        struct ucred cr;
        socklen_t len = sizeof(cr);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &len) == 0)
            return (long)cr.uid;
        return -1;
    #else
        uid_t uid;
        gid_t gid;
        if (getpeereid(fd, &uid, &gid) == 0)
            return (long)uid;
        return -1;
    #endif
    }
    /* recv() that also takes the descriptors an SCM_RIGHTS message brings: the first goes to
       *fd (if it is still -1), close-on-exec; any other is closed. */
    static ssize_t bottle_recv_fds(int sock, void *buf, size_t n, int *fd) {
        union { struct cmsghdr align; char space[CMSG_SPACE(4 * sizeof(int))]; } anc;
        struct iovec v;
        struct msghdr m;
        struct cmsghdr *cm;
        ssize_t r;
        int flags = 0;
        size_t k, count;
        int got;
    #if defined(MSG_CMSG_CLOEXEC)
        flags = MSG_CMSG_CLOEXEC;
    #endif
        v.iov_base = buf;
        v.iov_len = n;
        memset(&m, 0, sizeof(m));
        m.msg_iov = &v;
        m.msg_iovlen = 1;
        m.msg_control = anc.space;
        m.msg_controllen = sizeof(anc.space);
        r = recvmsg(sock, &m, flags);
        if (r < 0)
            return r;
        for (cm = CMSG_FIRSTHDR(&m); cm != NULL; cm = CMSG_NXTHDR(&m, cm)) {
            if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
                continue;
            count = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (k = 0; k < count; k++) {
                memcpy(&got, CMSG_DATA(cm) + k * sizeof(int), sizeof(int));
    #if !defined(MSG_CMSG_CLOEXEC)
                fcntl(got, F_SETFD, FD_CLOEXEC);
    #endif
                if (*fd < 0)
                    *fd = got;
                else
                    close(got);
            }
        }
        return r;
    }
    /* accept(), the connection non-blocking and close-on-exec. */
    static int bottle_accept(int fd) {
    #if defined(__linux__)
        return accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    #else
        int c = accept(fd, NULL, NULL);
        if (c >= 0) {
            fcntl(c, F_SETFD, FD_CLOEXEC);
            fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK);
        }
        return c;
    #endif
    }
    """
    long bottle_peer_uid(int fd) nogil
    int bottle_accept(int fd) nogil
    ssize_t bottle_recv_fds(int sock, void *buf, size_t n, int *fd) nogil


cdef enum:
    C_EV_CLIENTS = 5
    W_VERSION = 1
    W_HEADER = 4
    W_MAX_INPUT = 4096
    W_MAX_OUTPUT = 65536
    W_ATTACH = 0x01
    W_KEYS = 0x02
    W_RESIZE = 0x03
    W_REDRAW = 0x04
    W_DETACH = 0x05
    W_TERMINAL = 0x06
    W_ATTACHED = 0x81
    W_OUTPUT = 0x82
    W_DROPPED = 0x83
    W_EXIT = 0x84
    W_ERROR = 0x85
    W_DETACHED = 0x86
    W_F_READONLY = 0x01
    W_F_REDRAW = 0x02
    W_F_DIRECT = 0x04
    W_DETACHED_KEYS = 0
    W_DETACHED_HANGUP = 1
    W_DETACHED_ASKED = 2
    W_DETACH_KEYS_MAX = 32
    W_ERROR_MAX = 200
    H_MAX_CLIENTS = 32
    H_PRE_MAX = 320
    H_RBUF = 4100  # W_HEADER + W_MAX_INPUT
    H_IBUF = 65536
    H_IOV = 16
    H_TNOTE = 128

EV_CLIENTS = C_EV_CLIENTS
DEFAULT_HISTORY = 1 << 20
MIN_HISTORY = 4096
MAX_CLIENTS = H_MAX_CLIENTS
STALL_MS = 2000
STALL_PROGRESS = 64 * 1024
TWITCH_MS = 200
cdef unsigned long long C_STALL_PROGRESS = 64 * 1024
cdef long long C_TWITCH_US = 200 * 1000
# A read that fills a whole pty buffer defers the clients' writes (see bottle._hub_py).
cdef ssize_t FULL_READ = 4095
cdef size_t BATCH = 64 * 1024
cdef long long DEFER_US = 1000
# The protocol's numbers as compiled in: the tests compare them with bottle._sessionwire.
WIRE = {
    "VERSION": W_VERSION, "HEADER_SIZE": W_HEADER, "MAX_INPUT": W_MAX_INPUT,
    "MAX_OUTPUT": W_MAX_OUTPUT, "ATTACH": W_ATTACH, "KEYS": W_KEYS, "RESIZE": W_RESIZE,
    "REDRAW": W_REDRAW, "DETACH": W_DETACH, "ATTACHED": W_ATTACHED, "OUTPUT": W_OUTPUT,
    "DROPPED": W_DROPPED, "EXIT": W_EXIT, "ERROR": W_ERROR, "READONLY": W_F_READONLY,
    "REDRAW_ON_ATTACH": W_F_REDRAW, "ERROR_MAX": W_ERROR_MAX, "TERMINAL": W_TERMINAL,
    "DETACHED": W_DETACHED, "DIRECT": W_F_DIRECT, "DETACHED_KEYS": W_DETACHED_KEYS,
    "DETACHED_HANGUP": W_DETACHED_HANGUP, "DETACHED_ASKED": W_DETACHED_ASKED,
    "DETACH_KEYS_MAX": W_DETACH_KEYS_MAX,
}
# What goes on a direct client's terminal where output was dropped for it (wire.DROPPED_NOTICE).
cdef const char *DROPPED_NOTICE_C = "\r\n[bottle: %llu bytes of output dropped here; redrawing]\r\n"


cdef inline int _min_timeout(int a, int b) noexcept nogil:
    if b < 0:
        return a
    return b if a < 0 or b < a else a


# ------------------------------------------------------------------------- the detach keys
# Typed keys watched for a detach sequence (an attach client's, or a direct client's in the
# hub): see bottle._attach_py.match_keys.

cdef struct dmatch:
    unsigned char keys[W_DETACH_KEYS_MAX]
    int len, pos


cdef size_t _dmatch(dmatch *d, const unsigned char *data, size_t n, unsigned char *out,
                    bint *detached) noexcept nogil:
    # The keys of data to send, into out (at most pos + n bytes); detached[0] set when the
    # sequence was completed (what follows it in data is dropped).
    cdef size_t i, o = 0
    cdef unsigned char b
    if d.len == 0 or (d.pos == 0 and memchr(data, d.keys[0], n) == NULL):
        memcpy(out, data, n)
        return n
    for i in range(n):
        b = data[i]
        if b == d.keys[d.pos]:
            d.pos += 1
            if d.pos == d.len:
                d.pos = 0
                detached[0] = True
                return o
            continue
        if d.pos:
            # Not the sequence after all: its keys go as they were typed.
            memcpy(out + o, d.keys, d.pos)
            o += d.pos
            d.pos = 0
            if b == d.keys[0]:
                d.pos = 1
                continue
        out[o] = b
        o += 1
    return o


# ------------------------------------------------------------------------- clients

cdef struct hclient:
    int fd
    bint attached, readonly, blocked, closing, lagging, in_blocked, dead
    unsigned short rows, cols
    unsigned long long pos  # absolute offset of the next output byte to send from the ring
    unsigned long long frame_left  # payload bytes of the current OUTPUT frame still owed
    unsigned long long stall_pos, active
    long long stall_since
    char pre[H_PRE_MAX]  # control frames (or a header's rest) to send before more data
    size_t pre_len
    char *tail  # a lagging client's frame, copied before the ring overwrote it
    size_t tail_off, tail_left
    unsigned char rbuf[H_RBUF]
    size_t rlen
    # A direct client: granted DIRECT, its terminal (term) from its TERMINAL frame on.
    bint direct, tblocked
    int term, given  # given: a descriptor that came over the socket, not yet claimed
    char tnote[H_TNOTE]  # for the terminal before more output (a drop's notice)
    size_t tnote_len
    unsigned long long drop_note  # output dropped at attach, said once the terminal is ours
    dmatch dk


cdef inline void _be16(unsigned char *p, unsigned int v) noexcept nogil:
    p[0] = (v >> 8) & 0xFF
    p[1] = v & 0xFF


cdef inline void _be64(unsigned char *p, unsigned long long v) noexcept nogil:
    cdef int i
    for i in range(8):
        p[i] = (v >> (56 - 8 * i)) & 0xFF


cdef inline void _header(unsigned char *p, int kind, size_t n) noexcept nogil:
    p[0] = <unsigned char>kind
    p[1] = (n >> 16) & 0xFF
    p[2] = (n >> 8) & 0xFF
    p[3] = n & 0xFF


cdef inline bint _pre_add(hclient *c, const void *data, size_t n) noexcept nogil:
    # False when it does not fit (never with the frames the hub sends; the client is dropped)
    if c.pre_len + n > H_PRE_MAX:
        return False
    memcpy(c.pre + c.pre_len, data, n)
    c.pre_len += n
    return True


cdef bint _pre_frame(hclient *c, int kind, const void *payload, size_t n) noexcept nogil:
    cdef unsigned char h[4]
    if c.pre_len + 4 + n > H_PRE_MAX:
        return False
    _header(h, kind, n)
    _pre_add(c, h, 4)
    _pre_add(c, payload, n)
    return True


cdef class Hub:
    """Copy a pty master's output to the clients of a listening unix socket, and their keys
    back, until something needs Python. See `bottle._hub_py.Hub`, its twin, for the contract.
    """

    cdef int master_fd, listen_fd, wake_fd, child_fd
    cdef long owner_uid
    cdef char *ring
    cdef size_t rsize, cap
    cdef unsigned long long written, shown
    cdef long long defer_at
    cdef size_t batch
    cdef long long stall_us, held_at, twitch_at
    cdef int hold_ms, exit_status, nsigs, err, owner_fd
    cdef bint hold_active, master_eof, master_eio, master_blocked, busy, changed, has_rec
    cdef char *ibuf
    cdef size_t ihead, itail
    cdef hclient *cl
    cdef int ncl
    cdef unsigned long long seq
    cdef unsigned short rows, cols
    cdef long long refused_n, lagged_n
    cdef unsigned char sigs[NSIG + 1]
    cdef recorder rec

    def __cinit__(self, int master_fd, int listen_fd, int wake_fd=-1, int child_fd=-1, *,
                  Py_ssize_t history=DEFAULT_HISTORY, long owner_uid=-1, int hold_ms=0,
                  int stall_ms=STALL_MS, int record_fd=-1, bint record_input=False,
                  int record_stall_ms=REC_STALL_MS):
        cdef winsize ws
        cdef int e
        self.rec.fd = self.rec.status = -1
        self.owner_fd = -1
        self.exit_status = -1
        if history < MIN_HISTORY:
            raise ValueError(f"history must be at least {MIN_HISTORY} bytes, not {history}")
        if stall_ms < 1:
            raise ValueError("stall_ms must be positive")
        if record_stall_ms < 1:
            raise ValueError("record_stall_ms must be positive")
        self.master_fd = master_fd
        self.listen_fd = listen_fd
        self.wake_fd = wake_fd
        self.child_fd = child_fd
        self.owner_uid = geteuid() if owner_uid < 0 else owner_uid
        self.rsize = history
        self.cap = W_MAX_OUTPUT if <size_t>history > W_MAX_OUTPUT else history
        self.batch = BATCH if BATCH < <size_t>history // 2 else <size_t>history // 2
        self.stall_us = <long long>stall_ms * 1000
        self.hold_ms = hold_ms
        self.hold_active = hold_ms > 0
        self.held_at = _now_ms()
        if ioctl(master_fd, TIOCGWINSZ, &ws) < 0:
            e = errno
            raise OSError(e, f"master_fd: {os.strerror(e)}")
        self.rows = ws.ws_row
        self.cols = ws.ws_col
        self.ring = <char *>malloc(history)
        self.ibuf = <char *>malloc(H_IBUF)
        self.cl = <hclient *>malloc(sizeof(hclient) * (H_MAX_CLIENTS + 1))
        if self.ring == NULL or self.ibuf == NULL or self.cl == NULL:
            raise MemoryError()
        if record_fd >= 0:
            _rec_open(&self.rec, record_fd, record_input, record_stall_ms)
            self.has_rec = True

    def __dealloc__(self):
        self._close_all()
        free(self.ring)
        free(self.ibuf)
        free(self.cl)
        _rec_close(&self.rec)

    def close(self):
        """Close every client connection (the hub owns them); idempotent."""
        self._close_all()

    cdef void _close_all(self) noexcept nogil:
        cdef int i
        for i in range(self.ncl):
            close(self.cl[i].fd)
            free(self.cl[i].tail)
            if self.cl[i].term >= 0:
                close(self.cl[i].term)
            if self.cl[i].given >= 0:
                close(self.cl[i].given)
        self.ncl = 0

    # ------------------------------------------------------------------ public

    def run(self):
        """Relay until an event needs Python; return it (EV_SIGNAL, EV_CHILD, EV_CLIENTS)."""
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
        """After the child's exit: pass on its last output (see the twin)."""
        cdef int r
        if idle_ms < 0 or cap_ms < 0:
            raise ValueError(f"drain: idle_ms and cap_ms must not be negative "
                             f"(got {idle_ms}, {cap_ms})")
        self._enter()
        try:
            with nogil:
                r = self._end_loop(idle_ms, cap_ms, -1)
        finally:
            self.busy = False
        if r < 0:
            raise OSError(self.err, os.strerror(self.err))

    def finish(self, int status, int flush_ms):
        """Give every attached client the rest of the output and an EXIT frame with
        ``status``, within ``flush_ms``; then close every connection."""
        cdef int r, i
        if flush_ms < 0:
            raise ValueError(f"finish: flush_ms must not be negative (got {flush_ms})")
        if not 0 <= status <= 0xFFFF:
            raise ValueError(f"finish: status {status} out of range")
        self._enter()
        try:
            self.exit_status = status
            with nogil:
                r = self._end_loop(0, 0, flush_ms)
                for i in range(self.ncl):
                    self.cl[i].dead = True
                self._sweep()
        finally:
            self.busy = False
        if r < 0:
            raise OSError(self.err, os.strerror(self.err))

    def signals(self):
        """Return the signal numbers received since the last call (each once, in order)."""
        out = (<char *>self.sigs)[:self.nsigs]
        self.nsigs = 0
        return out

    def history(self):
        """The output the ring still holds, oldest first."""
        cdef size_t n = self.written if self.written < self.rsize else self.rsize
        cdef size_t start = (self.written - n) % self.rsize
        if start + n <= self.rsize:
            return self.ring[start:start + n]
        return self.ring[start:self.rsize] + self.ring[:n - (self.rsize - start)]

    @property
    def total(self):
        """Bytes of output so far."""
        return self.written

    @property
    def clients(self):
        """(writers, watchers, connections not attached yet)."""
        cdef int i, w = 0, r = 0, p = 0
        for i in range(self.ncl):
            if self.cl[i].dead:
                continue
            if not self.cl[i].attached:
                p += 1
            elif self.cl[i].readonly:
                r += 1
            else:
                w += 1
        return (w, r, p)

    @property
    def refused(self):
        """Connections refused so far (another user, a bad frame, too many clients)."""
        return self.refused_n

    @property
    def lagged(self):
        """How many times a client stopped holding the output back."""
        return self.lagged_n

    @property
    def size(self):
        """The pty's size as the clients set it: (rows, cols)."""
        return (self.rows, self.cols)

    @property
    def holding(self):
        """Whether keys are still being held back."""
        return self.hold_active

    def finish_recording(self, int timeout_ms):
        """End the recording (see the relay's Pump); 0 when complete, else an errno."""
        if timeout_ms < 0:
            raise ValueError(f"finish_recording: timeout_ms must not be negative "
                             f"(got {timeout_ms})")
        if not self.has_rec:
            return 0
        self._enter()
        try:
            with nogil:
                _rec_finish(&self.rec, timeout_ms)
        finally:
            self.busy = False
        return self.rec.err

    cdef int _enter(self) except -1:
        with cython.critical_section(self):
            if self.busy:
                raise RuntimeError("this Hub is already running in another thread")
            self.busy = True
        return 0

    # ------------------------------------------------------------------ the loop

    cdef int _run(self) noexcept nogil:
        cdef pollfd fds[6 + 2 * H_MAX_CLIENTS]
        cdef int cidx[6 + 2 * H_MAX_CLIENTS]
        cdef bint isterm[6 + 2 * H_MAX_CLIENTS]
        cdef int n, r, i, timeout, iw, ic, il, im, ir
        cdef short ev, rev
        cdef bint reading, keys_room
        cdef long long room
        cdef hclient *c
        while True:
            timeout = -1
            if self.hold_active and self.itail > self.ihead:
                timeout = self._hold_timeout()
                if not self.hold_active and self._write_master() < 0:
                    return -1
            timeout = _min_timeout(timeout, self._twitch_timeout())
            timeout = _min_timeout(timeout, self._defer_timeout())
            if self.has_rec:
                timeout = _min_timeout(timeout, _rec_wait_ms(&self.rec))
            reading = not self.master_eof
            room = self._room() if reading else 0
            if reading and room == 0:
                timeout = _min_timeout(timeout, self._stall_timeout())
                room = self._room()  # a client that stopped holding it frees room
            n = 0
            iw = ic = il = im = ir = -1
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
            fds[n].fd = self.listen_fd
            fds[n].events = POLLIN
            il = n
            n += 1
            if reading:
                ev = 0
                if room > 0 and not (self.has_rec and _rec_blocked(&self.rec)):
                    ev |= POLLIN
                if self.itail > self.ihead and not self.hold_active and self.master_blocked:
                    ev |= POLLOUT
                if ev:
                    fds[n].fd = self.master_fd
                    fds[n].events = ev
                    im = n
                    n += 1
            if self.has_rec and self.rec.on and self.rec.tail > self.rec.head:
                fds[n].fd = self.rec.fd
                fds[n].events = POLLOUT
                ir = n
                n += 1
            keys_room = self.itail - self.ihead <= H_IBUF - W_MAX_INPUT
            for i in range(self.ncl):
                c = &self.cl[i]
                ev = 0
                if not c.in_blocked and not c.closing:
                    ev |= POLLIN
                if c.blocked:
                    ev |= POLLOUT
                fds[n].fd = c.fd
                fds[n].events = ev
                cidx[n] = i
                isterm[n] = False
                n += 1
                if c.term >= 0:
                    # Keys while the input buffer has room (a hang-up is seen either way).
                    ev = POLLIN if keys_room and not c.closing else 0
                    fds[n].fd = c.term
                    fds[n].events = ev | (POLLOUT if c.tblocked else 0)
                    cidx[n] = i
                    isterm[n] = True
                    n += 1
            r = poll(fds, n, timeout)
            if r < 0:
                if errno == EINTR:
                    continue
                self.err = errno
                return -1
            for i in range(n):
                if fds[i].revents & POLLNVAL:
                    self.err = EBADF
                    return -1
            if iw >= 0 and fds[iw].revents:
                r = self._read_wake()
                if r != 0:
                    return -1 if r < 0 else C_EV_SIGNAL
            if ic >= 0 and fds[ic].revents:
                return C_EV_CHILD
            if ir >= 0 and fds[ir].revents:
                _rec_flush(&self.rec)
            if im >= 0:
                rev = fds[im].revents
                if rev & (POLLOUT | POLLHUP | POLLERR):
                    self.master_blocked = False
                if fds[im].events & POLLIN and rev & (POLLIN | POLLHUP | POLLERR):
                    if self._read_master() < 0:
                        return -1
            for i in range(il + 1, n):
                if i == im or i == ir:
                    continue
                c = &self.cl[cidx[i]]
                if c.dead:
                    continue
                rev = fds[i].revents
                if isterm[i]:
                    if c.term != fds[i].fd:
                        continue  # given back meanwhile
                    if rev & (POLLOUT | POLLHUP | POLLERR):
                        c.tblocked = False
                    if rev & (POLLIN | POLLHUP | POLLERR):
                        self._read_term(c, rev)
                    continue
                if rev & (POLLOUT | POLLHUP | POLLERR):
                    c.blocked = False
                if rev & (POLLIN | POLLHUP | POLLERR) and not c.in_blocked:
                    self._read_client(c)
            if fds[il].revents:
                if self._sweep() < 0 or self._accept() < 0:
                    return -1
            self._parse_blocked()
            self._flush_all()
            if not self.master_blocked and self._write_master() < 0:
                return -1
            self._lag_check()
            self._sweep()
            if self.changed:
                self.changed = False
                return C_EV_CLIENTS

    cdef int _end_loop(self, int idle_ms, int cap_ms, int flush_ms) noexcept nogil:
        # drain (flush_ms < 0): read the pty while there is more; finish: until every client
        # is done or flush_ms is over. No connection is taken either way.
        cdef pollfd fds[2 + 2 * H_MAX_CLIENTS]
        cdef int cidx[2 + 2 * H_MAX_CLIENTS]
        cdef bint isterm[2 + 2 * H_MAX_CLIENTS]
        cdef int n, r, i, timeout, im, ir
        cdef short rev
        cdef bint reading, master_polled, recheck
        cdef long long room
        cdef long long budget = <long long>cap_ms * 1000, deadline = 0, started
        cdef unsigned long long got
        cdef hclient *c
        cdef eofcheck eio
        eio.done = 0
        eio.at = 0
        for i in range(self.ncl):
            if not self.cl[i].attached:
                self.cl[i].dead = True
        self._sweep()
        reading = flush_ms < 0 and (not self.master_eof or self.master_eio)
        if flush_ms >= 0:
            deadline = _now_us() + <long long>flush_ms * 1000
        self._publish()
        self._sweep()
        while True:
            if reading and (budget <= 0 or (self.master_eof and _recheck_over(&eio))):
                reading = False
            if flush_ms < 0 and not reading:
                return 0
            if deadline and (self.ncl == 0 or _now_us() >= deadline):
                return 0
            timeout = -1
            n = 0
            im = ir = -1
            master_polled = recheck = False
            if reading:
                room = self._room()
                if room == 0:
                    timeout = self._stall_timeout()
                    room = self._room()  # a client that stopped holding it frees room
                if room > 0 and not (self.has_rec and _rec_blocked(&self.rec)):
                    if not self.master_eof:
                        fds[n].fd = self.master_fd
                        fds[n].events = POLLIN
                        im = n
                        n += 1
                        master_polled = True
                        timeout = idle_ms if idle_ms < (budget + 999) // 1000 else \
                            <int>((budget + 999) // 1000)
                    else:  # EIO: read again when the next re-read is due (see EOF_RECHECKS)
                        recheck = True
                        timeout = _min_timeout(timeout, _recheck_wait_ms(&eio))
            if deadline:
                started = (deadline - _now_us() + 999) // 1000
                timeout = _min_timeout(timeout, <int>started if started > 0 else 0)
            if self.has_rec:
                timeout = _min_timeout(timeout, _rec_wait_ms(&self.rec))
                if self.rec.on and self.rec.tail > self.rec.head:
                    fds[n].fd = self.rec.fd
                    fds[n].events = POLLOUT
                    ir = n
                    n += 1
            for i in range(self.ncl):
                c = &self.cl[i]
                fds[n].fd = c.fd
                fds[n].events = (POLLOUT if c.blocked else 0) | (0 if c.closing else POLLIN)
                cidx[n] = i
                isterm[n] = False
                n += 1
                if c.term >= 0:
                    fds[n].fd = c.term
                    fds[n].events = POLLOUT if c.tblocked else 0
                    cidx[n] = i
                    isterm[n] = True
                    n += 1
            started = _now_us()
            r = poll(fds, n, timeout)
            if master_polled or recheck:
                budget -= _now_us() - started
                if r == 0 and master_polled:
                    reading = False
            if r < 0:
                if errno == EINTR:
                    continue
                self.err = errno
                return -1
            if recheck and _recheck_due(&eio):
                got = self.written
                self.master_eof = False
                if self._read_master() < 0:
                    return -1
                self._publish()
                _recheck_read(&eio, self.written != got)
            if ir >= 0 and fds[ir].revents:
                _rec_flush(&self.rec)
            if im >= 0 and fds[im].revents:
                if fds[im].revents & POLLNVAL:
                    self.err = EBADF
                    return -1
                if self._read_master() < 0:
                    return -1
                self._publish()
                if self.master_eof and not self.master_eio:
                    reading = False
            for i in range(n):
                if i == im or i == ir:
                    continue
                c = &self.cl[cidx[i]]
                rev = fds[i].revents
                if isterm[i]:
                    if c.term != fds[i].fd or c.dead:
                        continue
                    if rev & (POLLHUP | POLLERR):
                        self._let_go(c, W_DETACHED_HANGUP)
                    elif rev & POLLOUT:
                        c.tblocked = False
                    continue
                if rev & (POLLOUT | POLLHUP | POLLERR):
                    c.blocked = False
                if rev & (POLLIN | POLLHUP | POLLERR):
                    self._discard_input(c)
            self._flush_all()
            self._lag_check()
            self._sweep()

    # ------------------------------------------------------------------ the pty

    cdef long long _room(self) noexcept nogil:
        cdef unsigned long long floor = self.written
        cdef int i
        cdef hclient *c
        for i in range(self.ncl):
            c = &self.cl[i]
            if c.attached and not c.lagging and not c.closing and not c.dead and c.pos < floor:
                floor = c.pos
        return <long long>self.rsize - <long long>(self.written - floor)

    cdef int _read_master(self) noexcept nogil:
        cdef long long room
        cdef size_t at, want, rroom
        cdef ssize_t r
        while not self.master_eof:
            room = self._room()
            if room <= 0 and self.shown < self.written:
                self._publish()  # clients cannot make room for what they have not been given
                room = self._room()
            if room <= 0:
                break
            at = self.written % self.rsize
            want = <size_t>room
            if want > self.rsize - at:
                want = self.rsize - at
            if self.has_rec and self.rec.on:
                rroom = _rec_room(&self.rec)
                if rroom == 0:
                    break
                if want > rroom:
                    want = rroom
            self._save_tails(want)
            r = read(self.master_fd, self.ring + at, want)
            if r > 0:
                self.written += r
                if self.has_rec:
                    _rec_event(&self.rec, b'o', &self.rec.u8out, self.ring + at, r)
                if r < FULL_READ or self.written - self.shown >= self.batch:
                    self._publish()
                elif not self.defer_at:
                    self.defer_at = _now_us() + DEFER_US
            elif r == 0:  # BSD/macOS: end of the pty
                self.master_eof = True
                self.master_eio = False
            elif errno == EINTR:
                continue
            elif errno == EAGAIN:
                break
            elif errno == EIO:  # Linux: the child side closed (the drain makes sure of the end)
                self.master_eof = self.master_eio = True
            else:
                self.err = errno
                return -1
        if self.master_eof:
            self._publish()
        return 0

    cdef void _publish(self) noexcept nogil:
        self.shown = self.written
        self.defer_at = 0
        self._flush_all()

    cdef int _defer_timeout(self) noexcept nogil:
        cdef long long left
        if not self.defer_at:
            return -1
        left = self.defer_at - _now_us()
        if left <= 0:
            self._publish()
            return -1
        return <int>((left + 999) // 1000)

    cdef void _save_tails(self, size_t n) noexcept nogil:
        # A lagging client in the middle of a frame keeps that frame's rest: the ring is about
        # to overwrite the oldest n bytes, and the frame's length is already on its way.
        cdef long long oldest_after = <long long>(self.written + n) - <long long>self.rsize
        cdef int i
        cdef hclient *c
        for i in range(self.ncl):
            c = &self.cl[i]
            if (c.lagging and not c.dead and c.frame_left and c.tail_left == 0
                    and <long long>c.pos < oldest_after):
                if c.tail == NULL:
                    c.tail = <char *>malloc(self.cap)
                    if c.tail == NULL:
                        c.dead = True
                        continue
                self._copy_out(c.tail, c.pos, c.frame_left)
                c.tail_off = 0
                c.tail_left = c.frame_left
                c.pos += c.frame_left

    cdef void _copy_out(self, char *dst, unsigned long long start, size_t n) noexcept nogil:
        cdef size_t at = start % self.rsize
        if at + n <= self.rsize:
            memcpy(dst, self.ring + at, n)
        else:
            memcpy(dst, self.ring + at, self.rsize - at)
            memcpy(dst + (self.rsize - at), self.ring, n - (self.rsize - at))

    cdef int _segments(self, iovec *iov, unsigned long long start, size_t n) noexcept nogil:
        cdef size_t at = start % self.rsize
        iov[0].iov_base = self.ring + at
        if at + n <= self.rsize:
            iov[0].iov_len = n
            return 1
        iov[0].iov_len = self.rsize - at
        iov[1].iov_base = self.ring
        iov[1].iov_len = n - (self.rsize - at)
        return 2

    cdef int _write_master(self) noexcept nogil:
        cdef ssize_t r
        if self.master_eof or self.hold_active:
            return 0
        while self.itail > self.ihead:
            r = write(self.master_fd, self.ibuf + self.ihead, self.itail - self.ihead)
            if r >= 0:
                self.ihead += r
            elif errno == EINTR:
                continue
            elif errno == EAGAIN:
                self.master_blocked = True
                break
            elif errno == EIO:  # nobody holds the slave any more
                self.ihead = self.itail
                break
            else:
                self.err = errno
                return -1
        if self.ihead == self.itail:
            self.ihead = self.itail = 0
        return 0

    cdef int _hold_timeout(self) noexcept nogil:
        cdef termios t
        cdef long long left
        left = self.held_at + self.hold_ms - _now_ms()
        if tcgetattr(self.master_fd, &t) < 0 or not (t.c_lflag & ICANON) or left <= 0:
            self.hold_active = False
            return -1
        return <int>left if left < HOLD_POLL_MS else HOLD_POLL_MS

    cdef void _set_size(self, unsigned short rows, unsigned short cols) noexcept nogil:
        self.twitch_at = 0
        if rows == self.rows and cols == self.cols:
            return
        self._ioctl_size(rows, cols)
        self.rows = rows
        self.cols = cols
        if self.has_rec:
            _rec_resized(&self.rec, rows, cols)

    cdef void _ioctl_size(self, unsigned short rows, unsigned short cols) noexcept nogil:
        cdef winsize ws
        memset(&ws, 0, sizeof(ws))
        ws.ws_row = rows
        ws.ws_col = cols
        ioctl(self.master_fd, TIOCSWINSZ, &ws)  # a pty that refuses keeps the size it has

    cdef void _twitch(self) noexcept nogil:
        if self.twitch_at or not self.rows or not self.cols:
            return
        self._ioctl_size(self.rows - 1 if self.rows > 1 else self.rows + 1, self.cols)
        self.twitch_at = _now_us() + C_TWITCH_US

    cdef int _twitch_timeout(self) noexcept nogil:
        cdef long long left
        if not self.twitch_at:
            return -1
        left = self.twitch_at - _now_us()
        if left <= 0:
            self.twitch_at = 0
            self._ioctl_size(self.rows, self.cols)
            return -1
        return <int>((left + 999) // 1000)

    cdef int _read_wake(self) noexcept nogil:
        cdef unsigned char b[128]
        cdef ssize_t r, i
        cdef int j
        cdef bint report = False, seen
        while True:
            r = read(self.wake_fd, b, sizeof(b))
            if r > 0:
                for i in range(r):
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

    # ------------------------------------------------------------------ clients

    cdef int _accept(self) noexcept nogil:
        cdef int fd
        cdef long uid
        cdef char msg[W_ERROR_MAX + 1]
        cdef hclient *c
        while True:
            fd = bottle_accept(self.listen_fd)
            if fd < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN or errno == ECONNABORTED or errno == EMFILE or \
                        errno == ENFILE or errno == EPROTO:
                    return 0
                self.err = errno
                return -1
            uid = bottle_peer_uid(fd)
            if uid != self.owner_uid:
                snprintf(msg, sizeof(msg), "refused: uid %ld is not this session's owner", uid)
                self._refuse(fd, msg)
            elif self.ncl >= H_MAX_CLIENTS:
                snprintf(msg, sizeof(msg), "refused: the session has %d clients already",
                         <int>H_MAX_CLIENTS)
                self._refuse(fd, msg)
            else:
                c = &self.cl[self.ncl]
                memset(c, 0, sizeof(hclient))
                c.fd = fd
                c.term = c.given = -1
                self.ncl += 1

    cdef void _refuse(self, int fd, const char *message) noexcept nogil:
        cdef unsigned char buf[4 + W_ERROR_MAX]
        cdef size_t n = strlen(message)
        if n > W_ERROR_MAX:
            n = W_ERROR_MAX
        _header(buf, W_ERROR, n)
        memcpy(buf + 4, message, n)
        write(fd, buf, 4 + n)  # best effort: the socket's buffer is empty
        close(fd)
        self.refused_n += 1
        self.changed = True

    cdef int _sweep(self) noexcept nogil:
        # Close and forget the clients marked dead; a writer gone hands the size on.
        cdef int i, k = 0, j, best
        cdef bint owner_gone = False
        cdef hclient *c
        for i in range(self.ncl):
            c = &self.cl[i]
            if c.dead:
                close(c.fd)
                free(c.tail)
                c.tail = NULL
                if c.term >= 0:
                    close(c.term)
                    c.term = -1
                if c.given >= 0:
                    close(c.given)
                    c.given = -1
                if c.attached:
                    self.changed = True
                if c.fd == self.owner_fd:
                    owner_gone = True
                continue
            if k != i:
                memcpy(&self.cl[k], c, sizeof(hclient))
            k += 1
        self.ncl = k
        if owner_gone:
            self.owner_fd = -1
            best = -1
            for j in range(self.ncl):
                c = &self.cl[j]
                if c.attached and not c.readonly and (best < 0 or c.active > self.cl[best].active):
                    best = j
            if best >= 0:
                self.owner_fd = self.cl[best].fd
                self._set_size(self.cl[best].rows, self.cl[best].cols)
        return 0

    cdef void _fail(self, hclient *c, const char *message) noexcept nogil:
        if not c.attached:
            self.refused_n += 1
            self.changed = True
        if c.frame_left or c.tail_left:
            c.dead = True
            return
        if not _pre_frame(c, W_ERROR, message, strlen(message)):
            c.dead = True
            return
        c.closing = True
        c.in_blocked = False
        c.rlen = 0

    cdef void _read_client(self, hclient *c) noexcept nogil:
        cdef ssize_t r
        while c.rlen < H_RBUF:
            if c.direct and c.term < 0:
                # Its terminal may come with these bytes.
                r = bottle_recv_fds(c.fd, c.rbuf + c.rlen, H_RBUF - c.rlen, &c.given)
            else:
                r = read(c.fd, c.rbuf + c.rlen, H_RBUF - c.rlen)
            if r < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN:
                    break
                c.dead = True  # ECONNRESET: gone
                return
            if r == 0:
                c.dead = True
                return
            if c.closing:
                continue
            c.rlen += r
            self._parse(c)
            if c.dead or c.in_blocked or c.closing:
                return

    cdef void _discard_input(self, hclient *c) noexcept nogil:
        cdef char buf[4096]
        cdef ssize_t r
        while True:
            r = read(c.fd, buf, sizeof(buf))
            if r < 0 and errno == EINTR:
                continue
            if r < 0 and errno == EAGAIN:
                return
            if r <= 0:
                c.dead = True
                return

    cdef void _parse_blocked(self) noexcept nogil:
        cdef int i
        if self.itail - self.ihead > H_IBUF - W_MAX_INPUT:
            return
        for i in range(self.ncl):
            if self.cl[i].in_blocked and not self.cl[i].dead:
                self.cl[i].in_blocked = False
                self._parse(&self.cl[i])

    cdef void _parse(self, hclient *c) noexcept nogil:
        cdef size_t length, used
        cdef int kind
        cdef unsigned char *p
        cdef unsigned short rows, cols
        cdef char msg[80]
        while c.rlen >= W_HEADER:
            kind = c.rbuf[0]
            length = (<size_t>c.rbuf[1] << 16) | (<size_t>c.rbuf[2] << 8) | c.rbuf[3]
            if length > W_MAX_INPUT:
                snprintf(msg, sizeof(msg), "frame of %zu bytes (limit %d)", length,
                         <int>W_MAX_INPUT)
                self._fail(c, msg)
                return
            if c.rlen < W_HEADER + length:
                return
            p = c.rbuf + W_HEADER
            if kind == W_KEYS and c.attached and not c.readonly:
                if (self.itail - self.ihead) + length > H_IBUF:
                    c.in_blocked = True
                    return
            used = W_HEADER + length
            if not c.attached:
                if kind != W_ATTACH:
                    self._fail(c, "the first frame must be ATTACH")
                    return
                self._attach(c, p, length)
            elif kind == W_KEYS:
                if not c.readonly:
                    self._keys(c, p, length)
            elif kind == W_RESIZE:
                if length != 4:
                    self._fail(c, "bad RESIZE frame")
                    return
                if not c.readonly:
                    rows = (p[0] << 8) | p[1]
                    cols = (p[2] << 8) | p[3]
                    if rows and cols:
                        c.rows = rows
                        c.cols = cols
                        self._activate(c)
            elif kind == W_REDRAW:
                self._twitch()
            elif kind == W_DETACH:
                if c.term >= 0:
                    self._let_go(c, W_DETACHED_ASKED)
                    return
                c.dead = True
                return
            elif kind == W_TERMINAL:
                self._take_terminal(c, p, length)
            else:
                snprintf(msg, sizeof(msg), "unexpected frame type 0x%x", kind)
                self._fail(c, msg)
                return
            if c.dead or c.closing:  # _fail emptied rbuf
                return
            memmove(c.rbuf, c.rbuf + used, c.rlen - used)
            c.rlen -= used

    cdef void _attach(self, hclient *c, const unsigned char *p, size_t length) noexcept nogil:
        cdef int version, flags, i
        cdef unsigned short rows, cols, before_rows, before_cols
        cdef unsigned long long since = 0, oldest, start
        cdef unsigned char body[14]
        cdef char msg[80]
        if length != 14:
            self._fail(c, "bad ATTACH frame")
            return
        version = p[0]
        flags = p[1]
        rows = (p[2] << 8) | p[3]
        cols = (p[4] << 8) | p[5]
        for i in range(8):
            since = (since << 8) | p[6 + i]
        if version != W_VERSION:
            snprintf(msg, sizeof(msg),
                     "protocol version %d is not supported (this holder: 1)", version)
            self._fail(c, msg)
            return
        c.attached = True
        c.readonly = (flags & W_F_READONLY) != 0
        c.direct = (flags & W_F_DIRECT) != 0
        c.rows = rows
        c.cols = cols
        oldest = self.written - self.rsize if self.written > self.rsize else 0
        start = since if since > oldest else oldest
        if start > self.shown:
            start = self.shown
        c.pos = start
        body[0] = W_VERSION
        body[1] = flags & (W_F_READONLY | W_F_REDRAW | W_F_DIRECT)
        _be16(body + 2, self.rows)
        _be16(body + 4, self.cols)
        _be64(body + 6, start)
        _pre_frame(c, W_ATTACHED, body, 14)
        if since < oldest:
            _be64(body, oldest - since)
            _pre_frame(c, W_DROPPED, body, 8)
            c.drop_note = oldest - since
        self.changed = True
        before_rows = self.rows
        before_cols = self.cols
        if not c.readonly and rows and cols:
            self._activate(c)
        if flags & W_F_REDRAW and self.rows == before_rows and self.cols == before_cols:
            self._twitch()

    cdef void _activate(self, hclient *c) noexcept nogil:
        self.seq += 1
        c.active = self.seq
        self.owner_fd = c.fd
        if c.rows and c.cols:
            self._set_size(c.rows, c.cols)

    cdef void _keys(self, hclient *c, const unsigned char *p, size_t n) noexcept nogil:
        if self.owner_fd != c.fd:
            self._activate(c)
        else:
            self.seq += 1
            c.active = self.seq
        if self.ihead == self.itail:
            self.ihead = self.itail = 0
        elif self.itail + n > H_IBUF:
            memmove(self.ibuf, self.ibuf + self.ihead, self.itail - self.ihead)
            self.itail -= self.ihead
            self.ihead = 0
        memcpy(self.ibuf + self.itail, p, n)
        self.itail += n
        if self.has_rec and self.rec.with_input and self.rec.on and _rec_room(&self.rec) >= n:
            _rec_event(&self.rec, b'i', &self.rec.u8in, <const char *>p, n)

    # ------------------------------------------------------------------ output to clients

    cdef void _flush_all(self) noexcept nogil:
        cdef int i
        for i in range(self.ncl):
            if not self.cl[i].dead and (self.cl[i].direct or not self.cl[i].blocked):
                self._flush(&self.cl[i])

    cdef void _flush(self, hclient *c) noexcept nogil:
        if c.direct:
            self._flush_direct(c)
            return
        # Until the socket is full or nothing is left: an EXIT (or a DROPPED) becomes due only
        # once what came before it is out.
        while not c.dead and not c.blocked and self._flush_once(c):
            pass

    cdef void _flush_direct(self, hclient *c) noexcept nogil:
        # A direct client: the output to its terminal, unframed; the frames to its socket.
        cdef iovec iov[3]
        cdef int niov
        cdef unsigned long long oldest
        cdef size_t offered, took, k
        cdef ssize_t w
        cdef unsigned char body[8]
        cdef int j
        if c.term >= 0 and not c.closing:
            if self.written > self.rsize and not c.tblocked:
                oldest = self.written - self.rsize
                # It lagged, and its terminal takes output again: what the ring no longer has
                # is dropped, and said there.
                if c.pos < oldest:
                    _be64(body, oldest - c.pos)
                    if not _pre_frame(c, W_DROPPED, body, 8):
                        c.dead = True
                        return
                    self._note_drop(c, oldest - c.pos)
                    c.pos = oldest
                    self._twitch()
            if not c.tblocked:
                niov = 0
                offered = 0
                if c.tnote_len:
                    iov[0].iov_base = c.tnote
                    iov[0].iov_len = c.tnote_len
                    niov = 1
                if c.pos < self.shown:
                    niov += self._segments(iov + niov, c.pos, self.shown - c.pos)
                if niov:
                    for j in range(niov):
                        offered += iov[j].iov_len
                    while True:
                        w = writev(c.term, iov, niov)
                        if w >= 0 or errno != EINTR:
                            break
                    if w < 0 and errno == EAGAIN:
                        w = 0
                        c.tblocked = True
                    elif w < 0:  # EIO: the terminal hung up
                        self._let_go(c, W_DETACHED_HANGUP)
                        self._flush_direct(c)
                        return
                    k = <size_t>w
                    if k < offered:
                        c.tblocked = True
                    took = k if k < c.tnote_len else c.tnote_len
                    if took:
                        memmove(c.tnote, c.tnote + took, c.tnote_len - took)
                        c.tnote_len -= took
                    c.pos += k - took
            if self.exit_status >= 0 and c.pos == self.shown and c.tnote_len == 0:
                _be16(body, <unsigned int>self.exit_status)
                if not _pre_frame(c, W_EXIT, body, 2):
                    c.dead = True
                    return
                c.closing = True
        if c.pre_len and not c.blocked:
            while True:
                w = write(c.fd, c.pre, c.pre_len)
                if w >= 0 or errno != EINTR:
                    break
            if w < 0 and errno == EAGAIN:
                c.blocked = True
                return
            if w < 0:  # EPIPE, ECONNRESET: the client is gone
                c.dead = True
                return
            memmove(c.pre, c.pre + w, c.pre_len - w)
            c.pre_len -= w
            if c.pre_len:
                c.blocked = True
        if c.closing and c.pre_len == 0:
            c.dead = True

    cdef void _note_drop(self, hclient *c, unsigned long long count) noexcept nogil:
        cdef int n = snprintf(c.tnote + c.tnote_len, H_TNOTE - c.tnote_len, DROPPED_NOTICE_C,
                              count)
        if n > 0 and <size_t>n < H_TNOTE - c.tnote_len:
            c.tnote_len += n

    cdef void _take_terminal(self, hclient *c, const unsigned char *p, size_t length) noexcept nogil:
        # A direct client's TERMINAL frame: its terminal is the hub's from here.
        cdef int fd = c.given, flags
        c.given = -1
        if not c.direct or c.term >= 0 or fd < 0 or length > W_DETACH_KEYS_MAX:
            if fd >= 0:
                close(fd)
            self._fail(c, "a TERMINAL frame needs DIRECT, one terminal descriptor and at most "
                       "32 detach keys")
            return
        if not isatty(fd):
            close(fd)
            self._fail(c, "TERMINAL: the descriptor is not a terminal")
            return
        # The client's own open file description: nobody else's flags change.
        flags = fcntl(fd, F_GETFL)
        fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        c.term = fd
        memcpy(c.dk.keys, p, length)
        c.dk.len = <int>length
        c.dk.pos = 0
        if c.drop_note:
            self._note_drop(c, c.drop_note)
            c.drop_note = 0
            self._twitch()

    cdef void _let_go(self, hclient *c, int reason) noexcept nogil:
        # Give a direct client's terminal back: never touched again; with a reason >= 0 the
        # client is told (DETACHED) and the connection closes after.
        cdef unsigned char body[9]
        if c.term < 0:
            return
        close(c.term)
        c.term = -1
        c.tblocked = False
        c.tnote_len = 0
        if reason >= 0 and not c.dead:
            body[0] = <unsigned char>reason
            _be64(body + 1, c.pos)
            if not _pre_frame(c, W_DETACHED, body, 9):
                c.dead = True
                return
            c.closing = True
            c.in_blocked = False
            c.rlen = 0
            self.changed = True

    cdef void _read_term(self, hclient *c, short revents) noexcept nogil:
        # Keys from a direct client's terminal (its detach keys end it).
        cdef unsigned char buf[W_MAX_INPUT]
        cdef unsigned char keys[W_MAX_INPUT]
        cdef ssize_t r, want
        cdef size_t n
        cdef bint detached
        while self.itail - self.ihead <= H_IBUF - W_MAX_INPUT:
            want = W_MAX_INPUT - c.dk.pos
            r = read(c.term, buf, want)
            if r < 0 and errno == EINTR:
                continue
            if r < 0 and errno == EAGAIN:
                if revents & (POLLHUP | POLLERR):
                    self._let_go(c, W_DETACHED_HANGUP)
                return
            if r <= 0:  # EIO, or the end: hung up
                self._let_go(c, W_DETACHED_HANGUP)
                return
            detached = False
            n = _dmatch(&c.dk, buf, <size_t>r, keys, &detached)
            if n and not c.readonly:
                self._keys(c, keys, n)
            if detached:
                self._let_go(c, W_DETACHED_KEYS)
                return
            if r < want:
                return  # a short read took all there was

    cdef bint _flush_once(self, hclient *c) noexcept nogil:
        cdef iovec iov[H_IOV]
        cdef unsigned char heads[8][4]
        cdef unsigned long long fstart[8]
        cdef size_t flen[8]
        cdef unsigned char body[8]
        cdef int niov = 0, nf = 0, j
        cdef unsigned long long cursor, oldest
        cdef size_t n, offered = 0, took, k
        cdef ssize_t w
        if not c.attached and not c.closing:
            return False
        if not c.frame_left and c.tail_left == 0 and not c.closing:
            if self.written > self.rsize:
                oldest = self.written - self.rsize
                if c.pos < oldest:
                    _be64(body, oldest - c.pos)
                    if not _pre_frame(c, W_DROPPED, body, 8):
                        c.dead = True
                        return False
                    c.pos = oldest
            if self.exit_status >= 0 and c.pos == self.shown:
                _be16(body, <unsigned int>self.exit_status)
                if not _pre_frame(c, W_EXIT, body, 2):
                    c.dead = True
                    return False
                c.closing = True
        if c.pre_len:
            iov[niov].iov_base = c.pre
            iov[niov].iov_len = c.pre_len
            niov += 1
        if c.tail_left:
            iov[niov].iov_base = c.tail + c.tail_off
            iov[niov].iov_len = c.tail_left
            niov += 1
        elif c.frame_left:
            niov += self._segments(iov + niov, c.pos, c.frame_left)
        # After a tail (a lagging client's saved frame) the ring may have moved past the
        # client: what comes next is decided at the boundary, next time.
        if not c.closing and c.tail_left == 0:
            cursor = c.pos + c.frame_left
            while cursor < self.shown and niov < 12 and nf < 8:
                n = self.shown - cursor
                if n > self.cap:
                    n = self.cap
                _header(heads[nf], W_OUTPUT, n)
                iov[niov].iov_base = heads[nf]
                iov[niov].iov_len = 4
                niov += 1
                niov += self._segments(iov + niov, cursor, n)
                fstart[nf] = cursor
                flen[nf] = n
                nf += 1
                cursor += n
        if niov == 0:
            return False
        for j in range(niov):
            offered += iov[j].iov_len
        while True:
            w = writev(c.fd, iov, niov)
            if w >= 0 or errno != EINTR:
                break
        if w < 0:
            if errno == EAGAIN:
                c.blocked = True
            else:  # EPIPE, ECONNRESET: the client is gone
                c.dead = True
            return False
        k = <size_t>w
        if k < offered:
            c.blocked = True
        took = k if k < c.pre_len else c.pre_len
        if took:
            memmove(c.pre, c.pre + took, c.pre_len - took)
            c.pre_len -= took
            k -= took
        if c.tail_left:
            took = k if k < c.tail_left else c.tail_left
            c.tail_off += took
            c.tail_left -= took
            c.frame_left -= took
            k -= took
        elif c.frame_left:
            took = k if k < c.frame_left else <size_t>c.frame_left
            c.pos += took
            c.frame_left -= took
            k -= took
        for j in range(nf):
            if k == 0:
                break
            if k < 4:
                _pre_add(c, heads[j] + k, 4 - k)
                c.frame_left = flen[j]
                k = 0
                break
            k -= 4
            took = k if k < flen[j] else flen[j]
            c.pos = fstart[j] + took
            c.frame_left = flen[j] - took
            k -= took
        if c.closing and c.pre_len == 0:
            c.dead = True
            return False
        return not c.blocked

    cdef int _stall_timeout(self) noexcept nogil:
        cdef long long now = _now_us(), left
        cdef int timeout = -1, i
        cdef hclient *c
        for i in range(self.ncl):
            c = &self.cl[i]
            if not c.attached or c.lagging or c.closing or c.dead:
                c.stall_since = 0
                continue
            if self.written - c.pos < self.rsize:
                continue  # not holding the ring full; its clock, if running, runs on
            if not c.stall_since or c.pos - c.stall_pos >= C_STALL_PROGRESS:
                c.stall_since = now
                c.stall_pos = c.pos
            left = c.stall_since + self.stall_us - now
            if left <= 0:
                c.lagging = True
                c.stall_since = 0
                self.lagged_n += 1
                self.changed = True
                continue
            timeout = _min_timeout(timeout, <int>((left + 999) // 1000))
        return timeout

    cdef void _lag_check(self) noexcept nogil:
        cdef int i
        cdef hclient *c
        for i in range(self.ncl):
            c = &self.cl[i]
            if c.lagging and c.tail_left == 0 and self.written - c.pos <= self.rsize // 2:
                c.lagging = False
            elif not c.lagging and c.stall_since and self.written - c.pos <= self.rsize // 2:
                c.stall_since = 0

