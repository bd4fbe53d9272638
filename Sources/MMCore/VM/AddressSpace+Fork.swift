import MMArch
import MMSync

extension AddressSpace {
    /// `dup_mmap`: a copy of this address space for a child process. Private anonymous pages
    /// become shared copy-on-write (write-protected in parent and child) unless they may be
    /// pinned for DMA, in which case the child gets its own copy at once; non-present entries are
    /// copied as `copy_nonpresent_pte` does. Shared and file mappings without anonymous pages
    /// are not copied: the child faults them in.
    /// Locking: takes this mm's mmap lock for write and write-locks each of its VMAs; the child
    /// is not yet visible to anyone.
    /// Return: the child, or ENOMEM — also when a device-exclusive page is locked at that moment,
    /// as in Linux 7.2 (the partial child is torn down).
    public func fork() throws(Errno) -> AddressSpace {
        mmapLock.assertNotHeld()
        defer { machine.operationDone("fork") }
        let child = try AddressSpace(machine: machine)
        mmapWriteLock(); defer { mmapWriteUnlock() }
        guard !isDead else { child.exitMMap(); throw .EINVAL }
        child.mmapWriteLock()
        // A parent that mapped a THP may hold large folios mapped by PTEs (a split PMD): the
        // child's copies of those PTEs map them too, and the PMD-level paths (collect's split
        // of a PTE-mapped large folio, the fault's PMD look) must not skip the child.
        if mayHoldTHP { child.thpMapped.storeRelease(1) }
        var failure: Errno?
        var parentChanged = false
        for vma in vmaList {
            // No fault may change the parent's VMA or its entries while they are copied: the
            // per-VMA lock does not exclude faults the mmap lock would (dup_mmap).
            vmaStartWrite(vma)
            if vma.flags.contains(.dontCopy) { continue }
            let cv = vma.duplicate(into: child)
            // hugetlb_dup_vma_private: a child's private hugetlb VMA owns no reservations.
            if !vma.isShared { cv.hugetlbResv = nil }
            anonVMAFork(child: cv, parent: vma)
            child.vmaList.append(cv)
            cv.isAttached = true
            if let f = cv.file { f.linkMapping(cv) }
            guard vma.anonVMA != nil || vma.isSpecialMapping else { continue }
            // copy_hugetlb_page_range's COW invalidation is a CLEAR, copy_page_range's a
            // PROTECTION_PAGE.
            let range = MMUNotifierRange(start: vma.start, end: vma.end, event: vma.isHugetlb ? .clear : .protectionPage)
            let cow = vma.isCOWMapping
            if cow { notifiers.invalidateRangeStart(range) }
            var copier = ForkCopier(parent: self, child: child, vma: vma, childVMA: cv, cow: cow)
            let err = pageTable.walk(vma.start, vma.end, &copier)
            copier.finish()
            copier.releasePrealloc()
            parentChanged = parentChanged || copier.parentChanged
            if cow { notifiers.invalidateRangeEnd(range) }
            if let err { failure = err; break }
        }
        if parentChanged { flushTLB() }
        child.mmapWriteUnlock()
        stats.count(.forks)
        if let failure { child.exitMMap(); throw failure }
        return child
    }
}

/// `copy_pte_range` for one VMA.
struct ForkCopier: PageWalker {
    let parent: AddressSpace
    let child: AddressSpace
    let vma: VMA
    let childVMA: VMA
    let cow: Bool
    var parentChanged = false
    /// Stored (not `parent.memory`): a `let` of this walker is used without reference traffic.
    let memory: PhysicalMemory
    let childTables: PageTable
    /// The child's PTE table for the 2 MiB being copied: allocated once per table, as
    /// copy_pte_range does (`pte_alloc_map_lock`), not walked down to for every entry.
    var dstTable: (base: UInt64, page: Page)? = nil
    /// Pages allocated (with reclaim, no lock held) for the copies that pinned pages need in
    /// the PTE table being copied (`folio_prealloc` before `copy_present_page`).
    var prealloc: [Page] = []

    /// Unlocks the child's current PTE table (after the walk, or before the next table).
    mutating func finish() {
        if let t = dstTable { t.page.ptl.unlock(); dstTable = nil }
    }

    /// Frees the preallocated pages nothing used. Locking: no page-table lock held.
    mutating func releasePrealloc() {
        Lockdep.assertNoSpinLockHeld()
        for p in prealloc { memory.put(p) }
        prealloc.removeAll()
    }

    init(parent: AddressSpace, child: AddressSpace, vma: VMA, childVMA: VMA, cow: Bool) {
        self.parent = parent; self.child = child; self.vma = vma; self.childVMA = childVMA; self.cow = cow
        memory = parent.memory; childTables = child.pageTable
    }

    mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let v = pmd.load()
        if v.isPresent && !v.isHuge {
            // The child's PTE table (and the tables above it) are allocated here, where no lock
            // is held, so that the allocation may reclaim (GFP_KERNEL, as `pte_alloc_map_lock`
            // in copy_pte_range); `pteEntry`, under the parent's PTE lock, then finds it.
            if dstTable?.base != start & ~(pmdSize - 1) {
                finish()
                do { _ = try childTables.walkAllocating(start, level: .pte, mayReclaim: true) } catch { return .stop(.ENOMEM) }
                // copy_pte_range's -EAGAIN round: a page that may be pinned gets its child's
                // copy from a page allocated here, where it may reclaim (the table is read
                // without its lock: a pin taken meanwhile is copied into a page allocated
                // without reclaim under the lock).
                let ptes = EntryPointer(memory.frame(v.pfn))
                var pinned = 0
                var a = start
                while a < end {
                    let e = (ptes + PageTableLevel.pte.index(a)).load()
                    a += pageSize
                    guard e.isPresent, !e.isSpecial, memory.isValidPfn(e.pfn) else { continue }
                    let p = memory.page(e.pfn)
                    if p.isAnon && p.folioHead.pincount > 0 { pinned += 1 }
                }
                while prealloc.count < pinned {
                    guard let p = memory.allocate(order: 0, mayReclaim: true, lru: true) else { return .stop(.ENOMEM) }
                    prealloc.append(p)
                }
            }
            return .next
        }
        if !vma.isHugetlb { return copyHugePMD(pmd, table: table, start) }
        return copyHugetlbEntry(pmd, table: table, start)
    }

    /// `copy_huge_pmd`: a THP leaf is shared with the child copy-on-write (a reference and a
    /// PMD mapping more, no longer exclusive, write-protected in both), each side with its
    /// own deposited table; the huge zero folio is shared as it is. A folio that may be
    /// pinned for DMA is not shared: the parent's PMD is split and its pages copied at the
    /// PTE level (`copy_present_page` gives the child its own copies).
    /// Locking: parent's mmap lock held for write; takes the parent's PMD lock.
    private mutating func copyHugePMD(_ src: EntryPointer, table: Page, _ addr: UInt64) -> WalkStep {
        parent.mmapLock.assertWriteLocked()
        finish()
        let dst: (entry: EntryPointer, table: Page, level: PageTableLevel)
        // pte_alloc_one (GFP_KERNEL) before any lock: it may reclaim.
        do { dst = try childTables.walkAllocating(addr, level: .pmd, mayReclaim: true) } catch { return .stop(.ENOMEM) }
        guard let pgtable = childTables.allocateDepositTable(mayReclaim: true) else { return .stop(.ENOMEM) }
        table.ptl.lock()
        let v = src.load()
        if PageTable.isTHPMigration(v) {
            // copy_huge_non_present_pmd: a write or read-exclusive entry becomes read in both
            // (the folio is now shared copy-on-write); the entry holds no mapping or reference.
            var e = v
            if cow && v.swapEntry.type != SwapEntry.migrationRead {
                e = v.swapEntry.readableMigration(exclusive: false).pte(softDirty: v.isSoftDirty, pmd: true)
                src.store(e)
            }
            table.ptl.unlock()
            installChildPMD(e, pgtable, dst.entry, dst.table)
            return .skip
        }
        if PageTable.isTHPDevicePrivate(v) {
            // copy_huge_non_present_pmd: a writable device-private PMD becomes read in both
            // (there is no read-exclusive device-private entry); the folio gains a reference
            // and a PMD mapping and is no longer exclusive (it cannot be pinned: the CPU has
            // no access to it).
            var e = v
            let s = v.swapEntry
            if s.isWrite {
                e = SwapEntry.devicePrivate(pfn: s.pfn, write: false).pte(softDirty: v.isSoftDirty, pmd: true)
                src.store(e)
            }
            let folio = memory.page(s.pfn)
            memory.get(folio)
            memory.addRmapPMD(folio)
            folio.clear(.anonExclusive)
            table.ptl.unlock()
            installChildPMD(e, pgtable, dst.entry, dst.table)
            return .skip
        }
        guard PageTable.isTHPLeaf(v) else { table.ptl.unlock(); childTables.freeTable(pgtable); return .next }
        if v.isSpecial {
            table.ptl.unlock()
            guard memory.thp.getHugeZeroFolio(for: child) != nil else { childTables.freeTable(pgtable); return .stop(.ENOMEM) }
            table.ptl.lock()
        } else {
            let folio = memory.page(v.pfn)
            if cow && folio.test(.anonExclusive) && folio.pincount > 0 {
                table.ptl.unlock()
                childTables.freeTable(pgtable)
                parent.splitHugePMD(vma, addr)
                // copy_huge_pmd's -EAGAIN: the PTE table is copied as any other, with its
                // pinned pages' copies allocated first (pmdEntry again).
                return .again
            }
            memory.get(folio)
            memory.addRmapPMD(folio)
            if cow { folio.clear(.anonExclusive) }
        }
        var e = src.load()
        if cow && e.isWrite { e = src.modify { $0.wrprotect() }.new; parentChanged = true }
        table.ptl.unlock()
        installChildPMD(e, pgtable, dst.entry, dst.table)
        return .skip
    }

    /// The child's side of `copy_huge_pmd`: the entry with its deposited table. The child is
    /// not visible to anyone yet: its PMD lock is taken only for the deposit.
    private func installChildPMD(_ e: PTE, _ pgtable: Page, _ entry: EntryPointer, _ table: Page) {
        child.thpMapped.storeRelease(1)
        table.ptl.lock()
        childTables.deposit(pgtable, in: table)
        entry.store(e)
        table.ptl.unlock()
    }

    mutating func pudLeaf(_ pud: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        precondition(vma.isHugetlb, "fork of a PUD-level leaf outside hugetlb")
        return copyHugetlbEntry(pud, table: table, start)
    }

    /// `copy_hugetlb_page_range` for one huge page: in a COW mapping the page becomes shared
    /// copy-on-write (a reference and a mapping more, no longer exclusive, write-protected in
    /// parent and child), unless it may be pinned for DMA: then the child gets its own copy
    /// now, from a free huge page nobody reserved (ENOMEM without one).
    /// Locking: parent's mmap lock held for write; takes the parent's leaf lock.
    private mutating func copyHugetlbEntry(_ src: EntryPointer, table: Page, _ addr: UInt64) -> WalkStep {
        parent.mmapLock.assertWriteLocked()
        finish()
        guard let h = vma.hstate else { return .skip }
        let dst: (entry: EntryPointer, table: Page)
        do { dst = try child.hugePTEAlloc(h, addr) } catch { return .stop(.ENOMEM) }
        table.ptl.lock(); defer { table.ptl.unlock() }
        let v = src.load()
        guard v.isPresent else { return .skip }   // (no hugetlb migration or swap entries here)
        let folio = memory.page(v.pfn)
        if cow && folio.isAnon && folio.test(.anonExclusive) && folio.pincount > 0 {
            table.ptl.unlock(); defer { table.ptl.lock() }
            guard let new = memory.hugetlb.allocateFolio(h, reserved: false, zero: false) else { return .stop(.ENOMEM) }
            memory.copyHugePage(to: new, from: folio)
            parent.stats.count(.bytesCopied, Int(h.size))
            memory.addNewAnonRmap(new, vma: childVMA, address: addr, anonVMA: .passUnretained(parent.anonVMAPrepare(childVMA)))
            // hugetlb_install_folio: writable whenever the VMA is (make_huge_pte(…, true)).
            dst.entry.store(.page(new.pfn, write: childVMA.flags.contains(.write), dirty: true, huge: true))
            return .skip
        }
        memory.get(folio)
        memory.addRmap(folio)
        var e = v
        if cow {
            if folio.test(.anonExclusive) { folio.clear(.anonExclusive) }
            if v.isWrite { e = src.modify { $0.wrprotect() }.new; parentChanged = true }
        }
        dst.entry.store(e)
        return .skip
    }

    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        let v = pte.load()
        let base = addr & ~(pmdSize - 1)
        if dstTable?.base != base {
            finish()
            let found: (entry: EntryPointer, table: Page, level: PageTableLevel)
            do { found = try childTables.walkAllocating(addr, level: .pte) } catch { return .stop(.ENOMEM) }
            // The child's tables are private to this thread until fork returns: no lock is
            // needed, but it is taken (once per table) so every store is made under a PTL.
            found.table.ptl.lock()
            dstTable = (base, found.table)
        }
        let dst = (entry: childTables.entry(inTable: dstTable!.page.pfn, index: PageTableLevel.pte.index(addr)), table: dstTable!.page)
        if v.isPresent { return copyPresent(pte, v, addr, dst.entry) }
        if v.swapEntry.isDeviceExclusive {
            // Linux 7.2 (copy_nonpresent_pte): the parent's device-exclusive entry is restored
            // to an ordinary PTE (`try_restore_exclusive_pte`, no invalidation of its own: the
            // fork's PROTECTION_PAGE range already covers it) and then copied as a present
            // PTE. If the page lock is taken, the fork fails: try_restore_exclusive_pte says
            // EBUSY, which copy_pmd_range turns into ENOMEM.
            let page = memory.page(v.swapEntry.pfn)
            guard page.tryLock() else { return .stop(.ENOMEM) }
            parent.restoreExclusivePTE(vma, page, pte, v)
            page.unlock()
            // (The mutation: the restored entry is copied as it is, writable in both.)
            return copyPresent(pte, pte.load(), addr, dst.entry, wrprotect: !Mutation.on(.forkExclusiveWithoutWrprotect))
        }
        if v.swapEntry.isSwapSlot {
            // copy_nonpresent_pte: one more entry names the slot; the page is no longer
            // exclusive to the parent (pte_swp_clear_exclusive in both).
            guard memory.withSwap({ $0.dupEntryDirect(v.swapEntry) }) else { return .stop(.ENOMEM) }
            var e = v
            if v.isSwapExclusive { e = PTE(raw: v.raw & ~PTE.swapExclusive); pte.store(e) }
            dst.entry.store(e)
            return .next
        }
        copyNonPresent(pte, v, dst.entry)
        return .next
    }

    /// How many entries ahead `copyPresent` prefetches page metadata.
    static let prefetchDistance = 6

    /// `wrprotect`: a copy-on-write mapping's writable entry is write-protected in both (off
    /// only for the fork-exclusive-without-wrprotect mutation).
    private mutating func copyPresent(_ src: EntryPointer, _ v: PTE, _ addr: UInt64, _ dst: EntryPointer,
                                      wrprotect: Bool = true) -> WalkStep {
        // Every page's metadata line is cold in a large fork, and the reference, mapcount and
        // flag atomics below each wait for it: ask for the line of an entry a few ahead.
        if (addr >> pageShift) & 511 < UInt64(512 - ForkCopier.prefetchDistance) {
            let ahead = EntryPointer(src.address + 8 * ForkCopier.prefetchDistance).load()
            if ahead.isPresent && !ahead.isSpecial && memory.isValidPfn(ahead.pfn) { mm_prefetchw(memory.page(ahead.pfn).meta) }
        }
        if v.isSpecial { dst.store(v); return .next }
        let page = memory.page(v.pfn)
        if page.isAnon && page.folioHead.pincount > 0 {   // folio_maybe_dma_pinned (a THP's pins are its head's)
            // copy_present_page: a page that may be pinned for DMA keeps its identity in the
            // parent; the child gets a private copy now.
            guard let new = prealloc.popLast() ?? memory.allocate(order: 0, lru: true) else { return .stop(.ENOMEM) }
            memory.copyPage(to: new, from: page)
            memory.addNewAnonRmap(new, vma: childVMA, address: addr, anonVMA: .passUnretained(parent.anonVMAPrepare(childVMA)))
            dst.store(.page(new.pfn, write: v.isWrite, dirty: true))
            return .next
        }
        memory.get(page)
        memory.addRmap(page)
        var e = v
        if cow && v.isWrite && wrprotect {
            e = src.modify { $0.wrprotect() }.new   // keeps a dirty bit a CPU sets meanwhile
            parentChanged = true
        }
        if page.test(.anonExclusive) { page.clear(.anonExclusive) }
        // Shared mappings keep their permissions; the child's copy starts clean and old.
        dst.store(vma.isShared ? e.mkold() : e)
        return .next
    }

    private mutating func copyNonPresent(_ src: EntryPointer, _ v: PTE, _ dst: EntryPointer) {
        let s = v.swapEntry
        var e = v
        if s.isMigration {
            // A writable or read-exclusive migration entry becomes plain read in both: the page
            // is now shared copy-on-write, so it must not be restored as exclusive.
            if cow && s.type != SwapEntry.migrationRead {
                // (copy_nonpresent_pte makes the parent's read-exclusive entry readable too.)
                e = s.readableMigration(exclusive: false).pte(softDirty: v.isSoftDirty)
                src.store(e)
            }
        } else if s.isDevicePrivate {
            let page = memory.page(s.pfn)
            memory.get(page)
            memory.addRmap(page)
            if page.isAnon { page.clear(.anonExclusive) }
            if s.isWrite && cow { e = s.readOnly().pte(softDirty: v.isSoftDirty); src.store(e); parentChanged = true }
        }
        dst.store(e)
    }
}

