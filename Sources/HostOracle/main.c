// hmm-host-oracle: plays memory-management system calls on the host kernel for the
// differential test (issue 9.9). One command per line on stdin, one result line per command
// on stdout. Every address is absolute; the caller keeps them inside a window that this
// program checks is free at start. Results:
//   "= N"          success (N: the return value, or a value read)
//   "E N"          the call failed with errno N
//   "S N"          the access raised signal N (SIGSEGV 11, SIGBUS 7)
// Commands (numbers in decimal or 0x hex):
//   M addr len prot flags file off     mmap (file: -1 for anonymous, else a file index)
//   U addr len                         munmap
//   P addr len prot                    mprotect
//   R old oldlen newlen flags new      mremap
//   A addr len advice                  madvise
//   L addr                             load 8 bytes
//   W addr value                       store 8 bytes
//   C addr len                         mincore: "= " then one 0/1 per page
//   G addr n                           pagemap flags: "= " then n hex numbers (entry >> 55)
//   FN size                            a new memfd of size bytes: "= index"
//   FW file off len byte               pwrite len bytes of value byte
//   FR file off len                    pread: "= count sum" (sum of bytes read)
//   FT file len                        ftruncate
//   K n                                fork; the next n lines run in the child, whose results
//                                      are printed in order, then "= status" of the child
//   V addr end                         the VMAs inside [addr, end) from /proc/self/maps:
//                                      "= start-end perms offset,..." (hex, as maps shows)
//   Y                                  flush the results written so far (no result line)
//   Q                                  quit
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static sigjmp_buf jump;
static volatile sig_atomic_t faulted;

static void on_fault(int sig) {
    faulted = sig;
    siglongjmp(jump, 1);
}

static int files[16];
static int nfiles;
static int pagemap_fd = -1;

static uint64_t num(char **p) {
    while (**p == ' ') (*p)++;
    int neg = 0;
    if (**p == '-') { neg = 1; (*p)++; }
    uint64_t v = strtoull(*p, p, 0);
    return neg ? (uint64_t)(-(int64_t)v) : v;
}

static void run(char *line) {
    char *p = line;
    while (*p == ' ') p++;
    char op[4] = {0};
    int k = 0;
    while (*p && *p != ' ' && *p != '\n' && k < 3) op[k++] = *p++;
    if (!strcmp(op, "M")) {
        uint64_t a = num(&p), len = num(&p), prot = num(&p), flags = num(&p);
        int64_t f = (int64_t)num(&p);
        uint64_t off = num(&p);
        int fd = f < 0 ? -1 : (f < nfiles ? files[f] : 1000);
        void *r = mmap((void *)a, len, (int)prot, (int)flags, fd, (off_t)off);
        if (r == MAP_FAILED) printf("E %d\n", errno); else printf("= 0x%lx\n", (unsigned long)r);
    } else if (!strcmp(op, "U")) {
        uint64_t a = num(&p), len = num(&p);
        if (munmap((void *)a, len)) printf("E %d\n", errno); else printf("= 0\n");
    } else if (!strcmp(op, "P")) {
        uint64_t a = num(&p), len = num(&p), prot = num(&p);
        if (mprotect((void *)a, len, (int)prot)) printf("E %d\n", errno); else printf("= 0\n");
    } else if (!strcmp(op, "R")) {
        uint64_t a = num(&p), ol = num(&p), nl = num(&p), flags = num(&p), na = num(&p);
        void *r = mremap((void *)a, ol, nl, (int)flags, (void *)na);
        if (r == MAP_FAILED) printf("E %d\n", errno); else printf("= 0x%lx\n", (unsigned long)r);
    } else if (!strcmp(op, "A")) {
        uint64_t a = num(&p), len = num(&p), adv = num(&p);
        if (madvise((void *)a, len, (int)adv)) printf("E %d\n", errno); else printf("= 0\n");
    } else if (!strcmp(op, "L") || !strcmp(op, "W")) {
        uint64_t a = num(&p), v = op[0] == 'W' ? num(&p) : 0;
        faulted = 0;
        if (sigsetjmp(jump, 1) == 0) {
            if (op[0] == 'L') v = *(volatile uint64_t *)a; else *(volatile uint64_t *)a = v;
            printf("= %lu\n", op[0] == 'L' ? (unsigned long)v : 0UL);
        } else {
            printf("S %d\n", (int)faulted);
        }
    } else if (!strcmp(op, "C")) {
        uint64_t a = num(&p), len = num(&p);
        size_t n = (len + 4095) / 4096;
        unsigned char *vec = malloc(n ? n : 1);
        if (mincore((void *)a, len, vec)) { printf("E %d\n", errno); free(vec); return; }
        printf("= ");
        for (size_t i = 0; i < n; i++) putchar('0' + (vec[i] & 1));
        putchar('\n');
        free(vec);
    } else if (!strcmp(op, "G")) {
        uint64_t a = num(&p), n = num(&p);
        printf("=");
        for (uint64_t i = 0; i < n; i++) {
            uint64_t e = 0;
            if (pread(pagemap_fd, &e, 8, (off_t)((a / 4096 + i) * 8)) != 8) e = 0;
            printf(" %lx", (unsigned long)(e >> 55));
        }
        putchar('\n');
    } else if (!strcmp(op, "V")) {
        uint64_t lo = num(&p), hi = num(&p);
        FILE *maps = fopen("/proc/self/maps", "r");
        char buf[512];
        printf("=");
        while (maps && fgets(buf, sizeof buf, maps)) {
            unsigned long s0, e0, off;
            char perms[8];
            if (sscanf(buf, "%lx-%lx %7s %lx", &s0, &e0, perms, &off) != 4) continue;
            if (e0 <= lo || s0 >= hi) continue;
            printf(" %lx-%lx %s %lx", s0, e0, perms, off);
        }
        if (maps) fclose(maps);
        putchar('\n');
    } else if (!strcmp(op, "FN")) {
        uint64_t size = num(&p);
        if (nfiles == 16) { printf("E %d\n", EMFILE); return; }
        int fd = memfd_create("hmm-oracle", 0);
        if (fd < 0 || ftruncate(fd, (off_t)size)) { printf("E %d\n", errno); return; }
        files[nfiles] = fd;
        printf("= %d\n", nfiles++);
    } else if (!strcmp(op, "FW") || !strcmp(op, "FR")) {
        uint64_t f = num(&p), off = num(&p), len = num(&p), b = op[1] == 'W' ? num(&p) : 0;
        if (f >= (uint64_t)nfiles || len > (1u << 30)) { printf("E %d\n", EBADF); return; }
        unsigned char *buf = malloc(len ? len : 1);
        memset(buf, (int)b, len);
        ssize_t r = op[1] == 'W' ? pwrite(files[f], buf, len, (off_t)off) : pread(files[f], buf, len, (off_t)off);
        if (r < 0) printf("E %d\n", errno);
        else if (op[1] == 'W') printf("= %ld\n", (long)r);
        else {
            uint64_t sum = 0;
            for (ssize_t i = 0; i < r; i++) sum += buf[i];
            printf("= %ld %lu\n", (long)r, (unsigned long)sum);
        }
        free(buf);
    } else if (!strcmp(op, "FT")) {
        uint64_t f = num(&p), len = num(&p);
        if (f >= (uint64_t)nfiles) { printf("E %d\n", EBADF); return; }
        if (ftruncate(files[f], (off_t)len)) printf("E %d\n", errno); else printf("= 0\n");
    } else {
        printf("E %d\n", EINVAL);
    }
}

int main(int argc, char **argv) {
    // The window the caller uses must be free here.
    uint64_t window = argc > 1 ? strtoull(argv[1], NULL, 0) : 0x500000000000ULL;
    uint64_t wsize = argc > 2 ? strtoull(argv[2], NULL, 0) : (1ULL << 30);
    void *r = mmap((void *)window, wsize, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (r != (void *)window) { fprintf(stderr, "hmm-host-oracle: window 0x%lx is not free\n", (unsigned long)window); return 2; }
    munmap(r, wsize);
    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);   // one fault, one page: as swift-hmm without huge pages
    pagemap_fd = open("/proc/self/pagemap", O_RDONLY);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_fault;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    setvbuf(stdout, NULL, _IOFBF, 1 << 16);
    static char line[4096];
    while (fgets(line, sizeof line, stdin)) {
        if (line[0] == 'Q') break;
        if (line[0] == 'Y') { fflush(stdout); continue; }
        if (line[0] == 'K') {
            char *p = line + 1;
            int n = (int)num(&p);
            char (*child)[256] = calloc((size_t)n + 1, 256);
            for (int i = 0; i < n && fgets(child[i], 256, stdin); i++) {}
            fflush(stdout);
            pid_t pid = fork();
            if (pid == 0) {
                close(pagemap_fd);
                pagemap_fd = open("/proc/self/pagemap", O_RDONLY);
                for (int i = 0; i < n; i++) run(child[i]);
                fflush(stdout);
                _exit(0);
            }
            int status = 0;
            if (pid < 0) printf("E %d\n", errno);
            else { waitpid(pid, &status, 0); printf("= %d\n", status); }
            free(child);
        } else {
            run(line);
        }
    }
    fflush(stdout);
    return 0;
}
