import MMSync

/// Swap readahead (Linux 7.2's `mm/swap_state.c`), for areas without `SWP_SYNCHRONOUS_IO` (a
/// swap file): a swap fault that must read its page also reads the swap entries around it in
/// the same VMA and page table (`swap_vma_readahead`), into the swap cache, flagged
/// PG_readahead. The window grows with the hits those pages get (`__swapin_nr_pages`) and is
/// kept per VMA in `swap_readahead_info`: the last fault's address, its window and the hits
/// since (`SWAP_RA_VAL`).
enum SwapReadahead {
    /// `SWAP_RA_ORDER_CEILING`: VMA readahead reads at most 32 pages.
    static let orderCeiling = 5
    /// `SWAP_RA_WIN_SHIFT` (`PAGE_SHIFT / 2`): the window sits above the hits in the page offset bits.
    static let winShift: UInt64 = pageShift / 2
    static let hitsMask: UInt64 = (1 << winShift) - 1
    static let winMask: UInt64 = (pageSize - 1) & ~hitsMask

    @inline(__always) static func value(address: UInt64, win: UInt64, hits: UInt64) -> UInt64 {
        (address & ~(pageSize - 1)) | ((win << winShift) & winMask) | (hits & hitsMask)
    }
    @inline(__always) static func address(_ v: UInt64) -> UInt64 { v & ~(pageSize - 1) }
    @inline(__always) static func win(_ v: UInt64) -> UInt64 { (v & winMask) >> winShift }
    @inline(__always) static func hits(_ v: UInt64) -> UInt64 { v & hitsMask }
    /// `GET_SWAP_RA_VAL`: a VMA that never had a swap fault starts with 4 hits ("to start up
    /// with a small window"): its first fault reads ahead too.
    @inline(__always) static func load(_ vma: VMA) -> UInt64 {
        let v = vma.swapReadaheadInfo.load()
        return v == 0 ? 4 : v
    }

    /// `__swapin_nr_pages`: the next window, from the hits the last one had (none: one page,
    /// or two when this fault is next to the last one), rounded up to a power of two of at
    /// least 4, at most `maxPages`, and not below half the last window.
    static func nrPages(prevOffset: UInt64, offset: UInt64, hits: UInt64, maxPages: UInt64, prevWin: UInt64) -> UInt64 {
        var pages = hits + 2
        if pages == 2 {
            if offset != prevOffset &+ 1 && offset != prevOffset &- 1 { pages = 1 }
        } else {
            var roundup: UInt64 = 4
            while roundup < pages { roundup <<= 1 }
            pages = roundup
        }
        if pages > maxPages { pages = maxPages }
        let lastRA = prevWin / 2
        if pages < lastRA { pages = lastRA }
        return pages
    }
}

extension AddressSpace {
    /// `swap_update_readahead`: a fault found `page` in the swap cache. If readahead had read
    /// it, the flag goes and the VMA's readahead state counts a hit (`swap_ra_hit`); either way
    /// the state now names this address.
    func swapUpdateReadahead(_ page: Page, _ vma: VMA, _ address: UInt64) {
        let wasReadahead = page.flagsWord.fetchAnd(~PageFlags.readahead.rawValue) & PageFlags.readahead.rawValue != 0
        let v = SwapReadahead.load(vma)
        var hits = SwapReadahead.hits(v)
        if wasReadahead { hits = min(hits + 1, SwapReadahead.hitsMask) }
        vma.swapReadaheadInfo.store(SwapReadahead.value(address: address, win: SwapReadahead.win(v), hits: hits))
        if wasReadahead { stats.count(.swapRaHit) }
    }

    /// `swap_vma_ra_win`: the readahead window of a swap fault at `address`, and the range of
    /// addresses it covers: inside the VMA and the page table of the fault, ahead of the fault
    /// when the last fault was the page before, behind it when it was the page after, centred
    /// otherwise. Records the fault in the VMA's state with no hits yet.
    func swapVMAReadaheadWindow(_ vma: VMA, _ address: UInt64) -> (win: UInt64, start: UInt64, end: UInt64) {
        let cluster = memory.withSwap { $0.pageCluster }
        let maxWin = UInt64(1) << min(cluster, SwapReadahead.orderCeiling)
        guard maxWin > 1 else { return (1, address, address + pageSize) }
        let v = SwapReadahead.load(vma)
        let prev = SwapReadahead.address(v)
        let win = SwapReadahead.nrPages(prevOffset: prev >> pageShift, offset: address >> pageShift, hits: SwapReadahead.hits(v),
                                        maxPages: maxWin, prevWin: SwapReadahead.win(v))
        vma.swapReadaheadInfo.store(SwapReadahead.value(address: address, win: win, hits: 0))
        guard win > 1 else { return (1, address, address + pageSize) }
        // As 7.2 computes it: the right end from the unclamped left one, then left clamped at 0.
        var left: UInt64
        if address == prev &+ pageSize {
            left = address
        } else if prev == address &+ pageSize {
            left = address &- ((win - 1) << pageShift)
        } else {
            left = address &- (((win - 1) / 2) << pageShift)
        }
        let right = left &+ (win << pageShift)
        if Int64(bitPattern: left) < 0 { left = 0 }
        let pmdStart = address & ~(pmdSize - 1)
        return (win, max(left, vma.start, pmdStart), min(right, vma.end, pmdStart + pmdSize))
    }

    /// `swap_vma_readahead`'s loop: every swap entry in `start ..< end` other than the
    /// faulting one (`target`, at `address`) is read into the swap cache unless a page already
    /// caches it, flagged PG_readahead (`swap_ra`, `pswpin`), put on the LRU and left unmapped.
    /// The entries are read from the fault's page table without its lock
    /// (`ptep_get_lockless`); a stale one costs a read at worst, as in 7.2.
    /// Locking: mmap lock held for read, or the VMA's lock (the table stays); no PTE lock held.
    func swapReadaheadAround(_ vma: VMA, _ address: UInt64, _ ptep: EntryPointer, start: UInt64, end: UInt64) {
        Lockdep.assertNoSpinLockHeld()
        memory.withSwap { swap in
            var addr = start
            while addr < end {
                defer { addr += pageSize }
                guard addr != address else { continue }
                let index = Int(Int64(bitPattern: addr &- address) >> Int64(pageShift))
                let e = (ptep + index).load()
                guard !e.isPresent, !e.isNone else { continue }
                memory.readAheadSwapSlot(e.swapEntry, swap, stats: stats)
            }
        }
        memory.withLRU { $0.drainLocal() }
    }
}
