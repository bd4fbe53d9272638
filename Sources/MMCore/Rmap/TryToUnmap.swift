import MMSync

extension Machine {
    /// `try_to_unmap` (Linux 7.2, `try_to_unmap_one`): removes every mapping of a locked page
    /// for reclaim, each under a CLEAR invalidation (so device mirrors drop theirs first).
    /// - A page-cache page's entries are cleared (a later fault maps the page again).
    /// - An anonymous page in the swap cache: each entry becomes a swap entry naming its slot
    ///   (`folio_dup_swap`), exclusive if the page was (`folio_try_share_anon_rmap_pte`, which
    ///   fails for a page that may be pinned), soft-dirty carried; a dirty entry dirties the
    ///   page. A device-exclusive entry is converted the same way (the device lost its access
    ///   through the invalidation), as clean.
    /// - A lazily freed (MADV_FREE) page is discarded when clean and otherwise unused; a dirty
    ///   one is made swap-backed again and stays mapped.
    /// An anonymous page outside the swap cache (and not lazily freed) stays mapped.
    /// Locking: caller holds the page lock and a reference; takes the rmap lock, notifiers
    /// (CLEAR, outside PTE locks) and PTE locks.
    /// Return: true if the page is no longer mapped anywhere.
    @discardableResult
    public func tryToUnmap(_ page: Page) -> Bool {
        precondition(page.isLocked && page.order == 0, "tryToUnmap: page must be locked and small")
        let anon = page.isAnon
        let lazy = anon && page.test(.lazyFree) && !page.test(.swapCache)
        guard page.file != nil || page.test(.swapCache) || lazy else { return page.mapcount == 0 }
        memory.rmapWalk(page) { hit in
            hit.withVMA { _, mm in
                let range = MMUNotifierRange(start: hit.address, end: hit.address + pageSize, event: .clear)
                mm.notifiers.invalidateRangeStart(range)
                let go = mm.withMappedPTE(hit.address, pfn: page.pfn) { ptep, found -> Bool in
                    mm.unmapOne(page, ptep, found, anon: anon, lazy: lazy)
                } ?? true
                mm.notifiers.invalidateRangeEnd(range)
                return go
            }
        }
        return page.mapcount == 0
    }
}

extension AddressSpace {
    /// One entry of `tryToUnmap`. Return: false to stop the walk (an entry had to stay).
    /// Locking: caller holds the page lock and the entry's PTE lock.
    fileprivate func unmapOne(_ page: Page, _ ptep: EntryPointer, _ found: MappedEntry, anon: Bool, lazy: Bool) -> Bool {
        Lockdep.assertSpinLockHeld()
        // A migration entry: not a mapping of ours to take away.
        if case .swap(let s) = found, !s.isDeviceExclusive { return true }
        // ptep_get_and_clear: a CPU's walk sets the accessed and dirty bits without the PTE
        // lock until the entry is gone, so the entry is read and cleared in one step (a load
        // then a store could lose a write's dirty bit, and reclaim would drop the page clean).
        let old = ptep.exchange(.none)
        if old.isPresent { flushTLB() }
        if old.isPresent && old.isDirty { page.set(.dirty) }
        if !anon {
            memory.removeRmap(page)
            memory.put(page)
            return true
        }
        if lazy {
            // MADV_FREE: written to since, or used by anybody else: it stays.
            atomicFence()
            if page.test(.dirty) {
                ptep.store(old)
                page.clear(.lazyFree)
                return false
            }
            if page.refcount != 1 + page.mapcount {
                ptep.store(old)
                return false
            }
            memory.removeRmap(page)
            memory.put(page)
            return true
        }
        let e = memory.withSwap { $0.folioDupSwap(page) }
        let exclusive = page.test(.anonExclusive)
        if exclusive {
            // folio_try_share_anon_rmap_pte: a page that may be pinned for DMA keeps its place.
            guard page.pincount == 0 else {
                memory.withSwap { $0.folioPutSwap(page, e) }
                ptep.store(old)
                return false
            }
            page.clear(.anonExclusive)
        }
        ptep.store(e.pte(softDirty: old.isSoftDirty, exclusive: exclusive))
        memory.removeRmap(page)
        memory.put(page)
        return true
    }
}
