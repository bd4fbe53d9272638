#include "MMArch.h"
#include <string.h>

/// Entries [k, k + 8) when all are plain: `e` holds them, read once. Branch-free, so the
/// compiler can use vector instructions.
static inline void mm_hmm_plain_block(const uint64_t *e, uint64_t *out, unsigned from, unsigned to, uint64_t pfn_mask,
                                      uint64_t valid, uint64_t inout) {
    for (int i = 0; i < 8; i++)
        out[i] = (out[i] & inout) | ((e[i] & pfn_mask) >> 12) | valid | (((e[i] >> from) & 1) << to);
}

long mm_hmm_plain_ptes(const uint64_t *ptes, uint64_t *out, long k0, long n, uint64_t mask, uint64_t defaults,
                       uint64_t present_user_special, uint64_t present_user, uint64_t pte_write,
                       uint64_t pfn_mask, uint64_t valid, uint64_t write, uint64_t inout,
                       uint64_t write_request) {
    const volatile uint64_t *t = (const volatile uint64_t *)ptes;
    long k = k0;
    if ((defaults & write_request) != write_request && (mask & write_request) == 0) {
        // No entry can ask for a write (a snapshot or a read fault). Eight entries at a time:
        // each read once into `e`, one test for the eight, then eight branch-free writes; a
        // block with any other entry goes one by one, to stop at that entry.
        unsigned from = (unsigned)__builtin_ctzll(pte_write), to = (unsigned)__builtin_ctzll(write);
        for (; k + 8 <= n; k += 8) {
            uint64_t e[8];
            memcpy(e, ptes + k, sizeof e);
            __asm__ volatile("" ::: "memory"); // read once: e[] may not be re-read from the table
            uint64_t odd = 0;
            for (int i = 0; i < 8; i++) odd |= (e[i] & present_user_special) ^ present_user;
            if (odd) break;
            mm_hmm_plain_block(e, out + k, from, to, pfn_mask, valid, inout);
        }
        for (; k < n; k++) {
            uint64_t e = t[k];
            if ((e & present_user_special) != present_user) return k;
            out[k] = (out[k] & inout) | ((e & pfn_mask) >> 12) | valid | ((e & pte_write) ? write : 0);
        }
        return n;
    }
    for (; k < n; k++) {
        uint64_t e = t[k];
        if ((e & present_user_special) != present_user) return k;
        uint64_t o = out[k];
        int writable = (e & pte_write) != 0;
        if (!writable && (((o & mask) | defaults) & write_request) == write_request) return k;
        out[k] = (o & inout) | ((e & pfn_mask) >> 12) | valid | (writable ? write : 0);
    }
    return n;
}
