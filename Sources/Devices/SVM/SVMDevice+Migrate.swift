import HMM
import MMCore
import MMSync

extension SVMDevice {
    /// Migrates the anonymous pages of [start, end) in `space` into device memory
    /// (`nouveau_dmem_migrate_vma`): room is made first by evicting the least recently used
    /// chunks, then `MigrateVMA` setup, a device page for each selected page holding its bytes
    /// (zeroes for an empty one), pages, finalize. Pages that cannot move (busy, or device
    /// memory still short) stay where they are. The range is clipped to its VMA. Without
    /// `evict`, only free device memory is used (a prefetch).
    /// Return: pages moved. Locking: none held; takes the mmap lock for read.
    @discardableResult
    func migrateToDevice(_ space: SVMSpace, _ start: UInt64, _ end: UInt64, evict: Bool = true) -> Int {
        space.mm.mmapLock.assertNotHeld(); space.lock.assertNotHeld()
        let mm = space.mm
        if evict { makeRoom(pagesNotLocal(space, start, end)) }
        else if freePages == 0 { return 0 }
        mm.mmapLock.lockRead(); defer { mm.mmapLock.unlockRead() }
        guard let vma = mm.vmaLookup(start), vma.flags.contains(.read) else { return 0 }
        let m = MigrateVMA(vma: vma, start: start, end: min(end, vma.end), pgmapOwner: self, flags: .system)
        do { try m.setup() } catch { return 0 }
        var withData: [Int] = [] // indices whose source had bytes to copy
        for i in m.src.indices where m.src[i] & MigratePfn.migrate != 0 {
            let from = MigratePfn.pfn(m.src[i])
            if let from, memory.page(from).isZoneDevice { continue }
            guard let d = allocatePage() else { break }
            memory.zoneDevicePageInit(memory.page(d))
            if let from, from != PhysicalMemory.zeroPfn {
                bytes(of: d).copyMemory(from: memory.frame(from), byteCount: Int(pageSize))
                withData.append(i)
            } else {
                bytes(of: d).initializeMemory(as: UInt8.self, repeating: 0, count: Int(pageSize))
            }
            m.dst[i] = MigratePfn.make(d) | (m.src[i] & MigratePfn.write)
        }
        m.pages()
        let moved = m.migratedCount
        // Bytes over the link: only the copies of pages that did move.
        let copied = withData.reduce(0) { $0 + (m.src[$1] & MigratePfn.migrate != 0 ? 1 : 0) }
        let movedAt = m.src.indices.filter { m.src[$0] & MigratePfn.migrate != 0 && MigratePfn.pfn(m.dst[$0]) != nil }
        lock.withLock { for i in movedAt { pageAddress[Int(MigratePfn.pfn(m.dst[i])! - pagemap.startPfn)] = m.start + UInt64(i) << pageShift } }
        m.finalize()
        trace?.record(.toDevice(addresses: movedAt.map { m.start + UInt64($0) << pageShift }), virtual: faultClock.now)
        stats.count(.migratedToDevice, moved)
        stats.count(.bytesToDevice, copied * Int(pageSize))
        chargeCopy(copied)
        return moved
    }

    /// Which pages of [start, end) of `space` are in this device's memory now (a snapshot of
    /// the CPU's page table: nothing is faulted in). For policies: UVM's prefetcher asks the
    /// same of a block's residency. All false if the snapshot fails (no VMA, or an
    /// invalidation kept overtaking it). Locking: none held; takes the mmap lock for read.
    public func residency(_ space: SVMSpace, _ start: UInt64, _ end: UInt64) -> [Bool] {
        space.mm.mmapLock.assertNotHeld(); space.lock.assertNotHeld()
        let s = start & ~(pageSize - 1), e = (end + pageSize - 1) & ~(pageSize - 1)
        guard s < e, space.device === self else { return [] }
        let none = [Bool](repeating: false, count: Int((e - s) >> pageShift))
        var range = HMMRange(notifier: space.notifier, notifierSeq: space.notifier.readBegin(), start: s, end: e,
                             devPrivateOwner: self)
        space.mm.mmapLock.lockRead(); defer { space.mm.mmapLock.unlockRead() }
        guard (try? space.mm.hmmRangeFault(&range)) != nil else { return none }
        return range.hmmPfns.map { HMMPfn.isValid($0) && isLocal(HMMPfn.pfn($0)) }
    }

    /// Pages of [start, end) not in this device's memory now (a snapshot: nothing faulted).
    /// Return: the whole range's page count if the snapshot fails. Locking: none held.
    func pagesNotLocal(_ space: SVMSpace, _ start: UInt64, _ end: UInt64) -> Int {
        space.mm.mmapLock.assertNotHeld(); space.lock.assertNotHeld()
        return residency(space, start, end).reduce(0) { $0 + ($1 ? 0 : 1) }
    }

    /// Migrates this device's pages in [start, end) of `space` back to system memory (a write
    /// to a page the device holds read-only: after a fork, the CPU's copy-on-write must break
    /// it). Return: pages moved. Locking: none held; takes the mmap lock for read.
    @discardableResult
    func migrateToSystem(_ space: SVMSpace, _ start: UInt64, _ end: UInt64) -> Int {
        space.mm.mmapLock.assertNotHeld(); space.lock.assertNotHeld()
        let mm = space.mm
        mm.mmapLock.lockRead(); defer { mm.mmapLock.unlockRead() }
        guard let vma = mm.vmaLookup(start) else { return 0 }
        let m = MigrateVMA(vma: vma, start: start, end: min(end, vma.end), pgmapOwner: self, flags: .devicePrivate)
        do { try m.setup() } catch { return 0 }
        guard copyBackToSystem(m) else { m.finalize(); return 0 }
        m.pages()
        let moved = m.migratedCount
        let movedAt = m.src.indices.filter { m.src[$0] & MigratePfn.migrate != 0 && MigratePfn.pfn(m.dst[$0]) != nil }
        m.finalize()
        trace?.record(.toSystem(addresses: movedAt.map { m.start + UInt64($0) << pageShift }, cause: .copyOnWrite), virtual: faultClock.now)
        stats.count(.migratedToSystem, moved)
        stats.count(.bytesToSystem, moved * Int(pageSize))
        chargeCopy(moved)
        return moved
    }

    /// Evicts least recently used chunks until `pages` pages are free or nothing more can go.
    /// Locking: none held.
    func makeRoom(_ pages: Int) {
        lock.assertNotHeld()
        var tried = Set<Int>()
        while true {
            let victim: [UInt64]? = lock.withLock {
                guard freePfns.count < pages else { return nil }
                var best: Int? = nil
                for c in chunkLastUse.indices where !tried.contains(c) {
                    let base = c * SVMDevice.chunkPages
                    guard allocated[base..<(base + SVMDevice.chunkPages)].contains(true) else { continue }
                    if best == nil || chunkLastUse[c] < chunkLastUse[best!] { best = c }
                }
                guard let c = best else { return nil }
                tried.insert(c)
                let base = c * SVMDevice.chunkPages
                return (base..<(base + SVMDevice.chunkPages)).filter { allocated[$0] }.map { pagemap.startPfn + UInt64($0) }
            }
            guard let victim else { return }
            if evict(victim) > 0 { stats.count(.evictions) }
        }
    }

    /// Moves the given device pages back to system memory wherever they are mapped
    /// (`migrate_device_pfns`, as nouveau's and dmirror's eviction do), with their bytes.
    /// Return: pages moved. Locking: none held.
    @discardableResult
    func evict(_ pfns: [UInt64]) -> Int {
        lock.assertNotHeld()
        var src = machine.migrateDevicePfns(pfns)
        var dst = [UInt64](repeating: 0, count: src.count)
        for i in src.indices where src[i] & MigratePfn.migrate != 0 {
            guard let from = MigratePfn.pfn(src[i]), let page = memory.allocate(mayReclaim: true) else { continue }
            page.lock()
            memory.frame(page.pfn).copyMemory(from: bytes(of: from), byteCount: Int(pageSize))
            dst[i] = MigratePfn.make(page.pfn)
        }
        machine.migrateDevicePages(&src, dst)
        let movedAt = src.indices.filter { src[$0] & MigratePfn.migrate != 0 && dst[$0] != 0 }
        let moved = movedAt.count
        if let trace {
            let addresses = lock.withLock { movedAt.map { pageAddress[Int(pfns[$0] - pagemap.startPfn)] } }
            trace.record(.toSystem(addresses: addresses, cause: .eviction), virtual: faultClock.now)
        }
        machine.migrateDeviceFinalize(src, dst)
        stats.count(.migratedToSystem, moved)
        stats.count(.bytesToSystem, moved * Int(pageSize))
        chargeCopy(moved)
        return moved
    }

    /// Adds the link time of copying `pages` pages to the fault thread's clock.
    func chargeCopy(_ pages: Int) {
        guard pages > 0 else { return }
        faultClock.advance(by: costs.copyNs(pages * Int(pageSize)))
    }
}
