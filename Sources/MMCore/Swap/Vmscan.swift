import MMSync

extension Machine {
    /// `reclaim_pages` (MADV_PAGEOUT): reclaims each page, ignoring its referenced bits, and
    /// drops the caller's reference on every page it could not free.
    /// Return: how many pages were freed.
    /// Locking: caller holds one reference per page and no page-table or page lock (the mmap
    /// lock may be held for read).
    @discardableResult
    public func reclaimPages(_ pages: [Page]) -> Int {
        Lockdep.assertNoSpinLockHeld()
        var freed = 0
        for p in pages {
            if reclaimPage(p) { freed += 1 } else { memory.put(p) }
        }
        return freed
    }

    /// What reclaim decided for one page it could not free (`FOLIOREF_*` / `activate_locked`).
    public enum ReclaimOutcome: Equatable, Sendable { case freed, keep, activate }

    /// `shrink_folio_list` for one isolated, order-0 page, references ignored (MADV_PAGEOUT).
    /// Return: true if the page was freed (the caller's reference with it); false leaves the
    /// caller's reference. See `shrinkFolio`.
    /// Locking: caller holds a reference and no page-table or page lock; takes the page lock
    /// (trylock), the rmap, notifier and PTE locks, and swap area locks.
    public func reclaimPage(_ page: Page) -> Bool {
        Lockdep.assertNoSpinLockHeld()
        return shrinkFolio(page, checkReferences: false) == .freed
    }

    /// `shrink_folio_list` for one isolated, order-0 page (Linux 7.2, `mm/vmscan.c`):
    /// 0. unless references are ignored, `folio_check_references`: a page whose entries were
    ///    used since the last look goes back (`keep`: used once; `activate`: used more, or
    ///    already marked referenced);
    /// 1. a lazily freed (MADV_FREE) page that is clean and unused elsewhere is unmapped and
    ///    freed without I/O (`pglazyfreed`);
    /// 2. an anonymous page outside the swap cache gets a slot (`folio_alloc_swap`) and is
    ///    marked dirty; no slot free: the page stays (`pgactivate`);
    /// 3. its mappings become swap entries (`try_to_unmap`); one that must stay keeps it;
    /// 4. a dirty page is written to its slot (`pageout` → `swap_writeout`, `pswpout`) when
    ///    only the cache and the caller hold it;
    /// 5. the page leaves the swap cache and is freed (`__remove_mapping`).
    /// A shmem page is unmapped and handed to `shmem_writeout` (`ShmemFile.writeOutForReclaim`)
    /// instead of steps 1–4. An anonymous THP is split first (see below; its other pages go to
    /// `splitTo` with a reference each, or are reclaimed here at once). Pinned pages, device
    /// pages and hugetlb folios are not reclaimed here.
    /// Return: `.freed` (the caller's reference went with the page) or what to do with it.
    /// Locking: caller holds a reference and no page-table or page lock; takes the page lock
    /// (trylock), the rmap, notifier and PTE locks, and swap area locks.
    func shrinkFolio(_ page: Page, checkReferences: Bool, splitTo: ((Page) -> Void)? = nil) -> ReclaimOutcome {
        Lockdep.assertNoSpinLockHeld()
        guard !page.isZoneDevice, !page.test(.tail), !page.test(.hugetlb) else { return .activate }
        guard page.order == 0 || (page.test(.head) && page.isAnon) else { return .activate }
        guard page.tryLock() else { return .keep }
        func keep(_ outcome: ReclaimOutcome) -> ReclaimOutcome {
            if outcome == .activate {
                stats.count(.pgactivate)
                // activate_locked: a page that stays gives its slot back when swap is half full
                // (only a swap file's pages stay in the swap cache while mapped).
                if page.test(.swapCache) && page.isAnon {
                    memory.withSwap { if $0.isHalfFull { $0.folioFreeSwap(page) } }
                }
            }
            page.unlock()
            return outcome
        }
        // A shmem page (swap-backed, on the anonymous lists as in 7.2): its file, held while
        // reclaim works on the page. A page that is neither anonymous, nor a live file's, nor
        // in the swap cache (dropped from its file meanwhile) is left to its last holder.
        var shmem: ShmemFile? = nil
        if page.hasFileOwner {
            guard let f = shmemFile(owning: page), !page.test(.swapCache) else { return keep(.activate) }
            shmem = f
        } else if !page.isAnon && !page.test(.swapCache) {
            return keep(.activate)
        }
        if checkReferences {
            let used = folioReferenced(page)
            let marked = page.test(.referenced)
            page.clear(.referenced)
            if used > 0 {
                page.set(.referenced)
                return keep(marked || used > 1 ? .activate : .keep)
            }
        }
        // A page that may be pinned for DMA stays (folio_maybe_dma_pinned).
        if page.pincount > 0 { return keep(.activate) }
        if page.test(.head) {
            // An anonymous THP. A lazily freed one mapped by one PMD alone is discarded whole,
            // as 7.2 does. Any other is split (split_folio_to_list: swap slots do not come in
            // clusters of 512 here, D24) and reclaimed page by page, its other pages going to
            // the caller's list (from MADV_PAGEOUT: reclaimed right away); a folio someone else
            // holds stays (folio_expected_ref_count). A lazily freed one mapped by PTEs that
            // was written to since is swap-backed again and stays whole (7.2's try_to_unmap of
            // the whole folio meets the dirty PTE: walk_abort); a clean one is split, its pages
            // come back as clean as their PTEs were (the split's migration entries keep the
            // dirty bit) and are discarded one by one (7.2 discards the folio whole: D24).
            let lazy = page.test(.lazyFree) && !page.test(.swapCache)
            if lazy {
                switch discardLazyFreeTHP(page) {
                case .discarded:
                    page.unlock()
                    stats.count(.pglazyfreed, Int(page.folioPages))
                    memory.put(page)
                    return .freed
                case .restored: return keep(.activate)   // walk_abort: used since, it stays
                case .notMappedByOnePMD:
                    if page.test(.dirty) || largeFolioMappedDirty(page) {
                        page.clear(.lazyFree)
                        return keep(.activate)
                    }
                }
            }
            var others: [Page] = []
            guard splitFolio(page, toList: { others.append($0) }) == nil else { return keep(.activate) }
            if !lazy { stats.count(.thpSwpoutFallback) }
            if let splitTo { others.forEach(splitTo) } else {
                for t in others where shrinkFolio(t, checkReferences: false) != .freed { memory.put(t) }
            }
        }
        if page.test(.lazyFree) && !page.test(.swapCache) && !page.test(.dirty) {
            guard tryToUnmap(page) else { return keep(.activate) }
            // The discard of a clean, unused lazily freed page (folio_ref_freeze(folio, 1)).
            guard page.refcountWord.compareExchange(expected: 1, desired: 0).exchanged else { return keep(.activate) }
            if page.test(.dirty) { page.refcountWord.store(1); return keep(.activate) }
            page.unlock()
            memory.freeFrozen(page)
            stats.count(.pglazyfreed)
            return .freed
        }
        if let shmem {
            // shmem_writeout: unmapped, the page gives its place in the file to a swap entry
            // (or, clean, simply leaves it) and goes on as a swap-cache page.
            if page.mapcount > 0 && !tryToUnmap(page) { return keep(.activate) }
            guard shmem.writeOutForReclaim(page) else { return keep(.activate) }
            if !page.test(.swapCache) {
                page.unlock()
                memory.put(page)
                return .freed
            }
            guard memory.withSwap({ $0.removeMapping(page) }) else { return keep(.activate) }
            return .freed
        }
        if !page.test(.swapCache) {
            page.clear(.lazyFree)
            guard memory.withSwap({ $0.folioAllocSwap(page) }) != nil else { return keep(.activate) }
            page.set(.dirty)
        }
        if page.mapcount > 0 && !tryToUnmap(page) { return keep(.activate) }
        if page.test(.dirty) {
            // pageout: only the isolation's and the swap cache's references may be left.
            guard page.refcount == 2 else { return keep(.keep) }
            page.clear(.dirty)
            memory.withSwap { $0.writeOut(page) }
            stats.count(.pswpout)
        }
        guard memory.withSwap({ $0.removeMapping(page) }) else { return keep(.activate) }
        return .freed
    }

    /// What `discardLazyFreeTHP` did.
    enum LazyTHPDiscard { case discarded, restored, notMappedByOnePMD }

    /// `unmap_huge_pmd_locked` → `__discard_anon_folio_pmd_locked` for a lazily freed THP
    /// mapped by one PMD and nothing else: the PMD is taken away under a CLEAR invalidation and
    /// the TLB flushed; written to since (the leaf or the folio dirty: it becomes swap-backed
    /// again) or held by anybody but the caller, the leaf goes back; else the deposited table
    /// is freed and the mapping's reference dropped (the caller's is the last).
    /// While it looks, the leaf is a PMD migration entry, never empty: a fault meanwhile waits
    /// on the folio's lock instead of installing a PTE table in its place (7.2 clears the PMD
    /// under its lock, which `pmd_install` also takes; the model's table install does not).
    /// Return: discarded, restored (used since: it stays), or not mapped by one PMD alone.
    /// Locking: caller holds the folio's lock and one reference; takes the rmap lock,
    /// notifiers, the PMD lock.
    private func discardLazyFreeTHP(_ head: Page) -> LazyTHPDiscard {
        assert(head.isLocked && head.test(.head), "discardLazyFreeTHP: a locked THP")
        guard head.entireMapcount == 1, head.folioMapcount == 1, head.pincount == 0, !head.test(.dirty),
              let av = head.anonVMA else { return .notMappedByOnePMD }
        var outcome = LazyTHPDiscard.notMappedByOnePMD
        memory.rmapWalkAnon(av, index: head.index) { hit in
            let mm = hit.vma.mm, a = hit.address
            guard a & ~pmdMask == 0 else { return true }
            let range = MMUNotifierRange(start: a, end: a + pmdSize, event: .clear)
            mm.notifiers.invalidateRangeStart(range)
            defer { mm.notifiers.invalidateRangeEnd(range) }
            guard let found = mm.pageTable.lookup(a, level: .pmd), found.level == .pmd else { return true }
            found.table.ptl.lock()
            let v = found.entry.load()
            guard PageTable.isTHPLeaf(v), !v.isSpecial, v.pfn == head.pfn else { found.table.ptl.unlock(); return true }
            // pmdp_huge_clear_flush: no CPU can set the leaf's bits or use it any more.
            let hold = SwapEntry.migration(pfn: head.pfn, write: false, exclusive: true).pte(softDirty: v.isSoftDirty, pmd: true)
            let old = found.entry.exchange(hold)
            mm.flushTLB()
            atomicFence()
            if old.isDirty || head.test(.dirty) || head.refcount != 2 {
                found.entry.store(old)
                if old.isDirty || head.test(.dirty) { head.clear(.lazyFree) }
                found.table.ptl.unlock()
                outcome = .restored
                return false
            }
            let pgtable = mm.pageTable.withdraw(from: found.table)
            memory.removeRmapPMD(head)
            found.entry.store(.none)
            found.table.ptl.unlock()
            mm.pageTable.freeTable(pgtable)
            memory.put(head)
            outcome = .discarded
            return false
        }
        return outcome
    }

    /// Every mapping of the anonymous THP `head`, VMA by VMA of its anon_vma (every VMA that may
    /// map part of it, not only the head's page): a PMD leaf mapping it whole goes to `leaf`
    /// (under the PMD lock); otherwise each present PTE mapping one of its pages goes to `pte`
    /// (under its PTE lock), and `endOfVMA` runs after the VMA's PTEs. A closure that returns
    /// false ends the walk.
    /// Locking: caller holds the folio's lock; takes the rmap, PMD and PTE locks.
    private func forEachMapping(ofTHP head: Page, leaf: (EntryPointer, PTE) -> Bool, pte: (EntryPointer, PTE) -> Bool,
                                endOfVMA: () -> Void = {}) {
        assert(head.isLocked && head.test(.head), "forEachMapping: a locked THP")
        guard let av = head.anonVMA else { return }
        let n = head.folioPages, index = head.index
        var going = true
        av.lock.lockRead()
        let list = av.vmas
        for vma in list where going {
            let mm = vma.mm
            // A PMD leaf mapping the folio whole, at its aligned address in this VMA.
            if let a = vma.address(ofPageIndex: index), a & ~pmdMask == 0, a + pmdSize <= vma.end,
               let found = mm.pageTable.lookup(a, level: .pmd), found.level == .pmd {
                found.table.ptl.lock()
                let v = found.entry.load()
                let isLeaf = PageTable.isTHPEntry(v) && v.isPresent && PageTable.thpEntryPfn(v) == head.pfn
                if isLeaf { going = leaf(found.entry, v) }
                found.table.ptl.unlock()
                if isLeaf { continue }
            }
            for i in 0..<n where going {
                guard let a = vma.address(ofPageIndex: index + i) else { continue }
                _ = mm.withMappedPTE(a, pfn: head.pfn + i) { ptep, found in
                    if case .present(let v) = found { going = pte(ptep, v) }
                }
            }
            endOfVMA()
        }
        av.lock.unlockRead()
    }

    /// Whether any mapping of the anonymous THP `head` is dirty: a PMD leaf mapping it whole
    /// (in a process that shares it after a fork) or a PTE mapping one of its pages (the check
    /// 7.2's try_to_unmap of a lazily freed large folio makes entry by entry). Bits are only
    /// read.
    /// Locking: caller holds the folio's lock; takes the rmap, PMD and PTE locks.
    private func largeFolioMappedDirty(_ head: Page) -> Bool {
        assert(head.isLocked, "largeFolioMappedDirty: folio not locked")
        var dirty = false
        forEachMapping(ofTHP: head, leaf: { _, v in dirty = v.isDirty; return !dirty },
                       pte: { _, v in dirty = v.isDirty; return !dirty })
        return dirty
    }

    /// `folio_referenced` of an anonymous THP: every VMA of its anon_vma that may map part of
    /// it is looked at; a PMD mapping of the whole folio counts once, and so do its PTEs in one
    /// VMA (`folio_pte_batch`: one young batch, one reference); each accessed bit found is
    /// cleared.
    /// Locking: caller holds the folio's lock; takes the rmap, PMD and PTE locks.
    private func largeFolioReferenced(_ head: Page) -> Int {
        assert(head.isLocked, "largeFolioReferenced: folio not locked")
        var referenced = 0, young = false
        forEachMapping(ofTHP: head, leaf: { e, v in
            if v.isAccessed { e.modify { $0.mkold() }; referenced += 1 }
            return true
        }, pte: { e, v in
            if v.isAccessed { e.modify { $0.mkold() }; young = true }
            return true
        }, endOfVMA: {
            if young { referenced += 1 }
            young = false
        })
        return referenced
    }

    /// `folio_referenced`: how many of the page's mappings were used since the last look; each
    /// one's accessed bit is cleared (no TLB flush, as x86's `ptep_clear_flush_young`).
    /// Locking: caller holds the page lock; takes the rmap and PTE locks.
    func folioReferenced(_ page: Page) -> Int {
        precondition(page.isLocked, "folioReferenced: page not locked")
        if page.test(.head) { return largeFolioReferenced(page) }
        // A shmem page's file, held for the walk (nil: it is being torn down; nothing maps it).
        let file = page.hasFileOwner ? shmemFile(owning: page) : nil
        if page.hasFileOwner && file == nil { return 0 }
        defer { withExtendedLifetime(file) {} }
        var referenced = 0
        memory.rmapWalk(page) { hit in
            hit.withVMA { _, mm in
                _ = mm.withMappedPTE(hit.address, pfn: page.pfn) { ptep, found in
                    if case .present(let v) = found, v.isAccessed {
                        ptep.modify { $0.mkold() }
                        referenced += 1
                    }
                }
            }
            return true
        }
        return referenced
    }
}
