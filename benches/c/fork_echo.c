/*
 * Baseline of the fork target for `cargo bench --bench strategies`: the
 * tutorial's process-per-connection uppercase-echo server, in C. The parent
 * accepts, forks and closes its copy of the connection; the child closes the
 * listener, sends back every byte it receives ASCII-uppercased until
 * end-of-file, and `_exit`s. The parent reaps its children from a SIGCHLD
 * handler (waitpid with WNOHANG), so no zombie is left and their CPU time is
 * counted in the parent's. No limits, no drain, no supervision: what a process
 * per connection costs here with nothing around it.
 *
 * Usage: fork_echo [ADDR:PORT]   (default 127.0.0.1:0)
 * Prints "listening on ADDR:PORT mode=c-fork pid=PID" once bound.
 * Built by the harness with `cc -O2`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what) {
    perror(what);
    exit(1);
}

static void reap(int sig) {
    (void)sig;
    int saved = errno;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
    errno = saved;
}

/* Serves one connection to its end-of-file; returns the exit code. */
static int serve(int fd) {
    static char buf[64 * 1024];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0) return 0;
        if (n < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        for (ssize_t i = 0; i < n; i++) {
            unsigned char b = (unsigned char)buf[i];
            buf[i] = (char)(b ^ ((unsigned char)(b - 'a') < 26) << 5);
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w < 0) {
                if (errno == EINTR) continue;
                return 1;
            }
            off += w;
        }
    }
}

int main(int argc, char **argv) {
    const char *spec = argc > 1 ? argv[1] : "127.0.0.1:0";
    char host[64];
    const char *colon = strrchr(spec, ':');
    if (!colon || (size_t)(colon - spec) >= sizeof host) {
        fprintf(stderr, "usage: fork_echo ADDR:PORT\n");
        return 2;
    }
    memcpy(host, spec, (size_t)(colon - spec));
    host[colon - spec] = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        fprintf(stderr, "fork_echo: bad address %s\n", spec);
        return 2;
    }
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (l < 0) die("socket");
    int one = 1;
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(l, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    if (listen(l, 1024) < 0) die("listen");
    socklen_t len = sizeof a;
    getsockname(l, (struct sockaddr *)&a, &len);
    struct sigaction sa = {.sa_handler = reap, .sa_flags = SA_RESTART | SA_NOCLDSTOP};
    sigaction(SIGCHLD, &sa, NULL);
    printf("listening on %s:%d mode=c-fork pid=%d\n", host, ntohs(a.sin_port), getpid());
    fflush(stdout);
    for (;;) {
        int c = accept4(l, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            die("accept");
        }
        pid_t pid = fork();
        if (pid == 0) {
            signal(SIGCHLD, SIG_DFL);
            close(l);
            _exit(serve(c));
        }
        if (pid < 0) perror("fork");
        close(c);
    }
}
