import MMSync

extension AddressSpace {
    /// This address space's invariants: its VMA list, its page table (adding what each entry
    /// maps to `mappings`, for the machine's mapcount check) and its CPUs' TLBs.
    /// Locking: caller holds the mmap lock (read or write).
    func checkInvariants(mappings: inout [UInt64: Int32]) -> [String] {
        mmapLock.assertLocked()
        var problems = checkVMAList()
        problems += pageTable.checkInvariants(of: self, mappings: &mappings)
        let gen = flushGeneration.load()
        for cpu in cpusLock.withLock({ cpus }) { problems += cpu.checkInvariants(generation: gen) }
        return problems
    }

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
}
