import MMSync

extension PageTable {
    /// Walks the whole page table of `mm`: every entry lies inside a VMA; present entries point
    /// at allocated frames of the right kind; device-private pages appear only in
    /// device-private entries; migration entries name locked pages; anonymous pages are found
    /// by their rmap. Adds each mapped pfn's count of entries to `mappings`.
    /// Locking: caller holds `mm`'s mmap lock (read or write).
    func checkInvariants(of mm: AddressSpace, mappings: inout [UInt64: Int32]) -> [String] {
        mm.mmapLock.assertLocked()
        var checker = PageTableChecker(mm: mm)
        _ = walk(0, taskSize + pageSize, &checker)
        for (pfn, n) in checker.mappings { mappings[pfn, default: 0] += n }
        // Every THP leaf has its deposited PTE table, and no table is deposited without one.
        for (table, leaves) in checker.thpLeavesByTable.sorted(by: { $0.key < $1.key }) {
            let deposited = depositedTables(in: memory.page(table))
            if deposited != leaves {
                checker.problems.append("mm \(mm.id): PMD table \(table) has \(leaves) THP leaves but \(deposited) deposited tables")
            }
        }
        return checker.problems
    }
}

struct PageTableChecker: PageWalker {
    let mm: AddressSpace
    var problems: [String] = []
    var mappings: [UInt64: Int32] = [:]
    /// THP leaves (huge zero included) seen in each PMD table (every PMD table is a key).
    var thpLeavesByTable: [UInt64: Int] = [:]
    /// A key of `mappings` with this bit counts PMD mappings of the THP at the pfn below it
    /// (its entire mapcount), not PTE mappings of the page.
    static let entireMappingBit: UInt64 = 1 << 63
    /// A key of `mappings` with this bit counts swap entries naming a swap slot
    /// (`SwapSpace.invariantKey`), not mappings of a pfn.
    static let swapSlotBit: UInt64 = 1 << 62
    var locksPTE: Bool { false }
    var memory: PhysicalMemory { mm.memory }

    mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let v = pmd.load()
        thpLeavesByTable[table.pfn, default: 0] += 0
        guard v.isHuge || !v.isPresent else { return .next }
        if v.isPresent, let vma = mm.vmaLookup(start), !vma.isHugetlb {
            thpLeavesByTable[table.pfn, default: 0] += 1
            checkTHPLeaf(v, vma, start)
            return .skip
        }
        if PageTable.isTHPMigration(v), let vma = mm.vmaLookup(start), !vma.isHugetlb {
            thpLeavesByTable[table.pfn, default: 0] += 1
            checkTHPMigration(v, vma, start)
            return .skip
        }
        if PageTable.isTHPDevicePrivate(v), let vma = mm.vmaLookup(start), !vma.isHugetlb {
            thpLeavesByTable[table.pfn, default: 0] += 1
            checkTHPDevicePrivate(v, vma, start)
            return .skip
        }
        checkHugeLeaf(v, .pmd, start)
        return .skip
    }

    /// A THP leaf lies whole inside an anonymous VMA, 2 MiB-aligned, and maps either the huge
    /// zero folio (read-only) or the head of an anonymous order-9 folio that is not free; it
    /// counts as a PMD mapping of the folio.
    private mutating func checkTHPLeaf(_ v: PTE, _ vma: VMA, _ addr: UInt64) {
        let hex = "0x" + String(addr, radix: 16)
        checkPMDPlacement("THP leaf", vma, addr, hex)
        if v.isSpecial {
            if v.pfn != memory.thp.hugeZeroPfn { problems.append("mm \(mm.id): special PMD at \(hex) is not the huge zero folio") }
            if v.isWrite { problems.append("mm \(mm.id): huge zero folio mapped writable at \(hex)") }
            return
        }
        guard memory.isValidPfn(v.pfn) else { problems.append("mm \(mm.id): \(hex) maps invalid pfn \(v.pfn)"); return }
        let p = memory.page(v.pfn)
        if !p.test(.head) || p.test(.hugetlb) || p.order != pmdOrder {
            problems.append("mm \(mm.id): THP leaf at \(hex) maps pfn \(v.pfn), not the head of an order-\(pmdOrder) folio")
            return
        }
        if p.isFreeFrame { problems.append("mm \(mm.id): \(hex) maps free THP \(v.pfn)") }
        if v.isWrite && !vma.flags.contains(.write) { problems.append("mm \(mm.id): \(hex) writable in a read-only VMA") }
        if v.isWrite && p.entireMapcount > 1 { problems.append("mm \(mm.id): \(hex) writable THP mapped by \(p.entireMapcount) PMDs") }
        checkRmap(p, vma, addr, hex)
        mappings[v.pfn | PageTableChecker.entireMappingBit, default: 0] += 1
    }

    /// A THP entry of any kind lies whole inside an anonymous VMA, on a 2 MiB boundary.
    private mutating func checkPMDPlacement(_ what: String, _ vma: VMA, _ addr: UInt64, _ hex: String) {
        if !vma.isAnonymous { problems.append("mm \(mm.id): \(what) at \(hex) in non-anonymous \(vma)") }
        if addr & (pmdSize - 1) != 0 || addr < vma.start || addr + pmdSize > vma.end {
            problems.append("mm \(mm.id): \(what) at \(hex) not inside \(vma) on a 2 MiB boundary")
        }
    }

    /// A PMD migration entry lies whole inside an anonymous VMA, 2 MiB-aligned, and names the
    /// head of an order-9 folio that is not free; it counts as no mapping. (That the folio is
    /// locked is a step invariant: `checkStepInvariants`.)
    private mutating func checkTHPMigration(_ v: PTE, _ vma: VMA, _ addr: UInt64) {
        let hex = "0x" + String(addr, radix: 16)
        checkPMDPlacement("PMD migration entry", vma, addr, hex)
        let pfn = v.swapEntry.pfn
        guard memory.isValidPfn(pfn) else { problems.append("mm \(mm.id): \(hex) names invalid pfn \(pfn)"); return }
        let p = memory.page(pfn)
        if !p.test(.head) || p.test(.hugetlb) || p.order != pmdOrder || p.isFreeFrame {
            problems.append("mm \(mm.id): PMD migration entry at \(hex) names pfn \(pfn), not the head of an order-\(pmdOrder) folio in use")
        }
        if v.swapEntry.isWritableMigration && !vma.flags.contains(.write) {
            problems.append("mm \(mm.id): writable PMD migration entry at \(hex) in a read-only VMA")
        }
    }

    /// A device-private PMD lies whole inside an anonymous VMA, 2 MiB-aligned, and names the
    /// head of an order-9 device-private folio in use; writable only in a writable VMA and
    /// then mapped by this PMD alone; the folio's rmap finds this VMA; it counts as a PMD
    /// mapping of the folio.
    private mutating func checkTHPDevicePrivate(_ v: PTE, _ vma: VMA, _ addr: UInt64) {
        let hex = "0x" + String(addr, radix: 16)
        checkPMDPlacement("device-private PMD", vma, addr, hex)
        let pfn = v.swapEntry.pfn
        guard memory.isValidPfn(pfn) else { problems.append("mm \(mm.id): \(hex) names invalid pfn \(pfn)"); return }
        let p = memory.page(pfn)
        guard p.test(.head), p.isDevicePrivate, p.order == pmdOrder, !p.isFreeFrame else {
            problems.append("mm \(mm.id): device-private PMD at \(hex) names pfn \(pfn), not the head of an order-\(pmdOrder) device-private folio in use")
            return
        }
        if v.swapEntry.isWrite && !vma.flags.contains(.write) { problems.append("mm \(mm.id): \(hex) writable device-private PMD in a read-only VMA") }
        if v.swapEntry.isWrite && p.entireMapcount > 1 { problems.append("mm \(mm.id): \(hex) writable device THP mapped by \(p.entireMapcount) PMDs") }
        checkRmap(p, vma, addr, hex)
        mappings[pfn | PageTableChecker.entireMappingBit, default: 0] += 1
    }

    mutating func pudLeaf(_ pud: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        checkHugeLeaf(pud.load(), .pud, start)
        return .skip
    }

    /// A PMD or PUD leaf maps the head page of a hugetlb folio of the VMA's huge page size,
    /// inside one hugetlb VMA, with the rights the VMA gives.
    private mutating func checkHugeLeaf(_ v: PTE, _ level: PageTableLevel, _ addr: UInt64) {
        let hex = "0x" + String(addr, radix: 16)
        guard v.isPresent else { problems.append("mm \(mm.id): non-present \(level) entry \(v) at \(hex)"); return }
        guard let vma = mm.vmaLookup(addr) else { problems.append("mm \(mm.id): \(level) leaf \(v) at \(hex) outside every VMA"); return }
        guard let h = vma.hstate, h.level == level else {
            problems.append("mm \(mm.id): \(level) leaf at \(hex) in \(vma), which is not hugetlb of that size"); return
        }
        if addr < vma.start || addr + level.size > vma.end { problems.append("mm \(mm.id): \(level) leaf at \(hex) crosses the end of \(vma)") }
        guard memory.isValidPfn(v.pfn) else { problems.append("mm \(mm.id): \(hex) maps invalid pfn \(v.pfn)"); return }
        let p = memory.page(v.pfn)
        if !p.test(.head) || !p.test(.hugetlb) || p.order != h.order {
            problems.append("mm \(mm.id): \(level) leaf at \(hex) maps pfn \(v.pfn), not the head of a hugetlb folio of order \(h.order)")
        }
        if p.isFreeFrame { problems.append("mm \(mm.id): \(hex) maps free huge page \(v.pfn)") }
        checkMapping(p, v, vma, addr, hex)
    }

    /// What holds for a present leaf of any level: writable only in a writable VMA, a
    /// writable private page mapped once, the page's rmap finds this VMA; the mapping counts.
    private mutating func checkMapping(_ p: Page, _ v: PTE, _ vma: VMA, _ addr: UInt64, _ hex: String) {
        if v.isWrite && !vma.flags.contains(.write) { problems.append("mm \(mm.id): \(hex) writable in a read-only VMA") }
        if v.isWrite && !vma.isShared && p.isAnon && p.mapcount > 1 {
            problems.append("mm \(mm.id): \(hex) writable private page shared by \(p.mapcount) mappings")
        }
        checkRmap(p, vma, addr, hex)
        mappings[v.pfn, default: 0] += 1
    }

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
            if p.isFreeFrame { problems.append("mm \(mm.id): \(hex) maps free frame \(v.pfn)") }
            if p.test(.pageTable) { problems.append("mm \(mm.id): \(hex) maps a page-table frame") }
            if p.isDevicePrivate { problems.append("mm \(mm.id): \(hex) maps device-private pfn \(v.pfn) with a present PTE") }
            checkMapping(p, v, vma, addr, hex)
        } else if v.isSwap {
            let s = v.swapEntry
            if s.isSwapSlot {
                // A swapped-out anonymous page: private mappings only (shared ones are in the
                // page cache), counted for the slot's swap count.
                mappings[SwapSpace.invariantKey(s), default: 0] += 1
                if vma.isShared { problems.append("mm \(mm.id): swap entry \(s) at \(hex) in a shared VMA") }
                return .next
            }
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
        } else if let f = p.hugetlbFile {
            if vma.hugetlbFile !== f { problems.append("mm \(mm.id): hugetlb file \(p) at \(hex) mapped through another file's VMA") }
            if vma.linearPageIndex(addr) != p.index { problems.append("mm \(mm.id): hugetlb file \(p) at \(hex) index mismatch") }
        } else if let f = p.file {
            if vma.file !== f { problems.append("mm \(mm.id): file \(p) at \(hex) mapped through another file's VMA") }
            if vma.linearPageIndex(addr) != p.index { problems.append("mm \(mm.id): file \(p) at \(hex) index mismatch") }
        } else if !vma.isSpecialMapping {
            problems.append("mm \(mm.id): \(p) at \(hex) has no owner")
        }
    }
}
