#define _GNU_SOURCE
#if defined(__APPLE__)
#define _XOPEN_SOURCE 700
#endif
#include "MMContext.h"
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

// The Swift runtime's exclusivity hooks for a task entering and leaving a thread (exported by
// libswiftCore with the C calling convention; the state is two words, zero at first).
extern void swift_task_enterThreadLocalContext(char *state);
extern void swift_task_exitThreadLocalContext(char *state);

uint64_t mm_context_carrier_id = 0;

struct mm_context {
    ucontext_t uc;
    /// This context's exclusivity accesses while it is switched out (zero: none).
    uintptr_t exclusivity[2];
    /// The stack's mapping (guard page first), NULL for a carrier.
    void *mapping;
    size_t mapping_size;
    void (*entry)(void *);
    void *arg;
};

static size_t page_size(void) {
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (size_t)p : 4096;
}

mm_context *mm_context_create(size_t stack_size) {
    size_t page = page_size();
    size_t size = (stack_size + page - 1) / page * page + page;
    mm_context *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS;
#if defined(MAP_NORESERVE)
    flags |= MAP_NORESERVE;
#endif
#if defined(MAP_STACK)
    flags |= MAP_STACK;
#endif
    void *m = mmap(NULL, size, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (m == MAP_FAILED) { free(c); return NULL; }
    if (mprotect(m, page, PROT_NONE) != 0) { munmap(m, size); free(c); return NULL; }
    c->mapping = m;
    c->mapping_size = size;
    return c;
}

mm_context *mm_context_create_carrier(void) { return calloc(1, sizeof(mm_context)); }

/// The first frame of a context: the pointer comes in two 32-bit halves (makecontext passes ints).
static void mm_context_start(unsigned hi, unsigned lo) {
#if UINTPTR_MAX > 0xffffffffu
    mm_context *c = (mm_context *)(((uintptr_t)hi << 32) | (uintptr_t)lo);
#else
    (void)hi;
    mm_context *c = (mm_context *)(uintptr_t)lo;
#endif
    c->entry(c->arg);
    abort(); // an entry must switch away for good, never return
}

void mm_context_prepare(mm_context *c, void (*entry)(void *), void *arg) {
    size_t page = page_size();
    c->entry = entry;
    c->arg = arg;
    c->exclusivity[0] = c->exclusivity[1] = 0;
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = (char *)c->mapping + page;
    c->uc.uc_stack.ss_size = c->mapping_size - page;
    c->uc.uc_link = NULL;
    uintptr_t p = (uintptr_t)c;
#if UINTPTR_MAX > 0xffffffffu
    unsigned hi = (unsigned)(p >> 32);
#else
    unsigned hi = 0;
#endif
    makecontext(&c->uc, (void (*)(void))mm_context_start, 2, hi, (unsigned)(p & 0xffffffffu));
}

void mm_context_switch(mm_context *from, mm_context *to) {
    if (from->mapping) swift_task_exitThreadLocalContext((char *)from->exclusivity);
    if (to->mapping) swift_task_enterThreadLocalContext((char *)to->exclusivity);
    swapcontext(&from->uc, &to->uc);
}

void mm_context_destroy(mm_context *c) {
    if (!c) return;
    if (c->mapping) munmap(c->mapping, c->mapping_size);
    free(c);
}
