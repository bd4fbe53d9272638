import MMSync

extension Machine {
    /// The large-folio half of `madvise_free_pte_range` and `madvise_cold_or_pageout_pte_range`,
    /// before the PTE walk (which holds the table's lock; 7.2 drops it around the split): a
    /// PTE-mapped large folio that the range does not cover whole (all its pages, mapped in
    /// order, inside [start, end)) is split (`split_folio`) unless it may be mapped by another
    /// process or its lock is taken; one covered whole stays large (the walk's PTE half takes
    /// it whole).
    /// Locking: mmap lock held (read); no page-table lock held; takes folio locks.
    func splitPartlyCoveredFolios(_ tablePfn: UInt64, _ start: UInt64, _ end: UInt64) -> WalkStep {
        Lockdep.assertNoSpinLockHeld()
        let ptes = EntryPointer(memory.frame(tablePfn))
        var a = start
        while a < end {
            let e = (ptes + PageTableLevel.pte.index(a)).load()
            let here = a
            a += pageSize
            guard e.isPresent, !e.isSpecial else { continue }
            let page = memory.page(e.pfn)
            guard page.isInLargeFolio, page.isAnon, !page.isZoneDevice else { continue }
            let head = page.folioHead
            if coversWhole(head, page, here, ptes, start, end) { a = here + (head.folioPages - (page.pfn - head.pfn)) * pageSize; continue }
            // folio_maybe_mapped_shared: more mappings than pages, or a PMD mapping too.
            // One attempt per folio (7.2's walk batches the folio's PTEs): its other pages in
            // the range are passed over whatever the outcome.
            a = here + (head.folioPages - (page.pfn - head.pfn)) * pageSize
            guard head.entireMapcount == 0, head.folioMapcount <= Int32(head.folioPages) else { continue }
            guard memory.tryGet(head) else { continue }
            defer { memory.put(head) }
            guard head.folioHead == head, head.tryLock() else { continue }
            _ = splitFolio(head)
            head.unlock()
        }
        return .next
    }

    /// Whether every page of `head`'s folio is mapped, in order, by the PTEs of [start, end)
    /// around `page` at `addr` (`madvise_folio_pte_batch` reaching `folio_nr_pages`).
    func coversWhole(_ head: Page, _ page: Page, _ addr: UInt64, _ ptes: EntryPointer, _ start: UInt64, _ end: UInt64) -> Bool {
        let offset = page.pfn - head.pfn
        guard addr >= start + offset * pageSize else { return false }
        let first = addr - offset * pageSize
        guard first + head.folioPages * pageSize <= end, first & ~(pmdSize - 1) == (first + head.folioPages * pageSize - 1) & ~(pmdSize - 1) else { return false }
        for k in 0..<head.folioPages {
            let e = (ptes + PageTableLevel.pte.index(first + k * pageSize)).load()
            guard e.isPresent, !e.isSpecial, e.pfn == head.pfn + k else { return false }
        }
        return true
    }
}
