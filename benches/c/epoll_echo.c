/*
 * Baseline for `cargo bench --bench strategies`: a hand-written uppercase-echo
 * server in C. One thread, one epoll instance, edge-triggered, non-blocking
 * sockets. Each connection is a 24-byte struct; a pending buffer is allocated
 * only when a write would block, and freed once it has been flushed. While a
 * connection has pending bytes it is not read (backpressure); EPOLLOUT resumes it.
 *
 * Usage: epoll_echo [ADDR:PORT]   (default 127.0.0.1:0)
 * Prints "listening on ADDR:PORT mode=c-epoll pid=PID" once bound.
 * Built by the harness with `cc -O2`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF (64 * 1024)
#define MAX_EVENTS 256

struct conn {
    int fd;
    unsigned len, off; /* pending bytes are pend[off..len] */
    char *pend;
};

static char buf[BUF];

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* ASCII uppercase, 8 bytes at a time (SWAR): gcc -O2 does not vectorize the plain byte loop. */
static void upper(char *p, size_t n) {
    const uint64_t ones = 0x0101010101010101ULL, high = 0x8080808080808080ULL;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t x;
        memcpy(&x, p + i, 8);
        uint64_t low7 = x & ~high;                  /* each byte 0..127: no carries below */
        uint64_t ge_a = low7 + (0x80 - 'a') * ones; /* high bit set where byte >= 'a' */
        uint64_t gt_z = low7 + (0x7f - 'z') * ones; /* high bit set where byte > 'z' */
        uint64_t lower = ge_a & ~gt_z & ~x & high;  /* 'a'..='z' and not a byte >= 0x80 */
        x ^= lower >> 2;                            /* 0x80 >> 2 = 0x20: clear bit 5 */
        memcpy(p + i, &x, 8);
    }
    for (; i < n; i++) {
        unsigned char b = (unsigned char)p[i];
        p[i] = (char)(b ^ ((unsigned char)(b - 'a') < 26) << 5);
    }
}

static void drop_conn(struct conn *c) {
    close(c->fd); /* closing removes it from the epoll set */
    free(c->pend);
    free(c);
}

/* Writes pend; returns 0 when all is sent, 1 when the socket is full, -1 on error. */
static int flush(struct conn *c) {
    while (c->off < c->len) {
        ssize_t n = write(c->fd, c->pend + c->off, c->len - c->off);
        if (n < 0) {
            if (errno == EINTR) continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 1 : -1;
        }
        c->off += (unsigned)n;
    }
    free(c->pend);
    c->pend = NULL;
    c->len = c->off = 0;
    return 0;
}

/* Reads until EAGAIN, echoing each chunk; keeps what does not fit as pending. */
static int serve(struct conn *c, uint32_t ev) {
    if (!(ev & (EPOLLIN | EPOLLRDHUP)) && !c->pend) return 0; /* writable, nothing to send */
    for (;;) {
        if (c->pend) {
            int r = flush(c);
            if (r != 0) return r < 0 ? -1 : 0; /* wait for EPOLLOUT */
        }
        ssize_t n = read(c->fd, buf, BUF);
        if (n == 0) return -1; /* peer closed */
        if (n < 0) {
            if (errno == EINTR) continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        }
        upper(buf, (size_t)n);
        ssize_t w = 0;
        while (w < n) {
            ssize_t k = write(c->fd, buf + w, (size_t)(n - w));
            if (k < 0) {
                if (errno == EINTR) continue;
                if (errno != EAGAIN && errno != EWOULDBLOCK) return -1;
                c->pend = malloc((size_t)(n - w));
                if (!c->pend) return -1;
                memcpy(c->pend, buf + w, (size_t)(n - w));
                c->len = (unsigned)(n - w);
                c->off = 0;
                break;
            }
            w += k;
        }
        /* A short read drained the socket: skip the read that would only say EAGAIN (as tokio does).
           Data arriving later raises a new edge. */
        if (n < BUF && !c->pend) return 0;
    }
}

int main(int argc, char **argv) {
    const char *spec = argc > 1 ? argv[1] : "127.0.0.1:0";
    char host[64];
    snprintf(host, sizeof host, "%s", spec);
    char *colon = strrchr(host, ':');
    if (!colon) {
        fprintf(stderr, "usage: %s ADDR:PORT\n", argv[0]);
        return 2;
    }
    *colon = 0;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) die("inet_pton");
    signal(SIGPIPE, SIG_IGN);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ls < 0) die("socket");
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(ls, 1024) < 0) die("listen");
    socklen_t sl = sizeof sa;
    getsockname(ls, (struct sockaddr *)&sa, &sl);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);
    printf("listening on %s:%u mode=c-epoll pid=%d\n", ip, ntohs(sa.sin_port), (int)getpid());
    fflush(stdout);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = NULL}; /* NULL = listener */
    if (epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev) < 0) die("epoll_ctl");
    struct epoll_event events[MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, MAX_EVENTS, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (!c) { /* accept until EAGAIN (edge-triggered) */
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED) continue;
                        break; /* EAGAIN, or EMFILE: retried on the next connection */
                    }
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = nc};
                    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) drop_conn(nc);
                }
                continue;
            }
            if ((events[i].events & (EPOLLERR | EPOLLHUP)) || serve(c, events[i].events) < 0) drop_conn(c);
        }
    }
}
