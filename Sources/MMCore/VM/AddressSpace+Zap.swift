import MMSync

/// Walker that clears every entry of a range (`zap_pte_range`).
struct ZapWalker: PageWalker {
    let memory: PhysicalMemory
    var gather = TLBGather()
    /// The VMA being zapped (for hugetlb reservations).
    var vma: VMA? = nil
    var visitsEmptyPTEs: Bool { false }

    mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let v = pmd.load()
        guard v.isHuge || !v.isPresent else { return .next }
        if let vma, !vma.isHugetlb {
            // A THP leaf (`zap_huge_pmd`): cleared whole when the range covers it, else split
            // first and zapped PTE by PTE (the folio stays, partly mapped).
            if start & (pmdSize - 1) == 0 && end - start == pmdSize {
                return zapHugePMD(pmd, table: table, vma: vma) ? .skip : .next
            }
            vma.mm.splitHugePMD(vma, start)
            return .next
        }
        zapHugeLeaf(pmd, table: table, .pmd, start, end)
        return .skip
    }

    /// `zap_huge_pmd`: the leaf goes with its deposited table; a THP loses a PMD mapping and
    /// its reference is dropped after the flush, as a PTE's. A PMD migration entry goes with
    /// its table alone: it holds no mapping or reference. A device-private PMD loses the
    /// folio's PMD mapping and reference, as a leaf.
    /// Return: false if the entry is no leaf anymore (a split raced: the walk goes below).
    private mutating func zapHugePMD(_ pmd: EntryPointer, table: Page, vma: VMA) -> Bool {
        table.ptl.lock()
        guard PageTable.isTHPEntry(pmd.load()) else { table.ptl.unlock(); return false }
        let old = pmd.exchange(.none)
        let pgtable = vma.mm.pageTable.withdraw(from: table)
        if old.isPresent { gather.needsFlush = true }
        if old.isPresent && !old.isSpecial {
            let folio = memory.page(old.pfn)
            if old.isDirty { folio.set(.dirty) }
            memory.removeRmapPMD(folio)
            gather.add(folio)
        } else if PageTable.isTHPDevicePrivate(old) {
            // zap_huge_pmd_folio: a device-private folio is rmapped and holds the mapping's
            // reference too; nothing to flush (not present).
            let folio = memory.page(old.swapEntry.pfn)
            memory.removeRmapPMD(folio)
            gather.add(folio)
        }
        table.ptl.unlock()
        gather.tables.append(pgtable)
        return true
    }

    mutating func pudLeaf(_ pud: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        zapHugeLeaf(pud, table: table, .pud, start, end)
        return .skip
    }

    /// A hugetlb PMD or PUD leaf (THP leaves go through `zapHugePMD`) is cleared whole: hugetlb VMAs
    /// split only at huge page boundaries, and their zaps are aligned to them
    /// (`__unmap_hugepage_range`). A partial zap would need a split of the leaf first.
    private mutating func zapHugeLeaf(_ e: EntryPointer, table: Page, _ level: PageTableLevel, _ start: UInt64, _ end: UInt64) {
        precondition(start & (level.size - 1) == 0 && end - start == level.size, "partial zap of a \(level) leaf")
        table.ptl.lock()
        let old = e.exchange(.none)
        table.ptl.unlock()
        zapLeaf(old, pages: 1 << (level.shift - pageShift))
        // The reservation owner's last mapping of an anonymous huge page is gone: the
        // mapping holds the reservation for it again (so a refault cannot fail), and the page
        // returns it to the pool when freed.
        // (Only when the index had consumed its reservation: a page mapped without one, after
        // an earlier restore, gives none back — vma_needs_reservation in __unmap_hugepage_range.)
        if old.isPresent, !old.isSpecial, let vma, let resv = vma.hugetlbResv, let h = vma.hstate {
            let p = memory.page(old.pfn)
            if p.isAnon && p.mapcount == 0 && memory.hugetlb.restoreReservationOnFree(h, p), !resv.restore(vma.hugePageIndex(start)) {
                p.clear(.hugetlbRestoreReserve)
            }
        }
    }

    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        let old = pte.exchange(.none)
        zapLeaf(old, pages: 1)
        return .next
    }

    private mutating func zapLeaf(_ old: PTE, pages: Int) {
        if old.isPresent {
            gather.needsFlush = true
            if old.isSpecial { return }
            let p = memory.page(old.pfn)
            if old.isDirty { p.set(.dirty) }
            memory.removeRmap(p)
            gather.add(p)
        } else if old.isSwap {
            let s = old.swapEntry
            // Device-private and device-exclusive entries hold a mapping and a reference;
            // migration entries hold neither (the migrating thread holds the page).
            if s.isDevicePrivate || s.isDeviceExclusive {
                let p = memory.page(s.pfn)
                memory.removeRmap(p)
                gather.pages.append(p)
            } else if s.isSwapSlot, let p = memory.withSwap({ $0.putEntryDirect(s) }) {
                // swap_put_entries_direct: the slot loses this entry; a page that cached it
                // and was dropped from the cache is released with the gathered pages.
                gather.pages.append(p)
            }
        }
    }
}

extension AddressSpace {
    /// Clears every entry of [start, end) inside `vma`, bracketed by an invalidation with
    /// `event`, then flushes the TLB and drops the page references (`zap_vma_range`).
    /// Locking: mmap lock held (or the rmap lock of a file the VMA maps); no PTE lock held.
    func zapRange(vma: VMA, start: UInt64, end: UInt64, event: MMUNotifyEvent) {
        Lockdep.assertNoSpinLockHeld(); Lockdep.assertSomeRWSemHeld()
        zapVMAs([vma], start: start, end: end, event: event)
    }

    /// `zap_vma_for_reaping`: the whole of `vma` cleared as `zapRange` does, but under a
    /// non-blocking CLEAR invalidation (`mmu_notifier_invalidate_range_start_nonblock`): a
    /// subscriber that would have to sleep refuses it, and then nothing is cleared.
    /// Return: false (7.2's -EBUSY) if the invalidation was refused.
    /// Locking: mmap lock held for read; no PTE lock held; sleeps nowhere.
    func zapVMAForReaping(_ vma: VMA) -> Bool {
        Lockdep.assertNoSpinLockHeld(); mmapLock.assertLocked()
        let range = MMUNotifierRange(start: vma.start, end: vma.end, event: .clear, blockable: false)
        guard notifiers.invalidateRangeStart(range) else { return false }
        var zap = ZapWalker(memory: memory)
        zap.vma = vma
        _ = pageTable.walk(vma.start, vma.end, &zap)
        zap.gather.finish(self)
        notifiers.invalidateRangeEnd(range)
        return true
    }

    /// `unmap_vmas`: one invalidation with `event` over [start, end), then every VMA's part of
    /// it cleared, one TLB flush, the page references dropped. munmap passes the unmapped range,
    /// exit_mmap the whole space ([0, ULONG_MAX) as the kernel does).
    /// Locking: mmap lock held (or the rmap lock of a file the VMA maps); no PTE lock held.
    func zapVMAs(_ vmas: [VMA], start: UInt64, end: UInt64, event: MMUNotifyEvent) {
        Lockdep.assertNoSpinLockHeld(); Lockdep.assertSomeRWSemHeld()
        guard vmas.contains(where: { max(start, $0.start) < min(end, $0.end) }) else { return }
        let range = MMUNotifierRange(start: start, end: end, event: event)
        notifiers.invalidateRangeStart(range)
        var zap = ZapWalker(memory: memory)
        for vma in vmas {
            let s = max(start, vma.start), e = min(end, vma.end)
            zap.vma = vma
            if s < e { _ = pageTable.walk(s, e, &zap) }
        }
        zap.gather.finish(self)
        notifiers.invalidateRangeEnd(range)
    }

    /// `free_pgtables`: frees the page tables that only served [start, end), given that no VMA
    /// remains in [floor, ceiling). Locking: mmap lock held for write; the range is already
    /// zapped and its VMAs unlinked from every rmap, so no walker can reach these tables.
    func freePageTables(_ start: UInt64, _ end: UInt64, floor: UInt64, ceiling: UInt64) {
        mmapLock.assertWriteLocked()
        guard start < end else { return }
        var freed: [Page] = []
        freeTables(pageTable.pgd.pfn, .pgd, start, end, floor, ceiling, &freed)
        guard !freed.isEmpty else { return }
        flushTLB() // hardware walkers may still be inside the tables
        for p in freed { pageTable.freeTable(p) }
    }

    /// Recursively frees child tables of `tablePfn` whose whole span lies in [floor, ceiling)
    /// and intersects [start, end). Returns whether the table became empty.
    private func freeTables(_ tablePfn: UInt64, _ level: PageTableLevel, _ start: UInt64, _ end: UInt64,
                            _ floor: UInt64, _ ceiling: UInt64, _ freed: inout [Page]) {
        guard level != .pte else { return }
        // One step per entry of this table: each entry maps `span` bytes through its child.
        let span = level.size
        var addr = start & ~(span - 1)
        while addr < end {
            let e = pageTable.entry(inTable: tablePfn, index: level.index(addr))
            let v = e.load()
            if v.isPresent && !v.isHuge {
                let child = PageTableLevel(rawValue: level.rawValue - 1)!
                freeTables(v.pfn, child, max(addr, start), min(addr &+ span, end), floor, ceiling, &freed)
                if addr >= floor && addr &+ span <= ceiling && tableIsEmpty(v.pfn) {
                    e.store(.none)
                    freed.append(memory.page(v.pfn))
                }
            }
            addr &+= span
            if addr == 0 { break }
        }
    }

    private func tableIsEmpty(_ pfn: UInt64) -> Bool {
        let f = memory.frame(pfn).assumingMemoryBound(to: UInt64.self)
        for i in 0..<ptrsPerTable where f[i] != 0 { return false }
        return true
    }
}
