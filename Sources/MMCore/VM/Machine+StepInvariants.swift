import MMSync

/// The invariants that hold at every step, in the middle of operations too, so the explorer
/// can check them at each scheduling point (`hmm explore --check-every-step`): whatever a
/// thread is half-way through, a page is freed only after every page-table entry and every
/// usable TLB entry that maps it is gone. (The counts — mapcount against the entries,
/// refcount against mappings and pins, the rmap — hold only between operations, and stay in
/// `checkInvariants`.)
///
/// The checks read page tables, TLBs and page metadata without taking any lock: a lock would
/// be a scheduling point of its own. They are only meaningful, and only safe, while every other
/// model thread is stopped at a scheduling point (no Swift collection is half-changed then: a
/// thread stops only at an MMSync call).
extension Machine {
    /// Every broken step invariant, as a sentence (empty when all hold). Address spaces that
    /// are exiting (their top-level table may be gone) are skipped.
    public func checkStepInvariants() -> [String] {
        var problems: [String] = []
        for mm in addressSpacesUnlocked where !mm.isDead {
            mm.pageTable.checkStepInvariants(mm: mm.id, into: &problems)
            let generation = mm.flushGeneration.load()
            for cpu in mm.cpus { cpu.checkStepInvariants(generation: generation, into: &problems) }
        }
        return problems
    }
}

extension Machine {
    /// Names the page-table entry at host address `p` for a failure report — "mm 1 pte
    /// 0x7efffffff000 = pfn 20 rw D A" (its value now) — or nil if `p` is not in a page-table
    /// frame. Reads without locks, under the rules of `checkStepInvariants`.
    public func describePageTableEntry(at p: UnsafeRawPointer) -> String? {
        let base = UnsafeRawPointer(memory.frameBase)
        guard p >= base, p < base + memory.frameBytes else { return nil }
        let table = memory.tablePage(of: EntryPointer(UnsafeMutableRawPointer(mutating: p)))
        guard table.test(.pageTable), !table.test(.buddy) else { return nil }
        let pfn = table.pfn
        let index = (Int(p - base) & Int(pageSize - 1)) / 8
        let value = EntryPointer(UnsafeMutableRawPointer(mutating: p)).load()
        for mm in addressSpacesUnlocked where !mm.isDead {
            guard let (level, start) = mm.pageTable.locate(table: pfn) else { continue }
            return "mm \(mm.id) \(level) 0x\(String(start &+ UInt64(index) &* level.size, radix: 16)) = \(value)"
        }
        return "entry \(index) of table pfn \(pfn) (no address space reaches it now) = \(value)"
    }
}

extension PageTable {
    /// The level of the entries of table `pfn` and the first address it maps, searched from
    /// the PGD; nil if no entry leads to it. Reads without locks (see
    /// `Machine.checkStepInvariants`).
    func locate(table pfn: UInt64) -> (PageTableLevel, UInt64)? {
        if pfn == pgd.pfn { return (.pgd, 0) }
        return locate(pfn, in: pgd.pfn, .pgd, base: 0)
    }

    private func locate(_ target: UInt64, in tablePfn: UInt64, _ level: PageTableLevel, base: UInt64) -> (PageTableLevel, UInt64)? {
        guard level != .pte else { return nil }
        let child = PageTableLevel(rawValue: level.rawValue - 1)!
        for i in 0..<ptrsPerTable {
            let v = entry(inTable: tablePfn, index: i).load()
            guard v.isPresent, !v.isHuge, memory.isValidPfn(v.pfn) else { continue }
            let addr = base &+ UInt64(i) &* level.size
            if v.pfn == target { return (child, addr) }
            if let found = locate(target, in: v.pfn, child, base: addr) { return found }
        }
        return nil
    }

    /// Every table reachable from the PGD is a page-table frame; every present leaf maps a frame
    /// in use (not free, not a page table, not device-private); every migration,
    /// device-private and device-exclusive entry names a page in use, a migration entry a
    /// locked one. Reads without the page-table locks (see `Machine.checkStepInvariants`).
    func checkStepInvariants(mm: Int32, into problems: inout [String]) {
        checkTable(pgd.pfn, .pgd, base: 0, mm: mm, &problems)
    }

    private func checkTable(_ tablePfn: UInt64, _ level: PageTableLevel, base: UInt64, mm: Int32, _ problems: inout [String]) {
        for i in 0..<ptrsPerTable {
            let v = entry(inTable: tablePfn, index: i).load()
            if v.isNone { continue }
            let addr = base &+ UInt64(i) &* level.size
            let hex = "0x" + String(addr, radix: 16)
            if v.isPresent && level != .pte && !v.isHuge {
                guard memory.isValidPfn(v.pfn) else { problems.append("mm \(mm): \(level) entry at \(hex) names invalid table pfn \(v.pfn)"); continue }
                let t = memory.page(v.pfn)
                guard t.test(.pageTable) && !t.test(.buddy) else {
                    problems.append("mm \(mm): \(level) entry at \(hex) names pfn \(v.pfn), which is not a page table in use"); continue
                }
                checkTable(v.pfn, PageTableLevel(rawValue: level.rawValue - 1)!, base: addr, mm: mm, &problems)
            } else if v.isPresent {
                if v.isSpecial { continue }
                guard memory.isValidPfn(v.pfn) else { problems.append("mm \(mm): \(hex) maps invalid pfn \(v.pfn)"); continue }
                let p = memory.page(v.pfn)
                if p.isFreeFrame { problems.append("mm \(mm): \(hex) maps free frame \(v.pfn) (PTE \(v))") }
                else if p.test(.pageTable) { problems.append("mm \(mm): \(hex) maps page-table frame \(v.pfn)") }
                else if p.isDevicePrivate { problems.append("mm \(mm): \(hex) maps device-private pfn \(v.pfn) with a present entry") }
            } else if v.isSwap {
                let s = v.swapEntry
                guard s.hasPfn else { continue }
                guard memory.isValidPfn(s.pfn) else { problems.append("mm \(mm): \(s) at \(hex) names an invalid pfn"); continue }
                let p = memory.page(s.pfn)
                if p.isFreeFrame { problems.append("mm \(mm): \(s) at \(hex) names free frame \(s.pfn)") }
                else if s.isMigration && !p.isLocked { problems.append("mm \(mm): \(s) at \(hex) names unlocked pfn \(s.pfn)") }
            }
        }
    }
}

extension CPU {
    /// A CPU whose TLB is up to date with the last shootdown (`generation`) translates only to
    /// frames in use. (One with a shootdown pending flushes before its next access: the frames
    /// its stale entries name may already be free.) Reads the TLB from another thread: see
    /// `Machine.checkStepInvariants`.
    func checkStepInvariants(generation: UInt64, into problems: inout [String]) {
        guard seenGeneration == generation else { return }
        let base = memory.frame(0)
        for slot in 0..<TLB.entries {
            let tag = tlb.slots[slot].tag
            guard tag & 1 != 0 else { continue }
            let pfn = UInt64(tlb.slots[slot].frame - base) >> pageShift
            let address = (tag >> 2) << pageShift
            guard memory.isValidPfn(pfn) else { problems.append("mm \(mm.id) cpu \(index): TLB entry for 0x\(String(address, radix: 16)) outside memory"); continue }
            let p = memory.page(pfn)
            if p.isFreeFrame {
                problems.append("mm \(mm.id) cpu \(index): TLB maps 0x\(String(address, radix: 16)) to free frame \(pfn)")
            }
        }
    }
}
