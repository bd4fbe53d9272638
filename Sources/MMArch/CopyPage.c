#include "MMArch.h"
#include <string.h>

#if defined(__x86_64__)
#include <emmintrin.h>

/// One page: 8 loads then 8 streaming stores per round.
static inline void copy_page_nocache(void *dst, const void *src) {
    if (((uintptr_t)dst | (uintptr_t)src) & 15) { memcpy(dst, src, 4096); return; }
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
static inline void store_fence(void) { _mm_sfence(); }

static inline void clear_page_nocache(void *dst) {
    if ((uintptr_t)dst & 15) { memset(dst, 0, 4096); return; }
    __m128i *d = (__m128i *)dst;
    const __m128i z = _mm_setzero_si128();
    for (int i = 0; i < 256; i += 8) {
        _mm_stream_si128(d + i + 0, z); _mm_stream_si128(d + i + 1, z);
        _mm_stream_si128(d + i + 2, z); _mm_stream_si128(d + i + 3, z);
        _mm_stream_si128(d + i + 4, z); _mm_stream_si128(d + i + 5, z);
        _mm_stream_si128(d + i + 6, z); _mm_stream_si128(d + i + 7, z);
    }
}

/// The page's lines but `hot`'s, streamed; then `hot`'s line with ordinary stores.
void mm_clear_user_page(void *dst, unsigned long hot) {
    char *line = (char *)dst + (hot & 4032);
    __builtin_prefetch(line, 1, 3);
    if ((uintptr_t)dst & 15) { memset(dst, 0, 4096); return; }
    __m128i *d = (__m128i *)dst;
    const __m128i z = _mm_setzero_si128();
    const int skip = (int)((hot & 4032) >> 4); // first 16-byte slot of the hot line
    for (int i = 0; i < 256; i += 4) {
        if (i == skip) continue;
        _mm_stream_si128(d + i + 0, z); _mm_stream_si128(d + i + 1, z);
        _mm_stream_si128(d + i + 2, z); _mm_stream_si128(d + i + 3, z);
    }
    _mm_sfence();
    _mm_store_si128(d + skip + 0, z); _mm_store_si128(d + skip + 1, z);
    _mm_store_si128(d + skip + 2, z); _mm_store_si128(d + skip + 3, z);
}

void mm_copy_user_page(void *dst, const void *src, unsigned long hot) {
    char *line = (char *)dst + (hot & 4032);
    __builtin_prefetch(line, 1, 3);
    if (((uintptr_t)dst | (uintptr_t)src) & 15) { memcpy(dst, src, 4096); return; }
    __m128i *d = (__m128i *)dst;
    const __m128i *s = (const __m128i *)src;
    const int skip = (int)((hot & 4032) >> 4);
    for (int i = 0; i < 256; i += 4) {
        if (i == skip) continue;
        __m128i v0 = _mm_load_si128(s + i + 0), v1 = _mm_load_si128(s + i + 1);
        __m128i v2 = _mm_load_si128(s + i + 2), v3 = _mm_load_si128(s + i + 3);
        _mm_stream_si128(d + i + 0, v0); _mm_stream_si128(d + i + 1, v1);
        _mm_stream_si128(d + i + 2, v2); _mm_stream_si128(d + i + 3, v3);
    }
    _mm_sfence();
    for (int k = 0; k < 4; k++) _mm_store_si128(d + skip + k, _mm_load_si128(s + skip + k));
}

#else

void mm_clear_user_page(void *dst, unsigned long hot) { (void)hot; memset(dst, 0, 4096); }
void mm_copy_user_page(void *dst, const void *src, unsigned long hot) { (void)hot; memcpy(dst, src, 4096); }

static inline void clear_page_nocache(void *dst) { memset(dst, 0, 4096); }

static inline void copy_page_nocache(void *dst, const void *src) { memcpy(dst, src, 4096); }
static inline void store_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

#endif

#define FRAME(base, pfn) ((char *)(base) + ((uintptr_t)(pfn) << 12))

void mm_copy_frames_nocache(void *frame_base, const uint64_t *dst_pfns, const uint64_t *src_pfns, long count) {
    for (long i = 0; i < count; i++) copy_page_nocache(FRAME(frame_base, dst_pfns[i]), FRAME(frame_base, src_pfns[i]));
    store_fence();
}

void mm_gather_frames_nocache(void *dst, const void *frame_base, const uint64_t *src_pfns, long count) {
    for (long i = 0; i < count; i++) copy_page_nocache((char *)dst + (i << 12), FRAME(frame_base, src_pfns[i]));
    store_fence();
}

void mm_scatter_frames_nocache(void *frame_base, const uint64_t *dst_pfns, const void *src, long count) {
    for (long i = 0; i < count; i++) copy_page_nocache(FRAME(frame_base, dst_pfns[i]), (const char *)src + (i << 12));
    store_fence();
}

void mm_clear_pages_nocache(void *dst, long pages) {
    for (long i = 0; i < pages; i++) clear_page_nocache((char *)dst + (i << 12));
    store_fence();
}

void mm_copy_page_nocache(void *dst, const void *src) {
    copy_page_nocache(dst, src);
    store_fence();
}
