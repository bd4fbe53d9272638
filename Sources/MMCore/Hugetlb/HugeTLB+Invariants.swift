import MMSync

extension HugeTLB {
    /// Every pool: its free list holds `freeHugePages` distinct free hugetlb folios of its
    /// order (head flagged, reference and map counts 0, tails pointing at the head); reserved
    /// pages are free pages (`resv <= free`), surplus ones are in use; and the reservations
    /// equal what the live mappings still hold (`reservationsHeld`, one per pool, counted from
    /// their VMAs by the machine's check).
    /// Locking: takes the hugetlb lock; no other lock held.
    public func checkInvariants(reservationsHeld: [Int]) -> [String] {
        Lockdep.assertNoSpinLockHeld()
        lock.lock(); defer { lock.unlock() }
        var problems: [String] = []
        // No pool ever had a page: no hugetlb folio exists, nothing to scan memory for.
        let pendingRestores = hstates.contains { $0.nrHugePages > 0 || $0.surplusHugePages > 0 } ? pendingRestoresByOrder() : [:]
        for (i, h) in hstates.enumerated() {
            let name = h.name
            if h.freeList.count != h.freeHugePages { problems.append("\(name): free list holds \(h.freeList.count) pages, counter says \(h.freeHugePages)") }
            if Set(h.freeList).count != h.freeList.count { problems.append("\(name): a page is twice on the free list") }
            if h.resvHugePages > h.freeHugePages { problems.append("\(name): \(h.resvHugePages) reserved but \(h.freeHugePages) free") }
            if h.resvHugePages + pendingRestores[h.order, default: 0] < 0 || h.surplusHugePages < 0 {
                problems.append("\(name): negative counter (\(h.resvHugePages) reserved, \(h.surplusHugePages) surplus)")
            }
            if h.surplusHugePages > h.nrHugePages {
                problems.append("\(name): \(h.surplusHugePages) surplus of \(h.nrHugePages) pages")
            }
            // A page whose reservation went back to its mapping returns it to the pool when
            // it is freed (it may live on, pinned): until then the mapping holds one more.
            let pending = pendingRestores[h.order, default: 0]
            if i < reservationsHeld.count, reservationsHeld[i] != h.resvHugePages + pending {
                problems.append("\(name): \(h.resvHugePages) reserved (\(pending) more to come back), but mappings hold \(reservationsHeld[i]) reservations")
            }
            for pfn in h.freeList {
                let p = memory.page(pfn)
                if !p.test(.hugetlb) || !p.test(.head) || p.order != h.order || p.refcount != 0 || p.mapcount != 0 || p.pincount != 0 || p.ownerBits != 0 {
                    problems.append("\(name): free \(p) is not a free hugetlb folio (flags \(p.flags.rawValue), order \(p.order), refcount \(p.refcount), mapcount \(p.mapcount))")
                }
                let last = memory.page(pfn + h.pagesPerHugePage - 1)
                if !last.test(.tail) || last.privateWord != pfn { problems.append("\(name): free \(p) has a tail not pointing at it") }
            }
        }
        return problems
    }

    /// Hugetlb folios in use that will give a reservation back when freed, by order (one pass
    /// over memory).
    private func pendingRestoresByOrder() -> [Int: Int] {
        var n: [Int: Int] = [:]
        var pfn: UInt64 = 1
        while pfn < memory.systemFrames {
            let p = memory.page(pfn)
            if p.test(.head) {
                if p.test(.hugetlb) && p.refcount > 0 && p.test(.hugetlbRestoreReserve) { n[p.order, default: 0] += 1 }
                pfn += p.folioPages
            } else {
                pfn += 1
            }
        }
        return n
    }
}
