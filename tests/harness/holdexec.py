"""A slow host on demand: hold a child of the process under test in its exec until released.

`subprocess.Popen` forks, then waits until the child has exec'd. A host that is slow to exec
(loaded, swapping, a cold disk) makes that wait long, and an interrupt that lands in it is what
issue 19 saw leave smolvm running. `ExecHold` makes the wait as long as a test needs: a small
library, LD_PRELOADed into the process under test, stops its children (those whose argv starts
with the given words) in their first exec until the test lets them go. Nothing is changed in
smolvm or the fake: only when the child's exec completes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

SOURCE = r"""
/* A slow host, on demand: LD_PRELOADed into the process under test, it holds a child of that
 * process in its first execve (or execv) until the test lets it go. The test then knows the
 * parent is inside subprocess.Popen, waiting for the child's exec, for as long as it needs.
 *
 * BOTTLE_TEST_HOLD_DIR   directory for the hand-over files
 * BOTTLE_TEST_HOLD_ARGV  space-separated words: only an exec whose argv[1], argv[2], … start
 *                        with these is held (e.g. "machine create")
 *
 * The first process that loads the library is the one under test (its pid is put in the
 * environment for its descendants); only its direct children are held, each once. A held
 * child creates DIR/PID (its argv, a line each) and waits, at most 60 s, until DIR/PID.go exists.
 * Everything here may run in a vfork child, so it allocates nothing and takes no lock:
 * the real functions are looked up at load time.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef int (*execve_fn)(const char *, char *const[], char *const[]);
typedef int (*execv_fn)(const char *, char *const[]);
static execve_fn real_execve;
static execv_fn real_execv;
static const char *dir, *words;
static long root;

__attribute__((constructor)) static void init(void) {
    char pid[32];
    real_execve = (execve_fn)dlsym(RTLD_NEXT, "execve");
    real_execv = (execv_fn)dlsym(RTLD_NEXT, "execv");
    dir = getenv("BOTTLE_TEST_HOLD_DIR");
    words = getenv("BOTTLE_TEST_HOLD_ARGV");
    const char *known = getenv("BOTTLE_TEST_HOLD_ROOT");
    if (known != NULL) {
        root = atol(known);
        return;
    }
    root = (long)getpid();
    snprintf(pid, sizeof pid, "%ld", root);
    setenv("BOTTLE_TEST_HOLD_ROOT", pid, 1);
}

static int matches(char *const argv[]) {
    const char *w = words;
    char *const *arg = argv + 1;
    while (*w != '\0') {
        size_t n = strcspn(w, " ");
        if (*arg == NULL || strlen(*arg) != n || strncmp(*arg, w, n) != 0) return 0;
        arg++;
        w += n;
        w += strspn(w, " ");
    }
    return 1;
}

static void hold(char *const argv[]) {
    char tmp[4096], path[4096], go[4200];
    if (dir == NULL || words == NULL || argv == NULL || argv[0] == NULL) return;
    if ((long)getppid() != root || !matches(argv)) return;
    snprintf(tmp, sizeof tmp, "%s/.%ld", dir, (long)getpid());
    snprintf(path, sizeof path, "%s/%ld", dir, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) return; /* held once already (this is a later exec of the same child) */
    for (char *const *arg = argv; *arg != NULL; arg++) {
        if (write(fd, *arg, strlen(*arg)) < 0 || write(fd, "\n", 1) < 0) break;
    }
    close(fd);
    rename(tmp, path); /* whole, or not there at all */
    snprintf(go, sizeof go, "%s.go", path);
    struct timespec tick = {0, 10 * 1000 * 1000};
    for (int i = 0; i < 6000 && access(go, F_OK) != 0; i++) nanosleep(&tick, NULL);
}

int execve(const char *file, char *const argv[], char *const envp[]) {
    hold(argv);
    return real_execve(file, argv, envp);
}

int execv(const char *file, char *const argv[]) {
    hold(argv);
    return real_execv(file, argv);
}
"""


def build(directory: Path) -> Path:
    """Compile the library into `directory`; fails the test without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler: the test builds a small exec shim (needed for the build too)")
    src = directory / "hold_exec.c"
    src.write_text(SOURCE)
    lib = directory / "hold_exec.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), "-ldl"], check=True)
    return lib


class ExecHold:
    """Holds the children whose argv[1:] starts with `words` (e.g. `["machine", "create"]`)."""

    def __init__(self, library: Path, directory: Path, words: list[str]) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.env = {
            "LD_PRELOAD": str(library),
            "BOTTLE_TEST_HOLD_DIR": str(directory),
            "BOTTLE_TEST_HOLD_ARGV": " ".join(words),
        }

    def held(self) -> dict[int, list[str]]:
        """The children held so far (released or not): pid → argv."""
        found = {}
        for entry in os.listdir(self.directory):
            if entry.isdigit():
                found[int(entry)] = (self.directory / entry).read_text().splitlines()
        return found

    def wait(self, timeout: float = 60.0) -> tuple[int, list[str]]:
        """The first held child (pid, argv), once there is one."""
        deadline = time.monotonic() + timeout
        while not (found := self.held()):
            if time.monotonic() > deadline:
                raise AssertionError(f"no child was held within {timeout} s")
            time.sleep(0.01)
        return min(found.items())

    def release(self, pid: int) -> None:
        """Let the held child `pid` go on with its exec."""
        (self.directory / f"{pid}.go").touch()
