import MMSync

extension AddressSpace {
    /// `split_huge_pmd_address` / `__split_huge_pmd`: if the PMD covering `address` is a THP
    /// leaf (or maps the huge zero folio, or is a PMD migration entry), replace it by its
    /// deposited PTE table mapping the same pages (or holding 512 PTE migration entries),
    /// bracketed by a CLEAR invalidation of its 2 MiB (mirrors drop the huge mapping). The
    /// folio stays whole, now mapped by 512 PTEs (`split_huge_page` divides it).
    /// Return: whether a leaf was split.
    /// Locking: the mmap lock (or the VMA's lock, or the folio's rmap lock) held; no
    /// page-table lock held; takes the PMD's lock.
    /// With `pfn`, only a leaf mapping that folio is split (an rmap walk's target).
    @discardableResult
    public func splitHugePMD(_ vma: VMA, _ address: UInt64, pfn: UInt64? = nil) -> Bool {
        Lockdep.assertNoSpinLockHeld()
        let haddr = address & pmdMask
        guard !vma.isHugetlb, let found = pageTable.lookup(haddr, level: .pmd), found.level == .pmd,
              PageTable.isTHPEntry(found.entry.load()) else { return false }
        if let pfn, PageTable.thpEntryPfn(found.entry.load()) != pfn { return false }
        let range = MMUNotifierRange(start: haddr, end: haddr + pmdSize, event: .clear)
        notifiers.invalidateRangeStart(range)
        found.table.ptl.lock()
        let done = (pfn == nil || PageTable.thpEntryPfn(found.entry.load()) == pfn)
            && splitHugePMDLocked(vma, found.entry, table: found.table, haddr)
        found.table.ptl.unlock()
        notifiers.invalidateRangeEnd(range)
        return done
    }

    /// `__split_huge_pmd_locked`: the deposited table is filled with one PTE per page
    /// carrying the leaf's bits (write, user, dirty, accessed, soft-dirty); each page gains a
    /// PTE mapping and keeps the folio's exclusivity, the folio loses its PMD mapping and gains
    /// a reference per extra PTE. The huge zero folio's PTEs map the ordinary zero page. A CPU
    /// may set the accessed or dirty bit on the leaf meanwhile: the table is installed with a
    /// compare-and-swap and refilled if it lost. The TLB is flushed before the lock is dropped.
    /// A PMD migration entry becomes 512 PTE migration entries of the same kind (write,
    /// read-exclusive or read) and soft-dirty bit, one per page; it holds no mapping or
    /// reference, so none changes. A device-private PMD becomes 512 device-private PTEs,
    /// mapped as a leaf's PTEs are.
    /// Locking: the PMD table's lock held. Return: false if the entry is no THP leaf (anymore).
    func splitHugePMDLocked(_ vma: VMA, _ pmd: EntryPointer, table: Page, _ haddr: UInt64) -> Bool {
        table.ptl.assertHeld()
        var old = pmd.load()
        guard PageTable.isTHPEntry(old) else { return false }
        precondition(!vma.isHugetlb, "splitting a hugetlb PMD")
        let pgtable = pageTable.withdraw(from: table)
        let ptes = EntryPointer(memory.frame(pgtable.pfn))
        if PageTable.isTHPMigration(old) {
            // Nothing else changes a non-present PMD under its lock: a plain store will do.
            let s = old.swapEntry
            for i in 0..<ptrsPerTable {
                (ptes + i).store(SwapEntry(type: s.type, offset: s.offset + UInt64(i)).pte(softDirty: old.isSoftDirty))
            }
            pmd.store(.table(pgtable.pfn))
            stats.count(.thpSplitPMD)
            return true
        }
        if PageTable.isTHPDevicePrivate(old) {
            // `__split_huge_pmd_locked` without freeze on a device-private PMD: 512
            // device-private PTEs of the same write bit and soft-dirty bit; each page gains a
            // PTE mapping (and the folio's exclusivity), the folio loses its PMD mapping and
            // gains a reference per extra PTE. Not present: no TLB flush.
            let s = old.swapEntry
            let folio = memory.page(s.pfn)
            addPTEMappingsOfSplitFolio(folio)
            for i in 0..<folio.folioPages {
                (ptes + Int(i)).store(SwapEntry.devicePrivate(pfn: folio.pfn + i, write: s.isWrite).pte(softDirty: old.isSoftDirty))
            }
            pmd.store(.table(pgtable.pfn))
            memory.removeRmapPMD(folio)
            stats.count(.thpSplitPMD)
            return true
        }
        let zero = old.isSpecial
        if !zero {
            // The accounting comes first: once the table is in, a PTE-level walker (a zap, a
            // COW fault) holding only its PTE lock may drop a mapping at once. The PMD lock
            // and the PMD mapping's reference keep the folio meanwhile.
            addPTEMappingsOfSplitFolio(memory.page(old.pfn))
        }
        while true {
            let keep = old.raw & ~(PTE.huge | PTE.pfnMask)
            for i in 0..<ptrsPerTable {
                let pfn = zero ? PhysicalMemory.zeroPfn : old.pfn + UInt64(i)
                (ptes + i).store(PTE(raw: keep | (pfn << pageShift)))
            }
            if pmd.compareExchange(old, .table(pgtable.pfn)) { break }
            old = pmd.load()
        }
        flushTLB()
        if !zero {
            let folio = memory.page(old.pfn)
            if old.isDirty { folio.set(.dirty) }
            memory.removeRmapPMD(folio)
        }
        stats.count(.thpSplitPMD)
        return true
    }

    /// The accounting of a PMD split (`folio_add_anon_rmap_ptes` + `folio_ref_add`): each page
    /// of the folio gains a PTE mapping and the folio's exclusivity, the folio a reference per
    /// PTE beyond the PMD mapping's one. Locking: the PMD table's lock held.
    private func addPTEMappingsOfSplitFolio(_ folio: Page) {
        Lockdep.assertSpinLockHeld()
        let exclusive = folio.test(.anonExclusive)
        folio.refcountWord.add(Int32(folio.folioPages) - 1)
        for i in 0..<folio.folioPages {
            let p = memory.page(folio.pfn + i)
            memory.addRmap(p)
            if exclusive && i > 0 { p.set(.anonExclusive) }
        }
    }

    /// `vma_adjust_trans_huge` for a VMA boundary moving to `address`: a THP leaf that would
    /// straddle it is split first (a PMD leaf never crosses a VMA's edge).
    /// Locking: mmap lock held for write; no page-table lock held.
    func splitHugePMDAtBoundary(_ vma: VMA, _ address: UInt64) {
        mmapLock.assertWriteLocked()
        guard address & (pmdSize - 1) != 0 else { return }
        splitHugePMD(vma, address)
    }
}

extension PageTable {
    /// A present PMD leaf of a transparent huge page or the huge zero folio (not hugetlb:
    /// those are told apart by their VMA, and their leaves carry no `special` bit; a THP leaf
    /// never maps a hugetlb folio).
    @inlinable
    static func isTHPLeaf(_ v: PTE) -> Bool { v.isPresent && v.isHuge }

    /// A PMD migration entry (`pmd_is_migration_entry`) in a THP's place: its offset is the
    /// folio's head pfn.
    @inlinable
    static func isTHPMigration(_ v: PTE) -> Bool { v.isSwap && v.isHuge && v.swapEntry.isMigration }

    /// A device-private PMD entry (`pmd_is_device_private_entry`): a large device-private
    /// folio mapped whole; its offset is the folio's head pfn. It holds a PMD mapping and a
    /// reference, as a leaf does.
    @inlinable
    static func isTHPDevicePrivate(_ v: PTE) -> Bool { v.isSwap && v.isHuge && v.swapEntry.isDevicePrivate }

    /// A THP leaf, a PMD migration entry or a device-private PMD (`pmd_trans_huge ||
    /// is_swap_pmd` outside hugetlb): what the PMD-level paths (zap, mprotect, fork, mremap,
    /// split) take whole or split.
    @inlinable
    static func isTHPEntry(_ v: PTE) -> Bool { isTHPLeaf(v) || isTHPMigration(v) || isTHPDevicePrivate(v) }

    /// The head pfn a THP entry names (the huge zero folio's for its leaf).
    @inlinable
    static func thpEntryPfn(_ v: PTE) -> UInt64 { v.isPresent ? v.pfn : v.swapEntry.pfn }
}
