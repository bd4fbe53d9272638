#define _GNU_SOURCE
#include <stdlib.h>
#include "NativeBaselines.h"
#include <pthread.h>
#include <sched.h>
#include <ucontext.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

uint64_t nb_sum_words(const uint64_t *base, size_t count) {
    uint64_t s = 0;
    for (size_t i = 0; i < count; i++) s += base[i];
    return s;
}

double nb_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#define PFN_MASK 0x000FFFFFFFFFF000ull

void *nb_walk(uint8_t *frame_base, uint64_t pgd_pfn, uint64_t addr) {
    uint64_t table = pgd_pfn;
    for (int level = 3; level >= 0; level--) {
        unsigned shift = 12 + 9 * (unsigned)level;
        const volatile uint64_t *t = (const volatile uint64_t *)(frame_base + (table << 12));
        uint64_t e = t[(addr >> shift) & 511];
        if (!(e & 1)) return NULL;
        uint64_t pfn = (e & PFN_MASK) >> 12;
        if (level == 0 || (e & 0x80)) {
            uint64_t sub = level == 0 ? 0 : (addr & ((1ull << shift) - 1)) >> 12;
            return frame_base + ((pfn + sub) << 12) + (addr & 0xFFF);
        }
        table = pfn;
    }
    return NULL;
}

uint64_t nb_walk_many(uint8_t *frame_base, uint64_t pgd_pfn, const uint64_t *addrs, size_t n) {
    uint64_t s = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t *p = nb_walk(frame_base, pgd_pfn, addrs[i]);
        if (p) s += *p;
    }
    return s;
}

struct nb_tlb { uint64_t tags[256]; uint8_t *frames[256]; };

static inline uint8_t *nb_translate(struct nb_tlb *tlb, uint8_t *fb, uint64_t pgd, uint64_t a, int write) {
    uint64_t vpn = a >> 12;
    unsigned slot = (unsigned)vpn & 255;
    uint64_t want = vpn << 2 | 1;
    uint64_t tag = tlb->tags[slot];
    if (write ? tag == (want | 2) : (tag & ~2ull) == want) return tlb->frames[slot] + (a & 0xFFF);
    uint8_t *p = nb_walk(fb, pgd, a & ~0xFFFull);
    if (!p) return NULL;
    tlb->tags[slot] = want | 2;
    tlb->frames[slot] = p;
    return p + (a & 0xFFF);
}

uint64_t nb_tlb_loads(uint8_t *fb, uint64_t pgd, const uint64_t *addrs, size_t n, int passes) {
    static struct nb_tlb tlb;
    memset(&tlb, 0, sizeof tlb);
    uint64_t s = 0;
    for (int p = 0; p < passes; p++)
        for (size_t i = 0; i < n; i++) {
            uint8_t *h = nb_translate(&tlb, fb, pgd, addrs[i], 0);
            if (h) s += *(volatile uint64_t *)h;
        }
    return s;
}

void nb_tlb_stores(uint8_t *fb, uint64_t pgd, const uint64_t *addrs, size_t n, int passes, uint64_t value) {
    static struct nb_tlb tlb;
    memset(&tlb, 0, sizeof tlb);
    for (int p = 0; p < passes; p++)
        for (size_t i = 0; i < n; i++) {
            uint8_t *h = nb_translate(&tlb, fb, pgd, addrs[i], 1);
            if (h) *(volatile uint64_t *)h = value + i;
        }
}

/// A private anonymous mapping of `bytes` without THP, every page touched (or NULL).
static uint8_t *nb_touched(size_t bytes) {
    uint8_t *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    madvise(m, bytes, MADV_NOHUGEPAGE);
    for (size_t off = 0; off < bytes; off += 4096) m[off] = 1;
    return m;
}

double nb_host_anon_fault(size_t bytes) {
    uint8_t *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -1;
    madvise(m, bytes, MADV_NOHUGEPAGE);
    double t0 = nb_now();
    for (size_t off = 0; off < bytes; off += 4096) m[off] = 1;
    double t = nb_now() - t0;
    munmap(m, bytes);
    return t;
}

/// `bytes` (a multiple of 2 MiB) of anonymous memory on a 2 MiB boundary with MADV_HUGEPAGE;
/// `*raw`/`*rawLen` receive the mapping to unmap. NULL on failure.
static uint8_t *nb_thp_area(size_t bytes, uint8_t **raw, size_t *rawLen) {
    size_t len = bytes + (2u << 20);
    uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return NULL;
    uint8_t *a = (uint8_t *)(((uintptr_t)m + (2u << 20) - 1) & ~(uintptr_t)((2u << 20) - 1));
    madvise(a, bytes, MADV_HUGEPAGE);
    *raw = m; *rawLen = len;
    return a;
}

double nb_host_thp_fault(size_t bytes) {
    uint8_t *raw; size_t len;
    uint8_t *a = nb_thp_area(bytes, &raw, &len);
    if (!a) return -1;
    double t0 = nb_now();
    for (size_t off = 0; off < bytes; off += 2u << 20) a[off] = 1;
    double t = nb_now() - t0;
    munmap(raw, len);
    return t;
}

double nb_host_thp_fork(size_t bytes) {
    uint8_t *raw; size_t len;
    uint8_t *a = nb_thp_area(bytes, &raw, &len);
    if (!a) return -1;
    for (size_t off = 0; off < bytes; off += 2u << 20) a[off] = 1;
    double t0 = nb_now();
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    double t = nb_now() - t0;
    if (pid > 0) waitpid(pid, NULL, 0);
    munmap(raw, len);
    return pid < 0 ? -1 : t;
}

/// A forked child that keeps the parent's pages shared copy-on-write until released: returns
/// its pid and the pipe end that releases it (`nb_release_child`), or -1.
static pid_t nb_fork_holder(int *release) {
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) { close(fds[0]); close(fds[1]); return -1; }
    if (pid == 0) { char c; close(fds[1]); (void)!read(fds[0], &c, 1); _exit(0); }
    close(fds[0]);
    *release = fds[1];
    return pid;
}

static void nb_release_child(pid_t pid, int release) {
    (void)!write(release, "x", 1);
    close(release);
    waitpid(pid, NULL, 0);
}

double nb_host_cow_fault(size_t bytes) {
    uint8_t *m = nb_touched(bytes);
    if (!m) return -1;
    int release;
    pid_t pid = nb_fork_holder(&release);
    if (pid < 0) { munmap(m, bytes); return -1; }
    double t0 = nb_now();
    for (size_t off = 0; off < bytes; off += 4096) m[off] = 2;
    double t = nb_now() - t0;
    nb_release_child(pid, release);
    munmap(m, bytes);
    return t;
}

double nb_host_mmap(int count) {
    void **maps = malloc((size_t)count * sizeof(void *));
    if (!maps) return -1;
    double t0 = nb_now();
    for (int i = 0; i < count; i++)   /* alternating protections: no two neighbours merge */
        maps[i] = mmap(NULL, 4096, (i & 1) ? PROT_READ | PROT_WRITE : PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    double t = nb_now() - t0;
    for (int i = 0; i < count; i++) if (maps[i] != MAP_FAILED) munmap(maps[i], 4096);
    free(maps);
    return t;
}

double nb_host_mprotect(int iterations) {
    uint8_t *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -1;
    m[0] = 1;
    double t0 = nb_now();
    for (int i = 0; i < iterations; i++) mprotect(m, 4096, (i & 1) ? PROT_READ | PROT_WRITE : PROT_READ);
    double t = nb_now() - t0;
    munmap(m, 4096);
    return t;
}

double nb_host_fork(size_t bytes) {
    uint8_t *m = nb_touched(bytes);
    if (!m) return -1;
    double t0 = nb_now();
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    double t = nb_now() - t0;
    if (pid > 0) waitpid(pid, NULL, 0);
    munmap(m, bytes);
    return pid < 0 ? -1 : t;
}

double nb_memcpy(void *dst, const void *src, size_t n, int reps) {
    double t0 = nb_now();
    for (int r = 0; r < reps; r++) { memcpy(dst, src, n); __asm__ volatile("" ::: "memory"); }
    return nb_now() - t0;
}

double nb_mutex_pairs(int n) {
    pthread_mutexattr_t attr;
    pthread_mutex_t m;
    pthread_mutexattr_init(&attr);
    pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
    pthread_mutex_init(&m, &attr);
    pthread_mutexattr_destroy(&attr);
    double t0 = nb_now();
    for (int i = 0; i < n; i++) {
        pthread_mutex_lock(&m);
        __asm__ volatile("" ::: "memory");
        pthread_mutex_unlock(&m);
    }
    double t = nb_now() - t0;
    pthread_mutex_destroy(&m);
    return t;
}

#if defined(__x86_64__)
#include <immintrin.h>

/// A 4 KiB page's lines but the first zeroed with 32-byte streaming stores: the same width as
/// swift-hmm's `clear_page` (MMArch) on a CPU with AVX2, and the same line left to ordinary
/// stores as its `mm_clear_user_page` leaves for a fault on the page's first byte.
__attribute__((target("avx2"))) static void nb_clear_page_but_first_line_avx2(char *page) {
    __m256i *d = (__m256i *)page;
    const __m256i z = _mm256_setzero_si256();
    for (int i = 2; i < 128; i++) _mm256_stream_si256(d + i, z);
}
#endif

/// Runs `fn` on each of `threads` argument blocks (`size` bytes apart from `args`): the calling
/// thread takes the first, new threads the others; a block whose thread cannot start runs on
/// the calling thread after the rest.
static void nb_run_parallel(void *(*fn)(void *), void *args, size_t size, int threads) {
    pthread_t tids[8];
    int started = 1;
    for (; started < threads; started++)
        if (pthread_create(&tids[started], NULL, fn, (char *)args + (size_t)started * size) != 0) break;
    fn(args);
    for (int i = 1; i < started; i++) pthread_join(tids[i], NULL);
    for (int i = started; i < threads; i++) fn((char *)args + (size_t)i * size);
}

struct nb_fill_arg { char *base; size_t bytes; long *word; const int *go; double t0, t1; };

/// The memory work of one anonymous fault, page by page, as swift-hmm's fault does it: prefetch
/// the faulting line for writing, zero the page's other lines with streaming stores (as wide
/// as swift-hmm's), fence, zero the faulting line with ordinary stores (into the cache), one
/// locked add (publishing the page), then the faulting store, which finds its line in the cache.
static void *nb_fill_pages(void *p) {
    struct nb_fill_arg *a = p;
#if defined(__x86_64__)
    __builtin_cpu_init();
    const int avx2 = __builtin_cpu_supports("avx2");
#endif
    while (!__atomic_load_n(a->go, __ATOMIC_ACQUIRE)) sched_yield();
    a->t0 = nb_now();
    for (size_t off = 0; off < a->bytes; off += 4096) {
        char *page = a->base + off;
#if defined(__x86_64__)
        __builtin_prefetch(page, 1, 3); // the faulting line, fetched for writing meanwhile
        if (avx2) {
            nb_clear_page_but_first_line_avx2(page);
        } else {
            __m128i *d = (__m128i *)page;
            const __m128i z = _mm_setzero_si128();
            for (int i = 4; i < 256; i++) _mm_stream_si128(d + i, z);
        }
        _mm_sfence();
        memset(page, 0, 64);
#else
        memset(page, 0, 4096);
#endif
        __atomic_fetch_add(a->word, 1, __ATOMIC_SEQ_CST);
        page[0] = 1;
    }
    a->t1 = nb_now();
    return NULL;
}

double nb_zero_fill(size_t bytes, int threads) {
    if (threads < 1 || threads > 8) return -1;
    char *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (m == MAP_FAILED) return -1;
    madvise(m, bytes, MADV_HUGEPAGE);
    memset(m, 1, bytes); // resident and cold, as populated frames are
    long words[8 * 8] __attribute__((aligned(64))) = {0}; // one cache line per thread
    struct nb_fill_arg args[8];
    size_t per = bytes / (size_t)threads & ~(size_t)4095;
    // Timed as the fault figure is: from the first thread's start to the last one's end, the
    // threads released together (creating a thread is not part of the work).
    int go = 0;
    for (int i = 0; i < threads; i++)
        args[i] = (struct nb_fill_arg){ m + (size_t)i * per, per, &words[i * 8], &go, 0, 0 };
    pthread_t tids[8];
    int started = 1;
    for (; started < threads; started++)
        if (pthread_create(&tids[started], NULL, nb_fill_pages, &args[started]) != 0) break;
    __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
    nb_fill_pages(&args[0]);
    for (int i = 1; i < started; i++) pthread_join(tids[i], NULL);
    for (int i = started; i < threads; i++) nb_fill_pages(&args[i]);
    double first = args[0].t0, last = args[0].t1;
    for (int i = 1; i < threads; i++) {
        if (args[i].t0 < first) first = args[i].t0;
        if (args[i].t1 > last) last = args[i].t1;
    }
    munmap(m, bytes);
    return last - first;
}

#define HMM_V (1ull << 63)
#define HMM_W (1ull << 62)
#define HMM_ORDER_PMD (9ull << 53)

/// Writes `count` copies of `value` (advancing the pfn of a valid leaf) from out[*k].
static void nb_fill(uint64_t *out, size_t *k, size_t count, uint64_t value, int advance) {
    for (size_t i = 0; i < count; i++) out[(*k)++] = value + (advance ? i : 0);
}

#define HMM_INOUT (7ull << 58)

/// One PTE table's entries [first, last): present user pages as pfn | valid | write, each
/// entry keeping its in/out flags (HMM_PFN_INOUT_FLAGS, which hmm_range_fault preserves).
static void nb_range_ptes(const uint64_t *t, unsigned first, unsigned last, uint64_t *out, size_t *k) {
    for (unsigned i = first; i < last; i++) {
        uint64_t e = t[i];
        uint64_t v = 0;
        if ((e & 5) == 5) v = ((e & PFN_MASK) >> 12) | HMM_V | ((e & 2) ? HMM_W : 0);
        out[*k] = (out[*k] & HMM_INOUT) | v;
        (*k)++;
    }
}

size_t nb_range_walk(uint8_t *fb, uint64_t pgd_pfn, uint64_t start, uint64_t end, uint64_t *out) {
    size_t k = 0;
    uint64_t addr = start;
    while (addr < end) {
        const uint64_t *pgd = (const uint64_t *)(fb + (pgd_pfn << 12));
        uint64_t pgd_end = (addr | ((1ull << 39) - 1)) + 1;
        if (pgd_end > end) pgd_end = end;
        uint64_t e = pgd[(addr >> 39) & 511];
        if (!(e & 1)) { nb_fill(out, &k, (pgd_end - addr) >> 12, 0, 0); addr = pgd_end; continue; }
        const uint64_t *pud = (const uint64_t *)(fb + (((e & PFN_MASK) >> 12) << 12));
        while (addr < pgd_end) {
            uint64_t pud_end = (addr | ((1ull << 30) - 1)) + 1;
            if (pud_end > pgd_end) pud_end = pgd_end;
            uint64_t ue = pud[(addr >> 30) & 511];
            if (!(ue & 1) || (ue & 0x80)) { nb_fill(out, &k, (pud_end - addr) >> 12, 0, 0); addr = pud_end; continue; }
            const uint64_t *pmd = (const uint64_t *)(fb + (((ue & PFN_MASK) >> 12) << 12));
            while (addr < pud_end) {
                uint64_t pmd_end = (addr | ((1ull << 21) - 1)) + 1;
                if (pmd_end > pud_end) pmd_end = pud_end;
                uint64_t me = pmd[(addr >> 21) & 511];
                size_t n = (pmd_end - addr) >> 12;
                if (!(me & 1)) nb_fill(out, &k, n, 0, 0);
                else if (me & 0x80) {
                    uint64_t v = (((me & PFN_MASK) >> 12) + ((addr >> 12) & 511)) | HMM_V | ((me & 2) ? HMM_W : 0) | HMM_ORDER_PMD;
                    nb_fill(out, &k, n, (me & 4) ? v : 0, (me & 4) != 0);
                } else {
                    const uint64_t *pte = (const uint64_t *)(fb + (((me & PFN_MASK) >> 12) << 12));
                    unsigned first = (unsigned)((addr >> 12) & 511);
                    nb_range_ptes(pte, first, first + (unsigned)n, out, &k);
                }
                addr = pmd_end;
            }
        }
    }
    return k;
}

struct nb_copy_arg { char *dst; const char *src; size_t n; int copies; int streaming; };

#if defined(__x86_64__)
/// `n` bytes (a multiple of 128; source and destination 32-byte aligned) with 32-byte streaming
/// stores, fenced: how swift-hmm's frame copies (MMArch) move a page on a CPU with AVX2.
__attribute__((target("avx2"))) static void nb_stream_copy_avx2(char *dst, const char *src, size_t n) {
    for (size_t i = 0; i < n; i += 128) {
        __m256i a = _mm256_load_si256((const __m256i *)(src + i));
        __m256i b = _mm256_load_si256((const __m256i *)(src + i + 32));
        __m256i c = _mm256_load_si256((const __m256i *)(src + i + 64));
        __m256i d = _mm256_load_si256((const __m256i *)(src + i + 96));
        _mm256_stream_si256((__m256i *)(dst + i), a);
        _mm256_stream_si256((__m256i *)(dst + i + 32), b);
        _mm256_stream_si256((__m256i *)(dst + i + 64), c);
        _mm256_stream_si256((__m256i *)(dst + i + 96), d);
    }
    _mm_sfence();
}

/// The same with 16-byte streaming stores (source and destination 16-byte aligned): the
/// model's copies on a CPU without AVX2.
static void nb_stream_copy_sse2(char *dst, const char *src, size_t n) {
    for (size_t i = 0; i < n; i += 64) {
        __m128i a = _mm_load_si128((const __m128i *)(src + i));
        __m128i b = _mm_load_si128((const __m128i *)(src + i + 16));
        __m128i c = _mm_load_si128((const __m128i *)(src + i + 32));
        __m128i d = _mm_load_si128((const __m128i *)(src + i + 48));
        _mm_stream_si128((__m128i *)(dst + i), a);
        _mm_stream_si128((__m128i *)(dst + i + 16), b);
        _mm_stream_si128((__m128i *)(dst + i + 32), c);
        _mm_stream_si128((__m128i *)(dst + i + 48), d);
    }
    _mm_sfence();
}
#endif

static void *nb_copy_part(void *p) {
    struct nb_copy_arg *a = p;
    for (int r = 0; r < a->copies; r++) {
#if defined(__x86_64__)
        if (a->streaming && a->n % 128 == 0 && ((uintptr_t)a->dst | (uintptr_t)a->src) % 32 == 0) {
            if (__builtin_cpu_supports("avx2")) nb_stream_copy_avx2(a->dst, a->src, a->n);
            else nb_stream_copy_sse2(a->dst, a->src, a->n);
            continue;
        }
#endif
        memcpy(a->dst, a->src, a->n);
        __asm__ volatile("" ::: "memory");
    }
    return NULL;
}

static double nb_copy_parallel(void *dst, const void *src, size_t n, int copies, int threads, int streaming) {
    if (threads < 1 || threads > 8) return -1;
    struct nb_copy_arg args[8];
    size_t per = (n / (size_t)threads) & ~(size_t)4095;
    double t0 = nb_now();
    for (int i = 0; i < threads; i++) {
        size_t off = (size_t)i * per, len = i == threads - 1 ? n - off : per;
        args[i] = (struct nb_copy_arg){ (char *)dst + off, (const char *)src + off, len, copies, streaming };
    }
    nb_run_parallel(nb_copy_part, args, sizeof args[0], threads);
    return nb_now() - t0;
}

double nb_memcpy_parallel(void *dst, const void *src, size_t n, int copies, int threads) {
    return nb_copy_parallel(dst, src, n, copies, threads, 0);
}

double nb_stream_copy_parallel(void *dst, const void *src, size_t n, int copies, int threads) {
    return nb_copy_parallel(dst, src, n, copies, threads, 1);
}

uint64_t nb_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct nb_lat_arg { volatile uint8_t *base; size_t pages; uint32_t *out; uint8_t value; };

static void *nb_lat_part(void *p) {
    struct nb_lat_arg *a = p;
    for (size_t i = 0; i < a->pages; i++) {
        uint64_t t0 = nb_ns();
        a->base[i << 12] = a->value;
        uint64_t d = nb_ns() - t0;
        a->out[i] = d > 0xFFFFFFFFull ? 0xFFFFFFFFu : (uint32_t)d;
    }
    return NULL;
}

/// Times each page's first write, split over `threads` threads, into out[0 … pages).
static void nb_lat_run(volatile uint8_t *m, size_t pages, int threads, uint32_t *out, uint8_t value) {
    struct nb_lat_arg args[8];
    size_t per = pages / (size_t)threads;
    for (int i = 0; i < threads; i++) {
        size_t first = (size_t)i * per, n = i == threads - 1 ? pages - first : per;
        args[i] = (struct nb_lat_arg){ m + (first << 12), n, out + first, value };
    }
    nb_run_parallel(nb_lat_part, args, sizeof args[0], threads);
}

int nb_host_fault_latencies(size_t bytes, int threads, int cow, uint32_t *out) {
    if (threads < 1 || threads > 8) return -1;
    size_t pages = bytes >> 12;
    uint8_t *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -1;
    madvise(m, bytes, MADV_NOHUGEPAGE);
    if (!cow) {
        nb_lat_run(m, pages, threads, out, 1);
        munmap(m, bytes);
        return 0;
    }
    for (size_t off = 0; off < bytes; off += 4096) m[off] = 1;
    int release;
    pid_t pid = nb_fork_holder(&release);
    if (pid < 0) { munmap(m, bytes); return -1; }
    nb_lat_run(m, pages, threads, out, 2);
    nb_release_child(pid, release);
    munmap(m, bytes);
    return 0;
}

static ucontext_t nb_uc_main, nb_uc_other;
static long nb_uc_left;

static void nb_uc_body(void) {
    while (nb_uc_left > 0) { nb_uc_left--; swapcontext(&nb_uc_other, &nb_uc_main); }
}

double nb_swapcontext_ns(long switches) {
    static char stack[64 << 10];
    if (switches < 2) return -1;
    if (getcontext(&nb_uc_other) != 0) return -1;
    nb_uc_other.uc_stack.ss_sp = stack;
    nb_uc_other.uc_stack.ss_size = sizeof stack;
    nb_uc_other.uc_link = &nb_uc_main;
    makecontext(&nb_uc_other, nb_uc_body, 0);
    nb_uc_left = switches / 2;
    double t0 = nb_now();
    while (nb_uc_left > 0) swapcontext(&nb_uc_main, &nb_uc_other);
    double t = nb_now() - t0;
    swapcontext(&nb_uc_main, &nb_uc_other); // let the body return (uc_link)
    return t * 1e9 / (double)(switches / 2 * 2);
}

/* The SVM device's fault protocol without page tables: clients post a page number to a queue
   and sleep until the server has serviced their ticket; the server drains the queue in
   batches of up to 256, copies 4 KiB per distinct request (a migration's copy) and wakes
   every client. Same locks, condition variables and batching as the device's buffer. */
struct nb_fault_queue {
    pthread_mutex_t lock;
    pthread_cond_t posted, served;
    long q[4096];
    long head, tail, served_ticket, faults, stop;
    char *src, *dst;
};

struct nb_fault_client { struct nb_fault_queue *fq; long first, count, stride; };

static void *nb_fault_client_run(void *p) {
    struct nb_fault_client *c = p;
    struct nb_fault_queue *fq = c->fq;
    for (long i = 0; i < c->count; i++) {
        pthread_mutex_lock(&fq->lock);
        while (fq->tail - fq->head >= 4096) pthread_cond_wait(&fq->served, &fq->lock);
        long ticket = fq->tail;
        fq->q[fq->tail++ % 4096] = c->first + i * c->stride;
        pthread_cond_signal(&fq->posted);
        while (fq->served_ticket <= ticket) pthread_cond_wait(&fq->served, &fq->lock);
        pthread_mutex_unlock(&fq->lock);
    }
    return NULL;
}

static void *nb_fault_server_run(void *p) {
    struct nb_fault_queue *fq = p;
    long batch[256];
    for (;;) {
        pthread_mutex_lock(&fq->lock);
        while (fq->head == fq->tail && !fq->stop) pthread_cond_wait(&fq->posted, &fq->lock);
        if (fq->head == fq->tail && fq->stop) { pthread_mutex_unlock(&fq->lock); return NULL; }
        long n = 0, end = fq->tail;
        while (fq->head < end && n < 256) batch[n++] = fq->q[fq->head++ % 4096];
        long through = fq->head;
        pthread_mutex_unlock(&fq->lock);
        for (long i = 0; i < n; i++) {
            long page = batch[i];
            memcpy(fq->dst + (page << 12), fq->src + (page << 12), 4096);
        }
        pthread_mutex_lock(&fq->lock);
        fq->served_ticket = through;
        fq->faults += n;
        pthread_cond_broadcast(&fq->served);
        pthread_mutex_unlock(&fq->lock);
    }
}

double nb_fault_service_ns(long pages, int clients) {
    if (pages <= 0 || clients < 1 || clients > 16) return -1;
    struct nb_fault_queue *fq = calloc(1, sizeof *fq);
    if (!fq) return -1;
    fq->src = malloc((size_t)pages << 12); fq->dst = malloc((size_t)pages << 12);
    if (!fq->src || !fq->dst) { free(fq->src); free(fq->dst); free(fq); return -1; }
    memset(fq->src, 1, (size_t)pages << 12); memset(fq->dst, 2, (size_t)pages << 12);
    pthread_mutex_init(&fq->lock, NULL); pthread_cond_init(&fq->posted, NULL); pthread_cond_init(&fq->served, NULL);
    pthread_t server, tids[16];
    struct nb_fault_client cs[16];
    double t0 = nb_now();
    pthread_create(&server, NULL, nb_fault_server_run, fq);
    for (int i = 0; i < clients; i++) {
        cs[i] = (struct nb_fault_client){ fq, i, (pages - i + clients - 1) / clients, clients };
        pthread_create(&tids[i], NULL, nb_fault_client_run, &cs[i]);
    }
    for (int i = 0; i < clients; i++) pthread_join(tids[i], NULL);
    double t = nb_now() - t0;
    pthread_mutex_lock(&fq->lock); fq->stop = 1; pthread_cond_signal(&fq->posted); pthread_mutex_unlock(&fq->lock);
    pthread_join(server, NULL);
    double ns = t / (double)fq->faults * 1e9;
    pthread_mutex_destroy(&fq->lock); pthread_cond_destroy(&fq->posted); pthread_cond_destroy(&fq->served);
    free(fq->src); free(fq->dst); free(fq);
    return ns;
}
