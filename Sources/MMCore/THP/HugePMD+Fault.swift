import MMSync

extension AddressSpace {
    /// The PMD half of `__handle_mm_fault` for an anonymous VMA: an empty PMD where a THP is
    /// allowed gets one (`create_huge_pmd`); a THP leaf takes a write or unshare fault
    /// (`wp_huge_pmd`) or is marked young (`huge_pmd_set_accessed`); a PMD migration entry is
    /// waited out (`pmd_migration_entry_wait`, then `.ok`: the access is taken again).
    /// Return: the fault's result, or nil to go on at the PTE level (`VM_FAULT_FALLBACK`: no
    /// huge page, or the leaf was split).
    /// Locking: as `handleMMFault`; no page-table lock held.
    func handleHugePMDFault(_ vma: VMA, _ address: UInt64, _ pmd: EntryPointer, table: Page,
                            flags: FaultFlags, realAddress: UInt64) -> FaultResult? {
        assertFaultLocked(vma, flags)
        let v = pmd.load()
        if v.isNone {
            guard thp.allowsFault(vma, address) else { return nil }
            return doHugePMDAnonymousPage(vma, address, pmd, table: table, flags: flags, realAddress: realAddress)
        }
        if PageTable.isTHPMigration(v) { return pmdMigrationEntryWait(pmd, table: table, v) }
        if PageTable.isTHPDevicePrivate(v) {
            return doHugePMDDevicePrivate(vma, address, pmd, table: table, v, flags: flags)
        }
        guard PageTable.isTHPLeaf(v) else { return nil }
        if (flags.contains(.write) || flags.contains(.unshare)) && !v.isWrite {
            return doHugePMDWPPage(vma, address, pmd, table: table, v, flags: flags, realAddress: realAddress)
        }
        // huge_pmd_set_accessed.
        table.ptl.lock()
        pmd.modify { now in
            guard now.isPresent && now.isHuge && now.pfn == v.pfn else { return now }
            return flags.contains(.write) ? now.mkyoung().mkdirty() : now.mkyoung()
        }
        table.ptl.unlock()
        return .ok
    }

    /// `do_huge_pmd_device_private`: a CPU access to a device-private PMD. Under the VMA lock
    /// the fault is retried under the mmap lock (as for a device-private PTE); otherwise,
    /// under the PMD lock, the folio is trylocked and only then referenced, and the owner's
    /// `migrateToRAM` is told the entry is a PMD (it may move the whole folio back). A thread
    /// that loses the trylock waits for the unlock holding nothing and refaults (the kernel
    /// refaults at once; the wait only saves the spinning).
    /// Locking: as `handleMMFault`; no page-table lock held.
    func doHugePMDDevicePrivate(_ vma: VMA, _ address: UInt64, _ pmd: EntryPointer, table: Page, _ orig: PTE,
                                flags: FaultFlags) -> FaultResult {
        assertFaultLocked(vma, flags); Lockdep.assertNoSpinLockHeld()
        if flags.contains(.vmaLock) { return .retry }
        table.ptl.lock()
        guard pmd.load() == orig else { table.ptl.unlock(); return .ok }
        let folio = memory.page(orig.swapEntry.pfn)
        guard folio.tryLock() else {
            table.ptl.unlock()
            folio.waitUnlocked()
            return .ok
        }
        memory.get(folio)
        table.ptl.unlock()
        defer { folio.unlock(); memory.put(folio) }
        guard let pgmap = memory.pagemap(of: folio), let ops = pgmap.ops else { return .sigbus }
        stats.count(.faultDevicePrivate)
        let r = ops.migrateToRAM(DevicePrivateFault(mm: self, vma: vma, address: address, page: folio,
                                                    isWrite: flags.contains(.write), pmdMapped: true))
        return r == .ok ? .retry : r
    }

    /// `pmd_migration_entry_wait`: the migrating thread holds the folio's lock until the entry
    /// is replaced; the fault waits for the unlock holding no reference (so the migration's
    /// count check cannot fail because of it), and the access is simply taken again (0).
    /// Locking: no page-table lock held; takes the PMD's lock to read the entry.
    func pmdMigrationEntryWait(_ pmd: EntryPointer, table: Page, _ v: PTE) -> FaultResult {
        Lockdep.assertNoSpinLockHeld()
        table.ptl.lock()
        guard pmd.load() == v else { table.ptl.unlock(); return .ok }
        let folio = memory.page(v.swapEntry.pfn)
        table.ptl.unlock()
        folio.waitUnlocked()
        stats.count(.faultMigrationWait)
        return .ok
    }

    /// `do_huge_pmd_anonymous_page`: a read maps the huge zero folio (when `use_zero_page`);
    /// a write maps a new zeroed order-9 folio, exclusive and writable as the VMA. Each comes
    /// with a deposited PTE table. Nil (fallback to 4 KiB pages) when no order-9 block is
    /// free (`thp_fault_fallback`).
    func doHugePMDAnonymousPage(_ vma: VMA, _ address: UInt64, _ pmd: EntryPointer, table: Page,
                                flags: FaultFlags, realAddress: UInt64) -> FaultResult? {
        let haddr = address & pmdMask
        guard let av = vmfAnonPrepare(vma, flags) else { return .retry }
        thpMapped.storeRelease(1)   // before any leaf can be seen
        thp.noteFolioMade()
        if !flags.contains(.write) && thp.useZeroPage {
            guard let pgtable = pageTable.allocateDepositTable(mayReclaim: true) else { return .oom }
            guard let zero = memory.thp.getHugeZeroFolio(for: self) else {
                pageTable.freeTable(pgtable)
                stats.count(.thpFaultFallback)
                return nil
            }
            // Installed with a compare-and-swap: a PTE table may be put in an empty PMD
            // without its lock (`walkAllocating`).
            table.ptl.lock()
            guard pmd.compareExchange(.none, .page(zero.pfn, write: false, special: true, huge: true)) else {
                table.ptl.unlock(); pageTable.freeTable(pgtable); return .ok
            }
            pageTable.deposit(pgtable, in: table)
            table.ptl.unlock()
            return .ok
        }
        guard let folio = memory.allocate(order: pmdOrder, lru: true) else { stats.count(.thpFaultFallback); return nil }
        clearHugeFolio(folio, realAddress)
        guard let pgtable = pageTable.allocateDepositTable(mayReclaim: true) else { memory.put(folio); return .oom }
        table.ptl.lock()
        guard pmd.load().isNone else {
            table.ptl.unlock()
            memory.put(folio)
            pageTable.freeTable(pgtable)
            return .ok
        }
        memory.addNewAnonRmapPMD(folio, vma: vma, address: haddr, anonVMA: av)
        guard pmd.compareExchange(.none, .page(folio.pfn, write: vma.flags.contains(.write), dirty: true, huge: true)) else {
            // A PTE table went in meanwhile (installed without the lock): undo.
            memory.undoNewAnonRmapPMD(folio)
            table.ptl.unlock()
            memory.put(folio)
            pageTable.freeTable(pgtable)
            return .ok
        }
        pageTable.deposit(pgtable, in: table)
        table.ptl.unlock()
        stats.count(.thpFaultAlloc)
        return .ok
    }

    /// `folio_zero_user`, in 7.2's order: the pages right of the faulting page's neighbourhood
    /// (`FOLIO_ZERO_LOCALITY_RADIUS`, two pages either side), then those left of it, then the
    /// neighbourhood, each a contiguous run (`clear_contig_highpages`) streamed with one fence;
    /// the faulting page comes last, its faulting line written into the cache (7.2 clears the
    /// neighbourhood with cached stores to keep it hot; the model keeps only that line).
    private func clearHugeFolio(_ folio: Page, _ realAddress: UInt64) {
        let n = UInt64(folio.folioPages), fault = (realAddress & (pmdSize - 1)) >> pageShift
        let radius: UInt64 = 2
        let lo = fault >= radius ? fault - radius : 0, hi = min(fault + radius, n - 1)
        memory.clearFrames(folio.pfn + hi + 1, count: n - hi - 1)
        memory.clearFrames(folio.pfn, count: lo)
        memory.clearFrames(folio.pfn + lo, count: fault - lo)
        memory.clearFrames(folio.pfn + fault + 1, count: hi - fault)
        memory.clearUserPage(memory.page(folio.pfn + fault), address: realAddress)
    }

    /// `do_huge_pmd_wp_page`: a write (or unshare) to a read-only THP leaf. The huge zero
    /// folio is replaced by a new THP (`do_huge_zero_wp_pmd`); an exclusive folio, or one whose
    /// only reference is this mapping, is reused; otherwise (shared with a fork, or referenced
    /// elsewhere) the PMD is split and the fault goes on at the PTE level, as Linux does since
    /// 5.8 (no 2 MiB copy). Nil means that fallback.
    /// Locking: as `handleMMFault`; no page-table lock held.
    func doHugePMDWPPage(_ vma: VMA, _ address: UInt64, _ pmd: EntryPointer, table: Page, _ orig: PTE,
                         flags: FaultFlags, realAddress: UInt64) -> FaultResult? {
        assertFaultLocked(vma, flags); Lockdep.assertNoSpinLockHeld()
        let haddr = address & pmdMask
        if orig.isSpecial {
            if let r = doHugeZeroWPPMD(vma, address, pmd, table: table, orig, flags: flags, realAddress: realAddress) { return r }
            splitHugePMD(vma, haddr)
            return nil
        }
        table.ptl.lock()
        guard pmd.load() == orig else { table.ptl.unlock(); return .ok }
        let folio = memory.page(orig.pfn)
        var reuse = folio.test(.anonExclusive)
        if !reuse {
            if !folio.tryLock() {
                memory.get(folio)
                table.ptl.unlock()
                folio.lock()
                table.ptl.lock()
                guard pmd.load() == orig else { table.ptl.unlock(); folio.unlock(); memory.put(folio); return .ok }
                memory.put(folio)   // the PMD still maps it: not the last reference
            }
            if folio.test(.anonExclusive) {
                reuse = true
            } else if folio.refcount == 1 {
                folio.set(.anonExclusive)
                reuse = true
            }
            folio.unlock()
        }
        if reuse {
            if flags.contains(.write) {
                pmd.modify { now in now.isPresent ? PTE(raw: now.mkyoung().mkdirty().raw | (vma.flags.contains(.write) ? PTE.write : 0)) : now }
            }
            table.ptl.unlock()
            stats.count(.faultCOWReuse)
            return .ok
        }
        table.ptl.unlock()
        splitHugePMD(vma, haddr)
        return nil
    }

    /// `do_huge_zero_wp_pmd`: a new zeroed THP replaces the huge zero folio, under a CLEAR
    /// invalidation of the 2 MiB; the deposited table stays with the new leaf.
    /// Nil when no order-9 block is free (the caller splits the zero PMD).
    private func doHugeZeroWPPMD(_ vma: VMA, _ address: UInt64, _ pmd: EntryPointer, table: Page, _ orig: PTE,
                                 flags: FaultFlags, realAddress: UInt64) -> FaultResult? {
        let haddr = address & pmdMask
        guard let av = vmfAnonPrepare(vma, flags) else { return .retry }
        guard let folio = memory.allocate(order: pmdOrder, lru: true) else { stats.count(.thpFaultFallback); return nil }
        clearHugeFolio(folio, realAddress)
        let range = MMUNotifierRange(start: haddr, end: haddr + pmdSize, event: .clear)
        notifiers.invalidateRangeStart(range)
        defer { notifiers.invalidateRangeEnd(range) }
        table.ptl.lock()
        // The leaf is swapped for the new one in one step (never empty: a PTE table could be
        // put in an empty PMD without the lock); a CPU may set the accessed bit meanwhile.
        var now = pmd.load()
        let new = PTE.page(folio.pfn, write: vma.flags.contains(.write), dirty: true, huge: true)
        while true {
            guard now.pfn == orig.pfn, PageTable.isTHPLeaf(now), now.isSpecial else {
                table.ptl.unlock(); memory.put(folio); return .ok
            }
            if pmd.compareExchange(now, new) { break }
            now = pmd.load()
        }
        flushTLB()
        memory.addNewAnonRmapPMD(folio, vma: vma, address: haddr, anonVMA: av)
        table.ptl.unlock()
        stats.count(.thpFaultAlloc)
        return .ok
    }
}
