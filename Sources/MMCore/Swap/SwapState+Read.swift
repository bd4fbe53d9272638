import MMSync

/// What `PhysicalMemory.readNewSwapPage` did.
enum SwapRead { case read(Page), noMemory, gone }

extension PhysicalMemory {
    /// `swap_cache_alloc_folio` then `swap_read_folio`: a new page (for the LRU) joins the swap
    /// cache for `swp` and is read from its slot (`pswpin`; a refault's working-set check),
    /// streamed but for the line at `hot`; `flags` are set before another thread can find it.
    /// Return: the page, locked, with the caller's reference; `.noMemory` when no frame could
    /// be had; `.gone` when another page caches the slot or it was freed meanwhile.
    /// Locking: no spin lock held.
    func readNewSwapPage(_ swp: SwapEntry, hot: UInt64 = 0, flags: PageFlags = [], stats: MMStats) -> SwapRead {
        Lockdep.assertNoSpinLockHeld()
        guard let page = allocate(order: 0, mayReclaim: true, lru: true) else { return .noMemory }
        page.lock()
        if !flags.isEmpty { page.set(flags) }
        // The swap space and the LRU are borrowed (the memory owns them): every faulting
        // thread and kswapd share them, and a retain would bounce their counts' lines.
        return withSwap { swap -> SwapRead in
            guard case .added(let shadow) = swap.addForSwapIn(page, swp) else {
                page.unlock()
                put(page)
                return .gone
            }
            _ = withLRU { $0.workingsetRefault(page, shadow: shadow, stats: stats) }
            swap.readIn(page, hot: hot)
            stats.count(.pswpin)
            return .read(page)
        }
    }

    /// `swap_cluster_readahead` before its last read: the slots of a `vm.page-cluster`-sized,
    /// aligned block of `swp`'s area around it (the header and slots past the end left out),
    /// as many as `swapin_nr_pages` allows, are read into the swap cache flagged PG_readahead
    /// (`swap_ra`) unless free or already cached, and left there; `swp` itself is not read.
    /// 7.2 reads this way for shmem's swap-ins from an area without `SWP_SYNCHRONOUS_IO`
    /// (`shmem_swapin_cluster`) and for every swap-in when a rotational device is on.
    /// Locking: no spin lock held.
    func swapClusterReadahead(around swp: SwapEntry, stats: MMStats) {
        Lockdep.assertNoSpinLockHeld()
        withSwap { swap in
            let mask = swap.swapinNrPages(swp.offset) - 1
            guard mask > 0, let slots = swap.withArea(swp, { $0.slots }) else { return }
            let start = max(swp.offset & ~mask, 1), end = min(swp.offset | mask, slots - 1)
            guard start <= end else { return }
            for offset in start...end where offset != swp.offset {
                readAheadSwapSlot(SwapEntry(type: swp.type, offset: offset), swap, stats: stats)
            }
        }
        withLRU { $0.drainLocal() }
    }

    /// One page of a swap readahead (`swap_cache_read_folio` with `readahead`): a slot in use
    /// that no page caches yet is read into the swap cache, flagged PG_readahead before another
    /// thread can find it (so the first fault to find it counts the hit), unlocked and left
    /// there (`swap_ra`). A free slot, a cached one, or no memory for the page: nothing is
    /// done, and the readahead goes on with the next (as 7.2's loops do).
    /// Locking: no spin lock held; `swap` is this memory's swap space, borrowed.
    func readAheadSwapSlot(_ e: SwapEntry, _ swap: SwapSpace, stats: MMStats) {
        Lockdep.assertNoSpinLockHeld()
        guard swap.withArea(e, { $0.isInUse(e.offset) }) == true else { return }
        if let cached = swap.lookup(e) { put(cached); return }
        guard case .read(let page) = readNewSwapPage(e, flags: .readahead, stats: stats) else { return }
        stats.count(.swapRa)
        page.unlock()
        put(page)   // the swap cache holds it now
    }
}

extension SwapSpace {
    /// `swapin_nr_pages`: the cluster readahead's window for a read of slot `offset`, from the
    /// hits since the last one (`swapin_readahead_hits`, swapped for 0), the offset of the last
    /// read that had none, and the last window — machine-wide, as 7.2 keeps them static.
    /// At most `1 << vm.page-cluster`.
    func swapinNrPages(_ offset: UInt64) -> UInt64 {
        let maxPages = UInt64(1) << UInt64(pageCluster)
        guard maxPages > 1 else { return 1 }
        let hits = clusterReadaheadHits.exchange(0)
        let pages = SwapReadahead.nrPages(prevOffset: clusterPrevOffset.load(), offset: offset, hits: hits,
                                          maxPages: maxPages, prevWin: clusterLastPages.load())
        if hits == 0 { clusterPrevOffset.store(offset) }
        clusterLastPages.store(pages)
        return pages
    }

    /// `swap_update_readahead` without a VMA (a shmem swap-in found `page` in the swap cache):
    /// if readahead had read it, the flag goes, `swap_ra_hit` counts, and so does the cluster
    /// readahead's hit counter.
    func updateClusterReadahead(_ page: Page, stats: MMStats) {
        guard page.flagsWord.fetchAnd(~PageFlags.readahead.rawValue) & PageFlags.readahead.rawValue != 0 else { return }
        stats.count(.swapRaHit)
        clusterReadaheadHits.add(1)
    }
}
