"""Build and run the C stress programs that drive src_ext/core directly under sanitizers.

Each program is one C source (a string in its test file) compiled together with every
src_ext/core/*.c; it prints `key=value` figures on stdout and exits 0 when its own checks pass.
TCP_HARNESS_C is the part the TCP programs share: includes, the globals the helpers use, a
threaded epoll echo server, a loopback listener and the table-blob byte writers.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[2] / "src_ext" / "core"

TCP_HARNESS_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include "dp.h"

static int echo_port[2], lb_port;
static atomic_int done, bad;
static struct dp *g_dp;

/* Echo server thread on listening socket *arg until `done`: every byte read is sent back. */
static void *echo_main(void *arg)
{
    int ls = *(int *)arg, ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = ls}, evs[64];
    static __thread char buf[65536];
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    while (!atomic_load(&done)) {
        int n = epoll_wait(ep, evs, 64, 50);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == ls) {
                int c = accept4(ls, NULL, NULL, SOCK_NONBLOCK);
                if (c >= 0) {
                    ev.data.fd = c;
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
                }
                continue;
            }
            ssize_t k = recv(fd, buf, sizeof buf, 0);
            if (k < 0 && errno == EAGAIN)
                continue;
            if (k <= 0) {
                close(fd);
                continue;
            }
            for (ssize_t o = 0; o < k;) {
                ssize_t m = send(fd, buf + o, (size_t)(k - o), MSG_NOSIGNAL);
                if (m < 0 && errno == EAGAIN) {
                    usleep(100);
                    continue;
                }
                if (m <= 0)
                    break;
                o += m;
            }
        }
    }
    close(ep);
    return NULL;
}

/* Nonblocking listener on 127.0.0.1:port (0: any), with SO_REUSEPORT when reuse is set. */
static int listen_on(int port, int reuse)
{
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(0x7f000001)};
    if (reuse)
        setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (bind(s, (void *)&a, sizeof a) || listen(s, 1024)) {
        perror("bind");
        exit(2);
    }
    fcntl(s, F_SETFL, O_NONBLOCK);
    return s;
}

static int port_of(int s)
{
    struct sockaddr_in a;
    socklen_t l = sizeof a;
    getsockname(s, (void *)&a, &l);
    return ntohs(a.sin_port);
}

static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
"""


def build(tmp_path: Path, name: str, source: str, flags: list[str]) -> str:
    """Compile source with every core .c file into tmp_path/name; returns the executable."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("no gcc on PATH")  # the extension itself could not have been built either
    main = tmp_path / f"{name}.c"
    main.write_text(source)
    exe = tmp_path / name
    res = subprocess.run(
        [gcc, "-std=gnu11", "-g", *flags, "-I", str(CORE),
         *sorted(glob.glob(str(CORE / "*.c"))), str(main), "-o", str(exe), "-lpthread"],
        capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return str(exe)


def run(exe: str) -> dict[str, str]:
    """Run a stress program with sanitizers set to stop at the first report; its figures."""
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1", UBSAN_OPTIONS="halt_on_error=1",
               ASAN_OPTIONS="detect_leaks=1")
    env.pop("LD_PRELOAD", None)
    res = subprocess.run([exe], capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert "Sanitizer" not in res.stderr, res.stderr[-4000:]
    return dict(kv.split("=") for kv in res.stdout.split())
