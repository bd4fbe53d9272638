import MMSync

/// Why a 2 MiB range was not collapsed (`enum scan_result` of `mm/khugepaged.c`, the cases
/// an anonymous collapse meets), and the errno `madvise(MADV_COLLAPSE)` gives for it
/// (`madvise_collapse_errno`).
enum CollapseResult: Equatable {
    case succeed, pmdMapped
    /// No PTE table (the range was never touched), or an entry left non-present.
    case noPTETable, pteNonPresent
    /// A special or zone-device page, or one that is not anonymous.
    case pageNull, pageAnon
    /// A page locked by someone else, or with references beyond its mappings (a pin).
    case pageLock, pageCount
    case allocHugePageFail
    /// The VMA changed while the mmap lock was dropped.
    case vmaCheck
    /// A fault that bringing in a non-present entry needed failed (`SCAN_FAIL`).
    case fail

    /// Results after which the next 2 MiB is still tried (the whitelist in `madvise_collapse`).
    var goesOn: Bool { [.noPTETable, .pteNonPresent, .pageNull, .pageCount, .pageLock].contains(self) }


    var errno: Errno {
        switch self {
        case .allocHugePageFail: return .ENOMEM
        case .pageCount, .pageLock: return .EAGAIN
        default: return .EINVAL
        }
    }
}

extension AddressSpace {
    /// `madvise_collapse` for [start, end) inside one VMA: every 2 MiB-aligned 2 MiB of it
    /// becomes one PMD-mapped THP (`collapse_huge_page`), whatever the THP mode
    /// (`TVA_FORCED_COLLAPSE`) and with no limit on empty, zero-page, shared or non-present
    /// entries. An entry that is not present (a migration, device-private or device-exclusive
    /// entry) is faulted in first, as `__collapse_huge_page_swapin` does with `do_swap_page`.
    /// A 2 MiB already mapped by a PMD counts as done. A VMA with no anon_vma yet (never
    /// written) or with no whole aligned 2 MiB is EINVAL at once (`collapse_possible`). Each
    /// 2 MiB is scanned (anonymous pages, lock free, no reference beyond the mappings) before
    /// its order-9 folio is allocated (`thp_collapse_alloc` counts the allocation), and the
    /// VMA is looked up again after every collapse. Return: nil if every 2 MiB is (now) a
    /// THP; else the errno of the last failure: ENOMEM (no order-9 block), EAGAIN (a page
    /// locked or referenced beyond its mappings: trying again may work), EINVAL (the rest:
    /// nothing to collapse, a page that cannot go into a THP, a failed fault).
    /// Locking: caller holds the mmap lock for read; it is dropped and taken for write around
    /// each collapse (as the kernel does), and held for read again on return. The VMA is looked
    /// up again each time.
    func madviseCollapse(_ vmaIn: VMA, _ start: UInt64, _ end: UInt64) -> Errno? {
        mmapLock.assertLocked()
        guard vmaIn.isAnonymous, !vmaIn.isHugetlb, !vmaIn.flags.contains(.noHugePage), vmaIn.anonVMA != nil,
              ((vmaIn.start + pmdSize - 1) & pmdMask) + pmdSize <= vmaIn.end else { return .EINVAL }
        let hstart = (start + pmdSize - 1) & pmdMask, hend = end & pmdMask
        guard hstart < hend else { return nil }
        var thps = 0
        var lastFail = CollapseResult.succeed
        var haddr = hstart
        while haddr < hend {
            defer { haddr += pmdSize }
            // hugepage_vma_revalidate: the lock was dropped for the last collapse.
            guard let v = vmaLookup(haddr), v.isAnonymous, !v.isHugetlb, !v.flags.contains(.noHugePage),
                  v.start <= haddr, v.end >= haddr + pmdSize else { lastFail = .vmaCheck; break }
            let r = collapseOnePMD(haddr)
            if r == .succeed || r == .pmdMapped { thps += 1; continue }
            lastFail = r
            if !r.goesOn { break }
        }
        return thps == Int((hend - hstart) / pmdSize) ? nil : lastFail.errno
    }

    /// The state of the PMD at `haddr` (`find_pmd_or_thp_or_none`): `.succeed` for a PTE table.
    private func collapsePMDState(_ haddr: UInt64) -> CollapseResult {
        guard let f = pageTable.lookup(haddr, level: .pmd), f.level == .pmd else { return .noPTETable }
        let v = f.entry.load()
        // A leaf, or one under migration; a device-private PMD is no table to collapse
        // (`check_pmd_state`: SCAN_NO_PTE_TABLE for a non-present, non-migration PMD).
        if PageTable.isTHPLeaf(v) || PageTable.isTHPMigration(v) { return .pmdMapped }
        return v.isPresent ? .succeed : .noPTETable
    }

    /// `collapse_scan_pmd` + `collapse_huge_page` for one 2 MiB.
    /// Locking: mmap lock held for read on entry and on return.
    private func collapseOnePMD(_ haddr: UInt64) -> CollapseResult {
        mmapLock.assertLocked()
        let state = collapsePMDState(haddr)
        guard state == .succeed else { return state }
        // __collapse_huge_page_swapin: non-present entries are faulted in (read faults).
        var a = haddr, tries = 0
        while a < haddr + pmdSize {
            guard let f = pageTable.lookup(a, level: .pte), f.level == .pte else { return collapsePMDState(haddr) }
            guard f.entry.load().isSwap else { a += pageSize; tries = 0; continue }
            guard let vma = vmaLookup(a), vma.start <= haddr, vma.end >= haddr + pmdSize else { return .vmaCheck }
            // A retry (a migration waited out) looks at the entry again, a few times at most.
            switch handleMMFault(vma: vma, address: a, flags: []) {
            case .ok: a += pageSize; tries = 0
            case .retry where tries < 3: tries += 1
            case .retry: return .pageLock
            default: return .fail
            }
        }
        let scan = collapseScan(haddr)
        guard scan == .succeed else { return scan }
        guard let folio = memory.allocate(order: pmdOrder, lru: true) else { stats.count(.thpCollapseAllocFailed); return .allocHugePageFail }
        stats.count(.thpCollapseAlloc)
        mmapLock.unlockRead()
        mmapWriteLock()
        let r = collapseHugePage(haddr, folio)
        mmapWriteUnlock()
        mmapLock.lockRead()
        if r != .succeed { memory.put(folio) }
        return r
    }

    /// `collapse_huge_page` under the mmap lock for write: the VMA revalidated, the PTE
    /// table taken out of the PMD (CLEAR invalidation, TLB flush), every page checked and
    /// locked (`__collapse_huge_page_isolate`: anonymous, not special, no reference beyond its
    /// mappings, lock free), then copied (empty and zero-page entries zero-filled) and
    /// unmapped (`__collapse_huge_page_copy`), and the new folio mapped by the PMD with the
    /// emptied table deposited (`map_anon_folio_pmd_nopf`). On a failed check the table goes
    /// back unchanged. Return: `.succeed` (the folio's reference became the mapping's) or why not.
    /// Locking: mmap lock held for write; takes the VMA's write lock, the anon_vma lock for
    /// write, notifiers, PMD and PTE locks, page locks.
    private func collapseHugePage(_ haddr: UInt64, _ folio: Page) -> CollapseResult {
        mmapLock.assertWriteLocked()
        guard let vma = vmaLookup(haddr), vma.start <= haddr, vma.end >= haddr + pmdSize, vma.isAnonymous,
              !vma.isHugetlb, !vma.flags.contains(.noHugePage) else { return .vmaCheck }
        let state = collapsePMDState(haddr)
        guard state == .succeed, let pmd = pageTable.lookup(haddr, level: .pmd), pmd.level == .pmd else { return state }
        guard let av = vma.anonVMA else { return .pageAnon }
        vmaStartWrite(vma)
        av.lock.lockWrite(); defer { av.lock.unlockWrite() }
        let range = MMUNotifierRange(start: haddr, end: haddr + pmdSize, event: .clear)
        notifiers.invalidateRangeStart(range)
        pmd.table.ptl.lock()
        let tableEntry = pmd.entry.exchange(.none)   // pmdp_collapse_flush
        pmd.table.ptl.unlock()
        flushTLB()
        notifiers.invalidateRangeEnd(range)
        let pgtable = memory.page(tableEntry.pfn)
        let ptes = EntryPointer(memory.frame(pgtable.pfn))

        // __collapse_huge_page_isolate, under the (detached) table's lock.
        pgtable.ptl.lock()
        var locked: [Page] = []
        var result = CollapseResult.succeed
        for i in 0..<ptrsPerTable {
            let v = (ptes + i).load()
            if v.isNone || (v.isPresent && v.isSpecial && v.pfn == PhysicalMemory.zeroPfn) { continue }
            guard v.isPresent else { result = .pteNonPresent; break }
            if !v.isSpecial, memory.isValidPfn(v.pfn), locked.contains(memory.page(v.pfn).folioHead) { continue }
            if let r = collapseCheck(v, lockIt: true) { result = r; break }
            locked.append(memory.page(v.pfn).folioHead)
        }
        guard result == .succeed else {
            pgtable.ptl.unlock()
            for h in locked { h.unlock() }
            pmd.table.ptl.lock()
            pmd.entry.store(tableEntry)   // pmd_populate: the table back as it was
            pmd.table.ptl.unlock()
            return result
        }
        // __collapse_huge_page_copy: the bytes, then every entry cleared, its mapping and
        // reference dropped (the pages were unmapped from every TLB with the table).
        var gone: [Page] = []
        for i in 0..<ptrsPerTable {
            let dst = memory.page(folio.pfn + UInt64(i))
            let v = (ptes + i).load()
            if v.isNone || v.isSpecial {
                memory.clearFrames(dst.pfn)
            } else {
                memory.copyPage(to: dst, from: memory.page(v.pfn))
            }
            guard !v.isNone else { continue }
            (ptes + i).store(.none)
            if !v.isSpecial {
                let p = memory.page(v.pfn)
                if v.isDirty { p.set(.dirty) }
                memory.removeRmap(p)
                gone.append(p)
            }
        }
        pgtable.ptl.unlock()
        stats.count(.bytesCopied, Int(pmdSize))
        for h in locked { h.unlock() }
        for p in gone { memory.put(p) }

        // map_anon_folio_pmd_nopf.
        thpMapped.storeRelease(1)
        memory.thp.noteFolioMade()
        memory.addNewAnonRmapPMD(folio, vma: vma, address: haddr, anonVMA: .passUnretained(av))
        let write = vma.flags.contains(.write)
        pmd.table.ptl.lock()
        pageTable.deposit(pgtable, in: pmd.table)
        pmd.entry.store(.page(folio.pfn, write: write, user: vma.pageProtReadable, dirty: true, huge: true))
        pmd.table.ptl.unlock()
        return .succeed
    }

    /// The checks of `collapse_scan_pmd` before anything is allocated: every present entry
    /// maps an anonymous page (not special, not zone-device) whose folio is not locked and has
    /// no reference beyond its mappings; a non-present entry left is `.pteNonPresent`.
    /// Locking: mmap lock held; takes the PTE table's lock.
    private func collapseScan(_ haddr: UInt64) -> CollapseResult {
        mmapLock.assertLocked()
        guard let f = pageTable.lookup(haddr, level: .pte), f.level == .pte else { return collapsePMDState(haddr) }
        f.table.ptl.lock(); defer { f.table.ptl.unlock() }
        for i in 0..<ptrsPerTable {
            let v = (f.entry + i).load()
            if v.isNone || (v.isPresent && v.isSpecial && v.pfn == PhysicalMemory.zeroPfn) { continue }
            guard v.isPresent else { return .pteNonPresent }
            if let r = collapseCheck(v, lockIt: false) { return r }
        }
        return .succeed
    }

    /// One present entry's page for a collapse: `.pageNull` (special or zone-device),
    /// `.pageAnon`, `.pageLock`, `.pageCount` (references beyond the folio's mappings, or a
    /// pin), or nil if it may go in. With `lockIt`, the folio is left locked when nil.
    private func collapseCheck(_ v: PTE, lockIt: Bool) -> CollapseResult? {
        guard !v.isSpecial, memory.isValidPfn(v.pfn), !memory.page(v.pfn).isZoneDevice else { return .pageNull }
        let head = memory.page(v.pfn).folioHead
        guard head.isAnon else { return .pageAnon }
        if lockIt { guard head.tryLock() else { return .pageLock } } else if head.isLocked { return .pageLock }
        guard head.pincount == 0, head.refcount == head.folioMapcount else {
            if lockIt { head.unlock() }
            return .pageCount
        }
        return nil
    }
}
