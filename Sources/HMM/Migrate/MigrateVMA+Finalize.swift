import MMCore
import MMSync

extension MigratePhases {
    /// `migrate_device_finalize`: entries point at the destination (migrated) or back at the
    /// source; every page is unlocked and the phase references dropped.
    /// With `local` (the VMA migration, whose caller holds the mmap lock from setup to here, so
    /// no fork or mremap copied or moved an entry), the entry of each page without remote
    /// mappings is restored where collect put it: one lookup and one PTE-lock hold per table
    /// instead of an rmap walk per page. A COMPOUND entry (a folio moved whole) always goes
    /// through the rmap.
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
            // A folio that moved whole is restored through its rmap: its PMD migration entry
            // may have been split meanwhile (MADV_DONTNEED of part of it, under the read lock).
            if (remote?[i] ?? true) || src[i] & MigratePfn.compound != 0 {
                if page.isInLargeFolio, let av = page.anonVMA {
                    machine.removeFolioMigrationEntries(from: page, to: target, av: av, index: page.index)
                } else {
                    machine.removeMigrationPTEs(from: page, to: target)
                }
            }
            if target != page {
                if page.test(.head) {
                    for k in 1..<page.folioPages { memory.page(page.pfn + k).clear(.anonExclusive) }
                }
                page.clear([.anonExclusive, .dirty])
            }
            if page != faultPage { page.unlock() } // the fault handler unlocks its own page
            puts.append(page)
            if target != page {
                // A new system page goes on the LRU (`folio_add_lru` of a destination).
                memory.lru.add(target)
                target.unlock(); puts.append(target)
            }
        }
        memory.putBatch(puts)
    }
}

extension MigrateVMA {
    /// `migrate_vma_finalize`: points every entry at its final page and releases the phase's
    /// locks and references. Locking: mmap lock held for read.
    public func finalize() {
        mm.mmapLock.assertLocked()
        if remote.count != src.count { remote = [Bool](repeating: false, count: src.count) }
        MigratePhases.finalize(machine, src, dst, faultPage: faultPage, local: self)
    }

    /// Restores the migration entries of pages without remote mappings at the addresses
    /// collect gave them, to `target(i)` (nil: nothing to restore). Locking: mmap lock held
    /// (for read) since `setup`; pages locked.
    func restoreLocalEntries(_ target: (Int) -> Page?) {
        mm.mmapLock.assertLocked()
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
                        machine.restoreMigrationEntry(ptep, s, to: to, vma: vma)
                    }
                }
                ptep = ptep + 1
                a += pageSize
            }
            ptl.unlock()
        }
    }
}
