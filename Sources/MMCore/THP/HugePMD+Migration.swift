import MMSync

extension AddressSpace {
    /// `page_vma_mapped_walk` for a PMD: if the PMD at the 2 MiB-aligned `haddr` maps the
    /// THP whose head is `pfn` (a leaf), or is a migration entry naming it, calls `body` with
    /// the entry under the PMD's lock and returns its result; nil otherwise.
    /// Locking: rmap lock held (anon_vma) or mmap lock; no page-table lock held; takes the
    /// PMD's lock.
    func withMappedPMD<T>(_ haddr: UInt64, pfn: UInt64, _ body: (EntryPointer, PTE) -> T) -> T? {
        Lockdep.assertNoSpinLockHeld()
        guard let found = pageTable.lookup(haddr, level: .pmd), found.level == .pmd else { return nil }
        found.table.ptl.lock(); defer { found.table.ptl.unlock() }
        let v = found.entry.load()
        guard PageTable.isTHPEntry(v), !(v.isPresent && v.isSpecial), PageTable.thpEntryPfn(v) == pfn else { return nil }
        return body(found.entry, v)
    }
}

extension Machine {
    /// `set_pmd_migration_entry` across the folio's rmap (`try_to_migrate` meeting PMD
    /// mappings): every PMD leaf mapping `folio` becomes a PMD migration entry, write if the
    /// leaf was writable, read-exclusive if the folio was exclusive (the exclusive bit moves
    /// into the entry: `folio_try_share_anon_rmap_pmd`), with its soft-dirty bit; the folio
    /// becomes dirty if the leaf was, and loses that PMD mapping and its reference. An
    /// exclusive folio that may be pinned keeps its leaf and the walk stops (EBUSY: the
    /// caller's count check then fails). Each 2 MiB is bracketed by a CLEAR invalidation.
    /// Locking: folio locked and referenced by the caller; takes the anon_vma lock,
    /// notifiers (outside page-table locks) and PMD locks.
    /// Return: how many PMD mappings became migration entries.
    package func tryToMigratePMDs(_ folio: Page, av: AnonVMA, index: UInt64) -> Int {
        assert(folio.isLocked && folio.refcount > 0 && folio.test(.head), "tryToMigratePMDs: the folio must be locked and referenced")
        guard folio.entireMapcount > 0 else { return 0 }
        var converted = 0
        memory.rmapWalkAnon(av, index: index) { hit in
            guard hit.address & (pmdSize - 1) == 0 else { return true }
            let mm = hit.vma.mm
            let range = MMUNotifierRange(start: hit.address, end: hit.address + pmdSize, event: .clear)
            mm.notifiers.invalidateRangeStart(range)
            let r = mm.withMappedPMD(hit.address, pfn: folio.pfn) { pmd, v -> Bool? in
                if PageTable.isTHPDevicePrivate(v) {
                    // A device-private PMD: nothing can reach it meanwhile (not present, no
                    // TLB entry); it cannot be pinned.
                    let exclusive = folio.test(.anonExclusive)
                    pmd.store(SwapEntry.migration(pfn: folio.pfn, write: v.swapEntry.isWrite, exclusive: exclusive)
                                .pte(softDirty: v.isSoftDirty, pmd: true))
                    if exclusive { folio.clear(.anonExclusive) }
                    memory.removeRmapPMD(folio)
                    return true
                }
                guard v.isPresent else { return false }
                let exclusive = folio.test(.anonExclusive)
                if exclusive && folio.pincount > 0 { return nil }
                // The leaf becomes the migration entry in one step, never empty: walkers read
                // PMDs without the lock (an empty one is a hole to them, and a fault may put a
                // PTE table into it). A CPU may set the accessed or dirty bit meanwhile: the
                // entry is built from the value it replaces.
                var old = v
                while !pmd.compareExchange(old, SwapEntry.migration(pfn: folio.pfn, write: old.isWrite, exclusive: exclusive)
                                                .carrying(old).pte(softDirty: old.isSoftDirty, pmd: true)) {
                    old = pmd.load()
                }
                mm.flushTLB()
                if exclusive { folio.clear(.anonExclusive) }
                if old.isDirty { folio.set(.dirty) }
                memory.removeRmapPMD(folio)
                return true
            } ?? false
            mm.notifiers.invalidateRangeEnd(range)
            guard let done = r else { return false }
            if done { converted += 1; memory.put(folio) }
            return true
        }
        return converted
    }

    /// `try_to_migrate` of a large folio's PTE mappings: one walk over the VMAs that may map a
    /// page of the folio; in each, under one CLEAR invalidation of the folio's span there, the
    /// PTEs of each page table (at most two: the folio's pages are contiguous in a VMA) are
    /// converted under that table's lock, every PTE mapping a page of the folio (present or
    /// device-exclusive) becoming a migration entry as `setMigrationEntry` makes it, and the
    /// TLB is flushed once per table before its lock is dropped (so a zap or mprotect that
    /// then meets only migration entries, and flushes nothing, leaves no stale translation).
    /// Locking: folio locked and referenced by the caller; takes the anon_vma lock, notifiers
    /// (outside page-table locks) and PTE locks.
    /// Return: how many PTEs became migration entries.
    package func tryToMigrateFolioPTEs(_ folio: Page, av: AnonVMA, index: UInt64) -> Int {
        assert(folio.isLocked && folio.refcount > 0 && folio.test(.head), "tryToMigrateFolioPTEs: the folio must be locked and referenced")
        let n = folio.folioPages
        var converted = 0
        av.lock.lockRead()
        let list = av.vmas
        for vma in list {
            let pages = (0..<n).filter { vma.address(ofPageIndex: index + $0) != nil }
            guard let first = pages.first, let last = pages.last else { continue }
            let mm = vma.mm
            let start = vma.address(ofPageIndex: index + first)!, end = vma.address(ofPageIndex: index + last)! + pageSize
            let range = MMUNotifierRange(start: start, end: end, event: .clear)
            mm.notifiers.invalidateRangeStart(range)
            var dropped: [Page] = []
            var a = start
            while a < end {
                let tableEnd = min(end, (a | (pmdSize - 1)) + 1)
                defer { a = tableEnd }
                guard let found = mm.pageTable.lookup(a, level: .pte), found.level == .pte else { continue }
                found.table.ptl.lock()
                var flush = false
                var ptep = found.entry
                for addr in stride(from: a, to: tableEnd, by: Int(pageSize)) {
                    defer { ptep = ptep + 1 }
                    let page = memory.page(folio.pfn + vma.linearPageIndex(addr) - index)
                    let v = ptep.load()
                    let mapped: MappedEntry
                    if v.isPresent, !v.isSpecial, v.pfn == page.pfn { mapped = .present(v) }
                    else if v.isSwap, v.swapEntry.hasPfn, v.swapEntry.pfn == page.pfn { mapped = .swap(v.swapEntry) }
                    else { continue }
                    guard setMigrationEntry(ptep, mapped, page) else { continue }
                    if case .present = mapped { flush = true }
                    converted += 1
                    dropped.append(page)
                }
                if flush { mm.flushTLB() }
                found.table.ptl.unlock()
            }
            for p in dropped { memory.put(p) }
            mm.notifiers.invalidateRangeEnd(range)
        }
        av.lock.unlockRead()
        return converted
    }

    /// `remove_migration_ptes` for a whole folio: one walk over every VMA of the anon_vma that
    /// may map a page of it (`rmap_walk` over the folio's index range). Where the folio's head
    /// lies 2 MiB-aligned and the PMD is a migration entry naming `from`, the PMD becomes a
    /// leaf of `to` (`remove_migration_pmd`); elsewhere each page's PTE migration entry becomes
    /// a mapping of the same page of `to`. So entries made by a split of a PMD migration entry
    /// meanwhile (a partial munmap or mprotect), or copied by a fork, are found too.
    /// A restored leaf has the VMA's protection, is writable if the entry was (and the VMA
    /// still is), soft-dirty as the entry was, young if the entry remembers a young mapping and
    /// dirty if it remembers a dirty one and the folio is still dirty, as a restored PTE. The folio
    /// gains the PMD mapping and its reference, exclusive unless the entry was plain read.
    /// Locking: both folios locked; takes the anon_vma lock, PMD and PTE locks.
    package func removeFolioMigrationEntries(from: Page, to: Page, av: AnonVMA, index: UInt64) {
        assert(from.isLocked && to.isLocked, "removeFolioMigrationEntries: both folios must be locked")
        let n = from.folioPages
        av.lock.lockRead()
        let list = av.vmas
        for vma in list {
            let mm = vma.mm
            if let haddr = vma.address(ofPageIndex: index), haddr & (pmdSize - 1) == 0,
               mm.withMappedPMD(haddr, pfn: from.pfn, { pmd, v in restoreMigrationPMD(pmd, v, to: to, vma: vma) }) == true {
                continue
            }
            for i in 0..<n {
                guard let a = vma.address(ofPageIndex: index + i) else { continue }
                _ = mm.withMappedPTE(a, pfn: from.pfn + i) { ptep, found in
                    guard case .swap(let s) = found, s.isMigration else { return }
                    restoreMigrationEntry(ptep, s, to: memory.page(to.pfn + i), vma: vma)
                }
            }
        }
        av.lock.unlockRead()
    }

    /// One `remove_migration_pmd`: the entry becomes a leaf of `to`, or, for a device-private
    /// folio, a device-private PMD (writable iff the entry was), soft-dirty as the entry was.
    /// Return: false if the entry is no migration entry.
    /// Locking: the PMD's lock held; `to` locked.
    package func restoreMigrationPMD(_ pmd: EntryPointer, _ v: PTE, to: Page, vma: VMA) -> Bool {
        Lockdep.assertSpinLockHeld()
        guard PageTable.isTHPMigration(v) else { return false }
        let s = v.swapEntry
        let write = s.isWrite && vma.flags.contains(.write)
        memory.get(to)
        memory.addRmapPMD(to)
        if s.type != SwapEntry.migrationRead { to.set(.anonExclusive) }
        if to.isDevicePrivate {
            pmd.store(SwapEntry.devicePrivate(pfn: to.pfn, write: write).pte(softDirty: v.isSoftDirty, pmd: true))
            return true
        }
        // Young and dirty as the leaf was (`remove_migration_pmd`).
        var e = PTE.page(to.pfn, write: write, user: vma.pageProtReadable, dirty: s.isMigrationDirty && to.test(.dirty), huge: true)
        if !s.isMigrationYoung { e = e.mkold() }
        if v.isSoftDirty { e = PTE(raw: e.raw | PTE.softDirty) }
        pmd.store(e)
        return true
    }

    /// `migrate_pages` of one anonymous THP, whole (`migrate_folio_unmap` + `migrate_folio_move`
    /// for a large folio): a new order-9 folio; every PMD mapping becomes a PMD migration entry
    /// and every PTE mapping of a page a PTE migration entry; if no reference is left but the
    /// caller's, the 2 MiB are copied, the new folio takes the old one's owner, indices and
    /// flags, and every entry becomes a mapping of the new folio (the PMD ones whole).
    /// Otherwise every entry is restored to the old folio (EAGAIN).
    /// Return: the new head, or ENOMEM (no order-9 block: the caller splits), or EAGAIN.
    /// Locking: folio locked and referenced by the caller (its anon_vma held by the caller
    /// too); no page-table lock held.
    package func migrateLargeFolio(_ folio: Page, av: AnonVMA) -> Result<Page, Errno> {
        assert(folio.isLocked && folio.test(.head) && folio.isAnon, "migrateLargeFolio: a locked anonymous THP")
        let n = Int(folio.folioPages), index = folio.index
        guard let new = memory.allocate(order: folio.order, lru: true) else { return .failure(.ENOMEM) }
        new.lock()
        var entries = tryToMigratePMDs(folio, av: av, index: index)
        // Mappings left once the PMDs are migration entries are PTE mappings of its pages.
        if folio.folioMapcount > folio.entireMapcount { entries += tryToMigrateFolioPTEs(folio, av: av, index: index) }
        guard !folio.folioMapped, folio.refcount == 1 else {
            if entries > 0 { removeFolioMigrationEntries(from: folio, to: folio, av: av, index: index) }
            new.unlock()
            memory.put(new)
            return .failure(.EAGAIN)
        }
        memory.copyHugePage(to: new, from: folio)
        stats.count(.bytesCopied, n << Int(pageShift))
        // The new folio's metadata before any entry can lead to it (each entry's restore
        // takes the new folio's lock to be held: it is).
        let bits = folio.ownerBits
        for i in 1..<n {
            let t = memory.page(new.pfn + UInt64(i))
            t.ownerBits = bits
            t.index = index + UInt64(i)
        }
        new.setOwner(sameAnonAs: folio)
        new.index = index
        new.set(folio.flags.intersection([.swapBacked, .uptodate, .dirty, .referenced, .lazyFree]))
        if entries > 0 { removeFolioMigrationEntries(from: folio, to: new, av: av, index: index) }
        for i in 0..<n { memory.page(folio.pfn + UInt64(i)).clear(.anonExclusive) }
        folio.clear(.dirty)
        folio.releaseOwner()
        folio.clear(.anon)
        new.unlock()
        memory.put(new) // the allocation reference; the mappings hold theirs
        return .success(new)
    }
}
