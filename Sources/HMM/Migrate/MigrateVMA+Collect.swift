import MMCore
import MMSync

/// `migrate_vma_collect_pmd` / `_hole`: one source entry per page.
struct MigrateCollectWalker: PageWalker {
    let migrate: MigrateVMA
    let memory: PhysicalMemory
    let anonymous: Bool
    var src: [UInt64]
    var cpages = 0
    /// Present entries this walk replaced in the current PTE table, flushed before its lock
    /// is dropped.
    var unmappedInTable = 0
    /// The registration of the last device page seen, and whether `pgmapOwner` owns it (a
    /// batch of device pages nearly always comes from one registration).
    var lastPagemap: DevicePagemap? = nil
    var lastOwned = false

    /// Whether the device page `p` belongs to a registration owned by `pgmapOwner`.
    mutating func ownedDevicePage(_ p: Page) -> Bool {
        if let g = lastPagemap, g.contains(p.pfn) { return lastOwned }
        guard let g = memory.pagemap(of: p) else { return false }
        lastPagemap = g
        lastOwned = migrate.pgmapOwner.map { g.isOwned(by: $0) } ?? false
        return lastOwned
    }

    var visitsEmptyPTEs: Bool { true }

    func index(_ a: UInt64) -> Int { Int((a - migrate.start) >> pageShift) }

    /// `migrate_vma_collect_hole`: every page of an anonymous VMA's hole can be populated. With
    /// `.compound`, each 2 MiB-aligned 2 MiB of it is one COMPOUND entry (a huge page may be
    /// inserted there), the other 511 entries empty. (The kernel marks only the first entry of
    /// an aligned hole of any size; dmirror's batches never exceed 2 MiB.)
    mutating func hole(_ start: UInt64, _ end: UInt64, level: PageTableLevel) -> WalkStep {
        var a = start
        while a < end {
            if anonymous && migrate.flags.contains(.compound) && a & (pmdSize - 1) == 0 && a + pmdSize <= end {
                src[index(a)] = MigratePfn.migrate | MigratePfn.compound
                cpages += 1
                for k in 1..<UInt64(ptrsPerTable) { src[index(a + k * pageSize)] = 0 }
                a += pmdSize
                continue
            }
            src[index(a)] = anonymous ? MigratePfn.migrate : 0
            if anonymous { cpages += 1 }
            a += pageSize
        }
        return .next
    }

    mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let v = pmd.load()
        guard migrate.mm.mayHoldTHP, !migrate.vma.isHugetlb else {
            guard v.isHuge || !v.isPresent else { return .next }
            return skip(start, end)
        }
        if v.isPresent && !v.isHuge {
            // A PTE-mapped large folio (system, or this device's private memory) is split
            // before its entries are collected (7.2 splits it when the PTE walk meets it, with
            // the PTE lock dropped; here the walk holds the lock, so the split comes first; one
            // made meanwhile is skipped below).
            let ptes = EntryPointer(memory.frame(v.pfn))
            var a = start
            while a < end {
                let e = (ptes + PageTableLevel.pte.index(a)).load()
                a += pageSize
                let p: Page
                if e.isPresent && !e.isSpecial && migrate.flags.contains(.system) {
                    p = memory.page(e.pfn)
                    guard p.isInLargeFolio else { continue }
                } else if e.isSwap && e.swapEntry.isDevicePrivate && migrate.flags.contains(.devicePrivate) {
                    p = memory.page(e.swapEntry.pfn)
                    guard p.isInLargeFolio, ownedDevicePage(p) else { continue }
                } else { continue }
                _ = splitLargeFolio(p)
            }
            return .next
        }
        return collectHugePMD(pmd, table: table, start, end)
    }

    /// `migrate_vma_collect_huge_pmd`: under the PMD lock, a THP leaf (with `.system`) or a
    /// device-private PMD of this owner's memory (with `.devicePrivate`) is referenced and
    /// trylocked (the fault's own folio is locked already); with `.compound` and the whole
    /// 2 MiB in range it is collected as one COMPOUND entry, its PMD becoming a migration entry
    /// (`set_pmd_migration_entry`: the mapping's reference becomes collect's); otherwise, or
    /// if the folio may be pinned, it is split and the walk goes on at the PTE level. The huge
    /// zero folio and an empty PMD are holes; anything else is skipped.
    private mutating func collectHugePMD(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        table.ptl.lock()
        let v = pmd.load()
        if v.isNone { table.ptl.unlock(); _ = hole(start, end, level: .pmd); return .skip }
        let folio: Page
        var write: UInt64 = 0
        if v.isPresent && v.isHuge {
            guard migrate.flags.contains(.system) else { table.ptl.unlock(); return skip(start, end) }
            if memory.thp.isHugeZero(v) { table.ptl.unlock(); _ = hole(start, end, level: .pmd); return .skip }
            folio = memory.page(v.pfn)
            if v.isWrite { write = MigratePfn.write }
        } else if !v.isPresent {
            let s = v.swapEntry
            guard v.isHuge, s.isDevicePrivate, migrate.flags.contains(.devicePrivate), ownedDevicePage(memory.page(s.pfn)) else {
                table.ptl.unlock(); return skip(start, end)
            }
            folio = memory.page(s.pfn)
            if s.isWrite { write = MigratePfn.write }
        } else {
            table.ptl.unlock()
            return .again
        }
        let isFault = migrate.faultPage?.folioHead == folio
        guard isFault || folio.tryLock() else { table.ptl.unlock(); return skip(start, end) }
        let exclusive = folio.test(.anonExclusive)
        if migrate.flags.contains(.compound) && start & (pmdSize - 1) == 0 && end - start == pmdSize
            && !(v.isPresent && exclusive && folio.pincount > 0) {
            var old = v
            while true {
                let entry = SwapEntry.migration(pfn: folio.pfn, write: write != 0, exclusive: exclusive)
                    .carrying(young: old.isPresent && old.isAccessed, dirty: old.isPresent && old.isDirty)
                    .pte(softDirty: old.isSoftDirty, pmd: true)
                if pmd.compareExchange(old, entry) { break }
                old = pmd.load()   // a CPU set the accessed or dirty bit
            }
            if v.isPresent { migrate.mm.flushTLB() }
            if exclusive { folio.clear(.anonExclusive) }
            if old.isPresent && old.isDirty { folio.set(.dirty) }
            memory.removeRmapPMD(folio)   // the mapping's reference is now collect's
            table.ptl.unlock()
            src[index(start)] = MigratePfn.make(folio.pfn) | write | MigratePfn.migrate | MigratePfn.compound
            for k in 1..<UInt64(ptrsPerTable) { src[index(start + k * pageSize)] = 0 }
            cpages += 1
            return .skip
        }
        // The fallback: split the folio (its PMD first), then look again at the PTE table.
        memory.get(folio)
        table.ptl.unlock()
        let split = migrate.machine.splitFolio(folio) == nil
        if !isFault { folio.unlock() }
        memory.put(folio)
        guard split else { return skip(start, end) }
        if pmd.load().isNone { _ = hole(start, end, level: .pmd); return .skip }
        return .again
    }

    /// `migrate_vma_split_folio`: reference, lock, split (the fault's own folio is referenced
    /// and locked by the fault already; after the split, the lock and the reference move to
    /// the fault page's new folio). Return: whether it was split.
    private func splitLargeFolio(_ p: Page) -> Bool {
        let fault = migrate.faultPage
        if let fault, fault.folioHead == p.folioHead {
            let folio = p.folioHead
            guard folio.isInLargeFolio, migrate.machine.splitFolio(folio) == nil else { return false }
            if fault != folio {
                memory.get(fault)
                fault.lock()
                folio.unlock()
                memory.put(folio)
            }
            return true
        }
        guard memory.tryGet(p) else { return false }
        let folio = p.folioHead
        defer { memory.put(folio) }
        guard folio.isInLargeFolio, folio.tryLock() else { return false }
        defer { folio.unlock() }
        return migrate.machine.splitFolio(folio) == nil
    }

    /// `migrate_vma_collect_skip`.
    private mutating func skip(_ start: UInt64, _ end: UInt64) -> WalkStep {
        var a = start
        while a < end { src[index(a)] = 0; a += pageSize }
        return .skip
    }

    /// One entry, under the PTE table's lock. After the table's last entry in the range, the
    /// TLB is flushed if any present entry was replaced, still under the lock (7.2's
    /// `migrate_vma_collect_pmd`, since commit 60bae7370896: a zap that finds the migration
    /// entry must not return while a CPU can still reach the page through its TLB).
    mutating func pteEntry(_ ptep: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        let step = collectPTE(ptep, addr, next)
        if (next & (pmdSize - 1) == 0 || next >= migrate.end || step != .next) && unmappedInTable > 0 {
            memory.tablePage(of: ptep).ptl.assertHeld()
            if !Mutation.on(.migrateCollectWithoutTLBFlush) { migrate.mm.flushTLB() }
            unmappedInTable = 0
        }
        return step
    }

    private mutating func collectPTE(_ ptep: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        let i = index(addr)
        src[i] = 0
        let v = ptep.load()
        if v.isNone {
            if anonymous { src[i] = MigratePfn.migrate; cpages += 1 }
            return .next
        }
        var mpfn: UInt64
        let page: Page
        if v.isSwap {
            let s = v.swapEntry
            guard s.isDevicePrivate else { return .next }
            let p = memory.page(s.pfn)
            guard migrate.flags.contains(.devicePrivate), ownedDevicePage(p) else { return .next }
            page = p
            mpfn = MigratePfn.make(s.pfn) | MigratePfn.migrate | (s.isWrite ? MigratePfn.write : 0)
        } else {
            if v.isSpecial {
                // The zero page: nothing to copy, a fresh page will be inserted.
                if v.pfn == PhysicalMemory.zeroPfn && migrate.flags.contains(.system) {
                    src[i] = MigratePfn.migrate; cpages += 1
                }
                return .next
            }
            let p = memory.page(v.pfn)
            if !p.isZoneDevice && !migrate.flags.contains(.system) { return .next }
            if p.isDeviceCoherent {
                guard migrate.flags.contains(.deviceCoherent), ownedDevicePage(p) else { return .next }
            }
            page = p
            mpfn = MigratePfn.make(v.pfn) | MigratePfn.migrate | (v.isWrite ? MigratePfn.write : 0)
        }
        guard page.ownerBits != 0, page.order == 0, !page.isInLargeFolio else { return .next }
        // trylock only (best effort, no lock-order inversion between concurrent migrations);
        // the faulting page is already locked by the fault handler, which keeps that lock.
        // The PTE lock is held, so the mapping's reference keeps the page until it is ours.
        guard page == migrate.faultPage || page.tryLock() else { return .next }
        // Replace the entry by a migration entry; the mapping's rmap goes and its reference
        // becomes ours (the kernel takes one and drops the mapping's: the same count).
        let exclusive = page.isAnon && page.test(.anonExclusive)
        if exclusive { page.clear(.anonExclusive) } // carried by the migration entry now
        let old = ptep.exchange(.none)
        if old.isPresent && old.isDirty { page.set(.dirty) }
        let entry = SwapEntry.migration(pfn: page.pfn, write: mpfn & MigratePfn.write != 0, exclusive: exclusive)
            .carrying(young: old.isPresent && old.isAccessed, dirty: old.isPresent && old.isDirty)
        ptep.store(entry.pte(softDirty: old.isSoftDirty))
        memory.removeRmap(page)
        if old.isPresent { unmappedInTable += 1 }
        cpages += 1
        src[i] = mpfn
        return .next
    }
}

extension MigrateVMA {
    /// `migrate_vma_collect`: under a MIGRATE invalidation owned by `pgmapOwner`, selects and
    /// unmaps pages. Every selected page with a struct page is left locked and referenced.
    func collect() {
        let range = MMUNotifierRange(start: start, end: end, event: .migrate, owner: notifierOwner)
        mm.notifiers.invalidateRangeStart(range)
        var walker = MigrateCollectWalker(migrate: self, memory: memory, anonymous: vma.isAnonymous,
                                          src: [UInt64](repeating: 0, count: src.count))
        _ = mm.pageTable.walk(start, end, &walker)
        mm.notifiers.invalidateRangeEnd(range)
        src = walker.src
        cpages = walker.cpages
        npages = src.count
        end = start + (UInt64(npages) << pageShift)
    }
}
