import MMSync

/// `madvise_cold_or_pageout_pte_range` (Linux 7.2): each present, small page mapped by this
/// entry alone (`folio_mapcount == folio_nr_pages`) loses its referenced bit; MADV_COLD also
/// makes the entry old, MADV_PAGEOUT takes a reference on anonymous and shmem pages for
/// `reclaim_pages`. Non-present entries (swap ones included), zone-device pages, the zero page
/// and pages mapped more than once are passed over. A large folio is taken whole when the range
/// covers all of it (by its PMD, or by its PTEs in order) and split first when it covers part.
struct ColdPageoutWalker: PageWalker {
    let memory: PhysicalMemory
    let machine: Machine
    let pageout: Bool
    var pages: [Page] = []
    var madeOld = false
    /// The PTE table being walked and the part of the range inside it (set by `pmdEntry`).
    var ptTable: (ptes: EntryPointer, start: UInt64, end: UInt64)? = nil
    /// The last large folio looked at and whether the range covers it whole (asked once per
    /// folio, not once per page).
    var lastFolio: (head: UInt64, covered: Bool)? = nil

    /// The PMD half (`madvise_cold_or_pageout_pte_range` on a THP leaf): a THP mapped by this
    /// PMD alone (`folio_maybe_mapped_shared`), covered whole, loses its referenced bit; COLD
    /// makes the leaf old, PAGEOUT takes the folio for `reclaim_pages` (which splits it).
    /// Covered in part, the folio is split (`split_folio`) and its pages are taken one by one.
    /// The huge zero folio, migration and device entries are passed over.
    mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let v = pmd.load()
        if v.isPresent && !v.isHuge {
            ptTable = (EntryPointer(memory.frame(v.pfn)), start, end)
            return machine.splitPartlyCoveredFolios(v.pfn, start, end)
        }
        guard v.isPresent && v.isHuge else { return v.isHuge || (!v.isPresent && !v.isNone) ? .skip : .next }
        guard !v.isSpecial else { return .skip }
        table.ptl.lock()
        let now = pmd.load()
        guard PageTable.isTHPLeaf(now), !now.isSpecial else { table.ptl.unlock(); return now.isHuge || !now.isPresent ? .skip : .next }
        let folio = memory.page(now.pfn)
        guard folio.isAnon, folio.folioMapcount == 1 else { table.ptl.unlock(); return .skip }
        if end - start != pmdSize {
            memory.get(folio)
            table.ptl.unlock()
            folio.lock()
            let split = machine.splitFolio(folio) == nil
            folio.unlock()
            memory.put(folio)
            return split ? .again : .skip
        }
        if !pageout && now.isAccessed {
            pmd.modify { $0.mkold() }
            madeOld = true
        }
        folio.clear(.referenced)
        if folio.test(.active) { folio.set(.workingset) }
        if pageout && memory.tryGet(folio) { pages.append(folio) }
        table.ptl.unlock()
        return .skip
    }

    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        let v = pte.load()
        guard v.isPresent, !v.isSpecial, memory.isValidPfn(v.pfn) else { return .next }
        let page = memory.page(v.pfn)
        guard !page.isZoneDevice else { return .next }
        if page.isInLargeFolio {
            // A PTE-mapped large folio the range covers whole (the others were split before
            // the walk, or left because they may be shared or were locked), mapped here alone:
            // each PTE loses its accessed bit (COLD), the folio its referenced bit, and
            // PAGEOUT takes it whole, at its first page, for reclaim (which splits it).
            // One the split before the walk left (shared, locked, or held by someone) and that
            // the range does not cover whole is passed over, as 7.2's walk skips it.
            let head = page.folioHead
            guard page.isAnon, head.entireMapcount == 0, head.folioMapcount == Int32(head.folioPages), let t = ptTable else { return .next }
            if lastFolio?.head != head.pfn {
                lastFolio = (head.pfn, machine.coversWhole(head, page, addr, t.ptes, t.start, t.end))
            }
            guard lastFolio!.covered else { return .next }
            if !pageout && v.isAccessed {
                pte.modify { $0.mkold() }
                madeOld = true
            }
            head.clear(.referenced)
            if head.test(.active) { head.set(.workingset) }
            if pageout && page == head && memory.tryGet(head) { pages.append(head) }
            return .next
        }
        guard !page.test(.head), !page.test(.tail), page.mapcount == 1 else { return .next }
        if !pageout && v.isAccessed {
            pte.modify { $0.mkold() }
            madeOld = true
        }
        page.clear(.referenced)
        if page.test(.active) { page.set(.workingset) }
        // Shmem page-cache pages too: the process owns its files (`can_do_file_pageout`).
        if pageout && (page.isAnon || page.file != nil) && memory.tryGet(page) { pages.append(page) }
        return .next
    }
}

extension AddressSpace {
    /// MADV_COLD / MADV_PAGEOUT over [s, e) of `vma` (`madvise_cold` / `madvise_pageout`):
    /// EINVAL for a hugetlb or pfn-mapped VMA (`can_madv_lru_vma`). PAGEOUT then reclaims the
    /// pages it collected (`reclaim_pages`), each swapped out if swap has room.
    /// Locking: mmap lock held for read; no page-table lock held.
    func madviseColdOrPageout(_ vma: VMA, _ s: UInt64, _ e: UInt64, pageout: Bool) throws(Errno) {
        mmapLock.assertLocked(); Lockdep.assertNoSpinLockHeld()
        guard !vma.isHugetlb, !vma.flags.contains(.pfnMap) else { throw .EINVAL }
        var w = ColdPageoutWalker(memory: memory, machine: machine, pageout: pageout)
        _ = pageTable.walk(s, e, &w)
        if w.madeOld { flushTLB() }
        if pageout { machine.reclaimPages(w.pages) }
    }
}
