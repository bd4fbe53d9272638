import MMSync

extension AddressSpace {
    /// `migrate_vma_insert_huge_pmd_page`: maps a new order-9 folio (a migration's
    /// destination: device-private, device-coherent or system) whole at the 2 MiB-aligned
    /// `haddr`, where the source had nothing (an empty PMD) or the huge zero folio, which it
    /// replaces (its deposited table stays, the TLB is flushed). A device-private folio gets a
    /// device-private PMD, writable iff the VMA is; any other a leaf with the VMA's protection,
    /// writable and dirty iff the VMA is writable. The folio becomes anonymous and exclusive,
    /// mapped once by the PMD, and gains the mapping's reference.
    /// Return: false (nothing changed) if the 2 MiB is not inside the VMA, the PMD holds
    /// anything else (a PTE table, a leaf), or a table cannot be allocated.
    /// Locking: mmap lock held (for read); `folio` locked, not yet visible to others; no
    /// page-table lock held; takes the PMD's lock.
    package func insertAnonHugePMD(_ vma: VMA, _ haddr: UInt64, folio: Page) -> Bool {
        mmapLock.assertLocked(); Lockdep.assertNoSpinLockHeld()
        assert(folio.isLocked && folio.test(.head) && folio.order == pmdOrder, "insertAnonHugePMD: a locked order-9 folio")
        guard vma.isAnonymous, !vma.isHugetlb, haddr & (pmdSize - 1) == 0, haddr >= vma.start, haddr + pmdSize <= vma.end else {
            return false
        }
        let av = anonVMAPrepare(vma)
        let found: (entry: EntryPointer, table: Page, level: PageTableLevel)
        do { found = try pageTable.walkAllocating(haddr, level: .pmd) } catch { return false }
        guard found.level == .pmd, let pgtable = pageTable.allocateDepositTable() else { return false }
        let writable = vma.flags.contains(.write)
        let entry: PTE
        if folio.isDevicePrivate {
            entry = SwapEntry.devicePrivate(pfn: folio.pfn, write: writable).pte(pmd: true)
        } else {
            entry = .page(folio.pfn, write: writable, user: vma.pageProtReadable, dirty: writable, huge: true)
        }
        thpMapped.storeRelease(1)   // before the entry can be seen
        memory.thp.noteFolioMade()
        let ptl = found.table.ptl
        ptl.lock()
        let old = found.entry.load()
        let replacingZero = memory.thp.isHugeZero(old)
        guard replacingZero || old.isNone else {
            ptl.unlock()
            pageTable.freeTable(pgtable)
            return false
        }
        memory.addNewAnonRmapPMD(folio, vma: vma, address: haddr, anonVMA: .passUnretained(av))
        memory.get(folio)
        if replacingZero {
            // The zero folio's deposited table serves the new entry. Swapped in one step,
            // never empty: a PTE table may be put in an empty PMD without the lock.
            found.entry.store(entry)
            flushTLB()
        } else if found.entry.compareExchange(.none, entry) {
            pageTable.deposit(pgtable, in: found.table)
        } else {
            // A PTE table went in meanwhile (installed without the lock): undo.
            memory.undoNewAnonRmapPMD(folio)
            for i in 0..<folio.folioPages {
                let p = memory.page(folio.pfn + i)
                p.ownerBits = 0
                p.index = 0
            }
            folio.clear([.anon, .anonExclusive])
            ptl.unlock()
            memory.put(folio)
            pageTable.freeTable(pgtable)
            return false
        }
        ptl.unlock()
        if replacingZero { pageTable.freeTable(pgtable) }
        // folio_add_lru_vma (7.2 under the lock; the batch lock is not a spin lock here).
        if !folio.isZoneDevice { memory.lru.add(folio) }
        stats.count(.thpFaultAlloc)
        return true
    }
}
