import MMSync

/// Whole-machine invariant checks. They read every page table and page, so they must run
/// while no other thread changes memory (after each operation in tests, at explorer steps).
extension Machine {
    /// Every violated invariant, as a sentence naming what is wrong (empty when all hold).
    @inline(never)
    public func checkInvariants() -> [String] {
        var problems: [String] = []
        problems += memory.checkFreeLists()
        var mappings: [UInt64: Int32] = [:]
        var fileRefs: [UInt64: Int32] = [:]
        var files: [ObjectIdentifier: ShmemFile] = [:]
        for mm in addressSpaces {
            mm.mmapLock.lockRead()
            problems += mm.checkVMAList()
            problems += mm.checkPageTable(&mappings)
            problems += mm.checkTLBs()
            for vma in mm.vmaList { if let f = vma.file { files[ObjectIdentifier(f)] = f } }
            mm.mmapLock.unlockRead()
        }
        for (_, f) in files.sorted(by: { $0.value.name < $1.value.name }) {
            for (_, pfn) in f.cacheLock.withLock({ f.pages }) { fileRefs[pfn, default: 0] += 1 }
        }
        for (pfn, count) in mappings.sorted(by: { $0.key < $1.key }) {
            let p = memory.page(pfn)
            if p.mapcount != count {
                problems.append("pfn \(pfn): mapcount \(p.mapcount) but \(count) page-table entries map it")
            }
            let floor = count + p.pincount + (fileRefs[pfn] ?? 0)
            if p.refcount < floor {
                problems.append("pfn \(pfn): refcount \(p.refcount) below mappings+pins+cache \(floor)")
            }
        }
        return problems
    }

    /// Frames in use that nothing in the machine accounts for would show up here as a
    /// difference between `usedFrames` and the frames reachable from live address spaces and
    /// files; tests check the stronger property that it returns to its start after teardown.
    public var usedFrames: Int { memory.usedFrames }
}

extension PhysicalMemory {
    /// The buddy free lists hold exactly `freeFrames` frames, each marked free and unused.
    func checkFreeLists() -> [String] {
        for o in pcpOwners { o.lock.lock() }
        defer { for o in pcpOwners.reversed() { o.lock.unlock() } }
        zoneLock.lock(); defer { zoneLock.unlock() }
        var problems: [String] = []
        var total = 0
        for o in pcpOwners {
            for i in 0..<o.count {
                let p = page(UInt64(o.pfns[i]))
                if !p.flags.isEmpty || p.refcount != 0 || p.mapcount != 0 || p.order != 0 || p.pfn >= systemFrames {
                    problems.append("per-cpu list: \(p) not a free frame (flags \(p.flags.rawValue), refcount \(p.refcount))")
                }
            }
            total += o.count
        }
        for order in 0...PhysicalMemory.maxOrder {
            var link = freeListHead[order]
            var n = 0
            while link != PhysicalMemory.nilLink {
                let p = page(UInt64(link))
                if !p.test(.buddy) || p.order != order { problems.append("free list \(order): \(p) not a free block of that order") }
                if p.refcount != 0 || p.mapcount != 0 { problems.append("free \(p) has refcount \(p.refcount) mapcount \(p.mapcount)") }
                n += 1; total += 1 << order
                if n > Int(systemFrames) { problems.append("free list \(order) loops"); break }
                link = p.lruNext
            }
            if n != freeCountByOrder[order] { problems.append("free list \(order): \(n) blocks, counter says \(freeCountByOrder[order])") }
        }
        if total != freeFrames { problems.append("free lists hold \(total) frames, counter says \(freeFrames)") }
        let buddy = total - pcpOwners.reduce(0) { $0 + $1.count }
        if buddy != buddyFreeFrames.load() { problems.append("buddy lists hold \(buddy) frames, counter says \(buddyFreeFrames.load())") }
        return problems
    }
}

extension AddressSpace {
    /// VMAs are page-aligned, non-empty, sorted and non-overlapping; every anonymous VMA with
    /// pages has an anon_vma it is linked into; file VMAs are linked into their file.
    func checkVMAList() -> [String] {
        var problems: [String] = vmaList.checkInvariants().map { "mm \(id): \($0)" }
        if vmaList.count > machine.maxMapCount + 1 { problems.append("mm \(id): \(vmaList.count) VMAs, past max_map_count \(machine.maxMapCount) + 1") }
        var prevEnd: UInt64 = 0
        for v in vmaList {
            if !isPageAligned(v.start) || !isPageAligned(v.end) || v.start >= v.end { problems.append("mm \(id): bad VMA \(v)") }
            if v.start < prevEnd { problems.append("mm \(id): VMA \(v) overlaps its predecessor") }
            if v.end > taskSize + pageSize { problems.append("mm \(id): VMA \(v) beyond the user address space") }
            prevEnd = v.end
            if let av = v.anonVMA, !v.anonVMAChain.contains(where: { $0 === av }) {
                problems.append("mm \(id): VMA \(v) not linked into its own anon_vma")
            }
            for av in v.anonVMAChain where !av.lock.withRead({ av.vmas.contains { $0 === v } }) {
                problems.append("mm \(id): VMA \(v) chain names an anon_vma that does not list it")
            }
            if let f = v.file, !f.mappingLock.withRead({ f.mappings.contains { $0 === v } }) {
                problems.append("mm \(id): VMA \(v) missing from its file's mappings")
            }
        }
        return problems
    }

    /// Walks the whole page table: every entry lies inside a VMA; present entries point at
    /// allocated frames of the right kind; device-private pages appear only in device-private
    /// entries; migration entries name locked pages; anonymous pages are found by their rmap.
    func checkPageTable(_ mappings: inout [UInt64: Int32]) -> [String] {
        var checker = PageTableChecker(mm: self)
        _ = pageTable.walk(0, taskSize + pageSize, &checker)
        for (pfn, n) in checker.mappings { mappings[pfn, default: 0] += n }
        return checker.problems
    }
}

struct PageTableChecker: PageWalker {
    let mm: AddressSpace
    var problems: [String] = []
    var mappings: [UInt64: Int32] = [:]
    var locksPTE: Bool { false }
    var memory: PhysicalMemory { mm.memory }

    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        let v = pte.load()
        let hex = "0x" + String(addr, radix: 16)
        guard let vma = mm.vmaLookup(addr) else {
            problems.append("mm \(mm.id): entry \(v) at \(hex) outside every VMA"); return .next
        }
        if v.isPresent {
            if v.isSpecial {
                if v.pfn != PhysicalMemory.zeroPfn { problems.append("mm \(mm.id): special entry at \(hex) is not the zero page") }
                if v.isWrite { problems.append("mm \(mm.id): zero page mapped writable at \(hex)") }
                return .next
            }
            guard memory.isValidPfn(v.pfn) else { problems.append("mm \(mm.id): \(hex) maps invalid pfn \(v.pfn)"); return .next }
            let p = memory.page(v.pfn)
            if p.refcount <= 0 || p.test(.buddy) { problems.append("mm \(mm.id): \(hex) maps free frame \(v.pfn)") }
            if p.test(.pageTable) { problems.append("mm \(mm.id): \(hex) maps a page-table frame") }
            if p.isDevicePrivate { problems.append("mm \(mm.id): \(hex) maps device-private pfn \(v.pfn) with a present PTE") }
            if v.isWrite && !vma.flags.contains(.write) { problems.append("mm \(mm.id): \(hex) writable in a read-only VMA") }
            if v.isWrite && !vma.isShared && p.isAnon && p.mapcount > 1 {
                problems.append("mm \(mm.id): \(hex) writable private page shared by \(p.mapcount) mappings")
            }
            checkRmap(p, vma, addr, hex)
            mappings[v.pfn, default: 0] += 1
        } else if v.isSwap {
            let s = v.swapEntry
            guard s.hasPfn else { return .next }
            let p = memory.page(s.pfn)
            if s.isMigration {
                if !p.isLocked { problems.append("mm \(mm.id): migration entry at \(hex) for unlocked \(p)") }
            } else if s.isDevicePrivate {
                if !p.isDevicePrivate { problems.append("mm \(mm.id): device-private entry at \(hex) names non-device \(p)") }
                mappings[s.pfn, default: 0] += 1
                checkRmap(p, vma, addr, hex)
            } else if s.isDeviceExclusive {
                mappings[s.pfn, default: 0] += 1
                checkRmap(p, vma, addr, hex)
            }
            // (A device-exclusive entry has no read-only form: mprotect leaves it, as 7.2 does.)
            if s.isWrite && !s.isDeviceExclusive && !vma.flags.contains(.write) { problems.append("mm \(mm.id): writable \(s) at \(hex) in a read-only VMA") }
        }
        return .next
    }

    private mutating func checkRmap(_ p: Page, _ vma: VMA, _ addr: UInt64, _ hex: String) {
        if let av = p.anonVMA {
            if vma.linearPageIndex(addr) != p.index { problems.append("mm \(mm.id): anon \(p) at \(hex) has index \(p.index), VMA says \(vma.linearPageIndex(addr))") }
            if !av.lock.withRead({ av.vmas.contains { $0 === vma } }) { problems.append("mm \(mm.id): anon \(p) at \(hex): VMA not in the page's anon_vma") }
        } else if let f = p.file {
            if vma.file !== f { problems.append("mm \(mm.id): file \(p) at \(hex) mapped through another file's VMA") }
            if vma.linearPageIndex(addr) != p.index { problems.append("mm \(mm.id): file \(p) at \(hex) index mismatch") }
        } else if !vma.isSpecialMapping {
            problems.append("mm \(mm.id): \(p) at \(hex) has no owner")
        }
    }
}

extension AddressSpace {
    /// No CPU's TLB holds a translation its PTE no longer allows, unless a shootdown is still
    /// pending for that CPU (it flushes before its next access). Quiescent CPUs only.
    func checkTLBs() -> [String] {
        var problems: [String] = []
        let gen = flushGeneration.load()
        for cpu in cpusLock.withLock({ cpus }) where cpu.inUser.load() == 0 && cpu.seenGeneration == gen {
            for slot in 0..<TLB.entries {
                let tag = cpu.tlb.slots[slot].tag
                guard tag & 1 != 0 else { continue }
                let frame = cpu.tlb.slots[slot].frame
                let address = (tag >> 2) << pageShift
                let hex = "0x" + String(address, radix: 16)
                guard let f = pageTable.lookup(address, level: .pte) else {
                    problems.append("mm \(id) cpu \(cpu.index): TLB maps \(hex) but no page table does"); continue
                }
                let v = f.entry.load()
                let sub = f.level == .pte ? 0 : (address & (f.level.size - 1)) >> pageShift
                guard v.isPresent, v.isUser, memory.frame(v.pfn + sub) == frame else {
                    problems.append("mm \(id) cpu \(cpu.index): stale TLB entry for \(hex) (PTE \(v))"); continue
                }
                if tag & 2 != 0 && !(v.isWrite && v.isDirty) {
                    problems.append("mm \(id) cpu \(cpu.index): TLB allows writes to \(hex), PTE \(v) does not")
                }
            }
        }
        return problems
    }
}
