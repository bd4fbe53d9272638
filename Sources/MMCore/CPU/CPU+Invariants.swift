import MMSync

extension CPU {
    /// This CPU's TLB holds no translation its PTE no longer allows, unless a shootdown is
    /// still pending for it (`generation` is the address space's flush generation; the CPU
    /// flushes before its next access). Checked only while the CPU is out of user mode.
    func checkInvariants(generation gen: UInt64) -> [String] {
        var problems: [String] = []
        guard inUser.load() == 0 && seenGeneration == gen else { return [] }
        let mm = self.mm, id = mm.id, pageTable = mm.pageTable, memory = mm.memory
        for slot in 0..<TLB.entries {
            let tag = tlb.slots[slot].tag
            guard tag & 1 != 0 else { continue }
            let frame = tlb.slots[slot].frame
            let address = (tag >> 2) << pageShift
            let hex = "0x" + String(address, radix: 16)
            guard let f = pageTable.lookup(address, level: .pte) else {
                problems.append("mm \(id) cpu \(index): TLB maps \(hex) but no page table does"); continue
            }
            let v = f.entry.load()
            let sub = f.level == .pte ? 0 : (address & (f.level.size - 1)) >> pageShift
            guard v.isPresent, v.isUser, memory.frame(v.pfn + sub) == frame else {
                problems.append("mm \(id) cpu \(index): stale TLB entry for \(hex) (PTE \(v))"); continue
            }
            if tag & 2 != 0 && !(v.isWrite && v.isDirty) {
                problems.append("mm \(id) cpu \(index): TLB allows writes to \(hex), PTE \(v) does not")
            }
        }
        return problems
    }
}
