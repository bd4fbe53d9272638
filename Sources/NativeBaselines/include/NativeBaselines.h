#ifndef NATIVE_BASELINES_H
#define NATIVE_BASELINES_H
#include <stdint.h>
#include <stddef.h>

/// Sums `count` 8-byte words from `base` with a plain loop.
uint64_t nb_sum_words(const uint64_t *base, size_t count);

/// A 4-level x86-64 walk over swift-hmm's page tables (frames at `frame_base`, top table in
/// frame `pgd_pfn`): the host address of `addr`'s byte, or NULL when not mapped.
void *nb_walk(uint8_t *frame_base, uint64_t pgd_pfn, uint64_t addr);

/// Walks every address of `addrs` and sums the first byte of each: the walk baseline.
uint64_t nb_walk_many(uint8_t *frame_base, uint64_t pgd_pfn, const uint64_t *addrs, size_t n);

/// The limit of a range snapshot (`hmm_range_fault` without faults): walks [start, end) of
/// swift-hmm's page tables once, pgd → pud → pmd → one pass over each PTE table, and writes
/// one entry per page into `out` in `hmm_pfns` format (pfn | HMM_PFN_VALID | HMM_PFN_WRITE,
/// the PMD order for a huge leaf; 0 where nothing user-accessible is mapped). A PTE-mapped
/// page's entry keeps its in/out flags, as hmm_range_fault must (so, like it, it reads the
/// PTE and the entry and writes the entry). Returns the number of entries written.
size_t nb_range_walk(uint8_t *frame_base, uint64_t pgd_pfn, uint64_t start, uint64_t end, uint64_t *out);

/// Loads 8-byte words at `addrs` through a 256-entry direct-mapped software TLB of the same
/// design as swift-hmm's (tag = vpn << 2 | valid | writable, a host frame pointer), walking the
/// same page tables on a miss. Returns the sum of the loaded words.
uint64_t nb_tlb_loads(uint8_t *frame_base, uint64_t pgd_pfn, const uint64_t *addrs, size_t n, int passes);

/// The same with stores of `value` to every address.
void nb_tlb_stores(uint8_t *frame_base, uint64_t pgd_pfn, const uint64_t *addrs, size_t n, int passes, uint64_t value);

/// Host kernel baselines. Each returns seconds for the measured part, or a negative value if
/// the host refused (mmap or fork failed).
double nb_host_anon_fault(size_t bytes);          /// mmap + write one byte per page
double nb_host_cow_fault(size_t bytes);           /// touch, fork, then the parent writes each page
double nb_host_mprotect(int iterations);
double nb_host_mmap(int count);                   /// `count` one-page mmaps (alternating protections), total seconds          /// mprotect of one page, alternating RO/RW
double nb_host_fork(size_t bytes);                /// fork of a process with `bytes` touched
double nb_host_thp_fault(size_t bytes);        /// MADV_HUGEPAGE'd, 2 MiB-aligned: one write per 2 MiB (THP faults)
double nb_host_thp_fork(size_t bytes);         /// fork of a process with `bytes` of THP touched
double nb_memcpy(void *dst, const void *src, size_t n, int reps);
/// `copies` copies of `n` bytes split over `threads` threads (1…8), each copying its slice:
/// the limit for a figure that copies the same bytes as many times with as many threads (a
/// driver thread plus a copy engine). Seconds, or a negative value for a bad thread count.
double nb_memcpy_parallel(void *dst, const void *src, size_t n, int copies, int threads);
/// `nb_memcpy_parallel` with the copies swift-hmm's frame copies make (streaming stores, 32 bytes
/// wide with AVX2 and 16 without, no read of the destination, fenced; memcpy off x86): the limit
/// for a figure whose time is those copies.
double nb_stream_copy_parallel(void *dst, const void *src, size_t n, int copies, int threads);
/// `n` lock/unlock pairs of an uncontended adaptive pthread mutex (what `Lock` wraps in release
/// builds), total seconds: the baseline for the cost of lockdep's hooks when it is off.
double nb_mutex_pairs(int n);
/// The memory work every anonymous write fault must do, without the fault: for each 4 KiB page
/// of `bytes` (resident, cold), zero it with streaming stores, fence, one locked add (the
/// publication), and the faulting store; split over `threads` threads (1…8). Seconds, or a
/// negative value if the host refused the memory. The physical limit of the fault figures.
double nb_zero_fill(size_t bytes, int threads);
/// Nanoseconds per switch of two contexts of one thread handing over to each other with
/// swapcontext (a user-level scheduler's hand-off), over `switches` switches; -1 on error.
double nb_swapcontext_ns(long switches);
/// The SVM device's fault protocol with nothing else (its limit): `clients` threads each post
/// a page number to a locked queue and sleep until a server thread has drained it (batches of
/// up to 256), copied 4 KiB per request and woken them; `pages` requests in all (one per page,
/// client i taking pages i, i + clients, …). Wall nanoseconds per request; -1 on error.
double nb_fault_service_ns(long pages, int clients);
/// The monotonic clock in nanoseconds (the latency figures time each fault with it).
uint64_t nb_ns(void);
/// The host kernel's fault latencies: each page's first write (`cow`: after a fork, the
/// parent's write to a page it shares with the child) timed with `nb_ns`, over `bytes`, split
/// over `threads` threads; out[i] is page i's nanoseconds. 0, or -1 if the host refused.
int nb_host_fault_latencies(size_t bytes, int threads, int cow, uint32_t *out);
double nb_now(void);
#endif
