import MMSync

extension AddressSpace {
    /// `do_swap_page` for a swap-slot entry (Linux 7.2): the page comes from the swap cache,
    /// or is allocated, put in the cache and read from the slot (a major fault, `pswpin`).
    /// Under its lock and the PTE lock, with the entry unchanged, the page is mapped; an
    /// exclusive entry maps it writable (when the VMA is) even for a read, as the swap count
    /// was 1. The slot loses this entry's count (`folio_put_swap`). On a synchronous area (a
    /// ramdisk) the page then leaves the swap cache if no other entry names the slot; on a
    /// swap file it stays cached (`should_try_to_free_swap`) unless swap is half full or the
    /// fault wants to write and the mapping could not grant it, and a page that had to be
    /// read brings its neighbours in the swap cache too (`swapin_readahead`). A
    /// write the mapping could not grant goes on as a write-protect fault (`do_wp_page`).
    /// An entry naming no slot in use is SIGBUS (D21).
    /// Locking: mmap lock held for read, or the VMA's lock; no PTE lock held on entry or return.
    func doSwapPage(_ vma: VMA, _ address: UInt64, _ ptep: EntryPointer, _ ptl: SpinLockRef, _ entry: PTE,
                    flags: FaultFlags, realAddress: UInt64) -> FaultResult {
        assertFaultLocked(vma, flags); Lockdep.assertNoSpinLockHeld()
        // Borrowed, as in PhysicalMemory.readNewSwapPage: no reference count on the shared swap objects.
        return memory.withSwap { swap in
            doSwapPage(swap, vma, address, ptep, ptl, entry, flags: flags, realAddress: realAddress)
        }
    }

    /// `doSwapPage` with the machine's swap space borrowed.
    /// Locking: as `doSwapPage`.
    private func doSwapPage(_ swap: SwapSpace, _ vma: VMA, _ address: UInt64, _ ptep: EntryPointer, _ ptl: SpinLockRef,
                            _ entry: PTE, flags: FaultFlags, realAddress: UInt64) -> FaultResult {
        assertFaultLocked(vma, flags); Lockdep.assertNoSpinLockHeld()
        let swp = entry.swapEntry
        guard let (inUse, synchronous) = swap.withArea(swp, { ($0.isInUse(swp.offset), $0.synchronous) }), inUse else {
            return ptep.load() == entry ? .sigbus : .retry
        }
        guard let av = vmfAnonPrepare(vma, flags) else { return .retry }
        let page: Page
        if let cached = swap.lookup(swp) {
            swapUpdateReadahead(cached, vma, address)
            page = cached
            page.lock()
        } else {
            if !synchronous {
                // swap_vma_readahead: the neighbours first; this page is read below.
                let w = swapVMAReadaheadWindow(vma, address)
                if w.win > 1 { swapReadaheadAround(vma, address, ptep, start: w.start, end: w.end) }
            }
            switch memory.readNewSwapPage(swp, hot: realAddress, stats: stats) {
            case .read(let new):
                stats.count(.pgmajfault)
                page = new
            case .noMemory: return ptep.load() == entry ? .oom : .retry
            case .gone: return .retry
            }
        }
        // The reference taken above becomes the mapping's; every path that does not map drops it.
        guard swap.matches(page, swp) else { page.unlock(); memory.put(page); return .retry }
        ptl.lock()
        guard ptep.load() == entry else {
            ptl.unlock()
            swap.folioFreeSwap(page)
            page.unlock()
            memory.put(page)
            return .retry
        }
        guard page.test(.uptodate) else { ptl.unlock(); page.unlock(); memory.put(page); return .sigbus }
        let exclusive = entry.isSwapExclusive
        let write = flags.contains(.write)
        var writeDone = false
        var pte = PTE.page(page.pfn, write: false)
        if exclusive && vma.flags.contains(.write) {
            pte = pte.mkwrite()
            if write { pte = pte.mkdirty(); writeDone = true }
        }
        if entry.isSoftDirty { pte.raw |= PTE.softDirty }
        if page.isAnon {
            memory.addRmap(page)
            if exclusive { page.set(.anonExclusive) }
        } else {
            // __folio_set_anon: a page shared with other processes takes the root anon_vma,
            // which every VMA of the fork tree is linked into.
            let owner: Unmanaged<AnonVMA> = exclusive ? av : .passUnretained(av.takeUnretainedValue().root)
            memory.addNewAnonRmap(page, vma: vma, address: address, anonVMA: owner)
            if !exclusive { page.clear(.anonExclusive) }
            page.clear(.dirty)
        }
        swap.folioPutSwap(page, swp)
        ptep.store(pte)
        ptl.unlock()
        // should_try_to_free_swap: always on a synchronous area; on a file when swap is half
        // full (vm_swap_full), or for a write still to be done when the cache and this
        // mapping hold the only references (the write clears FAULT_FLAG_WRITE when it is done).
        if synchronous || swap.isHalfFull || (write && !writeDone && page.refcount == 2) {
            swap.folioFreeSwap(page)
        }
        page.unlock()
        guard write && !writeDone else { return .ok }
        ptl.lock()
        let now = ptep.load()
        guard now.isPresent, now.pfn == page.pfn, !now.isWrite else { ptl.unlock(); return .ok }
        return doWPPage(vma, address, ptep, ptl, now, flags: flags, realAddress: realAddress)
    }
}
