/*
 * The floor of a process per connection on this machine: what fork(2),
 * the child's _exit(2) and the parent's waitpid(2) cost with nothing else
 * done, for a parent as small as a C program (no heap to speak of). The
 * strategy harness compiles it (`cc -O2`), runs it, and prints its figure
 * beside the fork target.
 *
 *   fork_floor [FORKS]   (default 2000)
 *
 * Prints one line: "fork_floor: N forks, X us of CPU each (parent and
 * children, getrusage), Y us wall each".
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double secs(struct timeval t) {
    return (double)t.tv_sec + (double)t.tv_usec / 1e6;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 2000;
    if (n <= 0) {
        fprintf(stderr, "usage: fork_floor [FORKS]\n");
        return 2;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        pid_t p = fork();
        if (p < 0) {
            perror("fork");
            return 1;
        }
        if (p == 0)
            _exit(0);
        if (waitpid(p, NULL, 0) != p) {
            perror("waitpid");
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    struct rusage self, children;
    getrusage(RUSAGE_SELF, &self);
    getrusage(RUSAGE_CHILDREN, &children);
    double cpu = secs(self.ru_utime) + secs(self.ru_stime) + secs(children.ru_utime) + secs(children.ru_stime);
    double wall = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("fork_floor: %ld forks, %.1f us of CPU each (parent and children, getrusage), %.1f us wall each\n", n,
           cpu * 1e6 / (double)n, wall * 1e6 / (double)n);
    return 0;
}
