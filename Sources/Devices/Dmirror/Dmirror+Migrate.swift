import HMM
import MMCore
import MMSync

extension Dmirror {
    /// Walks [addr, end) in batches of up to 512 pages clipped to the VMA of each batch start,
    /// as both migration commands do, with two batches in flight: `begin` sets batch k + 1 up
    /// and starts its copy (calling `makeRoom` completes batch k early, if memory ran short),
    /// then batch k's copy is waited for and `finish` completes it. So the copy engine copies
    /// batch k while this thread collects and unmaps batch k + 1.
    /// EINVAL for a missing or unreadable VMA; the batch in flight and all earlier ones are
    /// completed first and stay migrated. Locking: mmap lock held for read.
    private func forEachMigrationBatch(_ start: UInt64, _ end: UInt64,
                                       begin: (VMA, UInt64, UInt64, _ makeRoom: () -> Void) throws(Errno) -> (MigrateVMA, CopyFence),
                                       finish: @escaping (MigrateVMA) -> Void) throws(Errno) {
        mm.mmapLock.assertLocked()
        var inFlight: (MigrateVMA, CopyFence)? = nil
        func complete() {
            guard let (m, fence) = inFlight else { return }
            inFlight = nil
            fence.wait()
            finish(m)
        }
        defer { complete() }
        var addr = start
        while addr < end {
            guard let vma = mm.vmaLookup(addr), vma.flags.contains(.read) else { throw .EINVAL }
            let next = min(min(end, addr + Dmirror.migrateBatch * pageSize), vma.end)
            let batch = try begin(vma, addr, next, complete)
            complete()
            inFlight = batch
            addr = next
        }
    }

    /// `dmirror_migrate_to_device`: anonymous system memory moves into this device's memory;
    /// then the whole range is read back from the device table (ENOENT if a page is missing).
    func migrateToDevice(_ cmd: inout DmirrorCmd, _ buffer: DmirrorBuffer?) throws(Errno) {
        guard !mm.isDead else { throw .EINVAL }
        mm.mmapLock.lockRead()
        do {
            try forEachMigrationBatch(cmd.addr, cmd.addr + cmd.npages * pageSize, begin: { (vma, start, next, makeRoom) throws(Errno) in
                let m = MigrateVMA(vma: vma, start: start, end: next, pgmapOwner: device, flags: [.system, .compound], notifierOwner: self)
                try m.setup()
                return (m, allocAndCopyToDevice(m, makeRoom: makeRoom))
            }, finish: { [self] m in
                m.pages()
                finalizeAndMap(m)
                m.finalize()
            })
        } catch { mm.mmapLock.unlockRead(); throw error }
        mm.mmapLock.unlockRead()
        guard !isCutOff else { throw .EIO } // cut off meanwhile: the pages moved, nothing is mapped
        try readBack(&cmd, buffer)
    }

    /// `dmirror_migrate_alloc_and_copy`: a device page for each selected source, holding its
    /// data (or zeroes for an empty source). Destination writable iff the source was. The copy
    /// runs on the copy engine: wait on the fence before `pages`.
    /// `makeRoom` completes the batch still in flight (freeing its old pages); it is called when
    /// memory, not fault injection, ran short, so two batches in flight never fail where one
    /// would have succeeded.
    private func allocAndCopyToDevice(_ m: MigrateVMA, makeRoom: () -> Void) -> CopyFence {
        // Fix of a race in the kernel's test driver: its own MIGRATE invalidation is ignored,
        // so a concurrent device WRITE could still reach an old page after the copy. Dropping
        // the entries of every selected source first (one lock round for the batch) makes such
        // a write fault, wait for the migration entry, and land on the new page.
        // FAIL_ALLOC is consumed by the next allocation attempt: only if this batch will make one.
        let needsAllocation = m.src.contains { e in
            e & MigratePfn.migrate != 0 && !(MigratePfn.pfn(e).map { memory.page($0).isZoneDevice } ?? false)
        }
        var failAlloc = false
        mutex.withLock {
            if needsAllocation {
                failAlloc = flags & DmirrorFlag.failAlloc != 0
                flags &= ~DmirrorFlag.failAlloc
            }
            for i in m.src.indices where m.src[i] & MigratePfn.migrate != 0 && MigratePfn.pfn(m.src[i]) != nil {
                let first = (m.start >> pageShift) + UInt64(i)
                if m.src[i] & MigratePfn.compound != 0 {
                    // One range erase (a leaf lookup or two), not 512 entries each looking for
                    // a leaf that a THP's first migration does not have yet.
                    pt.removeRange(first, first + UInt64(ptrsPerTable) - 1)
                } else {
                    pt[first] = nil
                }
            }
        }
        // A COMPOUND source (a THP, or an aligned 2 MiB hole) gets an order-9 device folio;
        // when none can be had (FAIL_ALLOC, or no 2 MiB on either side) its 512 pages get
        // small device pages, without COMPOUND (migrate_vma_pages then splits the source).
        var wanted: [(index: Int, from: UInt64, write: UInt64)] = []
        wanted.reserveCapacity(m.src.count)
        var to: [UInt64] = [], from: [UInt64] = []
        var copied = 0
        for i in m.src.indices where m.src[i] & MigratePfn.migrate != 0 {
            let spfn = MigratePfn.pfn(m.src[i])
            if let s = spfn, memory.page(s).isZoneDevice { continue } // already device memory
            let write = m.src[i] & MigratePfn.write
            let large = m.src[i] & MigratePfn.compound != 0
            var injected = false
            if failAlloc { failAlloc = false; injected = true } // the injected allocation failure, once
            if !large {
                if !injected { wanted.append((i, spfn ?? PhysicalMemory.zeroPfn, write)) }
                continue
            }
            let n = spfn.map { Int(memory.page($0).folioPages) } ?? ptrsPerTable
            if !injected, let d = device.allocateLarge() {
                let backing = device.backingPage(d)
                device.recordOwner(backing: backing, mirror: self)
                m.dst[i] = MigratePfn.make(d.pfn) | write | MigratePfn.compound
                for k in 0..<UInt64(n) {
                    to.append(backing.pfn + k)
                    from.append(spfn.map { $0 + k } ?? PhysicalMemory.zeroPfn)
                }
                if spfn != nil { copied += n }
                continue
            }
            for k in 0..<n { wanted.append((i + k, spfn.map { $0 + UInt64(k) } ?? PhysicalMemory.zeroPfn, write)) }
        }
        var dpages = device.allocatePages(wanted.count)
        if dpages.count < wanted.count && memory.freeFrames < wanted.count - dpages.count {
            makeRoom()
            dpages += device.allocatePages(wanted.count - dpages.count, mayReclaim: true)
        }
        // One bulk copy for the batch, started before the entries are filled in (the engine
        // copies meanwhile); an empty source (no page, or the zero page) copies the zero page.
        let first = to.count
        to.reserveCapacity(first + dpages.count); from.reserveCapacity(first + dpages.count)
        for k in dpages.indices { to.append(device.backingPage(dpages[k]).pfn); from.append(wanted[k].from) }
        let fence = memory.copyFramesAsync(on: device.copyEngine, to: to, from: from)
        for k in dpages.indices {
            let (i, f, write) = wanted[k]
            device.recordOwner(backing: memory.page(to[first + k]), mirror: self)
            if f != PhysicalMemory.zeroPfn { copied += 1 }
            m.dst[i] = MigratePfn.make(dpages[k].pfn) | write
        }
        machine.stats.count(.bytesCopied, copied * Int(pageSize))
        return fence
    }

    /// `dmirror_migrate_finalize_and_map`: every migrated page enters the device table.
    private func finalizeAndMap(_ m: MigrateVMA) {
        var n = 0
        mutex.withLock {
            // A mirror cut off meanwhile maps nothing (the pages stay on the device; the CPU
            // faults them back).
            for i in m.src.indices where m.src[i] & MigratePfn.migrate != 0 {
                guard let dpfn = MigratePfn.pfn(m.dst[i]) else { continue }
                let backing = device.backingPage(memory.page(dpfn))
                let tag = m.dst[i] & MigratePfn.write != 0 ? Dmirror.tagWrite : Dmirror.tagRead
                let pages = m.dst[i] & MigratePfn.compound != 0 ? UInt64(ptrsPerTable) : 1
                n += Int(pages) // migrated, mapped or not
                guard !isCutOff else { continue }
                for k in 0..<pages {
                    pt[(m.start >> pageShift) + UInt64(i) + k] = (backing.pfn + k) << 2 | tag
                }
            }
        }
        machine.stats.count(.pagesMigrated, n)
        machine.stats.count(.pagesMigratedToDevice, n)
    }

    /// `dmirror_migrate_to_system`: this device's pages in the range move back to system
    /// memory. `cpages` counts the pages that moved.
    func migrateToSystem(_ cmd: inout DmirrorCmd) throws(Errno) {
        guard !mm.isDead else { throw .EINVAL }
        mm.mmapLock.lockRead()
        defer { mm.mmapLock.unlockRead() }
        var moved = 0
        try forEachMigrationBatch(cmd.addr, cmd.addr + cmd.npages * pageSize, begin: { (vma, start, next, makeRoom) throws(Errno) in
            let m = MigrateVMA(vma: vma, start: start, end: next, pgmapOwner: device, flags: device.selectDevice.union(.compound),
                               notifierOwner: self)
            try m.setup()
            // dmirror_migrate_to_system: a failed alloc-and-copy finalizes the batch (nothing
            // moved) and the command fails with ENOMEM.
            var injected = false
            guard let fence = device.allocAndCopyToSystem(m, mirror: self, isFault: false, injected: &injected, makeRoom: makeRoom) else {
                m.finalize()
                throw .ENOMEM
            }
            return (m, fence)
        }, finish: { [self] m in
            m.pages()
            let n = m.migratedCount
            moved += n
            machine.stats.count(.pagesMigrated, n)
            machine.stats.count(.pagesMigratedToSystem, n)
            m.finalize()
        })
        cmd.cpages = UInt64(moved)
    }
}

#if canImport(Glibc)
import Glibc
#endif
