/*
 * faults.so: syscall faults injected into a server under test (LD_PRELOAD).
 *
 * The end-to-end support (faults.rs) builds it at run time and starts the
 * server with LD_PRELOAD=faults.so and a spec in SWITCHYARD_FAULTS:
 *
 *   SWITCHYARD_FAULTS="accept4:ECONNABORTED:first=3:every=5:count=10,setsockopt_nodelay:EINVAL"
 *
 * A rule is FUNCTION:ERRNO[:first=N][:every=N][:count=N][:thread=NAME][:when=W] (defaults:
 * first=1, every=0, count=1, every call). Calls to FUNCTION in this process
 * (only those that meet `when`, if given) are numbered from 1;
 * calls first, first+every, first+2*every, ... fail with ERRNO, count of
 * them at most (every=0: call first only), without calling the real
 * function; every other call goes to the real one (dlsym RTLD_NEXT). The
 * counters are per process: a forked child inherits the parent's counts and
 * goes on from there on its own; an exec'd program starts again from 1.
 *
 * `thread=NAME` counts only calls made by a thread whose name (comm, as
 * pthread_setname_np or std::thread::Builder::name sets it) starts with
 * NAME, so a stall can pick a server's event loop ("loop-") rather than the
 * main thread that waits beside it.
 *
 * `when` narrows which calls count:
 *   when=pending            accept4, accept: only calls made while a client
 *                           waits on the listening fd (a zero-timeout poll),
 *                           so a fault hits a real client's accept rather
 *                           than a loop's first look at an empty backlog
 *   when=connected          epoll_ctl_add: only connected sockets (a peer
 *                           name), not listeners, pipes or eventfds
 *   when=exists:PATH        any function: only while the file PATH exists, so
 *                           a test can turn a fault on after the server
 *                           started (it must come last in its rule;
 *                           PATH has no ',')
 *
 * FUNCTION is one of:
 *   accept4, accept         fail with -1 and errno
 *   setsockopt_nodelay      setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, ...) only;
 *                           other options are neither counted nor failed
 *   fork                    fail with -1 and errno (no child)
 *   pthread_create          return ERRNO as the result (errno untouched)
 *   epoll_ctl_add           epoll_ctl(epfd, EPOLL_CTL_ADD, ...) only
 *
 *
 * Stalls: for epoll_wait and io_uring_enter the second field is stall=MS
 * instead of an errno. The real call is made, and a call the rule picks
 * (judged when it returns) then sleeps MS milliseconds before returning its
 * result: the process is stalled after the wait reported what was ready and
 * before the server reads its clock. A wait a signal interrupted (EINTR) is
 * neither counted nor stalled: the stall falls on the wait that follows.
 * With when=exists:PATH the stall removes PATH as it begins, so a test
 * sees that it began (and it happens once).
 *   epoll_wait              the libc function (mio calls it)
 *   io_uring_enter          syscall(SYS_io_uring_enter, ...) (the io-uring
 *                           crate calls syscall(2)); every other syscall(2)
 *                           goes straight to the real one
 *
 * The spec is parsed once, in a constructor, before main; a bad spec
 * prints why on stderr and exits 127. The hooks themselves only read the
 * parsed rules and bump atomic counters: no malloc, no lock, so they are
 * safe after fork and in signal handlers.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_io_uring_enter
#define SYS_io_uring_enter 426
#endif

enum hook {
    H_ACCEPT4,
    H_ACCEPT,
    H_SETSOCKOPT_NODELAY,
    H_FORK,
    H_PTHREAD_CREATE,
    H_EPOLL_CTL_ADD,
    H_EPOLL_WAIT,
    H_IO_URING_ENTER,
    H_COUNT
};

static const char *const hook_names[H_COUNT] = {
    "accept4", "accept", "setsockopt_nodelay", "fork", "pthread_create", "epoll_ctl_add", "epoll_wait", "io_uring_enter",
};

/* Whether hook h stalls (stall=MS) rather than failing with an errno. */
static int stalls(int h) {
    return h == H_EPOLL_WAIT || h == H_IO_URING_ENTER;
}

enum when { W_ALWAYS, W_PENDING, W_CONNECTED, W_EXISTS };

struct rule {
    int active;
    int err;
    unsigned long stall_ms;
    unsigned long first, every, count;
    enum when when;
    char path[256];
    /* thread=NAME: a prefix of the calling thread's name ("" for any). */
    char thread[16];
};

static struct rule rules[H_COUNT];
static atomic_ulong calls[H_COUNT];

static const struct {
    const char *name;
    int value;
} errnos[] = {
    {"EMFILE", EMFILE},         {"ENFILE", ENFILE},           {"ENOBUFS", ENOBUFS},
    {"ENOMEM", ENOMEM},         {"ECONNABORTED", ECONNABORTED}, {"ECONNRESET", ECONNRESET},
    {"EPROTO", EPROTO},         {"EPERM", EPERM},             {"EINVAL", EINVAL},
    {"EBADF", EBADF},           {"EAGAIN", EAGAIN},           {"ENOSPC", ENOSPC},
    {"ETIMEDOUT", ETIMEDOUT},   {"EHOSTUNREACH", EHOSTUNREACH}, {"ENETUNREACH", ENETUNREACH},
    {"EINTR", EINTR},           {"ENETDOWN", ENETDOWN},       {"EOPNOTSUPP", EOPNOTSUPP},
};

/* The real functions, found once in the constructor. */
static int (*real_accept4)(int, struct sockaddr *, socklen_t *, int);
static int (*real_accept)(int, struct sockaddr *, socklen_t *);
static int (*real_setsockopt)(int, int, int, const void *, socklen_t);
static pid_t (*real_fork)(void);
static int (*real_pthread_create)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
static int (*real_epoll_ctl)(int, int, int, struct epoll_event *);
static int (*real_epoll_wait)(int, struct epoll_event *, int, int);
static long (*real_syscall)(long, ...);

static void say(const char *s) {
    ssize_t r = write(2, s, strlen(s));
    (void)r;
}

static void die(const char *why, const char *rule, size_t len) {
    say("faults.so: bad SWITCHYARD_FAULTS: ");
    say(why);
    say(" in rule \"");
    ssize_t r = write(2, rule, len);
    (void)r;
    say("\"\n");
    _exit(127);
}

/* Whether [s, s+len) is exactly the string word. */
static int is(const char *s, size_t len, const char *word) {
    return strlen(word) == len && memcmp(s, word, len) == 0;
}

static int parse_number(const char *s, size_t len, unsigned long *out) {
    unsigned long v = 0;
    if (len == 0 || len > 9)
        return 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return 0;
        v = v * 10 + (unsigned long)(s[i] - '0');
    }
    *out = v;
    return 1;
}

/* One rule: [rule, rule+len). */
static void parse_rule(const char *rule, size_t len) {
    const char *field = rule, *end = rule + len;
    struct rule r = {1, 0, 0, 1, 0, 1, W_ALWAYS, {0}, {0}};
    int hook = -1;
    for (int n = 0; field <= end; n++) {
        const char *colon = memchr(field, ':', (size_t)(end - field));
        const char *stop = colon ? colon : end;
        size_t flen = (size_t)(stop - field);
        if (n == 0) {
            for (int h = 0; h < H_COUNT; h++)
                if (is(field, flen, hook_names[h]))
                    hook = h;
            if (hook < 0)
                die("unknown function", rule, len);
        } else if (n == 1 && stalls(hook)) {
            if (flen <= 6 || memcmp(field, "stall=", 6) != 0 || !parse_number(field + 6, flen - 6, &r.stall_ms) ||
                r.stall_ms == 0)
                die("epoll_wait and io_uring_enter take stall=MS (MS >= 1), not an errno", rule, len);
        } else if (n == 1) {
            for (size_t e = 0; e < sizeof errnos / sizeof errnos[0]; e++)
                if (is(field, flen, errnos[e].name))
                    r.err = errnos[e].value;
            if (r.err == 0)
                die("unknown errno name", rule, len);
        } else if (flen > 5 && memcmp(field, "when=", 5) == 0) {
            if (is(field + 5, flen - 5, "exists") && colon) {
                /* The path is the rest of the rule. */
                size_t plen = (size_t)(end - colon - 1);
                if (plen == 0 || plen >= sizeof r.path)
                    die("when=exists:PATH needs a path (under 256 bytes)", rule, len);
                r.when = W_EXISTS;
                memcpy(r.path, colon + 1, plen);
                r.path[plen] = 0;
                break;
            } else if (is(field + 5, flen - 5, "pending") && (hook == H_ACCEPT4 || hook == H_ACCEPT))
                r.when = W_PENDING;
            else if (is(field + 5, flen - 5, "connected") && hook == H_EPOLL_CTL_ADD)
                r.when = W_CONNECTED;
            else
                die("when=pending is for accept4 and accept, when=connected for epoll_ctl_add, when=exists:PATH for any",
                    rule, len);
        } else if (flen > 7 && memcmp(field, "thread=", 7) == 0) {
            if (flen - 7 >= sizeof r.thread)
                die("thread=NAME takes at most 15 bytes (a thread name's length)", rule, len);
            memcpy(r.thread, field + 7, flen - 7);
            r.thread[flen - 7] = 0;
        } else {
            const char *eq = memchr(field, '=', flen);
            unsigned long v;
            if (!eq || !parse_number(eq + 1, (size_t)(stop - eq - 1), &v))
                die("expected first=N, every=N or count=N", rule, len);
            size_t klen = (size_t)(eq - field);
            if (is(field, klen, "first") && v >= 1)
                r.first = v;
            else if (is(field, klen, "every"))
                r.every = v;
            else if (is(field, klen, "count"))
                r.count = v;
            else
                die("expected first=N (N >= 1), every=N or count=N", rule, len);
        }
        if (!colon)
            break;
        field = colon + 1;
    }
    if (r.err == 0 && r.stall_ms == 0)
        die("no errno", rule, len);
    if (rules[hook].active)
        die("a second rule for the same function", rule, len);
    rules[hook] = r;
}

__attribute__((constructor)) static void faults_init(void) {
    real_accept4 = (int (*)(int, struct sockaddr *, socklen_t *, int))dlsym(RTLD_NEXT, "accept4");
    real_accept = (int (*)(int, struct sockaddr *, socklen_t *))dlsym(RTLD_NEXT, "accept");
    real_setsockopt = (int (*)(int, int, int, const void *, socklen_t))dlsym(RTLD_NEXT, "setsockopt");
    real_fork = (pid_t(*)(void))dlsym(RTLD_NEXT, "fork");
    real_pthread_create =
        (int (*)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *))dlsym(RTLD_NEXT, "pthread_create");
    real_epoll_ctl = (int (*)(int, int, int, struct epoll_event *))dlsym(RTLD_NEXT, "epoll_ctl");
    real_epoll_wait = (int (*)(int, struct epoll_event *, int, int))dlsym(RTLD_NEXT, "epoll_wait");
    real_syscall = (long (*)(long, ...))dlsym(RTLD_NEXT, "syscall");
    if (!real_accept4 || !real_accept || !real_setsockopt || !real_fork || !real_pthread_create || !real_epoll_ctl ||
        !real_epoll_wait || !real_syscall) {
        say("faults.so: dlsym(RTLD_NEXT) did not find every real function\n");
        _exit(127);
    }
    const char *spec = getenv("SWITCHYARD_FAULTS");
    if (!spec)
        return;
    const char *p = spec;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        if (len > 0)
            parse_rule(p, len);
        p += len;
        if (*p == ',')
            p++;
    }
}

/* Whether a client waits on the listening socket fd. */
static int pending(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLIN, .revents = 0};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

/* Whether fd is a connected socket. */
static int connected(int fd) {
    struct sockaddr_storage peer;
    socklen_t len = sizeof peer;
    return getpeername(fd, (struct sockaddr *)&peer, &len) == 0;
}

/* Whether the calling thread's name starts with prefix. */
static int thread_named(const char *prefix) {
    char name[16] = {0};
    if (prctl(PR_GET_NAME, name, 0, 0, 0) != 0)
        return 0;
    return strncmp(name, prefix, strlen(prefix)) == 0;
}

/* Whether the rule of hook h counts a call on fd. */
static int counts(enum hook h, int fd) {
    if (rules[h].thread[0] && !thread_named(rules[h].thread))
        return 0;
    switch (rules[h].when) {
    case W_PENDING:
        return pending(fd);
    case W_CONNECTED:
        return connected(fd);
    case W_EXISTS:
        return access(rules[h].path, F_OK) == 0;
    default:
        return 1;
    }
}

/* Whether the rule of hook h picks this call (on fd, or -1). */
static int picked(enum hook h, int fd) {
    const struct rule *r = &rules[h];
    if (!r->active || !counts(h, fd))
        return 0;
    unsigned long n = atomic_fetch_add_explicit(&calls[h], 1, memory_order_relaxed) + 1;
    if (n < r->first)
        return 0;
    unsigned long k = n - r->first, index;
    if (r->every == 0) {
        if (k != 0)
            return 0;
        index = 0;
    } else {
        if (k % r->every != 0)
            return 0;
        index = k / r->every;
    }
    return index < r->count;
}

/* The errno this call of hook h (on fd, or -1) must fail with, or 0. */
static int injected_on(enum hook h, int fd) {
    return picked(h, fd) ? rules[h].err : 0;
}

static int injected(enum hook h) {
    return injected_on(h, -1);
}

int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    int err = injected_on(H_ACCEPT4, fd);
    if (err) {
        errno = err;
        return -1;
    }
    return real_accept4(fd, addr, len, flags);
}

int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    int err = injected_on(H_ACCEPT, fd);
    if (err) {
        errno = err;
        return -1;
    }
    return real_accept(fd, addr, len);
}

int setsockopt(int fd, int level, int name, const void *value, socklen_t len) {
    if (level == IPPROTO_TCP && name == TCP_NODELAY) {
        int err = injected(H_SETSOCKOPT_NODELAY);
        if (err) {
            errno = err;
            return -1;
        }
    }
    return real_setsockopt(fd, level, name, value, len);
}

pid_t fork(void) {
    int err = injected(H_FORK);
    if (err) {
        errno = err;
        return -1;
    }
    return real_fork();
}

int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*start)(void *), void *arg) {
    int err = injected(H_PTHREAD_CREATE);
    if (err)
        return err;
    return real_pthread_create(thread, attr, start, arg);
}

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event) {
    if (op == EPOLL_CTL_ADD) {
        int err = injected_on(H_EPOLL_CTL_ADD, fd);
        if (err) {
            errno = err;
            return -1;
        }
    }
    return real_epoll_ctl(epfd, op, fd, event);
}

/* Sleeps the stall of hook h if its rule picks this call (one that
 * returned `failed` = -1 with EINTR is not counted: a signal's handler
 * interrupted it, and the caller waits again at once, which is the call a
 * test that stalls on a signal means); errno kept. */
static void stall_if_picked(enum hook h, int failed) {
    int saved = errno;
    if (failed && saved == EINTR)
        return;
    if (picked(h, -1)) {
        const struct rule *r = &rules[h];
        if (r->when == W_EXISTS)
            unlink(r->path);
        struct timespec left = {(time_t)(r->stall_ms / 1000), (long)(r->stall_ms % 1000) * 1000000L};
        while (nanosleep(&left, &left) == -1 && errno == EINTR)
            ;
    }
    errno = saved;
}

int epoll_wait(int epfd, struct epoll_event *events, int maxevents, int timeout) {
    int n = real_epoll_wait(epfd, events, maxevents, timeout);
    stall_if_picked(H_EPOLL_WAIT, n == -1);
    return n;
}

/* syscall(2) takes at most six arguments after the number; reading six
 * from the va_list is what glibc's own syscall() does. */
long syscall(long number, ...) {
    va_list ap;
    va_start(ap, number);
    long a1 = va_arg(ap, long), a2 = va_arg(ap, long), a3 = va_arg(ap, long);
    long a4 = va_arg(ap, long), a5 = va_arg(ap, long), a6 = va_arg(ap, long);
    va_end(ap);
    long result = real_syscall(number, a1, a2, a3, a4, a5, a6);
    if (number == SYS_io_uring_enter)
        stall_if_picked(H_IO_URING_ENTER, result == -1);
    return result;
}
