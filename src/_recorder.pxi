# The recording of a session as asciicast v2, one for the relay's Pump and the holder's Hub
# alike. Included by _ptyrelay.pyx before either, so it is part of bottle._ptyrelay; its pure
# twin is bottle._recorder_py.
#
# The copy loop encodes events into a buffer of REC_BUFSIZE bytes and writes them to a pipe; a
# writer thread moves them from the pipe to the file, so that a slow or stuck disk can only stall
# the recording, never the loop in a write(2) it cannot interrupt. When the pipe has taken
# nothing for REC_STALL_MS while events wait, the recording is given up (the session goes on
# unrecorded); until then the output waits for it, as for a slow terminal.
REC_BUFSIZE = 256 * 1024
REC_STALL_MS = 5000
cdef size_t C_REC_BUFSIZE = 256 * 1024
cdef int REC_PIPE_SIZE = 1 << 20
cdef size_t REC_CHUNK = 64 * 1024
# Room always kept free past an event's data: its time and type, the sequence carried from the
# previous event, the closing bracket, and a resize event.
cdef size_t REC_SLACK = 128


# ------------------------------------------------------------------------- the encoder

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


# ------------------------------------------------------------------------- the writer thread

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


# ------------------------------------------------------------------------- the recorder
# One session's recording, held by a Pump or a Hub: events are encoded into buf[head:tail] and
# written to the pipe at once; what the pipe does not take waits there (and the copy loop's
# output with it, see _rec_blocked) until the writer thread drains it or the stall gives up.

cdef struct recorder:
    int fd  # the pipe to the writer thread (-1 when not, or no longer, recording)
    int status  # the writer's status pipe
    int err
    int rows, cols
    bint with_input, on, finished, resize_pending
    long long t0, stall_at, stall_us
    char *buf
    size_t head, tail
    u8state u8out, u8in


cdef int _rec_open(recorder *r, int record_fd, bint with_input, int stall_ms) except -1:
    cdef int data[2]
    cdef int status[2]
    cdef int dst, flags, rc
    cdef rec_writer *w
    cdef pthread_t tid
    cdef sigset_t all_signals, old_mask
    r.fd = r.status = -1
    r.stall_us = <long long>stall_ms * 1000
    r.with_input = with_input
    r.buf = <char *>malloc(C_REC_BUFSIZE)
    if r.buf == NULL:
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
    r.fd = data[1]
    r.status = status[0]
    r.on = True
    r.t0 = _now_us()
    return 0


cdef void _rec_close(recorder *r) noexcept nogil:
    # When its Pump or Hub goes, finished or not; also before (or without) a _rec_open, once
    # fd and status are -1. The writer thread ends by itself once its pipe is closed.
    if r.fd >= 0:
        close(r.fd)
        r.fd = -1
    if r.status >= 0:
        close(r.status)
        r.status = -1
    r.on = False
    free(r.buf)
    r.buf = NULL


cdef inline long long _rec_stamp(recorder *r, char *out) noexcept nogil:
    cdef long long t = _now_us() - r.t0
    if t < 0:
        t = 0
    return snprintf(out, 32, "[%lld.%06lld, \"", t // 1000000, t % 1000000)


cdef size_t _rec_room(recorder *r) noexcept nogil:
    # How many bytes of data the next event may carry (0: wait for the writer). Makes room
    # at the front of the buffer, and emits a pending resize first.
    cdef size_t n
    if not r.on:
        return <size_t>-1
    if r.head == r.tail:
        r.head = r.tail = 0
    elif r.head > 0 and C_REC_BUFSIZE - r.tail < C_REC_BUFSIZE // 2:
        memmove(r.buf, r.buf + r.head, r.tail - r.head)
        r.tail -= r.head
        r.head = 0
    if r.resize_pending and C_REC_BUFSIZE - r.tail >= 64:
        r.resize_pending = False
        n = _rec_stamp(r, r.buf + r.tail)
        n += snprintf(r.buf + r.tail + n, 32, "r\", \"%dx%d\"]\n", r.cols, r.rows)
        r.tail += n
    if r.resize_pending or C_REC_BUFSIZE - r.tail < REC_SLACK + 6:
        return 0
    return (C_REC_BUFSIZE - r.tail - REC_SLACK) // 6


cdef void _rec_stop(recorder *r, int err) noexcept nogil:
    # Give the recording up and relay on; the writer cuts the file to its last event.
    if r.err == 0:
        r.err = err
    r.on = False
    r.resize_pending = False
    r.head = r.tail = 0
    if r.fd >= 0:
        close(r.fd)
        r.fd = -1


cdef void _rec_flush(recorder *r) noexcept nogil:
    cdef ssize_t n
    while r.tail > r.head:
        n = write(r.fd, r.buf + r.head, r.tail - r.head)
        if n > 0:
            r.head += n
            r.stall_at = 0
        elif n < 0 and errno == EINTR:
            continue
        elif n < 0 and errno == EAGAIN:
            if r.stall_at == 0:
                r.stall_at = _now_us()
            return
        else:  # EPIPE: the writer failed and said why on its status pipe
            _rec_stop(r, errno if n < 0 else EIO)
            return
    r.head = r.tail = 0
    r.stall_at = 0


cdef void _rec_event(recorder *r, char kind, u8state *st, const char *data,
                     size_t n) noexcept nogil:
    # One event for n bytes (n <= _rec_room()), or for the end of a carried sequence
    # (n == 0); none when nothing would show. Written to the pipe at once.
    cdef char *out
    cdef size_t o, body
    if not r.on:
        return
    out = r.buf + r.tail
    o = _rec_stamp(r, out)
    out[o] = kind
    out[o + 1] = 0x22
    out[o + 2] = 0x2C
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
    out[o + 1] = 0x5D
    out[o + 2] = 0x0A
    r.tail += o + 3
    _rec_flush(r)


cdef void _rec_resized(recorder *r, int rows, int cols) noexcept nogil:
    # A change of the pty's size: an "r" event, emitted before any later output (see
    # _rec_room) whatever room there is now.
    if r.on:
        r.rows = rows
        r.cols = cols
        r.resize_pending = True
        _rec_room(r)
        _rec_flush(r)


cdef inline bint _rec_blocked(recorder *r) noexcept nogil:
    # Whether output (and recorded input) must wait for the writer to take events.
    return r.on and _rec_room(r) == 0


cdef int _rec_wait_ms(recorder *r) noexcept nogil:
    # Poll timeout while events wait for the pipe (-1: none); gives up a stalled recording.
    cdef long long left
    if not r.on or r.tail == r.head or r.stall_at == 0:
        return -1
    left = r.stall_at + r.stall_us - _now_us()
    if left <= 0:
        _rec_stop(r, ETIMEDOUT)
        return -1
    return <int>((left + 999) // 1000)


cdef void _rec_finish(recorder *r, int timeout_ms) noexcept nogil:
    cdef pollfd p
    cdef long long deadline = _now_us() + <long long>timeout_ms * 1000, left
    cdef int werr = 0, n
    if r.finished:
        return
    r.finished = True
    if r.on:
        if _rec_room(r) > 0:  # a sequence cut short by the end shows as U+FFFD
            _rec_event(r, b'o', &r.u8out, NULL, 0)
        if _rec_room(r) > 0:
            _rec_event(r, b'i', &r.u8in, NULL, 0)
        while r.on and (r.tail > r.head or r.resize_pending):
            left = deadline - _now_us()
            if left <= 0:
                _rec_stop(r, ETIMEDOUT)
                break
            p.fd = r.fd
            p.events = POLLOUT
            if poll(&p, 1, <int>((left + 999) // 1000)) > 0:
                _rec_room(r)
                _rec_flush(r)
        r.on = False
        if r.fd >= 0:
            close(r.fd)
            r.fd = -1
    if r.status < 0:
        return
    while True:
        left = deadline - _now_us()
        p.fd = r.status
        p.events = POLLIN
        n = poll(&p, 1, <int>((left + 999) // 1000) if left > 0 else 0)
        if n < 0 and errno == EINTR:
            continue
        break
    if n > 0 and read(r.status, &werr, sizeof(werr)) == sizeof(werr):
        if werr != 0:  # the writer's own failure is the cause (the loop saw only EPIPE)
            r.err = werr
    elif r.err == 0:
        r.err = ETIMEDOUT
    close(r.status)
    r.status = -1
