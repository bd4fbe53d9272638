#include "MMArch.h"

long mm_hmm_plain_ptes(const uint64_t *ptes, uint64_t *out, long k0, long n, uint64_t mask, uint64_t defaults,
                       uint64_t present_user_special, uint64_t present_user, uint64_t pte_write,
                       uint64_t pfn_mask, uint64_t valid, uint64_t write, uint64_t inout,
                       uint64_t write_request) {
    const volatile uint64_t *t = (const volatile uint64_t *)ptes;
    long k = k0;
    if ((defaults & write_request) != write_request && (mask & write_request) == 0) {
        // No entry can ask for a write (a snapshot or a read fault): one test per entry.
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
