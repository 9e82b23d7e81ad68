/* A minimal attach client for measurements only (benchmarks/bench_attach.py): what the next
 * round's native client will at least have to do, and nothing more. It attaches to a session
 * holder's socket (bottle._sessionwire), sends its terminal's keys as KEYS frames and writes
 * OUTPUT payloads to its stdout, with blocking calls in one poll loop; it exits with the
 * session's status on EXIT. No raw mode (the benchmark's terminal is raw already), no resize,
 * no detach key.
 *
 *   cc -O2 -o attach_client benchmarks/attach_client.c && ./attach_client SOCKET
 */
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int write_all(int fd, const unsigned char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int main(int argc, char **argv) {
    static unsigned char in[4 + 4096], out[1 << 18];
    unsigned char attach[4 + 14] = {0x01, 0, 0, 14, 1, 0, 0, 24, 0, 80};
    unsigned char head[4];
    size_t have = 0, left = 0;
    int kind = -1, s;
    struct sockaddr_un addr;
    struct winsize ws;
    struct pollfd fds[2];

    if (argc != 2 || strlen(argv[1]) >= sizeof(addr.sun_path)) {
        fprintf(stderr, "usage: attach_client SOCKET\n");
        return 2;
    }
    s = socket(AF_UNIX, SOCK_STREAM, 0);
    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, argv[1]);
    if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        perror("attach_client: connect");
        return 1;
    }
    if (ioctl(0, TIOCGWINSZ, &ws) == 0 && ws.ws_row && ws.ws_col) {
        attach[6] = ws.ws_row >> 8;
        attach[7] = ws.ws_row & 0xff;
        attach[8] = ws.ws_col >> 8;
        attach[9] = ws.ws_col & 0xff;
    }
    if (write_all(s, attach, sizeof(attach)) < 0)
        return 1;
    fds[0].fd = 0;
    fds[0].events = POLLIN;
    fds[1].fd = s;
    fds[1].events = POLLIN;
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            return 1;
        }
        if (fds[0].revents) {
            ssize_t n = read(0, in + 4, sizeof(in) - 4);
            if (n <= 0)
                return 0;
            in[0] = 0x02;
            in[1] = 0;
            in[2] = (unsigned char)(n >> 8);
            in[3] = (unsigned char)(n & 0xff);
            if (write_all(s, in, 4 + (size_t)n) < 0)
                return 1;
        }
        if (fds[1].revents) {
            ssize_t n = read(s, out, sizeof(out));
            size_t pos = 0;
            if (n <= 0)
                return 0;
            while (pos < (size_t)n) {
                if (kind < 0) {
                    head[have++] = out[pos++];
                    if (have == 4) {
                        kind = head[0];
                        left = ((size_t)head[1] << 16) | ((size_t)head[2] << 8) | head[3];
                        have = 0;
                    }
                    if (kind >= 0 && left == 0)
                        kind = -1;
                    continue;
                }
                size_t take = (size_t)n - pos < left ? (size_t)n - pos : left;
                if (kind == 0x82 && write_all(1, out + pos, take) < 0)
                    return 1;
                if (kind == 0x84 && take == left && left == 2)
                    return out[pos + 1];
                pos += take;
                left -= take;
                if (left == 0)
                    kind = -1;
            }
        }
    }
}
