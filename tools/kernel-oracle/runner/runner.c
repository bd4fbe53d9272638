// hmm-oracle-runner: runs a swift-hmm scenario script (docs/scenario-language.md) on the real
// kernel, inside the kernel oracle's VM, against /dev/hmm_dmirror* and real system calls.
//
// It prints, for every command it runs, the line `hmm run --trace` prints for it in swift-hmm:
//   # FILE:LINE t0: NAME = RESULT
// (only FILE:LINE and RESULT are compared: the arguments show addresses, which differ), checks
// the script's expectations as `hmm run` does and, at the first that fails,
//   @@EXPECT FILE:LINE: MESSAGE
// and stops. A command it cannot run on a kernel (model-only inspection, or one it does not
// support yet: several processes, concurrent threads, GUP, hugetlb pools, …) ends the run with
//   @@UNSUPPORTED FILE:LINE: NAME
// and a finished script with `@@DONE`. Exit status 0 unless the runner itself fails.
//
// First version: one process. `fork`, `use`, `proc=`, `concurrent`, indexed names and the
// commands listed in `unsupported()` are reported, not run.
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

static void addtok(const char *s, size_t n, const char *file, int line, int string) {
    if (ntoks == captoks) { captoks = captoks ? 2 * captoks : 4096; toks = realloc(toks, captoks * sizeof(Tok)); }
    toks[ntoks++] = (Tok){ strndup(s, n), file, line, string };
}

static void fatal(const char *fmt, ...) {
    va_list ap; va_start(ap, fmt); printf("@@ERROR "); vprintf(fmt, ap); printf("\n"); va_end(ap); fflush(stdout); exit(2);
}

static char *slurp(const char *path) {
    FILE *f = fopen(path, "r"); if (!f) return NULL;
    fseek(f, 0, SEEK_END); long n = ftell(f); fseek(f, 0, SEEK_SET);
    char *b = malloc(n + 1); if (fread(b, 1, n, f) != (size_t)n) { fclose(f); free(b); return NULL; }
    b[n] = 0; fclose(f); return b;
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
typedef enum { V_NUM, V_REGION, V_DEV, V_BUF, V_FILE, V_PROC } Kind;
typedef struct { char name[64]; Kind kind; uint64_t value, size; int fd; unsigned char *buf; int minor; } Var;
static Var vars[512]; static int nvars;

static Var *lookup(const char *name) {
    for (int i = nvars - 1; i >= 0; i--) if (!strcmp(vars[i].name, name)) return &vars[i];
    return NULL;
}
static Var *bind(const char *name, Kind kind) {
    Var *v = lookup(name);
    if (!v) { if (nvars == 512) fatal("too many names"); v = &vars[nvars++]; snprintf(v->name, sizeof v->name, "%s", name); }
    v->kind = kind; return v;
}

static const char *curFile; static int curLine;
static jmp_buf stopJump;
static int unsupportedHere;

static void unsupported(const char *what) {
    printf("@@UNSUPPORTED %s:%d: %s\n", curFile, curLine, what); fflush(stdout);
    unsupportedHere = 1; longjmp(stopJump, 1);
}
static void expectFailed(const char *fmt, ...) {
    va_list ap; va_start(ap, fmt); printf("@@EXPECT %s:%d: ", curFile, curLine); vprintf(fmt, ap); printf("\n"); va_end(ap);
    fflush(stdout); longjmp(stopJump, 1);
}

// Expressions: numbers (decimal, 0x hex, `_`), units, names (NAME, NAME.size/.end/.pages),
// + - * / % and parentheses.
static const char *ep;
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
    if (*ep == '[') unsupported("indexed names");
    if (!k) fatal("%s:%d: expected a number or a name at '%s'", curFile, curLine, ep);
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
__attribute__((noinline)) static uint64_t eval(const char *s) {
    ep = s; uint64_t v = esum();
    if (*ep) fatal("%s:%d: expected an operator or end of value at '%s'", curFile, curLine, ep);
    return v;
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

static void trace(Cmd *c, const char *fmt, ...) {
    const char *base = strrchr(c->file, '/');
    printf("# %s:%d t0: %s = ", base ? base + 1 : c->file, c->line, c->name);
    va_list ap; va_start(ap, fmt); vprintf(fmt, ap); va_end(ap); printf("\n"); fflush(stdout);
}

// ---- errno names (those the scenario language knows) ----------------------------------------
static const char *errname(int e) {
    switch (e) {
    case EPERM: return "EPERM"; case ENOENT: return "ENOENT"; case EINTR: return "EINTR"; case EIO: return "EIO";
    case EAGAIN: return "EAGAIN"; case ENOMEM: return "ENOMEM"; case EACCES: return "EACCES"; case EFAULT: return "EFAULT";
    case EBUSY: return "EBUSY"; case EEXIST: return "EEXIST"; case ENODEV: return "ENODEV"; case EINVAL: return "EINVAL";
    case ENOSPC: return "ENOSPC"; case EBADF: return "EBADF"; case EOVERFLOW: return "EOVERFLOW"; case EOPNOTSUPP: return "EOPNOTSUPP";
    default: { static char b[32]; snprintf(b, sizeof b, "E%d", e); return b; }
    }
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
    for (char *a = strtok(alts, "|"); a; a = strtok(NULL, "|")) if (!strcmp(a, got)) return;
    expectFailed("expected %s, got %s", want, got);
}

// ---- memory accesses with fault capture --------------------------------------------------------
static sigjmp_buf faultJump; static volatile int faultSig; static volatile uintptr_t faultAddr;
static volatile sig_atomic_t inAccess;   // set only around the script's own accesses
static void onFault(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    if (!inAccess) { signal(sig, SIG_DFL); return; }   // the runner's own fault: crash (re-executes with the default action)
    inAccess = 0; faultSig = sig; faultAddr = (uintptr_t)si->si_addr; siglongjmp(faultJump, 1);
}

static char faultText[64];
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
    for (char *a = strtok(alts, "|"); a; a = strtok(NULL, "|")) if (!strcmp(a, got)) return;
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

static Var *region(const char *name, uint64_t addr, uint64_t size) { Var *v = bind(name, V_REGION); v->value = addr; v->size = (size + PAGE - 1) & ~(PAGE - 1); return v; }

static void cmdMmap(Cmd *c) {
    uint64_t size = eval(need(c, 0, "a size"));
    int flags = flag(c, "shared") ? MAP_SHARED : MAP_PRIVATE, fd = -1;
    uint64_t addr = 0, off = 0;
    const char *f = opt(c, "file");
    if (f) { Var *fv = lookup(f); if (!fv || fv->kind != V_FILE) fatal("%s:%d: no file '%s'", c->file, c->line, f); fd = fv->fd; off = opt(c, "offset") ? eval(opt(c, "offset")) : 0; }
    else flags |= MAP_ANONYMOUS;
    if (opt(c, "fixed")) { addr = eval(opt(c, "fixed")); flags |= flag(c, "noreplace") ? MAP_FIXED_NOREPLACE : MAP_FIXED; }
    else if (opt(c, "hint")) addr = eval(opt(c, "hint"));
    if (flag(c, "populate")) flags |= MAP_POPULATE;
    if (flag(c, "hugetlb") || opt(c, "hugetlb")) unsupported("mmap hugetlb (the VM's hugetlb pool is not the model's)");
    if (0) {
        flags |= MAP_HUGETLB;
        const char *h = opt(c, "hugetlb");
        if (h) { uint64_t hs = eval(h); flags |= (hs == (1ULL << 30) ? 30 : 21) << MAP_HUGE_SHIFT; size = (size + hs - 1) / hs * hs; }
        else size = (size + (2ULL << 20) - 1) / (2ULL << 20) * (2ULL << 20);
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
        {"hugepage", MADV_HUGEPAGE}, {"nohugepage", MADV_NOHUGEPAGE}, {"collapse", 25 /* MADV_COLLAPSE */}, {"populate_read", 22}, {"populate_write", 23},
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
        for (char *x = strtok(alts, "|"); x; x = strtok(NULL, "|")) { if (!strcmp(x, "segv") || !strcmp(x, "bus")) continue; if (eval(x) == got) return; }
        expectFailed("expected %s, got %llu", e0, (unsigned long long)got);
    }
    checkSignal(c, 0);
}

static void cmdBuffer(Cmd *c) {
    if (!strcmp(c->name, "buffer")) {
        const char *name = need(c, 0, "a name"); uint64_t size = eval(need(c, 1, "a size"));
        Var *v = bind(name, V_BUF); v->buf = calloc(1, size ? size : 1); v->size = size; v->value = 0;
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
    unsigned char *buf = NULL; uint64_t bufSize = 0;
    if (opt(c, "buffer")) { Var *b = lookup(opt(c, "buffer")); if (!b || b->kind != V_BUF) fatal("%s:%d: no buffer", c->file, c->line); buf = b->buf; bufSize = b->size; }
    else if (req == HMM_DMIRROR_READ || req == HMM_DMIRROR_WRITE || req == HMM_DMIRROR_MIGRATE_TO_DEV || req == HMM_DMIRROR_SNAPSHOT || req == HMM_DMIRROR_EXCLUSIVE) {
        bufSize = req == HMM_DMIRROR_SNAPSHOT ? cmd.npages : cmd.npages * PAGE;
        // The model's buffer is exactly this size; on the kernel it is given a page more, as
        // copy_to_user of a whole page into a shorter malloc'd buffer works there (the heap
        // beyond it is mapped). The expectations look only at bufSize bytes.
        buf = calloc(1, bufSize + PAGE);
    }
    if (opt(c, "from") && buf) fillPattern(buf, bufSize, pattern(opt(c, "from")), 0);
    if (c->bindName && buf) { Var *b = bind(c->bindName, V_BUF); b->buf = buf; b->size = bufSize; }
    cmd.ptr = (uintptr_t)buf;
    int err = ioctl(d->fd, req, &cmd) ? errno : 0;
    if (err) { cmd.cpages = 0; cmd.faults = 0; }
    char ret[32]; snprintf(ret, sizeof ret, "%s%s", err ? "-" : "", err ? errname(err) : "0");
    trace(c, "ret %s cpages %llu faults %llu", ret, (unsigned long long)cmd.cpages, (unsigned long long)cmd.faults);
    const char *wantRet = expectKey(c, "ret"); if (!wantRet) wantRet = "0";
    char alts[128]; snprintf(alts, sizeof alts, "%s", wantRet); int ok = 0;
    for (char *x = strtok(alts, "|"); x; x = strtok(NULL, "|")) { const char *y = (x[0] == '-' || !strcmp(x, "0")) ? x : NULL; char z[40]; if (!y) { snprintf(z, sizeof z, "-%s", x); y = z; } if (!strcmp(y, ret)) ok = 1; }
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
            for (char *x = strtok(list, ","); x; x = strtok(NULL, ",")) {
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
        Var *v = bind(need(c, 0, "a name"), V_FILE); v->fd = fd; v->size = size;
        trace(c, "ok"); return;
    }
    Var *f = lookup(need(c, 0, "a file")); if (!f || f->kind != V_FILE) fatal("%s:%d: no file", c->file, c->line);
    if (!strcmp(c->name, "pwrite")) {
        uint64_t off = eval(need(c, 1, "an offset")), len = eval(need(c, 2, "a length"));
        unsigned char *b = malloc(len ? len : 1); fillPattern(b, len, pattern(need(c, 3, "a pattern")), opt(c, "index") ? eval(opt(c, "index")) : 0);
        ssize_t r = pwrite(f->fd, b, len, off); int e = r < 0 ? errno : 0; free(b);
        trace(c, "%s", e ? errname(e) : "ok"); checkErrno(c, e); return;
    }
    unsupported(c->name);
}

// ---- statements --------------------------------------------------------------------------------
static int ti;   // the token index
static int processes;

static void runCommand(Cmd *c) {
    curFile = c->file; curLine = c->line;
    if (c->bindName && strchr(c->bindName, '[')) unsupported("indexed names");
    for (int i = 0; i < c->nargs; i++) if (strchr(c->args[i].value, '[')) unsupported("indexed names");
    if (opt(c, "proc")) unsupported("proc= (more than one process)");
    const char *n = c->name;
    if (!strcmp(n, "process")) {
        if (processes++) unsupported("a second process");
        Var *v = bind(need(c, 0, "a name"), V_PROC); v->value = getpid();
        trace(c, "pid %d", getpid()); return;
    }
    if (!strcmp(n, "machine") || !strcmp(n, "thp") || !strcmp(n, "sleep") || !strcmp(n, "print")) {
        if (!strcmp(n, "thp")) unsupported("thp (the VM's THP setting is madvise)");
        if (!strcmp(n, "machine")) unsupported("machine");
        if (!strcmp(n, "sleep")) { usleep(eval(need(c, 0, "a time")) / 1000); trace(c, "ok"); return; }
        return;   // print: output only, no trace line (as the model)
    }
    if (!strcmp(n, "skip")) { printf("@@SKIP %s:%d\n", c->file, c->line); longjmp(stopJump, 1); }
    if (!strcmp(n, "open")) {
        uint64_t minor = eval(need(c, 0, "a device number")); char path[64]; snprintf(path, sizeof path, "/dev/hmm_dmirror%llu", (unsigned long long)minor);
        int fd = open(path, O_RDWR);
        if (fd < 0) { int e = errno; trace(c, "%s", errname(e)); checkErrno(c, e); return; }
        trace(c, "dmirror%llu", (unsigned long long)minor);
        if (c->bindName) { Var *v = bind(c->bindName, V_DEV); v->fd = fd; v->minor = (int)minor; }
        checkErrno(c, 0); return;
    }
    if (!strcmp(n, "close")) { Var *v = lookup(need(c, 0, "a device")); if (v && v->kind == V_DEV) close(v->fd); trace(c, "0"); return; }
    if (!strcmp(n, "mmap")) { cmdMmap(c); return; }
    if (!strcmp(n, "mmap_device")) {
        Var *d = lookup(need(c, 0, "a device")); if (!d || d->kind != V_DEV) fatal("%s:%d: no device", c->file, c->line);
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
    if (!strcmp(n, "exit")) { trace(c, "ok"); printf("@@DONE\n"); fflush(stdout); _exit(0); }
    unsupported(n);
}

static int atEnd(void) { return ti >= ntoks; }
static int isNL(void) { return !atEnd() && !strcmp(toks[ti].text, "\n") && !toks[ti].string; }
static void skipNL(void) { while (isNL()) ti++; }

static void runBlock(int untilBrace);

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
    curFile = t->file; curLine = t->line;
    if (!strcmp(t->text, "let")) {
        if (ti + 3 >= ntoks || strcmp(toks[ti + 2].text, "=")) fatal("%s:%d: expected 'let NAME = value'", t->file, t->line);
        if (execute) { Var *v = bind(toks[ti + 1].text, V_NUM); v->value = eval(toks[ti + 3].text); }
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
            if (as) { Var *v = bind(as, V_NUM); v->value = i; }
            runBlock(1);
        }
        return;
    }
    if (!strcmp(t->text, "concurrent") || !strcmp(t->text, "fork") || !strcmp(t->text, "use")) unsupported(t->text);
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
    runCommand(&c);
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
    // The runner's own memory from the brk heap only: no malloc'd buffer lands in a hole the
    // script unmapped (which would change what its later mmaps and mremaps get).
    mallopt(M_MMAP_MAX, 0);
    struct sigaction sa = {0}; sa.sa_sigaction = onFault; sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL); sigaction(SIGBUS, &sa, NULL);
    tokenize(argv[1], 0);
    if (setjmp(stopJump) == 0) { ti = 0; runBlock(0); printf("@@DONE\n"); }
    fflush(stdout);
    return 0;
}
