// hmm-oracle-runner: runs a swift-hmm scenario script (docs/scenario-language.md) on the real
// kernel, inside the kernel oracle's VM, against /dev/hmm_dmirror* and real system calls.
//
// It prints, for every command it runs, the line `hmm run --trace` prints for it in swift-hmm:
//   # FILE:LINE tN: NAME = RESULT
// (only FILE:LINE and RESULT are compared: the arguments show addresses, which differ), checks
// the script's expectations as `hmm run` does and, at the first that fails,
//   @@EXPECT FILE:LINE: MESSAGE
// and stops. A command it cannot run on a kernel (model-only inspection, or one it does not
// support: `migrate_pages`, the model-only inspection commands, …) ends the run with
//   @@UNSUPPORTED FILE:LINE: NAME
// and a finished script with `@@DONE`. Exit status 0 unless the runner itself fails.
//
// Processes: the script's first process is the runner itself. `fork` forks the parent process
// (the runner, or a process forked before); every forked process serves commands on a socket
// of its own, one at a time: the runner sends the index of the statement (every process holds
// the same tokens) and the names bound since its last message, and the process runs the
// statement, prints its trace line and answers with its status and the names it bound. A
// `concurrent` block runs each `thread` on a thread of its process, all processes at once.
// Host buffers (`buffer`, a device command's buffer) live in one shared mapping that every
// process sees at the same address, so a buffer a child's ioctl fills is the one the runner
// checks. A device command runs in the calling process if it has the device open, else in the
// one that opened it: the device works on its opener's address space either way (test_hmm).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <malloc.h>
#include <poll.h>
#include <pthread.h>
#include <sys/klog.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#ifdef HAVE_KERNEL_UAPI
#include "test_hmm_uapi.h"
#else
// Built outside the oracle (CI's build check): the same definitions as lib/test_hmm_uapi.h.
struct hmm_dmirror_cmd { uint64_t addr, ptr, npages, cpages, faults; };
#define HMM_DMIRROR_READ _IOWR('H', 0x00, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_WRITE _IOWR('H', 0x01, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_MIGRATE_TO_DEV _IOWR('H', 0x02, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_MIGRATE_TO_SYS _IOWR('H', 0x03, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_SNAPSHOT _IOWR('H', 0x04, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_EXCLUSIVE _IOWR('H', 0x05, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_CHECK_EXCLUSIVE _IOWR('H', 0x06, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_RELEASE _IOWR('H', 0x07, struct hmm_dmirror_cmd)
#define HMM_DMIRROR_FLAGS _IOWR('H', 0x08, struct hmm_dmirror_cmd)
#endif

#define PAGE 4096ULL
#define MAXTOK 256

// ---- tokens -------------------------------------------------------------------------------
typedef struct { char *text; const char *file; int line; int string; } Tok;
static Tok *toks; static int ntoks, captoks;
static __thread int ti;   // the token index (of this thread)

static void addtok(const char *s, size_t n, const char *file, int line, int string) {
    if (ntoks == captoks) { captoks = captoks ? 2 * captoks : 4096; toks = realloc(toks, captoks * sizeof(Tok)); }
    toks[ntoks++] = (Tok){ strndup(s, n), file, line, string };
}

static void fatal(const char *fmt, ...) {
    char b[1024]; va_list ap; va_start(ap, fmt); vsnprintf(b, sizeof b, fmt, ap); va_end(ap);
    printf("@@ERROR %s\n", b); fflush(stdout); exit(2);
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "r"); if (!f) return NULL;
    fseek(f, 0, SEEK_END); long n = ftell(f); fseek(f, 0, SEEK_SET);
    char *b = malloc(n + 1); if (fread(b, 1, n, f) != (size_t)n) { fclose(f); free(b); return NULL; }
    b[n] = 0; fclose(f); return b;
}

// A small file read whole (sysfs and procfs files have no size to seek to).
static char *readText(const char *path) {
    int fd = open(path, O_RDONLY); if (fd < 0) return NULL;
    enum { cap = 65536 };
    char *b = malloc(cap + 1); ssize_t n = 0, r;
    while (n < cap && (r = read(fd, b + n, cap - n)) > 0) n += r;
    close(fd);
    if (r < 0 && n == 0) { free(b); return NULL; }
    b[n] = 0; return b;
}

// Tokenizes a file; `include "x"` is expanded here (relative to the including file). A newline
// (and `;`) becomes the token "\n".
static void tokenize(const char *path, int depth) {
    if (depth > 16) fatal("%s: includes nested too deep", path);
    char *text = slurp(path);
    if (!text) fatal("%s: cannot read", path);
    const char *file = strdup(path);
    int line = 1;
    char *p = text;
    int start = ntoks;
    while (*p) {
        if (*p == '\n' || *p == ';') { addtok("\n", 1, file, line, 0); if (*p == '\n') line++; p++; continue; }
        if (*p == ' ' || *p == '\t' || *p == '\r') { p++; continue; }
        if (*p == '#') { while (*p && *p != '\n') p++; continue; }
        if (*p == '"') { char *q = ++p; while (*p && *p != '"' && *p != '\n') p++; addtok(q, p - q, file, line, 1); if (*p == '"') p++; continue; }
        if (*p == '{' || *p == '}') { addtok(p, 1, file, line, 0); p++; continue; }
        char *q = p;
        while (*p && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != ';' && *p != '#' && *p != '{' && *p != '}' && *p != '"') p++;
        // key="string": the string is the value
        if (*p == '"' && p > q && p[-1] == '=') { char *v = ++p; while (*p && *p != '"') p++; char buf[512]; snprintf(buf, sizeof buf, "%.*s%.*s", (int)(v - 1 - q), q, (int)(p - v), v); addtok(buf, strlen(buf), file, line, 0); if (*p) p++; continue; }
        addtok(q, p - q, file, line, 0);
    }
    addtok("\n", 1, file, line, 0);
    // Expand includes in what this file added.
    for (int i = start; i < ntoks; i++) {
        if (strcmp(toks[i].text, "include") || toks[i].string || (i > start && strcmp(toks[i - 1].text, "\n"))) continue;
        if (i + 1 >= ntoks || !toks[i + 1].string) fatal("%s:%d: include needs a quoted path", file, toks[i].line);
        char inc[1024]; const char *slash = strrchr(file, '/');
        if (toks[i + 1].text[0] == '/' || !slash) snprintf(inc, sizeof inc, "%s", toks[i + 1].text);
        else snprintf(inc, sizeof inc, "%.*s/%s", (int)(slash - file), file, toks[i + 1].text);
        // Cut this file's tokens at the include, tokenize the included file, then append the rest.
        int restFrom = i + 2, restN = ntoks - restFrom;
        Tok *rest = malloc((restN + 1) * sizeof(Tok)); memcpy(rest, toks + restFrom, restN * sizeof(Tok));
        ntoks = i;
        tokenize(inc, depth + 1);
        int after = ntoks;
        for (int k = 0; k < restN; k++) { if (ntoks == captoks) { captoks *= 2; toks = realloc(toks, captoks * sizeof(Tok)); } toks[ntoks++] = rest[k]; }
        free(rest);
        i = after - 1;
    }
}

// ---- names and values -----------------------------------------------------------------------
// Every process holds a copy of the table; `gen` stamps each binding so that only what changed
// travels between processes. `mask`: the processes (by slot) that hold a device's or a file's
// descriptor. A process's `slot` is its socket's number (0: the runner).
typedef enum { V_NUM, V_REGION, V_DEV, V_BUF, V_FILE, V_PROC, V_GUP } Kind;
typedef struct { char name[64]; Kind kind; uint64_t value, size; int fd; unsigned char *buf; int minor, slot; uint32_t mask; uint64_t gen; } Var;
static Var vars[512]; static int nvars;
static uint64_t gen;                      // the last stamp given
static pthread_mutex_t varLock = PTHREAD_MUTEX_INITIALIZER;
static int mySlot;                        // this process's slot

static void fatal(const char *fmt, ...);
// `let` and `repeat … as` inside a thread are the thread's own (the model's context locals).
static __thread struct { char name[64]; uint64_t value; } locals[32];
static __thread int nlocals, inThreadLocals;
static int localValue(const char *name, uint64_t *v) {
    for (int i = nlocals - 1; i >= 0; i--) if (!strcmp(locals[i].name, name)) { *v = locals[i].value; return 1; }
    return 0;
}
static void setLocal(const char *name, uint64_t v) {
    for (int i = nlocals - 1; i >= 0; i--) if (!strcmp(locals[i].name, name)) { locals[i].value = v; return; }
    if (nlocals == 32) fatal("more than 32 names of one thread");
    snprintf(locals[nlocals].name, sizeof locals[nlocals].name, "%s", name); locals[nlocals++].value = v;
}
static Var *lookup(const char *name) {
    pthread_mutex_lock(&varLock);
    Var *r = NULL;
    for (int i = nvars - 1; i >= 0; i--) if (!strcmp(vars[i].name, name)) { r = &vars[i]; break; }
    pthread_mutex_unlock(&varLock);
    return r;
}
static Var *bindVar(const char *name, Kind kind) {
    pthread_mutex_lock(&varLock);
    Var *v = NULL;
    for (int i = nvars - 1; i >= 0; i--) if (!strcmp(vars[i].name, name)) { v = &vars[i]; break; }
    if (!v) { if (nvars == 512) { pthread_mutex_unlock(&varLock); fatal("too many names"); } v = &vars[nvars++]; snprintf(v->name, sizeof v->name, "%s", name); }
    v->kind = kind; v->gen = ++gen;
    pthread_mutex_unlock(&varLock);
    return v;
}
static void touchVar(Var *v) { pthread_mutex_lock(&varLock); v->gen = ++gen; pthread_mutex_unlock(&varLock); }

// ---- host buffers: one shared mapping, seen by every process at the same address -------------
// Page-granular blocks, first fit after the last allocation, the bitmap and its lock (shared
// between processes) in the first pages. A freed block's pages are punched out, so a new block
// reads as zeros.
#define ARENA_SIZE (4ULL << 30)
#define ARENA_PAGES (ARENA_SIZE / 4096)
typedef struct { pthread_mutex_t lock; uint64_t next; uint8_t used[ARENA_PAGES / 8]; } ArenaHeader;
static unsigned char *arena;
#define ARENA_HEADER_PAGES ((sizeof(ArenaHeader) + 4095) / 4096)

static void arenaInit(void) {
    arena = mmap(NULL, ARENA_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (arena == MAP_FAILED) fatal("cannot map the buffers' arena: %s", strerror(errno));
    ArenaHeader *h = (ArenaHeader *)arena;
    pthread_mutexattr_t a; pthread_mutexattr_init(&a); pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutex_init(&h->lock, &a);
    for (uint64_t i = 0; i < ARENA_HEADER_PAGES; i++) h->used[i / 8] |= 1 << (i % 8);
    h->next = ARENA_HEADER_PAGES;
}
static int pageUsed(ArenaHeader *h, uint64_t i) { return h->used[i / 8] >> (i % 8) & 1; }
// A zeroed block of `bytes` and one page more (a copy of a whole page into a shorter buffer,
// as copy_to_user does for SNAPSHOT's bytes, stays inside it).
static unsigned char *arenaAlloc(uint64_t bytes) {
    uint64_t n = (bytes + 4095) / 4096 + 1;
    ArenaHeader *h = (ArenaHeader *)arena;
    pthread_mutex_lock(&h->lock);
    for (int pass = 0; pass < 2; pass++) {
        uint64_t from = pass ? ARENA_HEADER_PAGES : h->next, run = 0;
        for (uint64_t i = from; i < ARENA_PAGES; i++) {
            run = pageUsed(h, i) ? 0 : run + 1;
            if (run == n) {
                uint64_t first = i + 1 - n;
                for (uint64_t k = first; k <= i; k++) h->used[k / 8] |= 1 << (k % 8);
                h->next = i + 1;
                pthread_mutex_unlock(&h->lock);
                return arena + first * 4096;
            }
        }
    }
    pthread_mutex_unlock(&h->lock);
    fatal("the buffers' arena (%llu MiB) is full", (unsigned long long)(ARENA_SIZE >> 20));
    return NULL;
}
static void arenaFree(unsigned char *p, uint64_t bytes) {
    if (!p || p < arena || p >= arena + ARENA_SIZE) return;
    uint64_t first = (uint64_t)(p - arena) / 4096, n = (bytes + 4095) / 4096 + 1;
    madvise(p, n * 4096, MADV_REMOVE);
    ArenaHeader *h = (ArenaHeader *)arena;
    pthread_mutex_lock(&h->lock);
    for (uint64_t k = first; k < first + n; k++) h->used[k / 8] &= ~(1 << (k % 8));
    pthread_mutex_unlock(&h->lock);
}
// Binds NAME to a buffer, at once (threads and processes look names up meanwhile); the block
// NAME held before is freed after.
static Var *bindBuffer(const char *name, unsigned char *buf, uint64_t size) {
    pthread_mutex_lock(&varLock);
    Var *v = NULL;
    for (int i = nvars - 1; i >= 0; i--) if (!strcmp(vars[i].name, name)) { v = &vars[i]; break; }
    if (!v) { if (nvars == 512) { pthread_mutex_unlock(&varLock); fatal("too many names"); } v = &vars[nvars++]; snprintf(v->name, sizeof v->name, "%s", name); v->kind = V_NUM; }
    unsigned char *old = v->kind == V_BUF && v->buf != buf ? v->buf : NULL; uint64_t oldSize = v->size;
    v->buf = buf; v->size = size; v->value = 0; v->kind = V_BUF; v->gen = ++gen;
    pthread_mutex_unlock(&varLock);
    if (old) arenaFree(old, oldSize);
    return v;
}

static __thread const char *curFile; static __thread int curLine;
static __thread jmp_buf stopJump;
static __thread int curThread;            // tN of the trace lines

// One line, written at once (threads and processes share the output).
static void emitLine(const char *fmt, ...) {
    char *b = NULL; va_list ap; va_start(ap, fmt);
    int n = vasprintf(&b, fmt, ap); va_end(ap);
    if (n < 0) return;
    char *l = realloc(b, n + 2); if (!l) { free(b); return; }
    l[n] = '\n'; l[n + 1] = 0;
    fputs(l, stdout); fflush(stdout); free(l);
}
static void unsupported(const char *what) {
    emitLine("@@UNSUPPORTED %s:%d: %s", curFile, curLine, what);
    longjmp(stopJump, 1);
}
static void expectFailed(const char *fmt, ...) {
    char b[1024]; va_list ap; va_start(ap, fmt); vsnprintf(b, sizeof b, fmt, ap); va_end(ap);
    emitLine("@@EXPECT %s:%d: %s", curFile, curLine, b);
    longjmp(stopJump, 1);
}

// Expressions: numbers (decimal, 0x hex, `_`), units, names (NAME, NAME.size/.end/.pages),
// + - * / % and parentheses.
static __thread const char *ep;
static uint64_t esum(void);
static uint64_t eatom(void) {
    if (*ep == '(') { ep++; uint64_t v = esum(); if (*ep != ')') fatal("%s:%d: expected ')'", curFile, curLine); ep++; return v; }
    if (*ep >= '0' && *ep <= '9') {
        uint64_t n = 0;
        if (ep[0] == '0' && (ep[1] == 'x' || ep[1] == 'X')) {
            ep += 2;
            for (;; ep++) { int c = *ep; if (c == '_') continue; int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1; if (d < 0) break; n = n * 16 + d; }
        } else {
            for (; (*ep >= '0' && *ep <= '9') || *ep == '_'; ep++) if (*ep != '_') n = n * 10 + (*ep - '0');
        }
        static const struct { const char *u; uint64_t m; } units[] = { {"pages", PAGE}, {"page", PAGE}, {"TiB", 1ULL << 40}, {"GiB", 1ULL << 30}, {"MiB", 1ULL << 20}, {"KiB", 1ULL << 10}, {"B", 1} };
        for (unsigned i = 0; i < sizeof units / sizeof units[0]; i++) {
            size_t l = strlen(units[i].u);
            if (!strncmp(ep, units[i].u, l) && !((ep[l] >= 'a' && ep[l] <= 'z') || (ep[l] >= 'A' && ep[l] <= 'Z'))) { ep += l; return n * units[i].m; }
        }
        return n;
    }
    char name[128]; int k = 0;
    while ((*ep >= 'a' && *ep <= 'z') || (*ep >= 'A' && *ep <= 'Z') || (*ep >= '0' && *ep <= '9') || *ep == '_' || *ep == '.') { if (k < 127) name[k++] = *ep; ep++; }
    name[k] = 0;
    if (*ep == '[' && k) {   // an indexed name: NAME[expression], then .size and the like
        ep++;
        uint64_t index = esum();
        if (*ep != ']') fatal("%s:%d: expected ']'", curFile, curLine);
        ep++;
        k += snprintf(name + k, sizeof name - k, "[%llu]", (unsigned long long)index);
        while (k < 127 && ((*ep >= 'a' && *ep <= 'z') || (*ep >= 'A' && *ep <= 'Z') || *ep == '.')) name[k++] = *ep++;
        name[k] = 0;
    }
    if (!k) fatal("%s:%d: expected a number or a name at '%s'", curFile, curLine, ep);
    uint64_t lv; if (inThreadLocals && localValue(name, &lv)) return lv;
    Var *v = lookup(name);
    if (v) return v->value;
    char *dot = strrchr(name, '.');
    if (dot) {
        *dot = 0; Var *r = lookup(name);
        if (r && !strcmp(dot + 1, "size")) return r->size;
        if (r && !strcmp(dot + 1, "end")) return r->value + r->size;
        if (r && !strcmp(dot + 1, "pages")) return r->size / PAGE;
        *dot = '.';
    }
    fatal("%s:%d: unknown name '%s'", curFile, curLine, name);
    return 0;
}
static uint64_t eprod(void) {
    uint64_t v = eatom();
    while (*ep == '*' || *ep == '/' || *ep == '%') { char op = *ep++; uint64_t r = eatom(); v = op == '*' ? v * r : r ? (op == '/' ? v / r : v % r) : 0; }
    return v;
}
static uint64_t esum(void) {
    uint64_t v = eprod();
    while (*ep == '+' || *ep == '-') { char op = *ep++; uint64_t r = eprod(); v = op == '+' ? v + r : v - r; }
    return v;
}
// A word that is an indexed name, `child[i]`, as the name it stands for now, `child[3]`;
// any other word as it is.
static const char *resolveName(const char *w);
__attribute__((noinline)) static uint64_t eval(const char *s) {
    ep = s; uint64_t v = esum();
    if (*ep) fatal("%s:%d: expected an operator or end of value at '%s'", curFile, curLine, ep);
    return v;
}
static const char *resolveName(const char *w) {
    const char *open = strchr(w, '[');
    if (!open || open == w || w[strlen(w) - 1] != ']') return w;
    for (const char *p = w; p < open; p++) if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_')) return w;
    char inner[256]; snprintf(inner, sizeof inner, "%.*s", (int)(strlen(open) - 2), open + 1);
    const char *saved = ep;
    uint64_t index = eval(inner);
    ep = saved;
    char *r = NULL;
    if (asprintf(&r, "%.*s[%llu]", (int)(open - w), w, (unsigned long long)index) < 0) fatal("out of memory");
    return r;   // kept for the command's life (a few bytes per indexed command)
}

// ---- a command's arguments -------------------------------------------------------------------
typedef struct { char *key; char *value; } Arg;
typedef struct { char *name; Arg args[32]; int nargs; char *bindName; Arg expects[16]; int nexpects; const char *file; int line; } Cmd;

static int isFlagWord(const char *w) {
    static const char *flags[] = { "u8", "u16", "u32", "u64", "shared", "private", "populate", "noreplace", "hugetlb", "maymove", "dontunmap", "write", "pin", "longterm", NULL };
    for (int i = 0; flags[i]; i++) if (!strcmp(w, flags[i])) return 1;
    return 0;
}
static const char *opt(Cmd *c, const char *key) { for (int i = 0; i < c->nargs; i++) if (c->args[i].key && !strcmp(c->args[i].key, key)) return c->args[i].value; return NULL; }
static int flag(Cmd *c, const char *w) { for (int i = 0; i < c->nargs; i++) if (!c->args[i].key && !strcmp(c->args[i].value, w)) return 1; return 0; }
static const char *pos(Cmd *c, int n) {
    for (int i = 0, k = 0; i < c->nargs; i++) { if (c->args[i].key || isFlagWord(c->args[i].value)) continue; if (k++ == n) return c->args[i].value; }
    return NULL;
}
static const char *need(Cmd *c, int n, const char *what) { const char *p = pos(c, n); if (!p) fatal("%s:%d: expected %s", c->file, c->line, what); return p; }
static const char *expectKey(Cmd *c, const char *key) { for (int i = 0; i < c->nexpects; i++) if (c->expects[i].key && !strcmp(c->expects[i].key, key)) return c->expects[i].value; return NULL; }
static const char *expectBare(Cmd *c, int n) { for (int i = 0, k = 0; i < c->nexpects; i++) { if (c->expects[i].key) continue; if (k++ == n) return c->expects[i].value; } return NULL; }

static __thread int quietTrace;   // a command run again in another process (close): no second line
static void trace(Cmd *c, const char *fmt, ...) {
    if (quietTrace) return;
    const char *base = strrchr(c->file, '/');
    char *r = NULL; va_list ap; va_start(ap, fmt);
    if (vasprintf(&r, fmt, ap) < 0) r = NULL;
    va_end(ap);
    emitLine("# %s:%d t%d: %s = %s", base ? base + 1 : c->file, c->line, curThread, c->name, r ? r : "?");
    free(r);
}

// ---- errno names (those the scenario language knows) ----------------------------------------
static const char *errname(int e) {
    switch (e) {
    case EPERM: return "EPERM"; case ENOENT: return "ENOENT"; case EINTR: return "EINTR"; case EIO: return "EIO";
    case EAGAIN: return "EAGAIN"; case ENOMEM: return "ENOMEM"; case EACCES: return "EACCES"; case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY"; case EEXIST: return "EEXIST"; case ENODEV: return "ENODEV"; case EINVAL: return "EINVAL";
    case ENOSPC: return "ENOSPC"; case EBADF: return "EBADF"; case EOVERFLOW: return "EOVERFLOW"; case EOPNOTSUPP: return "EOPNOTSUPP";
    default: { static __thread char b[32]; snprintf(b, sizeof b, "E%d", e); return b; }
    }
}

// `ok`, an errno name, or alternatives of those (`ok|EINVAL`), as the model's isOutcome.
static int isOutcome(const char *w) {
    char alts[256]; snprintf(alts, sizeof alts, "%s", w);
    for (char *sp = NULL, *a = strtok_r(alts, "|", &sp); a; a = strtok_r(NULL, "|", &sp)) {
        if (!strcmp(a, "ok")) continue;
        int known = 0;
        for (int e = 1; e < 200 && !known; e++) if (!(a[1] >= '0' && a[1] <= '9') && !strcmp(errname(e), a)) known = 1;
        if (!known) return 0;
    }
    return 1;
}

// `expect ok|EINVAL` / `expect errno=E` / default ok, for system calls.
static void checkErrno(Cmd *c, int err) {
    const char *want = expectKey(c, "errno");
    for (int i = 0; !want && i < c->nexpects; i++) {
        if (c->expects[i].key) continue;
        const char *w = c->expects[i].value;
        if (!strcmp(w, "ok") || w[0] == 'E' || strstr(w, "|")) want = w;
    }
    if (!want) want = "ok";
    char alts[256]; snprintf(alts, sizeof alts, "%s", want);
    const char *got = err ? errname(err) : "ok";
    for (char *sp = NULL, *a = strtok_r(alts, "|", &sp); a; a = strtok_r(NULL, "|", &sp)) if (!strcmp(a, got)) return;
    expectFailed("expected %s, got %s", want, got);
}

// ---- memory accesses with fault capture --------------------------------------------------------
static __thread sigjmp_buf faultJump; static __thread volatile int faultSig; static __thread volatile uintptr_t faultAddr;
static __thread volatile sig_atomic_t inAccess;   // set only around the script's own accesses
static void onFault(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    if (!inAccess) { signal(sig, SIG_DFL); return; }   // the runner's own fault: crash (re-executes with the default action)
    inAccess = 0; faultSig = sig; faultAddr = (uintptr_t)si->si_addr; siglongjmp(faultJump, 1);
}

static __thread char faultText[64];
static const char *faultString(void) {
    snprintf(faultText, sizeof faultText, "%s at 0x%lx", faultSig == SIGBUS ? "SIGBUS" : "SIGSEGV", (unsigned long)faultAddr);
    return faultText;
}
static const char *signalWord(void) { return faultSig == SIGBUS ? "bus" : "segv"; }

// `expect segv|bus|ok` for accesses (default ok).
static void checkSignal(Cmd *c, int faulted) {
    const char *want = NULL;
    for (int i = 0; i < c->nexpects; i++) if (!c->expects[i].key && (strstr(c->expects[i].value, "segv") || strstr(c->expects[i].value, "bus") || !strcmp(c->expects[i].value, "ok"))) want = c->expects[i].value;
    if (!want) want = "ok";
    const char *got = faulted ? signalWord() : "ok";
    char alts[128]; snprintf(alts, sizeof alts, "%s", want);
    for (char *sp = NULL, *a = strtok_r(alts, "|", &sp); a; a = strtok_r(NULL, "|", &sp)) if (!strcmp(a, got)) return;
    expectFailed("expected %s, got %s", want, faulted ? faultString() : "success");
}

// ---- patterns over 32-bit ints ---------------------------------------------------------------
typedef struct { int kind; int64_t c; uint32_t v; uint8_t b; } Pattern;   // 0 IDX+c, 1 NEG, 2 INT, 3 BYTE
static Pattern pattern(const char *t) {
    Pattern p = {0};
    if (!strcmp(t, "IDX")) return p;
    if (!strcmp(t, "NEG")) { p.kind = 1; return p; }
    if (!strcmp(t, "ZERO")) { p.kind = 3; p.b = 0; return p; }
    if (!strcmp(t, "FF")) { p.kind = 3; p.b = 0xFF; return p; }
    if (!strncmp(t, "IDX+", 4)) { p.c = (int64_t)eval(t + 4); return p; }
    if (!strncmp(t, "IDX-", 4)) { p.c = -(int64_t)eval(t + 4); return p; }
    if (!strncmp(t, "INT(", 4) && t[strlen(t) - 1] == ')') { char b[128]; snprintf(b, sizeof b, "%.*s", (int)strlen(t) - 5, t + 4); p.kind = 2; p.v = (uint32_t)eval(b); return p; }
    if (!strncmp(t, "BYTE(", 5) && t[strlen(t) - 1] == ')') { char b[128]; snprintf(b, sizeof b, "%.*s", (int)strlen(t) - 6, t + 5); p.kind = 3; p.b = (uint8_t)eval(b); return p; }
    fatal("%s:%d: expected a pattern, found '%s'", curFile, curLine, t);
    return p;
}
// Over whole 32-bit ints, as the model: bytes past the last whole int are 0 (and not compared).
static void fillPattern(unsigned char *dst, uint64_t len, Pattern p, uint64_t index) {
    memset(dst, 0, len);
    for (uint64_t i = 0; i + 4 <= len; i += 4) {
        uint64_t k = index + i / 4;
        uint32_t v = p.kind == 0 ? (uint32_t)(k + p.c) : p.kind == 1 ? (uint32_t)(-(int64_t)k) : p.kind == 2 ? p.v : 0x01010101u * p.b;
        memcpy(dst + i, &v, 4);
    }
}
// Return: -1 if `got` matches, else the first differing int (or byte).
static int64_t comparePattern(const unsigned char *got, uint64_t len, Pattern p, uint64_t index) {
    unsigned char *want = malloc(len ? len : 1); fillPattern(want, len, p, index);
    int64_t at = -1;
    for (uint64_t i = 0; i < len - len % 4; i++) if (got[i] != want[i]) { at = (int64_t)(i / 4); break; }
    free(want); return at;
}

// ---- commands ---------------------------------------------------------------------------------
static int prot(const char *t) {
    if (!t) return PROT_READ | PROT_WRITE;
    static const struct { const char *n; int p; } t2[] = { {"none", PROT_NONE}, {"r", PROT_READ}, {"w", PROT_WRITE},
        {"rw", PROT_READ | PROT_WRITE}, {"rx", PROT_READ | PROT_EXEC}, {"rwx", PROT_READ | PROT_WRITE | PROT_EXEC}, {NULL, 0} };
    for (int i = 0; t2[i].n; i++) if (!strcmp(t, t2[i].n)) return t2[i].p;
    return (int)eval(t);
}

static Var *region(const char *name, uint64_t addr, uint64_t size) { Var *v = bindVar(name, V_REGION); v->value = addr; v->size = (size + PAGE - 1) & ~(PAGE - 1); return v; }

static void cmdMmap(Cmd *c) {
    uint64_t size = eval(need(c, 0, "a size"));
    int flags = flag(c, "shared") ? MAP_SHARED : MAP_PRIVATE, fd = -1;
    uint64_t addr = 0, off = 0;
    const char *f = opt(c, "file");
    if (f) { Var *fv = lookup(f); if (!fv || fv->kind != V_FILE) fatal("%s:%d: no file '%s'", c->file, c->line, f); if (!(fv->mask & (1u << mySlot))) unsupported("a file this process does not have open"); fd = fv->fd; off = opt(c, "offset") ? eval(opt(c, "offset")) : 0; }
    else flags |= MAP_ANONYMOUS;
    if (opt(c, "fixed")) { addr = eval(opt(c, "fixed")); flags |= flag(c, "noreplace") ? MAP_FIXED_NOREPLACE : MAP_FIXED; }
    else if (opt(c, "hint")) addr = eval(opt(c, "hint"));
    if (flag(c, "populate")) flags |= MAP_POPULATE;
    if (flag(c, "hugetlb") || opt(c, "hugetlb")) {
        flags |= MAP_HUGETLB;
        const char *h = opt(c, "hugetlb");
        if (h) {
            uint64_t hs = eval(h);
            if (hs != (2ULL << 20) && hs != (1ULL << 30)) unsupported("mmap hugetlb= of a size other than 2MiB or 1GiB");
            flags |= (hs == (1ULL << 30) ? 30 : 21) << MAP_HUGE_SHIFT;
        }
        // The kernel rounds the length up to the huge page; the name gets the page-rounded
        // length, as the model's.
    }
    void *r = mmap((void *)addr, size, prot(opt(c, "prot")), flags, fd, off);
    if (r == MAP_FAILED) { int e = errno; trace(c, "%s", errname(e)); checkErrno(c, e); return; }
    trace(c, "0x%lx", (unsigned long)r);
    if (c->bindName) region(c->bindName, (uint64_t)r, size);
    checkErrno(c, 0);
}

static int advice(const char *w) {
    static const struct { const char *n; int a; } t[] = {
        {"normal", MADV_NORMAL}, {"random", MADV_RANDOM}, {"sequential", MADV_SEQUENTIAL}, {"willneed", MADV_WILLNEED},
        {"dontneed", MADV_DONTNEED}, {"free", MADV_FREE}, {"remove", MADV_REMOVE}, {"dontfork", MADV_DONTFORK}, {"dofork", MADV_DOFORK},
        {"hugepage", MADV_HUGEPAGE}, {"nohugepage", MADV_NOHUGEPAGE}, {"collapse", 25 /* MADV_COLLAPSE */}, {"cold", 20 /* MADV_COLD */}, {"pageout", 21 /* MADV_PAGEOUT */}, {"populate_read", 22}, {"populate_write", 23},
        {"cold", MADV_COLD}, {"pageout", MADV_PAGEOUT}, {NULL, 0} };
    for (int i = 0; t[i].n; i++) if (!strcmp(w, t[i].n)) return t[i].a;
    return -1;
}

static void cmdRange(Cmd *c) {
    uint64_t a = eval(need(c, 0, "an address")), len = eval(need(c, 1, "a length"));
    int r;
    if (!strcmp(c->name, "munmap")) r = munmap((void *)a, len);
    else if (!strcmp(c->name, "mprotect")) r = mprotect((void *)a, len, prot(need(c, 2, "a protection")));
    else { int adv = advice(need(c, 2, "an advice")); if (adv < 0) unsupported("madvise advice"); r = madvise((void *)a, len, adv); }
    int e = r ? errno : 0;
    trace(c, "%s", e ? errname(e) : "0");
    checkErrno(c, e);
}

static void cmdMremap(Cmd *c) {
    uint64_t a = eval(need(c, 0, "an address")), old = eval(need(c, 1, "an old length")), nw = eval(need(c, 2, "a new length"));
    int flags = 0; uint64_t to = 0;
    if (flag(c, "maymove")) flags |= MREMAP_MAYMOVE;
    if (opt(c, "fixed")) { flags |= MREMAP_FIXED; to = eval(opt(c, "fixed")); }
    if (flag(c, "dontunmap")) flags |= MREMAP_DONTUNMAP;
    void *r = mremap((void *)a, old, nw, flags, (void *)to);
    if (r == MAP_FAILED) { int e = errno; trace(c, "%s", errname(e)); checkErrno(c, e); return; }
    trace(c, "0x%lx", (unsigned long)r);
    if (c->bindName) region(c->bindName, (uint64_t)r, nw);
    checkErrno(c, 0);
}

static void cmdFillCheck(Cmd *c) {
    uint64_t a = eval(need(c, 0, "an address")), len = eval(need(c, 1, "a length"));
    uint64_t index = opt(c, "index") ? eval(opt(c, "index")) : 0;
    int isFill = !strcmp(c->name, "fill");
    const char *pt = pos(c, 2);
    if (!pt) for (int i = 0; i < c->nexpects; i++) if (!c->expects[i].key && !strstr(c->expects[i].value, "segv") && !strstr(c->expects[i].value, "bus") && strcmp(c->expects[i].value, "ok")) pt = c->expects[i].value;
    if (!pt) fatal("%s:%d: expected a pattern", c->file, c->line);
    Pattern p = pattern(pt);
    unsigned char *b = malloc(len ? len : 1);
    if (isFill) fillPattern(b, len, p, index);
    faultSig = 0;
    if (sigsetjmp(faultJump, 1) == 0) {
        // Page by page, as the model's CPU does: a fault leaves the pages before it written whole.
        inAccess = 1;
        for (uint64_t o = 0; o < len; ) {
            uint64_t n = PAGE - ((a + o) & (PAGE - 1)); if (n > len - o) n = len - o;
            if (isFill) memcpy((void *)(a + o), b + o, n); else memcpy(b + o, (const void *)(a + o), n);
            o += n;
        }
        inAccess = 0;
    }
    if (faultSig) { trace(c, "%s", faultString()); free(b); checkSignal(c, 1); return; }
    trace(c, "ok");
    if (!isFill) { int64_t at = comparePattern(b, len, p, index); if (at >= 0) { free(b); expectFailed("expected %s, differs at %lld", pt, (long long)at); } }
    free(b);
    checkSignal(c, 0);
}

static void cmdAccess(Cmd *c) {
    uint64_t a = eval(need(c, 0, "an address"));
    int w = flag(c, "u8") ? 1 : flag(c, "u16") ? 2 : flag(c, "u32") ? 4 : 8;
    int isLoad = !strcmp(c->name, "load");
    uint64_t v = isLoad ? 0 : eval(need(c, 1, "a value"));
    volatile uint64_t got = 0;
    faultSig = 0;
    if (sigsetjmp(faultJump, 1) == 0) {
        volatile void *p = (volatile void *)a;
        inAccess = 1;
        if (isLoad) got = w == 1 ? *(volatile uint8_t *)p : w == 2 ? *(volatile uint16_t *)p : w == 4 ? *(volatile uint32_t *)p : *(volatile uint64_t *)p;
        else if (w == 1) *(volatile uint8_t *)p = v; else if (w == 2) *(volatile uint16_t *)p = v; else if (w == 4) *(volatile uint32_t *)p = v; else *(volatile uint64_t *)p = v;
        inAccess = 0;
    }
    const char *e0 = expectBare(c, 0);
    if (faultSig) {
        trace(c, "%s", faultString());
        if (e0 && strcmp(e0, "segv") && strcmp(e0, "bus") && strcmp(e0, "ok") && !strstr(e0, "segv|") && !strstr(e0, "|segv") && !strstr(e0, "|bus") && !strstr(e0, "bus|")) expectFailed("expected %s, got %s", e0, faultString());
        if (e0 && (strstr(e0, signalWord()))) return;
        checkSignal(c, 1); return;
    }
    if (isLoad) trace(c, "%llu", (unsigned long long)got); else trace(c, "ok");
    if (isLoad && e0 && strcmp(e0, "ok") && !(strstr(e0, "segv") && !strchr(e0, '|')) && !(strstr(e0, "bus") && !strchr(e0, '|'))) {
        char alts[256]; snprintf(alts, sizeof alts, "%s", e0);
        for (char *sp = NULL, *x = strtok_r(alts, "|", &sp); x; x = strtok_r(NULL, "|", &sp)) { if (!strcmp(x, "segv") || !strcmp(x, "bus")) continue; if (eval(x) == got) return; }
        expectFailed("expected %s, got %llu", e0, (unsigned long long)got);
    }
    checkSignal(c, 0);
}

static void cmdBuffer(Cmd *c) {
    if (!strcmp(c->name, "buffer")) {
        const char *name = need(c, 0, "a name"); uint64_t size = eval(need(c, 1, "a size"));
        Var *v = bindBuffer(name, arenaAlloc(size), size);
        if (opt(c, "fill")) fillPattern(v->buf, size, pattern(opt(c, "fill")), 0);
        trace(c, "ok"); return;
    }
    Var *v = lookup(need(c, 0, "a buffer")); if (!v || v->kind != V_BUF) fatal("%s:%d: no buffer", c->file, c->line);
    uint64_t off = eval(need(c, 1, "an offset")), len = eval(need(c, 2, "a length"));
    const char *pt = pos(c, 3) ? pos(c, 3) : expectBare(c, 0);
    trace(c, "ok");
    if (off + len > v->size) expectFailed("past the buffer's end");
    Pattern p = pattern(pt);
    int64_t at = comparePattern(v->buf + off, len, p, opt(c, "index") ? eval(opt(c, "index")) : 0);
    if (at >= 0) expectFailed("buffer: expected %s, differs at %lld", pt, (long long)at);
}

static void deviceChecks(Cmd *c, int err, struct hmm_dmirror_cmd *cmdp, unsigned char *buf, uint64_t bufSize);
static void cmdDevice(Cmd *c) {
    static const struct { const char *n; unsigned long req; } t[] = {
        {"read", HMM_DMIRROR_READ}, {"write", HMM_DMIRROR_WRITE}, {"migrate_to_dev", HMM_DMIRROR_MIGRATE_TO_DEV},
        {"migrate_to_sys", HMM_DMIRROR_MIGRATE_TO_SYS}, {"snapshot", HMM_DMIRROR_SNAPSHOT}, {"exclusive", HMM_DMIRROR_EXCLUSIVE},
        {"check_exclusive", HMM_DMIRROR_CHECK_EXCLUSIVE}, {"release", HMM_DMIRROR_RELEASE}, {"flags", HMM_DMIRROR_FLAGS}, {NULL, 0} };
    unsigned long req = 0;
    for (int i = 0; t[i].n; i++) if (!strcmp(c->name, t[i].n)) req = t[i].req;
    Var *d = lookup(need(c, 0, "a device")); if (!d || d->kind != V_DEV) fatal("%s:%d: no device", c->file, c->line);
    struct hmm_dmirror_cmd cmd = {0};
    if (req == HMM_DMIRROR_FLAGS) cmd.npages = eval(need(c, 1, "a flags value"));
    else if (req == HMM_DMIRROR_RELEASE) { cmd.addr = pos(c, 1) ? eval(pos(c, 1)) : 0; cmd.npages = pos(c, 2) ? eval(pos(c, 2)) : 1; }
    else { cmd.addr = eval(need(c, 1, "an address")); cmd.npages = eval(need(c, 2, "a page count")); }
    if (!(d->mask & (1u << mySlot))) unsupported("a device this process does not have open (a thread of another process)");
    unsigned char *buf = NULL; uint64_t bufSize = 0; int ownBuf = 0;
    if (opt(c, "buffer")) { Var *b = lookup(opt(c, "buffer")); if (!b || b->kind != V_BUF) fatal("%s:%d: no buffer", c->file, c->line); buf = b->buf; bufSize = b->size; }
    else if (req == HMM_DMIRROR_READ || req == HMM_DMIRROR_WRITE || req == HMM_DMIRROR_MIGRATE_TO_DEV || req == HMM_DMIRROR_SNAPSHOT || req == HMM_DMIRROR_EXCLUSIVE) {
        bufSize = req == HMM_DMIRROR_SNAPSHOT ? cmd.npages : cmd.npages * PAGE;
        // The model's buffer is exactly this size; on the kernel it is given a page more (see
        // arenaAlloc). The expectations look only at bufSize bytes.
        buf = arenaAlloc(bufSize); ownBuf = 1;
    }
    if (opt(c, "from") && buf) fillPattern(buf, bufSize, pattern(opt(c, "from")), 0);
    if (c->bindName && buf) { bindBuffer(c->bindName, buf, bufSize); ownBuf = 0; }
    cmd.ptr = (uintptr_t)buf;
    int err = ioctl(d->fd, req, &cmd) ? errno : 0;
    if (err) { cmd.cpages = 0; cmd.faults = 0; }
    deviceChecks(c, err, &cmd, buf, bufSize);
    if (ownBuf) arenaFree(buf, bufSize);
}

// The trace line and the expectations of a device command.
static void deviceChecks(Cmd *c, int err, struct hmm_dmirror_cmd *cmdp, unsigned char *buf, uint64_t bufSize) {
    struct hmm_dmirror_cmd cmd = *cmdp;
    char ret[32]; snprintf(ret, sizeof ret, "%s%s", err ? "-" : "", err ? errname(err) : "0");
    trace(c, "ret %s cpages %llu faults %llu", ret, (unsigned long long)cmd.cpages, (unsigned long long)cmd.faults);
    const char *wantRet = expectKey(c, "ret"); if (!wantRet) wantRet = "0";
    char alts[128]; snprintf(alts, sizeof alts, "%s", wantRet); int ok = 0;
    for (char *sp = NULL, *x = strtok_r(alts, "|", &sp); x; x = strtok_r(NULL, "|", &sp)) { const char *y = (x[0] == '-' || !strcmp(x, "0")) ? x : NULL; char z[40]; if (!y) { snprintf(z, sizeof z, "-%s", x); y = z; } if (!strcmp(y, ret)) ok = 1; }
    if (!ok) expectFailed("expected ret=%s, got ret=%s", wantRet, ret);
    if (err) return;
    for (int i = 0; i < c->nexpects; i++) {
        const char *k = c->expects[i].key, *v = c->expects[i].value;
        if (!k || !strcmp(k, "ret")) continue;
        if (!strcmp(k, "cpages") || !strcmp(k, "faults")) {
            uint64_t want = eval(v), got = !strcmp(k, "cpages") ? cmd.cpages : cmd.faults;
            if (want != got) expectFailed("expected %s=%llu, got %s=%llu", k, (unsigned long long)want, k, (unsigned long long)got);
        } else if (!strcmp(k, "mirror")) {
            int64_t at = comparePattern(buf, bufSize, pattern(v), 0);
            if (at >= 0) expectFailed("mirror: expected %s, differs at %lld", v, (long long)at);
        } else if (!strcmp(k, "bytes")) {
            // 0x11,0x01,0xFF*2: values with optional *count.
            char list[1024]; snprintf(list, sizeof list, "%s", v); uint64_t at = 0;
            for (char *sp = NULL, *x = strtok_r(list, ",", &sp); x; x = strtok_r(NULL, ",", &sp)) {
                char *star = strchr(x, '*'); uint64_t n = 1; if (star) { *star = 0; n = eval(star + 1); }
                uint64_t b = strtoull(x, NULL, 16);   // hex, 0x optional (as the model)
                for (uint64_t j = 0; j < n; j++, at++) if (at >= bufSize || buf[at] != b) expectFailed("expected byte %llu = 0x%llx, got 0x%x", (unsigned long long)at, (unsigned long long)b, at < bufSize ? buf[at] : 0);
            }
        }
    }
}

static void cmdPagemap(Cmd *c) {
    uint64_t a = eval(need(c, 0, "an address")), n = pos(c, 1) ? eval(pos(c, 1)) : 1;
    int fd = open("/proc/self/pagemap", O_RDONLY);
    uint64_t *e = calloc(n ? n : 1, 8);
    ssize_t r = pread(fd, e, n * 8, (a / PAGE) * 8);
    close(fd);
    if (r != (ssize_t)(n * 8)) { int err = r < 0 ? errno : EINVAL; trace(c, "%s", errname(err)); free(e); checkErrno(c, err); return; }
    char *s = malloc(n + 1);
    for (uint64_t i = 0; i < n; i++) s[i] = (e[i] >> 63) & 1 ? 'P' : ((e[i] >> 62) & 1 ? 'S' : '-');
    s[n] = 0;
    for (int j = 0; j < c->nexpects; j++) {
        const char *k = c->expects[j].value;
        if (c->expects[j].key) continue;
        for (uint64_t i = 0; i < n; i++) {
            int present = (e[i] >> 63) & 1, swap = (e[i] >> 62) & 1, file = (e[i] >> 61) & 1, ok;
            if (!strcmp(k, "present")) ok = present; else if (!strcmp(k, "swap")) ok = swap && !present;
            else if (!strcmp(k, "none")) ok = !present && !swap; else if (!strcmp(k, "file")) ok = file;
            else if (!strcmp(k, "zero")) { free(e); free(s); unsupported("pagemap expect zero (the zero page's pfn differs)"); return; }
            else continue;
            if (!ok) { trace(c, "%s", s); expectFailed("expected page %llu %s, got entry 0x%llx", (unsigned long long)i, k, (unsigned long long)e[i]); }
        }
    }
    trace(c, "%s", s);
    free(e); free(s);
}

static void cmdFile(Cmd *c) {
    if (!strcmp(c->name, "file")) {
        int fd = (int)syscall(SYS_memfd_create, "hmm-scenario", 0);
        uint64_t size = opt(c, "size") ? eval(opt(c, "size")) : 0;
        if (fd < 0 || ftruncate(fd, size)) fatal("memfd: %s", strerror(errno));
        Var *v = bindVar(need(c, 0, "a name"), V_FILE); v->fd = fd; v->size = size; v->mask = 1u << mySlot;
        trace(c, "ok"); return;
    }
    Var *f = lookup(need(c, 0, "a file")); if (!f || f->kind != V_FILE) fatal("%s:%d: no file", c->file, c->line);
    if (!strcmp(c->name, "pwrite")) {
        uint64_t off = eval(need(c, 1, "an offset")), len = eval(need(c, 2, "a length"));
        unsigned char *b = malloc(len ? len : 1); fillPattern(b, len, pattern(need(c, 3, "a pattern")), opt(c, "index") ? eval(opt(c, "index")) : 0);
        ssize_t r = pwrite(f->fd, b, len, off); int e = r < 0 ? errno : 0; free(b);
        trace(c, "%s", e ? errname(e) : "ok"); checkErrno(c, e); return;
    }
    if (!strcmp(c->name, "pread")) {
        uint64_t off = eval(need(c, 1, "an offset")), len = eval(need(c, 2, "a length"));
        const char *e0 = expectBare(c, 0);
        // The bare expectation is data (a pattern) or an outcome (ok, an errno name), as the model.
        int expectsData = e0 && !isOutcome(e0);
        unsigned char *b = malloc(len ? len : 1);
        ssize_t r = pread(f->fd, b, len, off);
        if (r < 0) {
            int e = errno; trace(c, "%s", errname(e)); free(b);
            if (expectsData && !expectKey(c, "errno")) expectFailed("expected data matching %s, got %s", e0, errname(e));
            checkErrno(c, e); return;
        }
        if (!expectsData && (e0 || expectKey(c, "errno"))) checkErrno(c, 0);
        if (expectKey(c, "len") && eval(expectKey(c, "len")) != (uint64_t)r) { free(b); expectFailed("expected %llu bytes read, got %lld", (unsigned long long)eval(expectKey(c, "len")), (long long)r); }
        if (expectsData) {
            int64_t at = comparePattern(b, (uint64_t)r, pattern(e0), opt(c, "index") ? eval(opt(c, "index")) : 0);
            if (at >= 0) { free(b); expectFailed("expected %s, differs at %lld", e0, (long long)at); }
        }
        free(b);
        trace(c, "%lld bytes", (long long)r); return;
    }
    unsupported(c->name);
}

// `hugepages N [size=2MiB|1GiB]`: the VM's pool (in the VM only: set to 0 when the runner
// starts, as the model's), its counters printed and checked as the model's.
static const char *hugeDir(uint64_t size) { return size == (1ULL << 30) ? "/sys/kernel/mm/hugepages/hugepages-1048576kB/" : "/sys/kernel/mm/hugepages/hugepages-2048kB/"; }
static uint64_t readCounter(const char *dir, const char *name) {
    char path[256]; snprintf(path, sizeof path, "%s%s", dir, name);
    char *t = readText(path); if (!t) fatal("cannot read %s", path);
    uint64_t v = strtoull(t, NULL, 10); free(t); return v;
}
// `gup ADDR NPAGES [write] [pin] [longterm] -> H` through the kernel's gup_test module
// (mm/gup_test.c, /sys/kernel/debug/gup_test). It holds only long-term pins between two ioctls
// (PIN_LONGTERM_TEST_START … STOP, one set at a time), so `pin longterm` is held until `unpin H`;
// any other GUP takes and drops its references in one ioctl (GUP_BASIC_TEST, PIN_BASIC_TEST),
// which is what the model's does when the next statement is its `put H` / `unpin H`, and is
// reported as unsupported otherwise. The module drops the long-term pins when its file is
// closed, so the runner opens it once, before any fork, and every process uses that file.
static int gupFd = -1;
struct gup_test_args { uint64_t get_delta_usec, put_delta_usec, addr, size; uint32_t nr_pages_per_call, gup_flags, test_flags, which_pages[8]; };
struct pin_longterm_args { uint64_t addr, size; uint32_t flags; };
#define GUP_BASIC_TEST _IOWR('g', 4, struct gup_test_args)
#define PIN_BASIC_TEST _IOWR('g', 5, struct gup_test_args)
#define PIN_LONGTERM_TEST_START _IOW('g', 7, struct pin_longterm_args)
#define PIN_LONGTERM_TEST_STOP _IO('g', 8)
#define GUP_TEST_PATH "/sys/kernel/debug/gup_test"

static void cmdGup(Cmd *c) {
    uint64_t a = eval(need(c, 0, "an address")), n = eval(need(c, 1, "a page count"));
    int write_ = flag(c, "write"), pin = flag(c, "pin"), longterm = flag(c, "longterm");
    if (!c->bindName) fatal("%s:%d: expected '-> NAME' to name the pinned pages", c->file, c->line);
    if (longterm && !pin) unsupported("gup longterm without pin");
    if (!longterm) {
        // The next statement must give the references back.
        int k = ti; while (k < ntoks && !strcmp(toks[k].text, "\n")) k++;
        if (!(k + 1 < ntoks && (!strcmp(toks[k].text, "put") || !strcmp(toks[k].text, "unpin")) && !strcmp(toks[k + 1].text, c->bindName)))
            unsupported("a GUP reference held across other commands (gup_test holds only long-term pins)");
    } else if (lookup("@longterm") && lookup("@longterm")->value) unsupported("a second set of long-term pins (gup_test holds one)");
    int fd = gupFd;
    if (fd < 0) unsupported("gup (no " GUP_TEST_PATH ")");
    int err = 0; uint64_t got = 0;
    if (longterm) {
        struct pin_longterm_args p = { a, n * PAGE, write_ ? 1u : 0u };
        if (ioctl(fd, PIN_LONGTERM_TEST_START, &p)) err = errno; else got = n;
    } else {
        struct gup_test_args g = {0};
        // One page per call: `size` comes back as the pages taken (a short call ends the loop).
        g.addr = a; g.size = n * PAGE; g.nr_pages_per_call = 1; g.gup_flags = write_ ? 1 /* FOLL_WRITE */ : 0;
        if (ioctl(fd, pin ? PIN_BASIC_TEST : GUP_BASIC_TEST, &g)) err = errno; else got = g.size / PAGE;
        // The model's GUP takes every page or fails with the errno of the first it cannot take.
        if (!err && got < n) unsupported("a GUP that stops short of its range (gup_test does not return the errno)");
    }
    if (err) { trace(c, "%s", errname(err)); checkErrno(c, err); return; }
    Var *h = bindVar(c->bindName, V_GUP); h->value = longterm; h->size = got;
    if (longterm) { Var *l = bindVar("@longterm", V_NUM); l->value = 1; }
    trace(c, "%llu pages", (unsigned long long)got);
    checkErrno(c, 0);
}
static void cmdPut(Cmd *c) {
    Var *h = lookup(need(c, 0, "a name bound by 'gup'"));
    if (!h || h->kind != V_GUP) fatal("%s:%d: expected pages bound by 'gup'", c->file, c->line);
    if (h->value) {
        if (ioctl(gupFd, PIN_LONGTERM_TEST_STOP)) fatal("PIN_LONGTERM_TEST_STOP: %s", strerror(errno));
        Var *l = bindVar("@longterm", V_NUM); l->value = 0;
    }
    h->kind = V_NUM; touchVar(h);
    trace(c, "ok");
}

// `meminfo [expect KEY=N…]`: the keys /proc/meminfo has as the model counts them — the default
// hugetlb pool's hugepages_total, _free, _rsvd, _surp and hugetlb (in pages); the model's other
// keys count its own machine. No trace line (as the model): the expectations are what compares.
static void cmdMeminfo(Cmd *c) {
    static const struct { const char *key, *field; } t[] = { {"hugepages_total", "HugePages_Total:"}, {"hugepages_free", "HugePages_Free:"},
        {"hugepages_rsvd", "HugePages_Rsvd:"}, {"hugepages_surp", "HugePages_Surp:"}, {"hugetlb", "Hugetlb:"},
        {"swap_total", "SwapTotal:"}, {"swap_free", "SwapFree:"}, {"swap_cached", "SwapCached:"}, {NULL, NULL} };
    // Page-state counters (SwapCached is NR_SWAPCACHE) are per-CPU deltas folded into the
    // global value past a threshold: fold them now (vm.stat_refresh) so small counts are exact.
    int fd = open("/proc/sys/vm/stat_refresh", O_WRONLY);
    if (fd >= 0) { if (write(fd, "1", 1) < 0) { /* not root: the counts may lag */ } close(fd); }
    char *text = readText("/proc/meminfo");
    if (!text) fatal("cannot read /proc/meminfo");
    uint64_t got[16] = {0}; char line[512] = "meminfo:";
    for (int i = 0; t[i].key; i++) {
        const char *f = strstr(text, t[i].field);
        if (!f) fatal("/proc/meminfo has no %s", t[i].field);
        got[i] = strtoull(f + strlen(t[i].field), NULL, 10);
        if (!strcmp(t[i].key, "hugetlb") || !strncmp(t[i].key, "swap_", 5)) got[i] /= 4;   // kB
        snprintf(line + strlen(line), sizeof line - strlen(line), "%s %s %llu", i ? "," : "", t[i].key, (unsigned long long)got[i]);
    }
    free(text);
    emitLine("%s (pages; the kernel's hugetlb and swap keys only)", line);
    for (int j = 0; j < c->nexpects; j++) {
        const char *k = c->expects[j].key; if (!k) continue;
        int i = 0; while (t[i].key && strcmp(t[i].key, k)) i++;
        if (!t[i].key) { char w[128]; snprintf(w, sizeof w, "meminfo %s (the model's own accounting)", k); unsupported(w); }
        uint64_t want = eval(c->expects[j].value);
        if (want != got[i]) expectFailed("expected %s=%llu, got %s=%llu", k, (unsigned long long)want, k, (unsigned long long)got[i]);
    }
}

// /proc/vmstat's counter `name`, or -1 if the kernel has none by that name.
static long long vmstatValue(const char *text, const char *name) {
    size_t n = strlen(name);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL)
        if (!strncmp(p, name, n) && p[n] == ' ') return strtoll(p + n + 1, NULL, 10);
    return -1;
}
static char *vmstatAtMachine;   // /proc/vmstat when `machine` ran: vmstat reports what changed since

// `vmstat [expect KEY=N…]`: the kernel's event counters since `machine`, by their /proc/vmstat
// names (the model's own counters, camel-case, have none: unsupported). Global counters: the
// VM runs nothing else.
static void cmdVmstat(Cmd *c) {
    char *now = readText("/proc/vmstat");
    if (!now || !vmstatAtMachine) unsupported("vmstat without a 'machine' line (nothing to count from)");
    char line[1024] = "vmstat:";
    for (int j = 0; j < c->nexpects; j++) {
        const char *k = c->expects[j].key; if (!k) continue;
        long long a = vmstatValue(now, k), b = vmstatValue(vmstatAtMachine, k);
        if (a < 0 || b < 0) { char w[128]; snprintf(w, sizeof w, "vmstat %s (the model's own counter)", k); unsupported(w); }
        snprintf(line + strlen(line), sizeof line - strlen(line), "%s %s %lld", j ? "," : "", k, a - b);
    }
    emitLine("%s", line);
    for (int j = 0; j < c->nexpects; j++) {
        const char *k = c->expects[j].key; if (!k) continue;
        long long got = vmstatValue(now, k) - vmstatValue(vmstatAtMachine, k);
        uint64_t want = eval(c->expects[j].value);
        if ((long long)want != got) expectFailed("expected %s=%llu, got %s=%lld", k, (unsigned long long)want, k, got);
    }
    free(now);
}

static void writeFile(const char *path, const char *text);
// `machine swap=N` in the VM: zram0 (loaded by the VM's init) becomes a swap area of N bytes,
// the first page its header as the model's; 0 turns swap off. Outside the VM: unsupported.
static void setupSwap(uint64_t bytes) {
    extern int inVM;
    if (!inVM) unsupported("machine swap= outside the oracle's VM (it would change this machine's swap)");
    if (access("/sys/block/zram0/disksize", W_OK) != 0) {
        if (bytes == 0) return;   // no swap asked, none there
        unsupported("machine swap= (no zram device in the VM)");
    }
    // system() needs its child reaped by wait: SIGCHLD is ignored otherwise (`machine` comes
    // first, so no script process can exit meanwhile).
    signal(SIGCHLD, SIG_DFL);
    int off = system("swapoff /dev/zram0 2>/dev/null; true");
    writeFile("/sys/block/zram0/reset", "1");
    int on = 0;
    if (bytes != 0) {
        char num[32]; snprintf(num, sizeof num, "%llu", (unsigned long long)bytes);
        writeFile("/sys/block/zram0/disksize", num);
        on = system("mkswap /dev/zram0 >/dev/null 2>&1 && swapon /dev/zram0");
    }
    signal(SIGCHLD, SIG_IGN);
    if (off < 0) fatal("swapoff: cannot run a shell");
    if (on != 0) unsupported("machine swap= (mkswap/swapon of zram0 failed)");
}

static void cmdHugepages(Cmd *c) {
    extern int inVM;
    if (!inVM) unsupported("hugepages outside the oracle's VM (it would change this machine's pool)");
    uint64_t n = eval(need(c, 0, "a page count")), size = opt(c, "size") ? eval(opt(c, "size")) : 2ULL << 20;
    if (size != (2ULL << 20) && size != (1ULL << 30)) fatal("%s:%d: expected a huge page size: 2MiB or 1GiB", c->file, c->line);
    const char *dir = hugeDir(size);
    char path[256], num[32]; snprintf(path, sizeof path, "%snr_hugepages", dir); snprintf(num, sizeof num, "%llu", (unsigned long long)n);
    writeFile(path, num);
    uint64_t total = readCounter(dir, "nr_hugepages"), free_ = readCounter(dir, "free_hugepages"), rsvd = readCounter(dir, "resv_hugepages"), surp = readCounter(dir, "surplus_hugepages");
    trace(c, "hugepages-%llukB: total %llu free %llu rsvd %llu surp %llu", (unsigned long long)(size >> 10), (unsigned long long)total, (unsigned long long)free_, (unsigned long long)rsvd, (unsigned long long)surp);
    for (int i = 0; i < c->nexpects; i++) {
        const char *k = c->expects[i].key; if (!k) continue;
        uint64_t got = !strcmp(k, "total") ? total : !strcmp(k, "free") ? free_ : !strcmp(k, "rsvd") ? rsvd : !strcmp(k, "surp") ? surp : (fatal("%s:%d: expected total, free, rsvd or surp", c->file, c->line), 0);
        if (eval(c->expects[i].value) != got) expectFailed("expected %s=%llu, got %s=%llu", k, (unsigned long long)eval(c->expects[i].value), k, (unsigned long long)got);
    }
}

// ---- the kernel's own checks (`invariants`) and settings -------------------------------------
int inVM;                        // HMM_ORACLE_VM: inside the oracle's VM (the machine is ours)
static int kmsgFd = -1;                  // /dev/kmsg, read from where the script started
static char kmsgFirst[512];              // the first warning logged since then
static int kmsgWarnings;

static void kmsgStart(void) {
    kmsgFd = open("/dev/kmsg", O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (kmsgFd >= 0) lseek(kmsgFd, 0, SEEK_END);   // only records logged from now on
}
// Reads the records logged since the last call: warnings, BUGs and oopses. Return: -1 if the
// log cannot be read here.
static int kmsgScan(void) {
    if (kmsgFd < 0) return -1;
    char rec[8192];
    for (;;) {
        ssize_t n = read(kmsgFd, rec, sizeof rec - 1);
        if (n < 0 && errno == EPIPE) continue;    // records overwritten before we read them
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;                        // EAGAIN: none left
        rec[n] = 0;
        char *msg = strchr(rec, ';'); msg = msg ? msg + 1 : rec;
        char *nl = strchr(msg, '\n'); if (nl) *nl = 0;
        if (strstr(msg, "WARNING:") || strstr(msg, "BUG:") || strstr(msg, "Oops") || strstr(msg, "general protection fault") || strstr(msg, "Bad page")) {
            if (!kmsgWarnings++) snprintf(kmsgFirst, sizeof kmsgFirst, "%.500s", msg);
        }
    }
    return kmsgWarnings;
}

// `invariants`: the kernel's invariant checks are its warnings and BUGs; none may be new.
static void cmdInvariants(Cmd *c) {
    int n = kmsgScan();
    if (n < 0) unsupported("invariants (the kernel log cannot be read here)");
    if (n > 0) { trace(c, "kernel log: %s", kmsgFirst); expectFailed("expected no new kernel warning, the kernel logged: %s", kmsgFirst); }
    trace(c, "hold");
}

static void writeFile(const char *path, const char *text) {
    int fd = open(path, O_WRONLY);
    if (fd < 0 || write(fd, text, strlen(text)) < 0) fatal("%s: %s", path, strerror(errno));
    close(fd);
}
#define THP "/sys/kernel/mm/transparent_hugepage/"

// `thp [always|madvise|never] [zero_page|no_zero_page]`, in the VM only (its defaults are set
// when the runner starts: madvise, the zero page on, as the model's).
static void cmdThp(Cmd *c) {
    if (!inVM) unsupported("thp outside the oracle's VM (it would change this machine's setting)");
    for (int i = 0; pos(c, i); i++) {
        const char *w = pos(c, i);
        if (!strcmp(w, "always") || !strcmp(w, "madvise") || !strcmp(w, "never")) writeFile(THP "enabled", w);
        else if (!strcmp(w, "zero_page") || !strcmp(w, "no_zero_page")) writeFile(THP "use_zero_page", w[0] == 'z' ? "1" : "0");
        else fatal("%s:%d: expected always, madvise, never, zero_page or no_zero_page", c->file, c->line);
    }
    char *mode = readText(THP "enabled"), *zero = readText(THP "use_zero_page");
    if (!mode || !zero) fatal("cannot read " THP);
    char *l = strchr(mode, '['), *r = l ? strchr(l, ']') : NULL;
    if (!l || !r) fatal("unexpected " THP "enabled: %s", mode);
    *r = 0;
    trace(c, "transparent_hugepage: enabled %s, use_zero_page %d", l + 1, atoi(zero));
    free(mode); free(zero);
}

// ---- processes --------------------------------------------------------------------------------
#define MAXPROC 16
#define MAXTHREADS 8
#define THREAD_STACK (1ULL << 20)
typedef struct { pid_t pid; int pidfd, alive, parent; } Proc;
static Proc procs[MAXPROC];              // the runner's table of the script's processes
static int chans[MAXPROC][2];            // slot k's socket: [0] the runner's end, [1] the process's
static uint64_t sentGen[MAXPROC];        // the names slot k has been sent up to
static int curSlot = -1;                 // the current process (-1: none declared yet)
static pid_t curPid;                     // … and its pid (a slot is reused after an exit)
static int forkSlot;                     // the slot a fork here gives its child (the runner's choice)
static pid_t lastForkPid;
static uint64_t genAtFork;
static __thread int localOnly;           // run every command here (a thread; a served process)
static __thread int inThread;
static int threadCounter;
static unsigned char *threadStacks;      // mapped at start, so threads do not move the script's mmaps

enum { MSG_RUN = 1, MSG_CONC = 2 };
typedef struct { int type, ti, arg, base, nvars; } Msg;
typedef struct { int status, pid, nvars; } Reply;

static void writeAll(int fd, const void *p, size_t n) {
    while (n) {
        ssize_t r = write(fd, p, n);
        if (r < 0) { if (errno == EINTR) continue; fatal("socket write: %s", strerror(errno)); }
        p = (const char *)p + r; n -= r;
    }
}
static int readAll(int fd, void *p, size_t n) {
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        p = (char *)p + r; n -= r;
    }
    return 1;
}
static int changedSince(uint64_t g) { int n = 0; for (int i = 0; i < nvars; i++) if (vars[i].gen > g) n++; return n; }
static void sendVars(int fd, uint64_t since) { for (int i = 0; i < nvars; i++) if (vars[i].gen > since) writeAll(fd, &vars[i], sizeof(Var)); }
static void receiveVars(int fd, int n) {
    for (int i = 0; i < n; i++) {
        Var v; if (!readAll(fd, &v, sizeof v)) fatal("socket read: the other process is gone");
        Var *d = bindVar(v.name, v.kind); uint64_t g = d->gen; *d = v; d->gen = g;
    }
}

static int atEnd(void);
static void statement(int execute);
static void runBlock(int untilBrace);
static int runThreadsAt(int at, uint32_t mask, int base);

static int runStatementAt(int at) {
    ti = at;
    if (setjmp(stopJump)) return 1;
    statement(1);
    return 0;
}

// A forked process: serves the runner's messages until it exits (or the runner kills it).
static void serverLoop(void) {
    int fd = chans[mySlot][1];
    localOnly = 1;
    for (;;) {
        Msg m;
        if (!readAll(fd, &m, sizeof m)) _exit(0);
        receiveVars(fd, m.nvars);
        uint64_t start = gen;
        lastForkPid = 0;
        int status;
        if (m.type == MSG_RUN) { forkSlot = m.arg; quietTrace = m.base; status = runStatementAt(m.ti); quietTrace = 0; }
        else status = runThreadsAt(m.ti, (uint32_t)m.arg, m.base);
        Reply r = { status, lastForkPid, changedSince(start) };
        writeAll(fd, &r, sizeof r);
        sendVars(fd, start);
    }
}

static void sendMsg(int slot, int type, int at, int arg, int base) {
    Msg m = { type, at, arg, base, changedSince(sentGen[slot]) };
    writeAll(chans[slot][0], &m, sizeof m);
    sendVars(chans[slot][0], sentGen[slot]);
    sentGen[slot] = gen;
}
static Reply awaitReply(int slot) {
    struct pollfd p[2] = { { chans[slot][0], POLLIN, 0 }, { procs[slot].pidfd, POLLIN, 0 } };
    for (;;) {
        int r = poll(p, 2, -1);
        if (r < 0 && errno == EINTR) continue;
        if (p[0].revents & POLLIN) break;
        if (p[1].revents) { procs[slot].alive = 0; fatal("%s:%d: the script's process %d ended while running a command", curFile, curLine, (int)procs[slot].pid); }
    }
    Reply r;
    if (!readAll(chans[slot][0], &r, sizeof r)) fatal("socket read: process %d", (int)procs[slot].pid);
    receiveVars(chans[slot][0], r.nvars);
    return r;
}

// A script that runs too long (a livelock, a hang in the kernel) ends with an error, its
// processes killed: HMM_ORACLE_SCRIPT_TIMEOUT seconds, 600 by default.
static unsigned scriptTimeout = 600;
static void onAlarm(int sig) {
    (void)sig;
    char m[160]; int n = snprintf(m, sizeof m, "\n@@ERROR the script ran longer than %u s (a livelock or a hang?)\n", scriptTimeout);
    if (write(1, m, n) < 0) {}
    for (int k = 1; k < MAXPROC; k++) if (procs[k].alive) kill(procs[k].pid, SIGKILL);
    for (int k = 1; k < MAXPROC; k++) if (procs[k].alive) { struct pollfd p = { procs[k].pidfd, POLLIN, 0 }; poll(&p, 1, 5000); }
    _exit(3);
}

// The runner's end: every process it forked is killed and gone before it returns.
static void killProcesses(void) {
    if (mySlot != 0) return;
    for (int k = 1; k < MAXPROC; k++) {
        if (!procs[k].alive) continue;
        kill(procs[k].pid, SIGKILL);   // (its pidfd keeps the pid from being reused meanwhile)
        struct pollfd p = { procs[k].pidfd, POLLIN, 0 };
        poll(&p, 1, 10000);
        close(procs[k].pidfd); procs[k].alive = 0;
    }
}

static int slotOfName(const char *name) {
    Var *v = lookup(name);
    if (!v || v->kind != V_PROC) fatal("%s:%d: expected a known process, got '%s'", curFile, curLine, name);
    return v->slot;
}
// The runner's view: a live process's slot.
static int liveSlot(const char *name) {
    int s = slotOfName(name);
    if (!procs[s].alive || (uint64_t)procs[s].pid != lookup(name)->value) fatal("%s:%d: expected a running process, '%s' has exited", curFile, curLine, name);
    return s;
}
static int currentSlot(void) {
    if (curSlot > 0 && (!procs[curSlot].alive || procs[curSlot].pid != curPid)) fatal("%s:%d: expected a running current process, it has exited", curFile, curLine);
    return curSlot < 0 ? 0 : curSlot;
}

// Every device and file that process `from` holds: held by `slot` too (`hold`), or no longer
// by `slot`.
static void holdersChange(int from, int slot, int hold) {
    for (int i = 0; i < nvars; i++) {
        if ((vars[i].kind != V_DEV && vars[i].kind != V_FILE) || !(vars[i].mask & (1u << from))) continue;
        if (hold) vars[i].mask |= 1u << slot; else vars[i].mask &= ~(1u << slot);
        touchVar(&vars[i]);
    }
}

// The runner's record of a forked process (its pidfd: to wait for its exit, to see it die).
static void registerProcess(int k, pid_t pid, int parent) {
    int pidfd = (int)syscall(434 /* SYS_pidfd_open */, pid, 0);
    if (pidfd < 0) fatal("pidfd_open: %s", strerror(errno));
    procs[k] = (Proc){ pid, pidfd, 1, parent };
}

// `fork` in the process that forks: the child serves the runner from slot `forkSlot`.
static void cmdForkHere(Cmd *c) {
    if (inThread) unsupported("fork inside a thread");
    int k = forkSlot;
    fflush(stdout);
    genAtFork = gen;
    pid_t pid = fork();
    if (pid < 0) { int e = errno; trace(c, "%s", errname(e)); checkErrno(c, e); return; }
    if (pid == 0) { mySlot = k; prctl(PR_SET_PDEATHSIG, SIGKILL); serverLoop(); }
    holdersChange(mySlot, k, 1);   // the child holds what this process holds
    Var *v = bindVar(c->bindName, V_PROC); v->slot = k; v->value = pid; v->mask = 0;
    lastForkPid = pid;
    if (mySlot == 0) registerProcess(k, pid, 0);   // before an expectation can stop the script
    trace(c, "pid %d", (int)pid);
    checkErrno(c, 0);
}

static void runCommand(Cmd *c);

// The runner's commands that create, switch and end processes.
static void ctlProcess(Cmd *c) {
    const char *name = need(c, 0, "a process name");
    Var *v = lookup(name);
    if (v && v->kind == V_PROC) { curSlot = liveSlot(name); curPid = procs[curSlot].pid; trace(c, "pid %d", (int)curPid); return; }
    if (procs[0].alive) unsupported("a second process that is not a fork (the runner has one fresh address space to give)");
    v = bindVar(name, V_PROC); v->slot = 0; v->value = getpid(); v->mask = 0;
    procs[0] = (Proc){ getpid(), -1, 1, -1 };
    curSlot = 0; curPid = getpid();
    trace(c, "pid %d", (int)getpid());
}
static void ctlFork(Cmd *c, int at) {
    int parent = pos(c, 0) ? liveSlot(pos(c, 0)) : currentSlot();
    if (!c->bindName) fatal("%s:%d: expected '-> NAME' to name the child", c->file, c->line);
    Var *old = lookup(c->bindName);
    if (old && old->kind == V_PROC && procs[old->slot].alive && (uint64_t)procs[old->slot].pid == old->value) fatal("%s:%d: expected a new process name, '%s' is still running", c->file, c->line, c->bindName);
    int k = 0;
    for (int i = 1; i < MAXPROC; i++) if (!procs[i].alive) { k = i; break; }
    if (!k) unsupported("more than 15 forked processes at once");
    if (parent == 0) {
        forkSlot = k; lastForkPid = 0; sentGen[k] = gen;
        runCommand(c);   // registers the child (cmdForkHere)
        sentGen[k] = genAtFork;
    } else {
        sendMsg(parent, MSG_RUN, at, k, 0);
        Reply r = awaitReply(parent);
        if (r.pid) { registerProcess(k, r.pid, parent); sentGen[k] = sentGen[parent]; }
        if (r.status) longjmp(stopJump, 1);
    }
}
static void ctlExit(Cmd *c, int at) {
    int slot = pos(c, 0) ? liveSlot(pos(c, 0)) : currentSlot();
    for (int i = 1; i < MAXPROC; i++)
        if (procs[i].alive && procs[i].parent == slot) unsupported("exit of a process whose children still run (here a process's children die with it)");
    if (slot == 0) {
        int save = ti; while (!atEnd() && !strcmp(toks[ti].text, "\n")) ti++;
        int more = !atEnd(); ti = save;
        if (more) unsupported("commands after the first process exits");
        trace(c, "ok"); return;   // the runner's own exit ends the script
    }
    sendMsg(slot, MSG_RUN, at, 0, 0);
    struct pollfd p = { procs[slot].pidfd, POLLIN, 0 };
    while (poll(&p, 1, 10000) < 0 && errno == EINTR) {}
    if (!(p.revents & POLLIN)) fatal("%s:%d: process %d did not exit", c->file, c->line, (int)procs[slot].pid);
    close(procs[slot].pidfd); procs[slot].alive = 0;
    holdersChange(slot, slot, 0);   // its files are closed
}

static int isDeviceCommand(const char *n) {
    static const char *t[] = { "read", "write", "migrate_to_dev", "migrate_to_sys", "snapshot", "exclusive", "check_exclusive", "release", "flags", "close", "mmap_device", NULL };
    for (int i = 0; t[i]; i++) if (!strcmp(n, t[i])) return 1;
    return 0;
}
static int actsInNoProcess(const char *n) {
    static const char *t[] = { "buffer", "check_buffer", "file", "pwrite", "pread", "ftruncate", "print", "sleep", "skip", "machine", "thp", "invariants", "hugepages", "meminfo", "vmstat", "kswapd", "put", "unpin", NULL };
    for (int i = 0; t[i]; i++) if (!strcmp(n, t[i])) return 1;
    return 0;
}

// Runs the command (the statement at `at`) in process `slot`; `quiet`: without its trace line.
static void runIn(int slot, Cmd *c, int at, int quiet) {
    if (slot == 0) { quietTrace = quiet; runCommand(c); quietTrace = 0; return; }
    sendMsg(slot, MSG_RUN, at, 0, quiet);
    if (awaitReply(slot).status) longjmp(stopJump, 1);
}

// The runner decides where a command runs: here, or in the process it acts in.
static void dispatch(Cmd *c, int at) {
    const char *n = c->name;
    curFile = c->file; curLine = c->line;
    if (!strcmp(n, "process")) { ctlProcess(c); return; }
    if (!strcmp(n, "use")) { curSlot = liveSlot(need(c, 0, "a process name")); curPid = procs[curSlot].pid; trace(c, "pid %d", (int)curPid); return; }
    if (!strcmp(n, "fork")) { ctlFork(c, at); return; }
    if (!strcmp(n, "exit")) { ctlExit(c, at); return; }
    if (actsInNoProcess(n)) { runCommand(c); return; }
    int slot = opt(c, "proc") ? liveSlot(opt(c, "proc")) : currentSlot();
    if (isDeviceCommand(n) && pos(c, 0)) {
        Var *d = lookup(pos(c, 0));
        if (d && d->kind == V_DEV && !(d->mask & (1u << slot))) {
            if (!d->mask) unsupported("a device every process that had it open has exited");
            // The opener, else a process that inherited the file.
            slot = (d->mask & (1u << d->slot)) ? d->slot : __builtin_ctz(d->mask);
        }
        // `close`: the model's device is released; the kernel's file only when every process
        // that holds it has closed it. The others close it first, without a trace line.
        if (d && d->kind == V_DEV && !strcmp(n, "close"))
            for (int s = 0; s < MAXPROC; s++) if (s != slot && (d->mask & (1u << s))) runIn(s, c, at, 1);
    }
    runIn(slot, c, at, 0);
}

// ---- concurrent blocks ------------------------------------------------------------------------
// `concurrent { thread [proc=NAME] { … } … }` at `at`: each thread's first body token and
// process name; *end: the token after the statement.
static int parseConcurrent(int at, int *bodies, const char **procNames, int *end) {
    int i = at + 1, n = 0;
    if (i >= ntoks || strcmp(toks[i].text, "{")) fatal("%s:%d: expected '{' after 'concurrent'", toks[at].file, toks[at].line);
    i++;
    for (;;) {
        while (i < ntoks && !strcmp(toks[i].text, "\n") && !toks[i].string) i++;
        if (i >= ntoks) fatal("%s:%d: expected '}' to end 'concurrent'", toks[at].file, toks[at].line);
        if (!strcmp(toks[i].text, "}") && !toks[i].string) { *end = i + 1; return n; }
        if (strcmp(toks[i].text, "thread")) fatal("%s:%d: expected 'thread'", toks[i].file, toks[i].line);
        i++;
        const char *pn = NULL;
        if (i < ntoks && !strncmp(toks[i].text, "proc=", 5)) { pn = toks[i].text + 5; i++; }
        if (i >= ntoks || strcmp(toks[i].text, "{")) fatal("%s:%d: expected '{' after 'thread'", toks[i - 1].file, toks[i - 1].line);
        i++;
        if (n == 32) fatal("%s:%d: more than 32 threads", toks[at].file, toks[at].line);
        bodies[n] = i; procNames[n] = pn; n++;
        for (int depth = 1; i < ntoks && depth; i++)
            if (!toks[i].string) { if (!strcmp(toks[i].text, "{")) depth++; else if (!strcmp(toks[i].text, "}")) depth--; }
    }
}

typedef struct { int body, tid, status; } ThreadArg;
static void *threadMain(void *p) {
    ThreadArg *a = p;
    localOnly = 1; inThread = 1; inThreadLocals = 1; nlocals = 0; curThread = a->tid; ti = a->body;
    if (setjmp(stopJump) == 0) { runBlock(1); a->status = 0; } else a->status = 1;
    return NULL;
}
// The blocks in `mask`, each on a thread of this process, all joined. Return: 1 if one stopped.
static int runThreadsAt(int at, uint32_t mask, int base) {
    int bodies[32], end; const char *pn[32];
    int n = parseConcurrent(at, bodies, pn, &end);
    pthread_t th[MAXTHREADS]; ThreadArg args[MAXTHREADS]; int k = 0;
    for (int i = 0; i < n; i++) {
        if (!(mask & (1u << i))) continue;
        if (k == MAXTHREADS) fatal("more than %d threads in one process", MAXTHREADS);
        args[k] = (ThreadArg){ bodies[i], base + i + 1, 0 };
        pthread_attr_t attr; pthread_attr_init(&attr);
        pthread_attr_setstack(&attr, threadStacks + k * THREAD_STACK, THREAD_STACK);
        if (pthread_create(&th[k], &attr, threadMain, &args[k])) fatal("pthread_create failed");
        pthread_attr_destroy(&attr);
        k++;
    }
    int status = 0;
    for (int j = 0; j < k; j++) { pthread_join(th[j], NULL); status |= args[j].status; }
    return status;
}

// The runner: every process's threads at once; the first failure is what was printed.
static void runConcurrent(int at) {
    int bodies[32], end; const char *pn[32];
    int n = parseConcurrent(at, bodies, pn, &end);
    uint32_t perSlot[MAXPROC] = {0};
    for (int i = 0; i < n; i++) {
        curLine = toks[bodies[i] - 1].line;
        int s = pn[i] ? liveSlot(pn[i]) : currentSlot();
        perSlot[s] |= 1u << i;
        if (__builtin_popcount(perSlot[s]) > MAXTHREADS) unsupported("more than 8 threads in one process");
    }
    const char *f = toks[at].file, *b = strrchr(f, '/');
    emitLine("# %s:%d t%d: concurrent (%d threads)", b ? b + 1 : f, toks[at].line, curThread, n);
    int base = threadCounter; threadCounter += n;
    for (int s = 1; s < MAXPROC; s++) if (perSlot[s]) sendMsg(s, MSG_CONC, at, (int)perSlot[s], base);
    int status = perSlot[0] ? runThreadsAt(at, perSlot[0], base) : 0;
    for (int s = 1; s < MAXPROC; s++) if (perSlot[s]) status |= awaitReply(s).status;
    if (status) longjmp(stopJump, 1);
    ti = end;
}

// ---- statements --------------------------------------------------------------------------------
static void runCommand(Cmd *c) {
    curFile = c->file; curLine = c->line;
    const char *n = c->name;
    if (inThread && opt(c, "proc") && slotOfName(opt(c, "proc")) != mySlot) unsupported("a command for another process inside a thread");
    if (!strcmp(n, "process") || !strcmp(n, "use")) unsupported("process or use inside a thread");
    if (!strcmp(n, "fork")) { cmdForkHere(c); return; }
    if (!strcmp(n, "exit")) {
        if (inThread) unsupported("exit inside a thread");
        trace(c, "ok");
        if (mySlot) _exit(0);
        return;
    }
    if (!strcmp(n, "machine") || !strcmp(n, "thp") || !strcmp(n, "sleep") || !strcmp(n, "print")) {
        if (!strcmp(n, "thp")) { cmdThp(c); return; }
        // The model's machine size; the kernel's is the VM's (3 GiB): a script whose outcome
        // depends on it differs, and shows so.
        if (!strcmp(n, "machine")) {
            // A swap area: zram0 of that size (the VM's swap is off otherwise).
            // Swap is off unless a script asks (one VM runs every script: none inherits another's).
            const char *sw = opt(c, "swap");
            // A swap file needs a disk (swapon refuses a tmpfs file); the VM has only its initramfs.
            const char *sf = opt(c, "swap_file");
            if (sf && eval(sf) != 0) { unsupported("machine swap_file=1 (the oracle's VM has no disk for a swap file)"); return; }
            if (sw || inVM) setupSwap(sw ? eval(sw) : 0);
            // vm.page-cluster: as asked, else the default of a VM of this size (3).
            const char *pc = opt(c, "page_cluster");
            if (pc && !inVM) { unsupported("machine page_cluster= outside the oracle's VM (it would change this machine's setting)"); return; }
            if (inVM) {
                char num[32]; snprintf(num, sizeof num, "%llu", (unsigned long long)(pc ? eval(pc) : 3));
                writeFile("/proc/sys/vm/page-cluster", num);
            }
            free(vmstatAtMachine); vmstatAtMachine = readText("/proc/vmstat");
            const char *ok = opt(c, "oom_killer");
            if (ok && eval(ok) == 0) { unsupported("machine oom_killer=0 (the kernel's OOM killer is always on)"); return; }
            trace(c, "ok"); return;
        }
        if (!strcmp(n, "sleep")) { usleep(eval(need(c, 0, "a time")) / 1000); trace(c, "ok"); return; }
        return;   // print: output only, no trace line (as the model)
    }
    if (!strcmp(n, "invariants")) { cmdInvariants(c); return; }
    if (!strcmp(n, "hugepages")) { cmdHugepages(c); return; }
    if (!strcmp(n, "meminfo")) { cmdMeminfo(c); return; }
    if (!strcmp(n, "vmstat")) { cmdVmstat(c); return; }
    if (!strcmp(n, "kswapd")) {
        // The kernel's kswapd always runs: `kswapd start` says so; it cannot stop, and a plain
        // `kswapd` would print what the model's (off until started) does not.
        if (flag(c, "stop")) unsupported("kswapd stop (the kernel's kswapd always runs)");
        if (!flag(c, "start")) unsupported("kswapd without start (the kernel's always runs; the model's is off until started)");
        trace(c, "kswapd: running"); return;
    }
    if (!strcmp(n, "gup")) { cmdGup(c); return; }
    if (!strcmp(n, "put") || !strcmp(n, "unpin")) { cmdPut(c); return; }
    if (!strcmp(n, "skip")) { emitLine("@@SKIP %s:%d", c->file, c->line); longjmp(stopJump, 1); }
    if (!strcmp(n, "open")) {
        uint64_t minor = eval(need(c, 0, "a device number")); char path[64]; snprintf(path, sizeof path, "/dev/hmm_dmirror%llu", (unsigned long long)minor);
        int fd = open(path, O_RDWR);
        if (fd < 0) { int e = errno; trace(c, "%s", errname(e)); checkErrno(c, e); return; }
        trace(c, "dmirror%llu", (unsigned long long)minor);
        if (c->bindName) { Var *v = bindVar(c->bindName, V_DEV); v->fd = fd; v->minor = (int)minor; v->mask = 1u << mySlot; v->slot = mySlot; }
        checkErrno(c, 0); return;
    }
    if (!strcmp(n, "close")) {
        Var *v = lookup(need(c, 0, "a device"));
        if (v && v->kind == V_DEV && (v->mask & (1u << mySlot))) { close(v->fd); v->mask &= ~(1u << mySlot); touchVar(v); }
        trace(c, "0"); return;
    }
    if (!strcmp(n, "mmap")) { cmdMmap(c); return; }
    if (!strcmp(n, "mmap_device")) {
        Var *d = lookup(need(c, 0, "a device")); if (!d || d->kind != V_DEV) fatal("%s:%d: no device", c->file, c->line);
        if (!(d->mask & (1u << mySlot))) unsupported("a device this process does not have open (a thread of another process)");
        uint64_t size = eval(need(c, 1, "a size"));
        void *r = mmap(NULL, size, prot(opt(c, "prot")), flag(c, "shared") ? MAP_SHARED : MAP_PRIVATE, d->fd, 0);
        if (r == MAP_FAILED) { int e = errno; trace(c, "%s", errname(e)); checkErrno(c, e); return; }
        trace(c, "0x%lx", (unsigned long)r);
        if (c->bindName) region(c->bindName, (uint64_t)r, size);
        checkErrno(c, 0); return;
    }
    if (!strcmp(n, "munmap") || !strcmp(n, "mprotect") || !strcmp(n, "madvise")) { cmdRange(c); return; }
    if (!strcmp(n, "mremap")) { cmdMremap(c); return; }
    if (!strcmp(n, "fill") || !strcmp(n, "check")) { cmdFillCheck(c); return; }
    if (!strcmp(n, "load") || !strcmp(n, "store")) { cmdAccess(c); return; }
    if (!strcmp(n, "buffer") || !strcmp(n, "check_buffer")) { cmdBuffer(c); return; }
    if (!strcmp(n, "read") || !strcmp(n, "write") || !strcmp(n, "migrate_to_dev") || !strcmp(n, "migrate_to_sys") || !strcmp(n, "snapshot")
        || !strcmp(n, "exclusive") || !strcmp(n, "check_exclusive") || !strcmp(n, "release") || !strcmp(n, "flags")) { cmdDevice(c); return; }
    if (!strcmp(n, "pagemap")) { cmdPagemap(c); return; }
    if (!strcmp(n, "file") || !strcmp(n, "pwrite") || !strcmp(n, "pread")) { cmdFile(c); return; }
    unsupported(n);
}

static int atEnd(void) { return ti >= ntoks; }
static int isNL(void) { return !atEnd() && !strcmp(toks[ti].text, "\n") && !toks[ti].string; }
static void skipNL(void) { while (isNL()) ti++; }

// Skips one statement: to the end of its line, or past the `}` that closes a block it opens.
static void skipStatement(void) {
    int depth = 0;
    while (!atEnd()) {
        const char *w = toks[ti].text; int str = toks[ti].string;
        if (!str && !strcmp(w, "{")) depth++;
        else if (!str && !strcmp(w, "}")) { if (depth == 0) return; if (--depth == 0) { ti++; return; } }
        else if (!str && depth == 0 && !strcmp(w, "\n")) return;
        ti++;
    }
}

// One statement starting at ti; `execute` 0 skips it (a block that does not run).
static void statement(int execute) {
    if (!execute) { skipStatement(); return; }
    Tok *t = &toks[ti];
    int at = ti;
    curFile = t->file; curLine = t->line;
    if (!strcmp(t->text, "let")) {
        if (ti + 3 >= ntoks || strcmp(toks[ti + 2].text, "=")) fatal("%s:%d: expected 'let NAME = value'", t->file, t->line);
        uint64_t value = eval(toks[ti + 3].text);
        if (inThreadLocals) setLocal(toks[ti + 1].text, value);
        else { Var *v = bindVar(toks[ti + 1].text, V_NUM); v->value = value; }
        ti += 4; return;
    }
    if (!strcmp(t->text, "repeat")) {
        const char *count = toks[ti + 1].text; const char *as = NULL; ti += 2;
        if (!strcmp(toks[ti].text, "as")) { as = toks[ti + 1].text; ti += 2; }
        if (strcmp(toks[ti].text, "{")) fatal("%s:%d: expected '{'", t->file, t->line);
        ti++;
        int bodyStart = ti;
        uint64_t n = eval(count);
        if (n == 0) { runBlock(2); return; }   // skipped
        for (uint64_t i = 0; i < n; i++) {
            ti = bodyStart;
            if (as && inThreadLocals) setLocal(as, i);
            else if (as) { Var *v = bindVar(as, V_NUM); v->value = i; }
            runBlock(1);
        }
        return;
    }
    if (!strcmp(t->text, "concurrent")) {
        if (localOnly) unsupported("concurrent inside a thread");
        runConcurrent(at); return;
    }
    // A command: NAME args [-> NAME] [expect args], to the end of the line.
    Cmd c = { .name = t->text, .file = t->file, .line = t->line };
    ti++;
    int inExpect = 0;
    while (!atEnd() && !isNL() && strcmp(toks[ti].text, "}")) {
        char *w = toks[ti].text;
        if (!strcmp(w, "->")) { c.bindName = toks[ti + 1].text; ti += 2; continue; }
        if (!strcmp(w, "expect")) { inExpect = 1; ti++; continue; }
        Arg a = { NULL, w };
        char *eq = toks[ti].string ? NULL : strchr(w, '=');
        if (eq && eq != w) { a.key = strndup(w, eq - w); a.value = eq + 1; }
        if (inExpect) { if (c.nexpects == 16) fatal("%s:%d: too many expectations", t->file, t->line); c.expects[c.nexpects++] = a; }
        else { if (c.nargs == 32) fatal("%s:%d: too many arguments", t->file, t->line); c.args[c.nargs++] = a; }
        ti++;
    }
    // Indexed names stand for the name their index gives now.
    if (c.bindName) c.bindName = (char *)resolveName(c.bindName);
    for (int i = 0; i < c.nargs; i++) c.args[i].value = (char *)resolveName(c.args[i].value);
    if (localOnly || mySlot != 0) runCommand(&c); else dispatch(&c, at);
    for (int i = 0; i < c.nargs; i++) free(c.args[i].key);
    for (int i = 0; i < c.nexpects; i++) free(c.expects[i].key);
}

// Statements until the end (untilBrace 0) or a closing `}` (1: run, 2: skip).
static void runBlock(int untilBrace) {
    for (;;) {
        skipNL();
        if (atEnd()) { if (untilBrace) fatal("expected '}'"); return; }
        if (!strcmp(toks[ti].text, "}") && !toks[ti].string) { if (!untilBrace) fatal("%s:%d: unexpected '}'", toks[ti].file, toks[ti].line); ti++; return; }
        statement(untilBrace != 2);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: hmm-oracle-runner SCRIPT.hmm\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    // The runner's own memory from the brk heap only (threads too): no malloc'd buffer lands in
    // a hole the script unmapped (which would change what its later mmaps and mremaps get).
    mallopt(M_MMAP_MAX, 0);
    mallopt(M_ARENA_MAX, 1);
    signal(SIGCHLD, SIG_IGN);   // the script's processes are reaped as they exit
    struct sigaction sa = {0}; sa.sa_sigaction = onFault; sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL); sigaction(SIGBUS, &sa, NULL);
    arenaInit();
    threadStacks = mmap(NULL, MAXTHREADS * THREAD_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (threadStacks == MAP_FAILED) fatal("cannot map the threads' stacks: %s", strerror(errno));
    for (int k = 1; k < MAXPROC; k++) if (socketpair(AF_UNIX, SOCK_STREAM, 0, chans[k])) fatal("socketpair: %s", strerror(errno));
    inVM = getenv("HMM_ORACLE_VM") != NULL;
    if (inVM) {   // the model's defaults
        writeFile(THP "enabled", "madvise"); writeFile(THP "use_zero_page", "1");
        writeFile("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", "0");
        if (access("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages", F_OK) == 0) writeFile("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages", "0");
    }
    gupFd = open(GUP_TEST_PATH, O_RDWR);
    kmsgStart();
    atexit(killProcesses);
    if (getenv("HMM_ORACLE_SCRIPT_TIMEOUT")) scriptTimeout = (unsigned)atoi(getenv("HMM_ORACLE_SCRIPT_TIMEOUT"));
    signal(SIGALRM, onAlarm); alarm(scriptTimeout);
    tokenize(argv[1], 0);
    if (setjmp(stopJump) == 0) { ti = 0; runBlock(0); emitLine("@@DONE"); }
    killProcesses();
    fflush(stdout);
    return 0;
}
