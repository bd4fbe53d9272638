#include "MMArch.h"
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

// Two widths of streaming store, chosen once per process. On this project's machines (AMD
// EPYC) a page cleared with 32-byte streaming stores goes to memory at about twice the rate of
// 16-byte ones (46 vs 24 GB/s for 2 MiB: `hmm bench`'s THP fault and docs/bench.md); CPUs
// without AVX2 keep SSE2's 16-byte stores. Linux 7.2 clears with `rep stosb` (`clear_pages`
// over a whole contiguous extent; the kernel keeps out of vector registers there), which runs
// at the 16-byte rate here whether the extent is 4 KiB or 2 MiB.
static int mm_has_avx2, mm_use_avx2;
/// Chosen once, before main (no thread races the CPU-model probe).
__attribute__((constructor)) static void mm_choose_store_width(void) {
    __builtin_cpu_init();
    mm_has_avx2 = __builtin_cpu_supports("avx2") ? 1 : 0;
    mm_use_avx2 = mm_has_avx2;
}
static inline int use_avx2(void) { return __atomic_load_n(&mm_use_avx2, __ATOMIC_RELAXED); }

int mm_set_wide_stores(int on) {
    __atomic_store_n(&mm_use_avx2, on && mm_has_avx2, __ATOMIC_RELAXED);
    return mm_has_avx2;
}

/// One page: 8 loads then 8 streaming stores per round.
static inline void copy_page_nocache_sse2(void *dst, const void *src) {
    __m128i *d = (__m128i *)dst;
    const __m128i *s = (const __m128i *)src;
    for (int i = 0; i < 256; i += 8) {
        __m128i v0 = _mm_load_si128(s + i + 0), v1 = _mm_load_si128(s + i + 1);
        __m128i v2 = _mm_load_si128(s + i + 2), v3 = _mm_load_si128(s + i + 3);
        __m128i v4 = _mm_load_si128(s + i + 4), v5 = _mm_load_si128(s + i + 5);
        __m128i v6 = _mm_load_si128(s + i + 6), v7 = _mm_load_si128(s + i + 7);
        _mm_stream_si128(d + i + 0, v0); _mm_stream_si128(d + i + 1, v1);
        _mm_stream_si128(d + i + 2, v2); _mm_stream_si128(d + i + 3, v3);
        _mm_stream_si128(d + i + 4, v4); _mm_stream_si128(d + i + 5, v5);
        _mm_stream_si128(d + i + 6, v6); _mm_stream_si128(d + i + 7, v7);
    }
}

/// One page: 8 loads then 8 streaming stores of 32 bytes per round (four cache lines). With
/// `next`, the page a bulk copy reads next is prefetched four lines a round, so its first
/// loads do not wait on memory: the hardware's stream prefetchers stop at a 4 KiB boundary,
/// and the next source frame is seldom the next physical page (25-35 % faster on frames in
/// random order here, the same on sequential ones).
__attribute__((target("avx2"))) static void copy_page_nocache_avx2(void *dst, const void *src, const char *next) {
    __m256i *d = (__m256i *)dst;
    const __m256i *s = (const __m256i *)src;
    for (int i = 0; i < 128; i += 8) {
        if (next) {
            _mm_prefetch(next + i * 32, _MM_HINT_T0); _mm_prefetch(next + i * 32 + 64, _MM_HINT_T0);
            _mm_prefetch(next + i * 32 + 128, _MM_HINT_T0); _mm_prefetch(next + i * 32 + 192, _MM_HINT_T0);
        }
        __m256i v0 = _mm256_loadu_si256(s + i + 0), v1 = _mm256_loadu_si256(s + i + 1);
        __m256i v2 = _mm256_loadu_si256(s + i + 2), v3 = _mm256_loadu_si256(s + i + 3);
        __m256i v4 = _mm256_loadu_si256(s + i + 4), v5 = _mm256_loadu_si256(s + i + 5);
        __m256i v6 = _mm256_loadu_si256(s + i + 6), v7 = _mm256_loadu_si256(s + i + 7);
        _mm256_stream_si256(d + i + 0, v0); _mm256_stream_si256(d + i + 1, v1);
        _mm256_stream_si256(d + i + 2, v2); _mm256_stream_si256(d + i + 3, v3);
        _mm256_stream_si256(d + i + 4, v4); _mm256_stream_si256(d + i + 5, v5);
        _mm256_stream_si256(d + i + 6, v6); _mm256_stream_si256(d + i + 7, v7);
    }
}

/// Streaming stores need an aligned destination (32 bytes for AVX2, 16 for SSE2); the source
/// may be anywhere for AVX2 (pages and page-aligned buffers are aligned anyway).
static inline void copy_page_nocache(void *dst, const void *src, const void *next) {
    if (!((uintptr_t)dst & 31) && use_avx2()) { copy_page_nocache_avx2(dst, src, (const char *)next); return; }
    if (((uintptr_t)dst | (uintptr_t)src) & 15) { memcpy(dst, src, 4096); return; }
    copy_page_nocache_sse2(dst, src);
}
static inline void store_fence(void) { _mm_sfence(); }

static inline void clear_page_nocache_sse2(void *dst) {
    __m128i *d = (__m128i *)dst;
    const __m128i z = _mm_setzero_si128();
    for (int i = 0; i < 256; i += 8) {
        _mm_stream_si128(d + i + 0, z); _mm_stream_si128(d + i + 1, z);
        _mm_stream_si128(d + i + 2, z); _mm_stream_si128(d + i + 3, z);
        _mm_stream_si128(d + i + 4, z); _mm_stream_si128(d + i + 5, z);
        _mm_stream_si128(d + i + 6, z); _mm_stream_si128(d + i + 7, z);
    }
}

/// `pages` contiguous pages: one loop, so a run of frames streams without a call per page.
__attribute__((target("avx2"))) static void clear_pages_nocache_avx2(void *dst, long pages) {
    __m256i *d = (__m256i *)dst;
    const __m256i z = _mm256_setzero_si256();
    for (long i = 0, n = pages * 128; i < n; i += 8) {
        _mm256_stream_si256(d + i + 0, z); _mm256_stream_si256(d + i + 1, z);
        _mm256_stream_si256(d + i + 2, z); _mm256_stream_si256(d + i + 3, z);
        _mm256_stream_si256(d + i + 4, z); _mm256_stream_si256(d + i + 5, z);
        _mm256_stream_si256(d + i + 6, z); _mm256_stream_si256(d + i + 7, z);
    }
}

/// The page's 64-byte lines but line `skip`, streamed (16-byte slots `4 * skip` … `+3` left).
__attribute__((target("avx2"))) static void clear_page_but_line_avx2(void *dst, int skip) {
    __m256i *d = (__m256i *)dst;
    const __m256i z = _mm256_setzero_si256();
    for (int i = 0; i < 128; i += 2) {
        if (i == 2 * skip) continue;
        _mm256_stream_si256(d + i + 0, z); _mm256_stream_si256(d + i + 1, z);
    }
}

/// The page's lines but line `skip`, copied with streaming stores.
__attribute__((target("avx2"))) static void copy_page_but_line_avx2(void *dst, const void *src, int skip) {
    __m256i *d = (__m256i *)dst;
    const __m256i *s = (const __m256i *)src;
    for (int i = 0; i < 128; i += 2) {
        if (i == 2 * skip) continue;
        __m256i v0 = _mm256_loadu_si256(s + i + 0), v1 = _mm256_loadu_si256(s + i + 1);
        _mm256_stream_si256(d + i + 0, v0); _mm256_stream_si256(d + i + 1, v1);
    }
}

/// The page's lines but `hot`'s, streamed; then `hot`'s line with ordinary stores.
void mm_clear_user_page(void *dst, unsigned long hot) {
    char *line = (char *)dst + (hot & 4032);
    __builtin_prefetch(line, 1, 3);
    if ((uintptr_t)dst & 31) { memset(dst, 0, 4096); return; }
    __m128i *d = (__m128i *)dst;
    const __m128i z = _mm_setzero_si128();
    const int skip = (int)((hot & 4032) >> 4); // first 16-byte slot of the hot line
    if (use_avx2()) {
        clear_page_but_line_avx2(dst, skip >> 2);
    } else {
        for (int i = 0; i < 256; i += 4) {
            if (i == skip) continue;
            _mm_stream_si128(d + i + 0, z); _mm_stream_si128(d + i + 1, z);
            _mm_stream_si128(d + i + 2, z); _mm_stream_si128(d + i + 3, z);
        }
    }
    _mm_sfence();
    _mm_store_si128(d + skip + 0, z); _mm_store_si128(d + skip + 1, z);
    _mm_store_si128(d + skip + 2, z); _mm_store_si128(d + skip + 3, z);
}

void mm_copy_user_page(void *dst, const void *src, unsigned long hot) {
    char *line = (char *)dst + (hot & 4032);
    __builtin_prefetch(line, 1, 3);
    if (((uintptr_t)dst | (uintptr_t)src) & 31) { memcpy(dst, src, 4096); return; }
    __m128i *d = (__m128i *)dst;
    const __m128i *s = (const __m128i *)src;
    const int skip = (int)((hot & 4032) >> 4);
    if (use_avx2()) {
        copy_page_but_line_avx2(dst, src, skip >> 2);
    } else {
        for (int i = 0; i < 256; i += 4) {
            if (i == skip) continue;
            __m128i v0 = _mm_load_si128(s + i + 0), v1 = _mm_load_si128(s + i + 1);
            __m128i v2 = _mm_load_si128(s + i + 2), v3 = _mm_load_si128(s + i + 3);
            _mm_stream_si128(d + i + 0, v0); _mm_stream_si128(d + i + 1, v1);
            _mm_stream_si128(d + i + 2, v2); _mm_stream_si128(d + i + 3, v3);
        }
    }
    _mm_sfence();
    for (int k = 0; k < 4; k++) _mm_store_si128(d + skip + k, _mm_load_si128(s + skip + k));
}

static inline void clear_pages_nocache(void *dst, long pages) {
    if ((uintptr_t)dst & 31) { memset(dst, 0, (size_t)pages << 12); return; }
    if (use_avx2()) { clear_pages_nocache_avx2(dst, pages); return; }
    for (long i = 0; i < pages; i++) clear_page_nocache_sse2((char *)dst + (i << 12));
}

#else

int mm_set_wide_stores(int on) { (void)on; return 0; }
void mm_clear_user_page(void *dst, unsigned long hot) { (void)hot; memset(dst, 0, 4096); }
void mm_copy_user_page(void *dst, const void *src, unsigned long hot) { (void)hot; memcpy(dst, src, 4096); }

static inline void clear_pages_nocache(void *dst, long pages) { memset(dst, 0, (size_t)pages << 12); }

static inline void copy_page_nocache(void *dst, const void *src, const void *next) { (void)next; memcpy(dst, src, 4096); }
static inline void store_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#endif

#define FRAME(base, pfn) ((char *)(base) + ((uintptr_t)(pfn) << 12))

void mm_copy_frames_nocache(void *frame_base, const uint64_t *dst_pfns, const uint64_t *src_pfns, long count) {
    for (long i = 0; i < count; i++)
        copy_page_nocache(FRAME(frame_base, dst_pfns[i]), FRAME(frame_base, src_pfns[i]),
                          i + 1 < count ? FRAME(frame_base, src_pfns[i + 1]) : NULL);
    store_fence();
}

void mm_gather_frames_nocache(void *dst, const void *frame_base, const uint64_t *src_pfns, long count) {
    for (long i = 0; i < count; i++)
        copy_page_nocache((char *)dst + (i << 12), FRAME(frame_base, src_pfns[i]),
                          i + 1 < count ? FRAME(frame_base, src_pfns[i + 1]) : NULL);
    store_fence();
}

void mm_scatter_frames_nocache(void *frame_base, const uint64_t *dst_pfns, const void *src, long count) {
    // The source is one contiguous buffer: the prefetch still helps at each 4 KiB boundary.
    for (long i = 0; i < count; i++)
        copy_page_nocache(FRAME(frame_base, dst_pfns[i]), (const char *)src + (i << 12),
                          i + 1 < count ? (const char *)src + ((i + 1) << 12) : NULL);
    store_fence();
}

void mm_clear_pages_nocache(void *dst, long pages) {
    clear_pages_nocache(dst, pages);
    store_fence();
}

void mm_copy_page_nocache(void *dst, const void *src) {
    copy_page_nocache(dst, src, NULL);
    store_fence();
}
