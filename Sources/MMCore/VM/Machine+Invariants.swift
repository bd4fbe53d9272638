import MMSync

/// Whole-machine invariant checks: each core type checks its own (`PhysicalMemory`,
/// `AddressSpace` with its VMA tree, `PageTable` and CPUs' TLBs); the machine adds what only
/// the whole can tell (mapcount and refcount against every mapping, pin and cache reference).
/// They read every page table and page, so they must run while no other thread changes memory
/// (after each operation in tests, at explorer steps).
extension Machine {
    /// Every violated invariant, as a sentence naming what is wrong (empty when all hold).
    @inline(never)
    public func checkInvariants() -> [String] {
        var problems: [String] = []
        problems += memory.checkInvariants()
        var mappings: [UInt64: Int32] = [:]
        var fileRefs: [UInt64: Int32] = [:]
        var files: [ObjectIdentifier: ShmemFile] = [:]
        var hugeReservations = [Int](repeating: 0, count: memory.hugetlb.hstates.count)
        var hugeFiles: [ObjectIdentifier: HugetlbFile] = [:]
        for mm in addressSpaces {
            mm.mmapLock.lockRead()
            problems += mm.checkInvariants(mappings: &mappings)
            for vma in mm.vmaList {
                if let f = vma.file { files[ObjectIdentifier(f)] = f }
                if let f = vma.hugetlbFile { hugeFiles[ObjectIdentifier(f)] = f }
                if let h = vma.hstate, let resv = vma.hugetlbResv, let i = memory.hugetlb.hstates.firstIndex(where: { $0 === h }) {
                    hugeReservations[i] += resv.unconsumed(vma.hugePageIndex(vma.start), count: (vma.end - vma.start) / h.size)
                }
            }
            mm.mmapLock.unlockRead()
        }
        for f in hugeFiles.values {
            if let i = memory.hugetlb.hstates.firstIndex(where: { $0 === f.hstate }) { hugeReservations[i] += f.reservationsHeld() }
            for pfn in f.cachedPfns() { fileRefs[pfn, default: 0] += 1 }
        }
        problems += memory.hugetlb.checkInvariants(reservationsHeld: hugeReservations)
        for f in liveShmemFiles { files[ObjectIdentifier(f)] = f }
        for (_, f) in files.sorted(by: { $0.value.name < $1.value.name }) {
            for (index, pfn) in f.cacheLock.withLock({ f.pages }) {
                fileRefs[pfn, default: 0] += 1
                let p = memory.page(pfn)
                if p.file !== f || p.index != index { problems.append("\(f.name): page \(index) is pfn \(pfn), which is not flagged as that page") }
            }
            // A swapped-out page's entry holds one swap count, as a swap PTE does.
            for e in f.swapEntries() { mappings[SwapSpace.invariantKey(e), default: 0] += 1 }
        }
        // Swap slots against the entries naming them; each swap-cache page holds a reference.
        problems += memory.swap.checkInvariants(refs: mappings, cacheRefs: &fileRefs)
        // Mapcounts per page (PMD mappings per THP); references per folio, on its head.
        var folioFloor: [UInt64: Int32] = [:]
        for (key, count) in mappings.sorted(by: { $0.key < $1.key }) where key & PageTableChecker.swapSlotBit == 0 {
            if key & PageTableChecker.entireMappingBit != 0 {
                let pfn = key & ~PageTableChecker.entireMappingBit
                let p = memory.page(pfn)
                if p.entireMapcount != count {
                    problems.append("pfn \(pfn): entire mapcount \(p.entireMapcount) but \(count) PMD leaves map the folio")
                }
                folioFloor[pfn, default: 0] += count
                continue
            }
            let p = memory.page(key)
            if p.mapcount != count {
                problems.append("pfn \(key): mapcount \(p.mapcount) but \(count) page-table entries map it")
            }
            folioFloor[p.folioHead.pfn, default: 0] += count + (fileRefs[key] ?? 0)
        }
        for (pfn, mapped) in folioFloor.sorted(by: { $0.key < $1.key }) {
            let h = memory.page(pfn)
            let floor = mapped + h.pincount
            if h.refcount < floor {
                problems.append("pfn \(pfn): refcount \(h.refcount) below mappings+pins+cache \(floor)")
            }
        }
        problems += memory.checkLargeFolios()
        problems += memory.lru.checkInvariants()
        // Every anonymous system folio that is mapped (small, or a THP by PMD or PTEs) is on
        // the LRU (or on its way there), by its head.
        var seenHeads = Set<UInt64>()
        for (key, _) in mappings where key & PageTableChecker.swapSlotBit == 0 {
            let h = memory.page(key & ~PageTableChecker.entireMappingBit).folioHead
            guard h.pfn < memory.systemFrames, h.isAnon, !h.isZoneDevice, !h.test(.hugetlb), seenHeads.insert(h.pfn).inserted else { continue }
            if !h.test(.lru) && !h.test(.lruBatched) && !h.test(.isolated) {
                problems.append("pfn \(h.pfn): a mapped anonymous folio (order \(h.order)) on no LRU list")
            }
        }
        return problems
    }

    /// Frames in use that nothing in the machine accounts for would show up here as a
    /// difference between `usedFrames` and the frames reachable from live address spaces and
    /// files; tests check the stronger property that it returns to its start after teardown.
    public var usedFrames: Int { memory.usedFrames }
}
