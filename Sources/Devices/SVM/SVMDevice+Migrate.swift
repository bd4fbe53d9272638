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
    /// With `largePages` and a whole chunk free, a range that covers part of a 2 MiB block
    /// the CPU maps with a THP grows to the whole block, which then moves as one 2 MiB device
    /// page (UVM migrates a big page whole; moving part of it would split the THP). With no
    /// chunk free it does not grow: evicting 2 MiB to bring in a few pages would make
    /// engines working in several blocks of an oversubscribed device evict each other's
    /// blocks for ever; the part moves as 4 KiB pages (the THP is split).
    @discardableResult
    func migrateToDevice(_ space: SVMSpace, _ start: UInt64, _ end: UInt64, evict: Bool = true) -> Int {
        space.mm.mmapLock.assertNotHeld(); space.lock.assertNotHeld()
        let mm = space.mm
        let widen = largePages && policy.allowsWholeTHPs && hasFreeChunk
        let (start, end) = widen ? SVMDevice.widenToHugeMappings(mm, start, end) : (start, end)
        if evict { makeRoom(pagesNotLocal(space, start, end)) }
        else if freePages == 0 { return 0 }
        mm.mmapLock.lockRead(); defer { mm.mmapLock.unlockRead() }
        guard let vma = mm.vmaLookup(start), vma.flags.contains(.read) else { return 0 }
        // 2 MiB entries only where the machine's THP setting would let the CPU have a THP
        // (`thp_vma_allowable_order`): the page comes back to the CPU as one.
        let huge = largePages && memory.thp.allowsFault(vma, start)
        let m = MigrateVMA(vma: vma, start: start, end: min(end, vma.end), pgmapOwner: self,
                           flags: huge ? [.system, .compound] : .system)
        do { try m.setup() } catch { return 0 }
        var withData = Set<Int>() // indices whose source had bytes to copy
        // A 2 MiB entry (a THP, or an aligned 2 MiB hole) gets a whole free chunk as one 2 MiB
        // device page; when none is free, its 512 pages get small device pages (`pages` then
        // splits the source THP).
        entries: for i in m.src.indices where m.src[i] & MigratePfn.migrate != 0 {
            let from = MigratePfn.pfn(m.src[i])
            if let from, memory.page(from).isZoneDevice { continue }
            let write = m.src[i] & MigratePfn.write
            let large = m.src[i] & MigratePfn.compound != 0
            if large, let head = allocateChunk() {
                memory.zoneDevicePageInit(memory.page(head), order: pmdOrder)
                for k in 0..<UInt64(ptrsPerTable) { copyIn(to: head + k, from: from.map { $0 + k }) }
                if from != nil { withData.insert(i) }
                m.dst[i] = MigratePfn.make(head) | write | MigratePfn.compound
                continue
            }
            for k in 0..<(large ? ptrsPerTable : 1) {
                guard let d = allocatePage() else { break entries }
                memory.zoneDevicePageInit(memory.page(d))
                let f = from.map { $0 + UInt64(k) }
                copyIn(to: d, from: f)
                if let f, f != PhysicalMemory.zeroPfn { withData.insert(i + k) }
                m.dst[i + k] = MigratePfn.make(d) | write
            }
        }
        m.pages()
        let entries = SVMDevice.movedEntries(m.src, m.dst)
        let movedAt = SVMDevice.addresses(m.start, entries)
        let moved = movedAt.count
        stats.count(.hugeToDevice, SVMDevice.hugeCount(entries))
        // Bytes over the link: only the copies of pages that did move.
        let copied = entries.reduce(0) { $0 + (withData.contains($1.index) ? $1.pages : 0) }
        lock.withLock {
            for e in entries {
                let d = Int(MigratePfn.pfn(m.dst[e.index])! - pagemap.startPfn)
                for k in 0..<e.pages { pageAddress[d + k] = m.start + UInt64(e.index + k) << pageShift }
            }
        }
        m.finalize()
        trace?.record(.toDevice(addresses: movedAt), virtual: faultClock.now)
        stats.count(.migratedToDevice, moved)
        stats.count(.bytesToDevice, copied * Int(pageSize))
        chargeCopy(copied)
        return moved
    }

    /// [start, end) grown to whole 2 MiB blocks at either end that the CPU maps with a THP
    /// (a present huge PMD) inside one anonymous VMA. Locking: none held; takes the mmap
    /// lock for read.
    static func widenToHugeMappings(_ mm: AddressSpace, _ start: UInt64, _ end: UInt64) -> (UInt64, UInt64) {
        mm.mmapLock.assertNotHeld()
        guard start < end else { return (start, end) }
        mm.mmapLock.lockRead(); defer { mm.mmapLock.unlockRead() }
        func isTHP(_ block: UInt64) -> Bool {
            guard let vma = mm.vmaLookup(block), vma.isAnonymous, vma.start <= block, block + pmdSize <= vma.end,
                  let found = mm.pageTable.lookup(block, level: .pte), found.level == .pmd else { return false }
            let v = found.entry.load()
            return v.isPresent && v.isHuge
        }
        var (s, e) = (start, end)
        if s & (pmdSize - 1) != 0, isTHP(s & pmdMask) { s &= pmdMask }
        if e & (pmdSize - 1) != 0, isTHP(e & pmdMask) { e = (e & pmdMask) + pmdSize }
        return (s, e)
    }

    /// Device page `to` gets the bytes of system page `from` (zeroes for none or the zero page).
    private func copyIn(to: UInt64, from: UInt64?) {
        if let from, from != PhysicalMemory.zeroPfn {
            bytes(of: to).copyMemory(from: memory.frame(from), byteCount: Int(pageSize))
        } else {
            bytes(of: to).initializeMemory(as: UInt8.self, repeating: 0, count: Int(pageSize))
        }
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
        let m = MigrateVMA(vma: vma, start: start, end: min(end, vma.end), pgmapOwner: self,
                           flags: largePages ? [.devicePrivate, .compound] : .devicePrivate)
        do { try m.setup() } catch { return 0 }
        guard copyBackToSystem(m) else { m.finalize(); return 0 }
        m.pages()
        let entries = SVMDevice.movedEntries(m.src, m.dst)
        let movedAt = SVMDevice.addresses(m.start, entries)
        let moved = movedAt.count
        stats.count(.hugeToSystem, SVMDevice.hugeCount(entries))
        m.finalize()
        trace?.record(.toSystem(addresses: movedAt, cause: .copyOnWrite), virtual: faultClock.now)
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
        // A 2 MiB device page moves whole into a system THP; without a VMA it cannot be split
        // (as in Linux 7.2's migrate_device_pages), so one whose THP cannot be had stays, and
        // is left out before anything is unmapped (its device mappings stay too).
        var pfns = pfns
        var folios: [Page] = []
        for head in pfns where memory.page(head).test(.head) {
            if let f = memory.allocate(order: pmdOrder) { folios.append(f); continue }
            let n = memory.page(head).folioPages
            pfns.removeAll { $0 >= head && $0 < head + n }
        }
        defer { for f in folios { memory.put(f) } }
        guard !pfns.isEmpty else { return 0 }
        var src = machine.migrateDevicePfns(pfns)
        var dst = [UInt64](repeating: 0, count: src.count)
        for i in src.indices where src[i] & MigratePfn.migrate != 0 {
            guard let from = MigratePfn.pfn(src[i]) else { continue }
            let order = src[i] & MigratePfn.compound != 0 ? pmdOrder : 0
            let taken = order > 0 ? folios.popLast() : nil
            guard let page = taken ?? memory.allocate(order: order, mayReclaim: order == 0) else { continue }
            page.lock()
            for k in 0..<(UInt64(1) << order) {
                memory.frame(page.pfn + k).copyMemory(from: bytes(of: from + k), byteCount: Int(pageSize))
            }
            dst[i] = MigratePfn.make(page.pfn) | (order > 0 ? MigratePfn.compound : 0)
        }
        machine.migrateDevicePages(&src, dst)
        // The device pages that moved (a 2 MiB one: its 512).
        let entries = SVMDevice.movedEntries(src, dst)
        let movedPfns = entries.flatMap { e in (0..<UInt64(e.pages)).map { pfns[e.index] + $0 } }
        let moved = movedPfns.count
        stats.count(.hugeToSystem, SVMDevice.hugeCount(entries))
        if let trace {
            let addresses = lock.withLock { movedPfns.map { pageAddress[Int($0 - pagemap.startPfn)] } }
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
