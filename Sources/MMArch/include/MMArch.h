#ifndef MMARCH_H
#define MMARCH_H

#include <stdint.h>
#include "MMContext.h"

/// Architecture helpers of the core mm (the kernel's arch/x86/lib copy_page and friends).
///
/// The bulk copies use non-temporal stores: the destination does not pass through the caches,
/// as with a device's DMA engine, and no destination line is read first. Each call ends with a
/// store fence, so its copies are complete (globally visible) when it returns. Stores are 32 bytes
/// wide where the CPU has AVX2 (chosen once per process, before main), 16 otherwise. With 32-byte
/// stores a bulk copy prefetches the next source page while it copies the current one. The
/// 32-byte path needs a 32-byte-aligned destination (the source may be anywhere); the 16-byte
/// path a 16-byte-aligned destination and source; the user-page clear and copy need both
/// 32-byte aligned. Anything else falls back to memcpy/memset (frames are page-aligned).

/// Copies 4 KiB pages: frame dst_pfns[i] <- frame src_pfns[i], frames at frame_base + pfn * 4096.
void mm_copy_frames_nocache(void *frame_base, const uint64_t *dst_pfns, const uint64_t *src_pfns, long count);

/// Gathers frames src_pfns[i] into the contiguous buffer dst (page i at dst + i * 4096).
void mm_gather_frames_nocache(void *dst, const void *frame_base, const uint64_t *src_pfns, long count);

/// Scatters the contiguous buffer src (page i at src + i * 4096) into frames dst_pfns[i].
void mm_scatter_frames_nocache(void *frame_base, const uint64_t *dst_pfns, const void *src, long count);

/// Turns 32-byte stores off (0) or back on (where the CPU has them), for tests of the 16-byte
/// path and for comparisons. Returns whether the CPU has AVX2.
int mm_set_wide_stores(int on);

/// Zeroes `pages` contiguous 4 KiB pages at `dst` (a new anonymous page, `clear_page`).
/// Non-temporal: the zeroes go to memory without reading the old lines first, which halves the
/// memory traffic of zeroing a cold page; ends with a store fence.
void mm_clear_pages_nocache(void *dst, long pages);

/// Copies one 4 KiB page (`copy_page` of a copy-on-write fault) with non-temporal stores; ends
/// with a store fence.
void mm_copy_page_nocache(void *dst, const void *src);

/// Zeroes the 4 KiB page at `dst` for a user fault at byte `hot` of it (`folio_zero_user`'s
/// locality rule for one page): the cache line the user touches next is asked for at once
/// (prefetch for writing) and cleared last with ordinary stores, so it is in the cache when
/// the faulting access retries; every other line is cleared with non-temporal stores, fenced.
void mm_clear_user_page(void *dst, unsigned long hot);

/// Copies the 4 KiB page `src` to `dst` for a user fault at byte `hot` (`copy_user_highpage`
/// with the same rule): the touched line is copied last with ordinary stores, the others
/// streamed and fenced.
void mm_copy_user_page(void *dst, const void *src, unsigned long hot);

/// Prefetches a cache line for writing (`prefetchw`): a walk over many pages' metadata asks
/// for the lines a few entries ahead, so their atomics do not each wait on memory.
static inline void mm_prefetchw(const void *p) { __builtin_prefetch(p, 1, 3); }

/// The plain entries of one PTE table for `hmm_vma_handle_pte` (the loop `hmm_vma_walk_pmd`
/// runs over a table): from index k0 while entry k maps a present user page that is not
/// special (`(pte & present_user_special) == present_user`) and no write is asked of a
/// read-only one (`((out[k] & mask) | defaults) & write_request == write_request` needs
/// `pte & pte_write`), out[k] keeps its `inout` bits and gets the pfn (`(pte & pfn_mask) >> 12`)
/// | `valid` (| `write` if writable). Returns the first index it did not answer, or n. Each
/// entry is read once (READ_ONCE: a CPU's walk may set its accessed or dirty bit meanwhile,
/// which this does not look at). When no entry can ask for a write (a snapshot or a read
/// fault) the entries go eight at a time: read once into a local block (vector loads, each
/// 8-byte entry whole), one test for the eight, eight branch-free outputs (vector code); a
/// block holding any other entry goes one by one up to it. `pte_write` and `write` are single
/// bits. The bit values are the caller's (PTE and HMM flags), passed in so that each keeps one
/// definition, on the Swift side. In C so that the loop's speed does not move with the layout
/// of the Swift code around it.
long mm_hmm_plain_ptes(const uint64_t *ptes, uint64_t *out, long k0, long n, uint64_t mask, uint64_t defaults,
                       uint64_t present_user_special, uint64_t present_user, uint64_t pte_write,
                       uint64_t pfn_mask, uint64_t valid, uint64_t write, uint64_t inout,
                       uint64_t write_request);

/// The host CPU the calling thread runs on (`raw_smp_processor_id`); glibc answers from the
/// thread's rseq area, without a system call. 0 where unknown.
#if defined(__linux__)
extern int sched_getcpu(void);
static inline int mm_current_cpu(void) { int c = sched_getcpu(); return c < 0 ? 0 : c; }
#else
static inline int mm_current_cpu(void) { return 0; }
#endif

#endif
