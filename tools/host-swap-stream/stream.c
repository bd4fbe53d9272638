// The host kernel's own "write + read of 4x RAM" stream (the figure `hmm bench` measures on
// swift-hmm): one thread writes one word per 4 KiB page of a region, then reads every page
// back and checks it. Prints ns per page access (two accesses per page), as the bench row.
// Usage: stream MIB
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s MIB\n", argv[0]); return 2; }
    size_t set = (size_t)atol(argv[1]) << 20, pg = 4096;
    char *a = mmap(0, set, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED) { perror("mmap"); return 1; }
    madvise(a, set, MADV_NOHUGEPAGE);   // 4 KiB pages, as the figure's
    double t0 = now();
    for (size_t o = 0; o < set; o += pg) *(volatile uint64_t *)(a + o) = o;
    for (size_t o = 0; o < set; o += pg)
        if (*(volatile uint64_t *)(a + o) != o) { fprintf(stderr, "bad bytes at %zu\n", o); return 1; }
    printf("%.1f\n", (now() - t0) / (2.0 * set / pg) * 1e9);
    return 0;
}
