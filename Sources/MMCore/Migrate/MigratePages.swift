import MMSync

/// Outcome of `migratePages`.
public struct MigratePagesResult: Equatable, Sendable {
    public var migrated: [UInt64: UInt64] = [:]   // old pfn → new pfn
    public var failed: [UInt64: Errno] = [:]
}

extension Machine {
    /// `migrate_pages` for system anonymous pages, runnable from any thread (a kernel thread
    /// such as compaction or NUMA balancing): no mmap lock of the owning processes is taken.
    ///
    /// For each page: reference and lock it; pin its anon_vma (held until every mapping is
    /// restored, so the rmap stays walkable even if all mappings vanish meanwhile); replace every
    /// mapping by a migration entry (`try_to_migrate`); if nobody else holds a reference, copy
    /// into a new frame and point every migration entry at it (`remove_migration_ptes`);
    /// otherwise (pinned, or raced with GUP) put the old mappings back and report EAGAIN.
    /// Device-coherent pages qualify (they move to system memory, as for a long-term pin).
    /// Errors per page: EINVAL (not an anonymous system or coherent page), ENOENT (freed meanwhile),
    /// EBUSY (locked by someone else), ENOMEM, EAGAIN (extra references).
    public func migratePages(_ pfns: [UInt64]) -> MigratePagesResult {
        defer { operationDone("migrate_pages") }
        var result = MigratePagesResult()
        for pfn in pfns {
            switch migrateOne(pfn) {
            case .success(let new): result.migrated[pfn] = new
            case .failure(let e): result.failed[pfn] = e
            }
        }
        stats.count(.pagesMigrated, result.migrated.count)
        stats.count(.pagesMigrationFailed, result.failed.count)
        return result
    }

    private func migrateOne(_ pfn: UInt64) -> Result<UInt64, Errno> {
        guard pfn > 0, memory.isValidPfn(pfn),
              pfn < memory.systemFrames || memory.pagemap(of: memory.page(pfn)) != nil else { return .failure(.EINVAL) }
        let old = memory.page(pfn)
        guard memory.tryGet(old) else { return .failure(.ENOENT) }
        let folio = old.folioHead
        if folio.isInLargeFolio && folio.isAnon { return migrateTHP(folio, page: old) }
        return migrateBasePage(old)
    }

    /// A page of an anonymous THP: the folio moves whole (its other 511 pages count as
    /// migrated too, `thp_migration_success`); with no order-9 block free, it is split
    /// (`thp_migration_fail` and `thp_migration_split`, as 7.2's ENOMEM path counts) and every
    /// page of it moves as a base page, as the kernel retries the split folios.
    /// Locking: the caller holds a reference on the folio, which this drops.
    private func migrateTHP(_ folio: Page, page old: Page) -> Result<UInt64, Errno> {
        assert(folio.refcount > 0 && old.folioHead == folio, "migrateTHP: the caller holds a reference on the folio")
        guard folio.tryLock() else { memory.put(folio); return .failure(.EBUSY) }
        guard let anon = folio.anonVMA, folio.isInLargeFolio else { folio.unlock(); memory.put(folio); return .failure(.EINVAL) }
        let pin = Mutation.on(.migrateWithoutAnonVMAReference) ? nil : anon
        let moved = withExtendedLifetime(pin) { () -> Result<Page, Errno> in
            unowned let av = anon
            return migrateLargeFolio(folio, av: av)
        }
        switch moved {
        case .success(let new):
            folio.unlock()
            memory.put(folio)
            stats.count(.thpMigrationSuccess)
            stats.count(.pagesMigrated, Int(folio.folioPages) - 1)   // (the new folio may be gone already)
            return .success(new.pfn + (old.pfn - folio.pfn))
        case .failure(.ENOMEM):
            stats.count(.thpMigrationFail)
            let err = splitFolio(folio)
            folio.unlock()
            memory.put(folio)
            guard err == nil else { return .failure(.EAGAIN) }
            stats.count(.thpMigrationSplit)
            var result: Result<UInt64, Errno> = .failure(.ENOENT)
            for i in 0..<UInt64(pmdPages) {
                let p = memory.page(folio.pfn + i)
                guard memory.tryGet(p) else { continue }
                let r = migrateBasePage(p)
                if p == old { result = r } else if case .success = r { stats.count(.pagesMigrated) }
            }
            return result
        case .failure(let e):
            folio.unlock()
            memory.put(folio)
            stats.count(.thpMigrationFail)
            return .failure(e)
        }
    }

    /// One base page (its reference taken by the caller, dropped here).
    private func migrateBasePage(_ old: Page) -> Result<UInt64, Errno> {
        defer { memory.put(old) }
        guard old.isAnon, old.order == 0, !old.test(.tail), !old.isDevicePrivate else { return .failure(.EINVAL) }
        guard old.tryLock() else { return .failure(.EBUSY) }
        defer { old.unlock() }
        guard old.anonVMA != nil else { return .failure(.EINVAL) }
        // The anon_vma is pinned until we return (`folio_get_anon_vma`): a munmap or exit may
        // unlink every VMA meanwhile, and our rmap walks still need it. The 2007 race
        // re-introduced takes no reference: the walk after the unmap reads a freed anon_vma
        // (an unowned reference traps).
        let pin = Mutation.on(.migrateWithoutAnonVMAReference) ? nil : old.anonVMA
        defer { withExtendedLifetime(pin) {} }
        unowned let av = old.anonVMA!
        let index = old.index
        guard let new = memory.allocate(order: 0, lru: true) else { return .failure(.ENOMEM) }
        // The new page is locked while it becomes the mapped page, as the kernel's dst folio is
        // (a fault or rmap walk that finds it waits until its owner and index are set).
        new.lock()

        let unmapped = tryToMigrate(old, av: av, index: index)
        // Expected references: ours (the caller's) and the swap cache's; mappings were dropped.
        guard old.mapcount == 0, old.refcount == (old.test(.swapCache) ? 2 : 1) else {
            removeMigrationPTEs(from: old, to: old, av: av, index: index, entries: unmapped)
            new.unlock()
            memory.put(new)
            return .failure(.EAGAIN)
        }
        memory.copyPage(to: new, from: old)
        stats.count(.bytesCopied, Int(pageSize))
        new.setOwner(anon: .passUnretained(av))
        new.index = index
        // folio_migrate_flags: the dirty bit moves with the data (set at the unmap if a
        // mapping had written it).
        new.set(old.test(.dirty) ? [.uptodate, .swapBacked, .dirty] : [.uptodate, .swapBacked])
        if old.test(.readahead) { new.set(.readahead) }
        // folio_migrate_mapping of a swap-cache page: the new page takes its slot.
        if old.test(.swapCache) { memory.swap.migrateCache(from: old, to: new) }
        removeMigrationPTEs(from: old, to: new, av: av, index: index, entries: unmapped)
        old.clear([.anonExclusive, .dirty])
        old.releaseOwner()
        old.clear(.anon)
        new.unlock()
        memory.put(new) // drop the allocation reference; the mappings hold theirs
        return .success(new.pfn)
    }

    /// `try_to_migrate`: every mapping of `page` (present PTEs, device-private and
    /// device-exclusive entries) becomes a migration entry; each one's rmap and reference go.
    /// Locking: page locked and referenced by the caller; takes the anon_vma lock, notifiers
    /// (outside PTE locks), PTE locks.
    /// Return: how many entries were converted.
    package func tryToMigrate(_ page: Page, av: AnonVMA, index: UInt64) -> Int {
        assert(page.isLocked && page.folioHead.refcount > 0, "tryToMigrate: page must be locked and referenced")
        var converted = 0
        memory.rmapWalkAnon(av, index: index) { hit in
            let mm = hit.vma.mm
            let range = MMUNotifierRange(start: hit.address, end: hit.address + pageSize, event: .clear)
            mm.notifiers.invalidateRangeStart(range)
            let done = mm.withMappedPTE(hit.address, pfn: page.pfn) { ptep, found -> Bool in
                guard setMigrationEntry(ptep, found, page) else { return false }
                if case .present = found { mm.flushTLB() }
                return true
            } ?? false
            mm.notifiers.invalidateRangeEnd(range)
            if done { converted += 1; memory.put(page) }
            return true
        }
        return converted
    }

    /// One PTE of `try_to_migrate_one`: a present entry, or a device-private or
    /// device-exclusive one, naming `page` becomes a migration entry (write as the entry was;
    /// the exclusive bit moves into it, `folio_try_share_anon_rmap`, so that restoring a write
    /// or read-exclusive entry makes the page exclusive again), soft-dirty as it was; the page
    /// becomes dirty if the PTE was, and loses the mapping (its reference is the caller's to
    /// drop, after the TLB flush a present entry needs). Return: false for another entry.
    /// Locking: the PTE table's lock held; `page` locked.
    package func setMigrationEntry(_ ptep: EntryPointer, _ found: MappedEntry, _ page: Page) -> Bool {
        Lockdep.assertSpinLockHeld()
        let exclusive = page.isAnon && page.test(.anonExclusive)
        switch found {
        case .present:
            // The entry replaces the PTE in one step, built from the value it replaces
            // (ptep_clear_flush): a CPU's walk may set the accessed or dirty bit until then.
            var old = ptep.load()
            while true {
                let e = SwapEntry.migration(pfn: page.pfn, write: old.isWrite, exclusive: exclusive).carrying(old)
                if ptep.compareExchange(old, e.pte(softDirty: old.isSoftDirty)) { break }
                old = ptep.load()
            }
            // folio_mark_dirty: the folio's flag (a THP's head, which a split hands down).
            if old.isDirty { page.folioHead.set(.dirty) }
        case .swap(let s):
            guard s.isDevicePrivate || (s.isDeviceExclusive && !Mutation.on(.migrateSkipsDeviceExclusive)) else { return false }
            ptep.store(SwapEntry.migration(pfn: page.pfn, write: s.isWrite, exclusive: exclusive).pte(softDirty: ptep.load().isSoftDirty))
        }
        if exclusive { page.clear(.anonExclusive) }
        memory.removeRmap(page, holdOwner: !Mutation.on(.migrateWithoutAnonVMAReference))
        return true
    }

    /// `remove_migration_ptes`: migration entries naming `from` become present entries of `to`.
    package func removeMigrationPTEs(from: Page, to: Page, av: AnonVMA, index: UInt64, entries: Int) {
        guard entries > 0 else { return }
        memory.rmapWalkAnon(av, index: index) { hit in restoreMigrationEntry(hit, from: from, to: to) }
    }

    /// `remove_migration_ptes` through the page's own rmap (anonymous or file).
    /// Locking: `from` locked (so its owner and index are stable); `to` locked.
    package func removeMigrationPTEs(from: Page, to: Page) {
        assert(from.isLocked && to.isLocked, "removeMigrationPTEs: both pages must be locked")
        memory.rmapWalk(from) { hit in restoreMigrationEntry(hit, from: from, to: to) }
    }

    private func restoreMigrationEntry(_ hit: RmapHit, from: Page, to: Page) -> Bool {
        _ = hit.vma.mm.withMappedPTE(hit.address, pfn: from.pfn) { ptep, found in
            guard case .swap(let s) = found, s.isMigration else { return }
            restoreMigrationEntry(ptep, s, to: to, vma: hit.vma)
        }
        return true
    }

    /// One step of `remove_migration_pte`: the migration entry `s` at `ptep` becomes a mapping
    /// of `to` (present, or device-private for a device-private page), with its reference and
    /// rmap. Locking: the PTE table's lock held; `to` locked.
    package func restoreMigrationEntry(_ ptep: EntryPointer, _ s: SwapEntry, to: Page, vma: VMA) {
        Lockdep.assertSpinLockHeld(); assert(to.isLocked, "restoreMigrationEntry: the new page must be locked")
        let write = s.isWrite && vma.flags.contains(.write)
        let softDirty = ptep.load().isSoftDirty
        memory.get(to)
        memory.addRmap(to)
        if to.isAnon && (s.type == SwapEntry.migrationWrite || s.type == SwapEntry.migrationReadExclusive) {
            to.set(.anonExclusive)
        }
        if to.isDevicePrivate {
            ptep.store(SwapEntry.devicePrivate(pfn: to.pfn, write: s.isWrite).pte(softDirty: softDirty))
        } else {
            // The VMA's protection now (PROT_NONE if an mprotect came meanwhile), soft-dirty
            // as the entry was.
            // Young and dirty as the mapping was when it became the entry (dirty only if the
            // page still is: `remove_migration_pte`).
            var e = PTE.page(to.pfn, write: write, user: vma.pageProtReadable, dirty: s.isMigrationDirty && to.folioHead.test(.dirty))
            if !s.isMigrationYoung { e = e.mkold() }
            ptep.store(softDirty ? PTE(raw: e.raw | PTE.softDirty) : e)
        }
    }
}
