import MMCore
import MMSync

extension MigratePhases {
    /// `migrate_device_pages` (with `migrate` for the VMA variant, which may insert pages where
    /// the source was empty). Moves the rmap identity of each source to its destination.
    /// A COMPOUND source stands for a whole 2 MiB: with a COMPOUND destination the folio moves
    /// whole; with a small one, a hole gets 512 small pages inserted and a folio is split first
    /// (its entries then migrate page by page); a COMPOUND destination for a small source
    /// moves nothing.
    static func pages(_ machine: Machine, _ src: inout [UInt64], _ dst: [UInt64], migrate: MigrateVMA?) {
        let memory = machine.memory
        var notified: MMUNotifierRange? = nil
        var i = 0
        while i < src.count {
            var nr = 1
            defer { i += nr }
            guard let newPfn = MigratePfn.pfn(dst[i]) else { src[i] &= ~MigratePfn.migrate; continue }
            let newPage = memory.page(newPfn)
            let srcCompound = src[i] & MigratePfn.compound != 0, dstCompound = dst[i] & MigratePfn.compound != 0
            guard let pfn = MigratePfn.pfn(src[i]) else {
                guard src[i] & MigratePfn.migrate != 0 else { continue }
                guard let m = migrate else { src[i] &= ~MigratePfn.migrate; continue }
                let addr = m.start + (UInt64(i) << pageShift)
                if notified == nil {
                    let r = MMUNotifierRange(start: addr, end: m.end, event: .migrate, owner: m.notifierOwner)
                    m.mm.notifiers.invalidateRangeStart(r)
                    notified = r
                }
                if dstCompound {
                    // migrate_vma_insert_huge_pmd_page (a COMPOUND hole); on failure no page
                    // of the 2 MiB moves.
                    if !(srcCompound && m.mm.insertAnonHugePMD(m.vma, addr, folio: newPage)) {
                        for j in i..<min(src.count, i + ptrsPerTable) { src[j] &= ~MigratePfn.migrate }
                    }
                    nr = min(ptrsPerTable, src.count - i)
                    continue
                }
                if srcCompound {
                    // A COMPOUND hole with small destinations: each page inserted on its own.
                    nr = min(ptrsPerTable, src.count - i)
                    src[i] &= ~MigratePfn.compound
                }
                for j in i..<(i + nr) {
                    src[j] |= MigratePfn.migrate
                    guard let d = MigratePfn.pfn(dst[j]), m.insertPage(addr + (UInt64(j - i) << pageShift), memory.page(d)) else {
                        src[j] &= ~MigratePfn.migrate; continue
                    }
                }
                continue
            }
            let page = memory.page(pfn)
            if src[i] & MigratePfn.migrate != 0 && srcCompound && !dstCompound {
                // A folio that moves to small pages: split first (its entries split too). If it
                // cannot be (another reference: a CPU fault's), it stays and keeps COMPOUND, so
                // finalize restores it through the rmap: its PMD migration entries may already
                // be 512 PTE migration entries each.
                guard let m = migrate else { src[i] &= ~(MigratePfn.migrate | MigratePfn.compound); continue }
                guard m.splitUnmappedFolio(i, page, &src) else { src[i] &= ~MigratePfn.migrate; continue }
            } else if src[i] & MigratePfn.migrate != 0 && dstCompound && !srcCompound {
                src[i] &= ~MigratePfn.migrate
            }
            // Only anonymous memory moves (to device or back); page-cache pages stay. A page in
            // the swap cache moves only if it can leave it (no swap entry names its slot).
            guard page.isAnon else { src[i] &= ~MigratePfn.migrate; continue }
            if src[i] & MigratePfn.migrate != 0 && page.test(.swapCache) && !memory.swap.folioFreeSwap(page) {
                src[i] &= ~MigratePfn.migrate; continue
            }
            // folio_migrate_mapping: no reference may remain but ours (and the fault's).
            let expected: Int32 = 1 + (migrate?.faultPage == page ? 1 : 0)
            guard !page.folioMapped, page.refcount == expected else { src[i] &= ~MigratePfn.migrate; continue }
            guard src[i] & MigratePfn.migrate != 0 else { continue }
            newPage.setOwner(sameAnonAs: page)
            newPage.index = page.index
            if page.test(.head) && newPage.test(.head) {
                // A whole folio: every tail takes the owner and its linear index.
                let bits = page.ownerBits
                for k in 1..<page.folioPages {
                    let t = memory.page(newPage.pfn + k)
                    t.ownerBits = bits
                    t.index = page.index + k
                }
                nr = min(Int(page.folioPages), src.count - i)
            }
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
        mm.mmapLock.assertLocked()
        MigratePhases.pages(machine, &src, dst, migrate: self)
    }

    /// `migrate_vma_split_unmapped_folio`: the collected (unmapped) large folio at entry `i`
    /// is split into small folios, each locked and referenced as a collected page; entries
    /// i+1… take its other pages with the same flags. Every PMD migration entry of the folio
    /// becomes 512 PTE migration entries first (the kernel splits only this VMA's; a forked
    /// child's would be left naming a folio that no longer exists).
    /// Return: false (nothing changed but the PMD splits) if another reference is held.
    /// Locking: mmap lock held; the folio locked by collect.
    func splitUnmappedFolio(_ i: Int, _ folio: Page, _ src: inout [UInt64]) -> Bool {
        mm.mmapLock.assertLocked()
        guard folio.test(.head), let av = folio.anonVMA else { return false }
        memory.rmapWalkAnon(av, index: folio.index) { hit in
            hit.vma.mm.splitHugePMD(hit.vma, hit.address, pfn: folio.pfn)
            return true
        }
        let n = Int(folio.folioPages)
        guard i + n <= src.count, machine.splitUnmappedFolio(folio) else { return false }
        src[i] &= ~MigratePfn.compound
        let flags = src[i] & ((1 << MigratePfn.shift) - 1)
        for k in 1..<n { src[i + k] = MigratePfn.make(folio.pfn + UInt64(k)) | flags }
        if remote.count == src.count { for k in 1..<n { remote[i + k] = remote[i] } }
        return true
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
        // folio_add_lru_vma for a system destination (device pages are never on the LRU).
        if !page.isZoneDevice { memory.lru.add(page) }
        return true
    }
}
