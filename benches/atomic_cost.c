/* What one atomic read-modify-write costs on this machine (run by hand):
 * a relaxed fetch_add back to back, and one added to a loop body of 60
 * dependent loads and stores (closer to a proxy's code, where other work
 * can overlap it). benches/callgrind_locked.py counts how many a request
 * executes.
 *
 *   gcc -O2 -o /tmp/atomic_cost benches/atomic_cost.c && taskset -c 0 /tmp/atomic_cost
 */
#include <stdatomic.h>
#include <stdio.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static long mem[4096];
static _Atomic long counters[8 * 8]; /* one a cache line */

__attribute__((noinline)) static void work(long i) {
    for (int j = 0; j < 60; j++)
        mem[(i * 7 + j * 13) & 4095] += mem[(i + j) & 4095];
}

int main(void) {
    const long n = 100000000, m = 20000000;
    double t0 = now();
    for (long i = 0; i < n; i++)
        atomic_fetch_add_explicit(&counters[(i & 7) * 8], 1, memory_order_relaxed);
    double t1 = now();
    for (long i = 0; i < m; i++) {
        work(i);
        atomic_fetch_add_explicit(&counters[(i & 7) * 8], 1, memory_order_relaxed);
    }
    double t2 = now();
    for (long i = 0; i < m; i++)
        work(i);
    double t3 = now();
    printf("fetch_add back to back: %.2f ns each\n", (t1 - t0) / n * 1e9);
    printf("one fetch_add amid other memory work: %.2f ns more a pass (%.2f against %.2f)\n",
           ((t2 - t1) - (t3 - t2)) / m * 1e9, (t2 - t1) / m * 1e9, (t3 - t2) / m * 1e9);
    return 0;
}
