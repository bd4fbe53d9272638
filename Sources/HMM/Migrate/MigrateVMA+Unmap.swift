import MMCore
import MMSync

/// The phases shared by `MigrateVMA` and the VMA-less device eviction (`migrate_device_*`).
enum MigratePhases {
    /// `migrate_vma_check_page`: only the references we expect (ours from collect, plus the
    /// fault's for the faulting page) may remain once every mapping is gone.
    static func checkPage(_ page: Page, faultPage: Page?) -> Bool {
        let extra: Int32 = 1 + (faultPage == page ? 1 : 0)
        return page.refcount - extra <= page.mapcount
    }

    /// `migrate_device_unmap`: pages still mapped elsewhere get migration entries too
    /// (`try_to_migrate`); pages that stay mapped or carry extra references (pins) lose MIGRATE
    /// and are restored, unlocked and released. Return: pages left to migrate, and per page
    /// whether it had mappings besides the one collect replaced (they became migration entries
    /// too; only an rmap walk finds them).
    @discardableResult
    static func unmap(_ machine: Machine, _ src: inout [UInt64], faultPage: Page?) -> (count: Int, remote: [Bool]) {
        let memory = machine.memory
        var unmapped = 0, restore = 0
        var remote = [Bool](repeating: false, count: src.count)
        for i in src.indices {
            guard let pfn = MigratePfn.pfn(src[i]) else {
                if src[i] & MigratePfn.migrate != 0 { unmapped += 1 }
                continue
            }
            let page = memory.page(pfn)
            if page.mapcount > 0 {
                remote[i] = true
                if let av = page.anonVMA { _ = machine.tryToMigrate(page, av: av, index: page.index) }
            }
            if page.mapcount > 0 || !checkPage(page, faultPage: faultPage) {
                src[i] &= ~MigratePfn.migrate
                restore += 1
                continue
            }
            unmapped += 1
        }
        guard restore > 0 else { return (unmapped, remote) }
        for i in src.indices {
            guard let pfn = MigratePfn.pfn(src[i]), src[i] & MigratePfn.migrate == 0 else { continue }
            let page = memory.page(pfn)
            machine.removeMigrationPTEs(from: page, to: page)
            src[i] = 0
            if page != faultPage { page.unlock() }
            memory.put(page)
        }
        return (unmapped, remote)
    }

    /// `migrate_device_pages` (with `migrate` for the VMA variant, which may insert pages where
    /// the source was empty). Moves the rmap identity of each source to its destination.
    static func pages(_ machine: Machine, _ src: inout [UInt64], _ dst: [UInt64], migrate: MigrateVMA?) {
        let memory = machine.memory
        var notified: MMUNotifierRange? = nil
        for i in src.indices {
            guard let newPfn = MigratePfn.pfn(dst[i]) else { src[i] &= ~MigratePfn.migrate; continue }
            let newPage = memory.page(newPfn)
            guard let pfn = MigratePfn.pfn(src[i]) else {
                guard src[i] & MigratePfn.migrate != 0 else { continue }
                guard let m = migrate else { src[i] &= ~MigratePfn.migrate; continue }
                let addr = m.start + (UInt64(i) << pageShift)
                if notified == nil {
                    let r = MMUNotifierRange(start: addr, end: m.end, event: .migrate, owner: m.notifierOwner)
                    m.mm.notifiers.invalidateRangeStart(r)
                    notified = r
                }
                if !m.insertPage(addr, newPage) { src[i] &= ~MigratePfn.migrate }
                continue
            }
            let page = memory.page(pfn)
            // Only anonymous memory moves (to device or back); page-cache pages stay.
            guard page.isAnon else { src[i] &= ~MigratePfn.migrate; continue }
            // folio_migrate_mapping: no reference may remain but ours (and the fault's).
            let expected: Int32 = 1 + (migrate?.faultPage == page ? 1 : 0)
            guard page.mapcount == 0, page.refcount == expected else { src[i] &= ~MigratePfn.migrate; continue }
            newPage.setOwner(sameAnonAs: page)
            newPage.index = page.index
            // Exclusivity travels in the migration entries and is restored by finalize.
            var carry: PageFlags = [.uptodate, .swapBacked]
            if page.test(.dirty) { carry.insert(.dirty) }
            newPage.set(carry)
        }
        if let r = notified, let m = migrate { m.mm.notifiers.invalidateRangeEnd(r) }
    }

    /// `migrate_device_finalize`: entries point at the destination (migrated) or back at the
    /// source; every page is unlocked and the phase references dropped.
    /// With `local` (the VMA migration, whose caller holds the mmap lock from setup to here, so
    /// no fork or mremap copied or moved an entry), the entry of each page without remote
    /// mappings is restored where collect put it: one lookup and one PTE-lock hold per table
    /// instead of an rmap walk per page.
    static func finalize(_ machine: Machine, _ src: [UInt64], _ dst: [UInt64], faultPage: Page?, local: MigrateVMA? = nil) {
        let memory = machine.memory
        func target(_ i: Int) -> Page? {
            guard let pfn = MigratePfn.pfn(src[i]) else { return nil }
            if src[i] & MigratePfn.migrate != 0, let d = MigratePfn.pfn(dst[i]) { return memory.page(d) }
            return memory.page(pfn)
        }
        local?.restoreLocalEntries(target)
        let remote = local?.remote
        // The phase's references go in one batch at the end (old pages are freed together).
        var puts: [Page] = []
        puts.reserveCapacity(2 * src.count)
        for i in src.indices {
            let newPage = MigratePfn.pfn(dst[i]).map { memory.page($0) }
            guard let pfn = MigratePfn.pfn(src[i]), let target = target(i) else {
                if let d = newPage { d.unlock(); puts.append(d) }
                continue
            }
            let page = memory.page(pfn)
            if target == page, let d = newPage { d.unlock(); puts.append(d) } // destination unused
            if remote?[i] ?? true { machine.removeMigrationPTEs(from: page, to: target) }
            if target != page {
                page.clear([.anonExclusive, .dirty])
            }
            if page != faultPage { page.unlock() } // the fault handler unlocks its own page
            puts.append(page)
            if target != page { target.unlock(); puts.append(target) }
        }
        memory.putBatch(puts)
    }
}

extension MigrateVMA {
    /// `migrate_vma_unmap`.
    func unmap() {
        (cpages, remote) = MigratePhases.unmap(vma.mm.machine, &src, faultPage: faultPage)
    }

    /// Restores the migration entries of pages without remote mappings at the addresses
    /// collect gave them, to `target(i)` (nil: nothing to restore). Locking: mmap lock held
    /// (for read) since `setup`; pages locked.
    func restoreLocalEntries(_ target: (Int) -> Page?) {
        mm.mmapLock.assertLocked()
        let machine = mm.machine
        let writable = vma.flags.contains(.write)
        var addr = start
        while addr < end {
            let tableEnd = min(end, (addr | (pmdSize - 1)) + 1)
            defer { addr = tableEnd }
            guard let found = mm.pageTable.lookup(addr, level: .pte), found.level == .pte else { continue }
            let ptl = found.table.ptl
            ptl.lock()
            var ptep = found.entry
            var a = addr
            while a < tableEnd {
                let i = Int((a - start) >> pageShift)
                if !remote[i], let from = MigratePfn.pfn(src[i]), let to = target(i) {
                    let v = ptep.load()
                    if v.isSwap, case let s = v.swapEntry, s.isMigration, s.pfn == from {
                        machine.restoreMigrationEntry(ptep, s, to: to, vmaWritable: writable)
                    }
                }
                ptep = ptep + 1
                a += pageSize
            }
            ptl.unlock()
        }
    }

    /// `migrate_vma_pages`: moves each selected page whose destination the driver provided.
    /// Locking: caller holds the mmap lock for read; source and destination pages are locked.
    public func pages() {
        vma.mm.mmapLock.assertLocked()
        MigratePhases.pages(vma.mm.machine, &src, dst, migrate: self)
    }

    /// `migrate_vma_finalize`: points every entry at its final page and releases the phase's
    /// locks and references. Locking: mmap lock held for read.
    public func finalize() {
        vma.mm.mmapLock.assertLocked()
        if remote.count != src.count { remote = [Bool](repeating: false, count: src.count) }
        MigratePhases.finalize(vma.mm.machine, src, dst, faultPage: faultPage, local: self)
    }

    /// `migrate_vma_insert_page`: maps `page` where the source had no page (an empty entry or
    /// the zero page). Only anonymous VMAs; the entry is writable iff the VMA is.
    /// Return: whether it was inserted.
    func insertPage(_ addr: UInt64, _ page: Page) -> Bool {
        guard vma.isAnonymous else { return false }
        let av = mm.anonVMAPrepare(vma)
        guard let found = try? mm.pageTable.walkAllocating(addr, level: .pte), found.level == .pte else { return false }
        let ptl = found.table.ptl
        ptl.lock()
        let old = found.entry.load()
        let replacingZero = old.isPresent && old.isSpecial && old.pfn == PhysicalMemory.zeroPfn
        guard old.isNone || replacingZero else { ptl.unlock(); return false }
        memory.get(page)
        memory.addNewAnonRmap(page, vma: vma, address: addr, anonVMA: .passUnretained(av))
        let writable = vma.flags.contains(.write)
        if page.isDevicePrivate {
            found.entry.store(SwapEntry.devicePrivate(pfn: page.pfn, write: writable).pte())
        } else {
            found.entry.store(.page(page.pfn, write: writable, dirty: writable))
        }
        if replacingZero { mm.flushTLB() }
        ptl.unlock()
        return true
    }
}
