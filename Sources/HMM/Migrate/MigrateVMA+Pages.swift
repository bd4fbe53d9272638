import MMCore
import MMSync

extension MigratePhases {
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
}

extension MigrateVMA {
    /// `migrate_vma_pages`: moves each selected page whose destination the driver provided.
    /// Locking: caller holds the mmap lock for read; source and destination pages are locked.
    public func pages() {
        vma.mm.mmapLock.assertLocked()
        MigratePhases.pages(vma.mm.machine, &src, dst, migrate: self)
    }

    /// `migrate_vma_insert_page`: maps `page` where the source had no page (an empty entry or
    /// the zero page). Only anonymous VMAs; the entry is writable iff the VMA is.
    /// Return: whether it was inserted.
    func insertPage(_ addr: UInt64, _ page: Page) -> Bool {
        guard vma.isAnonymous else { return false }
        let av = mm.anonVMAPrepare(vma)
        var walk = try? mm.pageTable.walkAllocating(addr, level: .pte)
        if let w = walk, w.level == .pmd, memory.thp.isHugeZero(w.entry.load()) {
            // The huge zero folio (collected as a hole): split to PTEs of the zero page first.
            mm.splitHugePMD(vma, addr)
            walk = try? mm.pageTable.walkAllocating(addr, level: .pte)
        }
        guard let found = walk, found.level == .pte else { return false }
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
