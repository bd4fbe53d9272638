import MMSync

/// Who reclaims: the background thread or an allocating one (`current_is_kswapd`).
public enum Reclaimer: Sendable { case kswapd, direct }

extension Machine {
    /// `SWAP_CLUSTER_MAX`: pages isolated per step.
    static let swapClusterMax = 32

    /// `shrink_node` with the classic LRU (Linux 7.2 without MGLRU): first every add batch is
    /// drained; then, from priority 12 down to 0, `inactive >> priority` pages of the inactive
    /// list are scanned 32 at a time (`shrink_inactive_list`), the active list aged into the
    /// inactive one whenever the inactive list is low (`shrink_active_list`), until
    /// `nrToReclaim` pages are freed. Nothing is scanned without a free swap slot
    /// (`can_reclaim_anon_pages`).
    /// Return: pages freed.
    /// Locking: caller holds no page-table or page lock (an mmap lock may be held for read).
    @discardableResult
    public func shrinkNode(nrToReclaim: Int, reclaimer: Reclaimer) -> Int {
        Lockdep.assertNoSpinLockHeld()
        let lru = memory.lru
        lru.drainAll()
        var reclaimed = 0
        for priority in stride(from: 12, through: 0, by: -1) {
            guard memory.swap.freeSlots > 0 else { return reclaimed }
            var toScan = max(lru.count(.inactiveAnon) >> priority, priority == 0 ? lru.count(.inactiveAnon) : 0)
            if toScan == 0 && inactiveIsLow() { shrinkActiveList(Machine.swapClusterMax, reclaimer: reclaimer) }
            while toScan > 0 {
                if inactiveIsLow() { shrinkActiveList(Machine.swapClusterMax, reclaimer: reclaimer) }
                let n = min(Machine.swapClusterMax, toScan)
                let (scanned, freed) = shrinkInactiveList(n, reclaimer: reclaimer)
                reclaimed += freed
                toScan -= n
                if reclaimed >= nrToReclaim || scanned == 0 { break }
            }
            if reclaimed >= nrToReclaim { break }
            // Nothing inactive left to look at: age the active list and look again.
            if lru.count(.inactiveAnon) == 0 && lru.count(.activeAnon) > 0 {
                shrinkActiveList(max(Machine.swapClusterMax, lru.count(.activeAnon) >> priority), reclaimer: reclaimer)
            }
        }
        return reclaimed
    }

    /// `inactive_is_low`: the inactive list is smaller than the active one divided by
    /// `inactive_ratio` (1 below 1 GiB, else √(10 × GiB)).
    func inactiveIsLow() -> Bool {
        let inactive = memory.lru.count(.inactiveAnon), active = memory.lru.count(.activeAnon)
        let gb = (inactive + active) >> (30 - Int(pageShift))
        var ratio = 1
        if gb > 0 { ratio = Int(Double(10 * gb).squareRoot()) }
        return inactive * ratio < active
    }

    /// `shrink_inactive_list`: isolates up to `n` pages from the inactive tail (`pgscan_*`),
    /// reclaims each with its references checked (`pgsteal_*` for those freed), and puts the
    /// rest back: referenced-again pages on the active list, the others on the inactive one.
    /// Return: pages scanned and freed.
    /// Locking: caller holds no page-table or page lock.
    func shrinkInactiveList(_ n: Int, reclaimer: Reclaimer) -> (scanned: Int, freed: Int) {
        Lockdep.assertNoSpinLockHeld()
        let pages = memory.lru.isolate(.inactiveAnon, max: n)
        guard !pages.isEmpty else { return (0, 0) }
        // Scanned pages, a THP counting all of its own (nr_scanned).
        let scanned = pages.reduce(0) { $0 + Int($1.folioPages) }
        stats.count(reclaimer == .kswapd ? .pgscanKswapd : .pgscanDirect, scanned)
        stats.count(.pgscanAnon, scanned)
        var keep: [Page] = [], activate: [Page] = []
        var freed = 0
        // The pages of a THP split on the way join the list (split_folio_to_list).
        var work = pages, next = 0
        while next < work.count {
            let p = work[next]
            next += 1
            // A THP freed whole (a lazily freed one discarded unsplit) counts all of its pages
            // (nr_reclaimed += nr_pages); a split one's pages count as each is freed.
            let pagesBefore = Int(p.folioPages), queued = work.count
            switch shrinkFolio(p, checkReferences: true, splitTo: { work.append($0) }) {
            case .freed: freed += work.count == queued ? pagesBefore : 1
            case .keep: keep.append(p)
            case .activate: activate.append(p)
            }
        }
        memory.lru.putBack(keep, active: false)
        memory.lru.putBack(activate, active: true)
        memory.lru.isolationDone(pages.count)
        if freed > 0 { memory.lru.reclaimedTotal.add(freed) }
        stats.count(reclaimer == .kswapd ? .pgstealKswapd : .pgstealDirect, freed)
        stats.count(.pgstealAnon, freed)
        return (scanned, freed)
    }

    /// `shrink_active_list`: isolates up to `n` pages from the active tail (`pgrefill`),
    /// clears their entries' accessed bits (`folio_referenced`) and moves them to the inactive
    /// list (`pgdeactivate`) with PG_workingset: anonymous pages are never kept active for
    /// being used.
    /// Locking: caller holds no page-table or page lock.
    func shrinkActiveList(_ n: Int, reclaimer: Reclaimer) {
        Lockdep.assertNoSpinLockHeld()
        let pages = memory.lru.isolate(.activeAnon, max: n)
        guard !pages.isEmpty else { return }
        stats.count(.pgrefill, pages.count)
        for p in pages {
            if p.tryLock() {
                _ = folioReferenced(p)
                p.unlock()
            }
            p.set(.workingset)   // de-activated: it was in the working set
        }
        memory.lru.putBack(pages, active: false)
        memory.lru.isolationDone(pages.count)
        stats.count(.pgdeactivate, pages.count)
    }

    /// `try_to_free_pages` for an allocation that found no free frame: reclaims a batch
    /// (`allocstall`), as `__alloc_pages_direct_reclaim`.
    /// Return: pages freed.
    /// Locking: caller holds no page-table or page lock.
    func directReclaim() -> Int {
        Lockdep.assertNoSpinLockHeld()
        stats.count(.allocstall)
        return shrinkNode(nrToReclaim: Machine.swapClusterMax, reclaimer: .direct)
    }
}
