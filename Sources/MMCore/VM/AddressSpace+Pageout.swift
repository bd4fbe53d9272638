import MMSync

/// `madvise_cold_or_pageout_pte_range` (Linux 7.2): each present, small page mapped by this
/// entry alone (`folio_mapcount == folio_nr_pages`) loses its referenced bit; MADV_COLD also
/// makes the entry old, MADV_PAGEOUT takes a reference on anonymous and shmem pages for
/// `reclaim_pages`. Non-present entries (swap ones included), zone-device pages, the zero page
/// and pages mapped more than once are passed over. Large folios are not paged out yet.
struct ColdPageoutWalker: PageWalker {
    let memory: PhysicalMemory
    let pageout: Bool
    var pages: [Page] = []
    var madeOld = false

    mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let v = pmd.load()
        return v.isHuge || (!v.isPresent && !v.isNone) ? .skip : .next
    }

    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        let v = pte.load()
        guard v.isPresent, !v.isSpecial, memory.isValidPfn(v.pfn) else { return .next }
        let page = memory.page(v.pfn)
        guard !page.isZoneDevice, !page.test(.head), !page.test(.tail), page.mapcount == 1 else { return .next }
        if !pageout && v.isAccessed {
            pte.modify { $0.mkold() }
            madeOld = true
        }
        page.clear(.referenced)
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
        var w = ColdPageoutWalker(memory: memory, pageout: pageout)
        _ = pageTable.walk(s, e, &w)
        if w.madeOld { flushTLB() }
        if pageout { machine.reclaimPages(w.pages) }
    }
}
