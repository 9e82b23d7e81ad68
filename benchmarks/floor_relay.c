/* The floor of a read/write pty relay, for measurement only (not part of bottle).

   One blocking read->write thread per direction and nothing else: no signal forwarding, no
   hold, no resize after the start, no drain cap. README "The copy loop at its floor" compares
   it with the native poll loop and script(1):

       cc -O2 -o /tmp/floor_relay benchmarks/floor_relay.c -lutil -lpthread

   then measure it like any relay with bottle.bench (a Relay whose argv is
   ["/tmp/floor_relay", *child]) or benchmarks/profile_relay.py's functions. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <pty.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

static int master;

static void *in_thread(void *arg) {
    char buf[65536];
    for (;;) {
        ssize_t r = read(0, buf, sizeof buf);
        if (r <= 0) return NULL;
        for (ssize_t o = 0; o < r;) {
            ssize_t w = write(master, buf + o, r - o);
            if (w < 0) return NULL;
            o += w;
        }
    }
}

static void *out_thread(void *arg) {
    char buf[131072];
    for (;;) {
        ssize_t r = read(master, buf, sizeof buf);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return NULL;
        for (ssize_t o = 0; o < r;) {
            ssize_t w = write(1, buf + o, r - o);
            if (w < 0) return NULL;
            o += w;
        }
    }
}

int main(int argc, char **argv) {
    struct winsize ws = {24, 80, 0, 0};
    struct termios saved, raw;
    int slave, status;
    pthread_t ti, to;
    ioctl(0, TIOCGWINSZ, &ws);
    if (openpty(&master, &slave, NULL, NULL, &ws) < 0) return 1;
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        ioctl(slave, TIOCSCTTY, 0);
        dup2(slave, 0); dup2(slave, 1); dup2(slave, 2);
        close(slave); close(master);
        execvp(argv[1], argv + 1);
        _exit(127);
    }
    close(slave);
    tcgetattr(0, &saved);
    raw = saved;
    cfmakeraw(&raw);
    tcsetattr(0, TCSANOW, &raw);
    pthread_create(&ti, NULL, in_thread, NULL);
    pthread_create(&to, NULL, out_thread, NULL);
    waitpid(pid, &status, 0);
    pthread_join(to, NULL);
    tcsetattr(0, TCSANOW, &saved);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
