/*
 * no_uring: runs a program where io_uring is not permitted, as a container
 * runtime's default seccomp profile does it (Docker's returns EPERM for
 * io_uring_setup):
 *
 *   no_uring ERRNO PROGRAM [ARGS...]
 *
 * installs a seccomp filter that makes io_uring_setup(2) fail with ERRNO
 * (a number), then execs PROGRAM. Everything else is allowed. The filter
 * needs no privilege (PR_SET_NO_NEW_PRIVS first) and is inherited by the
 * program and its children, whatever way they make the syscall.
 *
 * The end-to-end support (faults.rs) builds it at run time.
 */
#define _GNU_SOURCE
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__x86_64__)
#define ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define ARCH AUDIT_ARCH_AARCH64
#else
#error "no_uring: unknown architecture"
#endif

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: no_uring ERRNO PROGRAM [ARGS...]\n");
        return 127;
    }
    int err = atoi(argv[1]);
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ARCH, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof(filter) / sizeof(filter[0]), .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
        perror("no_uring: PR_SET_NO_NEW_PRIVS");
        return 127;
    }
    if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        perror("no_uring: PR_SET_SECCOMP");
        return 127;
    }
    execv(argv[2], argv + 2);
    perror("no_uring: execv");
    return 127;
}
