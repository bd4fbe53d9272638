import MMSync

extension AddressSpace {
    /// `huge_pte_lock` / `huge_pte_alloc`: the leaf entry of a hugetlb VMA's huge page at
    /// `haddr` (a PMD entry for 2 MiB pages, a PUD entry for 1 GiB ones), allocating the tables
    /// above it, with the table page whose lock guards it. Errors: ENOMEM (a table frame), EFAULT
    /// when a leaf of another size is in the way (cannot happen in a consistent table).
    /// Locking: caller holds the mmap lock, or the VMA's lock in a fault.
    func hugePTEAlloc(_ h: HState, _ haddr: UInt64) throws(Errno) -> (entry: EntryPointer, table: Page) {
        Lockdep.assertSomeRWSemHeld()
        let found = try pageTable.walkAllocating(haddr, level: h.level, mayReclaim: true)
        guard found.level == h.level else { throw .EFAULT }
        return (found.entry, found.table)
    }

    /// `hugetlb_fault`: the fault of a hugetlb VMA, at its huge page's level. Serialised with
    /// every other fault on the same huge page by the hugetlb fault mutex. An empty entry gets
    /// a new page (`hugetlb_no_page`), a write to a read-only one breaks COW (`hugetlb_wp`).
    /// Locking: as `handleMMFault` (mmap lock, or the VMA's lock with `.vmaLock`); takes the
    /// fault mutex, then the leaf's page-table lock.
    /// Return: `.ok`, `.retry`, `.sigbus` (no free huge page: the pool is exhausted, or the
    /// mapping's reservation was used), `.oom` (a page table).
    func hugetlbFault(vma: VMA, address: UInt64, flags: FaultFlags) -> FaultResult {
        assertFaultLocked(vma, flags)
        guard let h = vma.hstate else { return .sigbus }
        let haddr = address & h.mask
        let entry: EntryPointer, table: Page
        do { (entry, table) = try hugePTEAlloc(h, haddr) } catch { return error == .ENOMEM ? .oom : .sigbus }
        // Keyed by the mapping's hugetlbfs file, which forked children share.
        let mutex = memory.hugetlb.faultMutex(key: ObjectIdentifier(vma.hugetlbFile ?? vma), index: vma.hugePageIndex(haddr))
        mutex.lock(); defer { mutex.unlock() }
        let ptl = table.ptl
        let v = entry.load()
        if v.isNone { return hugetlbNoPage(vma, h, haddr, entry, ptl, flags: flags, faultMutex: mutex) }
        // Neither migration nor swap entries are made for hugetlb pages here.
        guard v.isPresent else { return .sigbus }
        ptl.lock()
        let now = entry.load()
        guard now.isPresent, now.pfn == v.pfn else { ptl.unlock(); return .retry }
        if flags.contains(.write) || flags.contains(.unshare), !now.isWrite {
            return hugetlbWP(vma, h, haddr, entry, ptl, now, flags: flags)   // drops ptl
        }
        // Spurious: the entry allows the access; mark it young (and dirty).
        entry.modify { e in flags.contains(.write) ? e.mkyoung().mkdirty() : e.mkyoung() }
        ptl.unlock()
        return .ok
    }

    /// `hugetlb_no_page` for a private mapping: a zeroed huge page from the pool — consuming
    /// the mapping's reservation for it if it still holds one — mapped exclusive; writable and
    /// dirty for a write fault (the kernel maps it read-only, then `hugetlb_wp` reuses it at
    /// once), read-only for a read fault.
    /// Locking: fault lock and `faultMutex` (the hugetlb fault mutex) held; takes the
    /// page-table lock.
    private func hugetlbNoPage(_ vma: VMA, _ h: HState, _ haddr: UInt64, _ entry: EntryPointer, _ ptl: SpinLockRef,
                               flags: FaultFlags, faultMutex: Lock) -> FaultResult {
        assertFaultLocked(vma, flags)
        faultMutex.assertHeld()
        if vma.isShared, let file = vma.hugetlbFile {
            return hugetlbNoPageShared(vma, file, haddr, entry, ptl, flags: flags, faultMutex: faultMutex)
        }
        guard let av = vmfAnonPrepare(vma, flags) else { return .retry }
        let index = vma.hugePageIndex(haddr)
        let reserved = vma.hugetlbResv?.consume(index) ?? false
        guard let folio = memory.hugetlb.allocateFolio(h, reserved: reserved) else {
            if reserved { vma.hugetlbResv?.restore(index) }
            return .sigbus
        }
        ptl.lock()
        guard entry.load().isNone else {
            ptl.unlock()
            if reserved { vma.hugetlbResv?.restore(index) }
            memory.hugetlb.abandonFolio(h, folio, restoreReservation: reserved)
            return .retry
        }
        memory.addNewAnonRmap(folio, vma: vma, address: haddr, anonVMA: av)
        let write = flags.contains(.write)
        entry.store(.page(folio.pfn, write: write && vma.flags.contains(.write), dirty: write, huge: true))
        ptl.unlock()
        stats.count(.hugetlbFaultNewPage)
        return .ok
    }

    /// `hugetlb_no_page` for a shared mapping: the file's page at this index, found in its cache
    /// or allocated into it, mapped writable (and dirty) when the VMA is writable
    /// (`make_huge_pte(vma, folio, VM_SHARED)`), read-only otherwise.
    /// Locking: fault lock and `faultMutex` (the hugetlb fault mutex) held; takes the
    /// page-table lock.
    private func hugetlbNoPageShared(_ vma: VMA, _ file: HugetlbFile, _ haddr: UInt64, _ entry: EntryPointer, _ ptl: SpinLockRef,
                                     flags: FaultFlags, faultMutex: Lock) -> FaultResult {
        assertFaultLocked(vma, flags)
        guard let (page, new) = file.findOrAllocate(vma.hugePageIndex(haddr), pageIndex: vma.linearPageIndex(haddr),
                                                    faultMutex: faultMutex) else { return .sigbus }
        ptl.lock()
        guard entry.load().isNone else {
            ptl.unlock()
            memory.put(page)
            return .retry
        }
        memory.addRmap(page)
        let writable = vma.flags.contains(.write)
        entry.store(.page(page.pfn, write: writable, dirty: writable, huge: true))
        ptl.unlock()
        if new { stats.count(.hugetlbFaultNewPage) }
        return .ok
    }

    /// `hugetlb_wp`: a write (or unshare) fault on a read-only huge page of a private mapping.
    /// A page only this mapping maps is reused (made writable; an unshare just marks it
    /// exclusive); a page shared copy-on-write with a forked process is copied into a new huge
    /// page, which needs a free page nobody reserved — or the mapping's reservation for this
    /// index if it still holds it.
    /// Return: `.sigbus` when no huge page is free (the kernel lets the reservation owner take
    /// the page back from its children instead: see docs/linux-divergences.md).
    /// Locking: called with the leaf's page-table lock held; returns with it released.
    private func hugetlbWP(_ vma: VMA, _ h: HState, _ haddr: UInt64, _ entry: EntryPointer, _ ptl: SpinLockRef,
                           _ old: PTE, flags: FaultFlags) -> FaultResult {
        ptl.assertHeld()
        let unshare = !flags.contains(.write)
        if vma.isShared {
            if !unshare { entry.store(old.mkwrite().mkdirty().mkyoung()) }
            ptl.unlock()
            return .ok
        }
        let folio = memory.page(old.pfn)
        if folio.isAnon && (folio.test(.anonExclusive) || folio.mapcount == 1) {
            folio.set(.anonExclusive)
            if !unshare { entry.store(old.mkwrite().mkdirty().mkyoung()) }
            ptl.unlock()
            stats.count(.hugetlbFaultCOWReuse)
            return .ok
        }
        memory.get(folio)   // the source stays while it is copied without the lock
        ptl.unlock()
        defer { memory.put(folio) }
        guard let av = vmfAnonPrepare(vma, flags) else { return .retry }
        let index = vma.hugePageIndex(haddr)
        let reserved = vma.hugetlbResv?.consume(index) ?? false
        guard let new = memory.hugetlb.allocateFolio(h, reserved: reserved, zero: false) else {
            if reserved { vma.hugetlbResv?.restore(index) }
            return .sigbus
        }
        memory.copyHugePage(to: new, from: folio)
        stats.count(.bytesCopied, Int(h.size))
        let range = MMUNotifierRange(start: haddr, end: haddr + h.size, event: .clear)
        notifiers.invalidateRangeStart(range)
        defer { notifiers.invalidateRangeEnd(range) }
        ptl.lock()
        let now = entry.load()
        guard now.isPresent, now.pfn == old.pfn, !now.isWrite else {
            ptl.unlock()
            if reserved { vma.hugetlbResv?.restore(index) }
            memory.hugetlb.abandonFolio(h, new, restoreReservation: reserved)
            return .retry
        }
        memory.addNewAnonRmap(new, vma: vma, address: haddr, anonVMA: av)
        entry.store(.page(new.pfn, write: !unshare && vma.flags.contains(.write), dirty: true, huge: true))
        // huge_ptep_clear_flush: no CPU keeps using the old page once the new one is visible.
        flushTLB()
        memory.removeRmap(folio)
        ptl.unlock()
        memory.put(folio)   // the mapping's reference
        stats.count(.hugetlbFaultCOWCopy)
        return .ok
    }
}
