import MMSync

extension AddressSpace {
    /// `exit_mmap` (Linux 7.2): `mmu_notifier_release` (intervals see RELEASE, whole-mm
    /// subscribers get `release` and are unlinked), then one UNMAP invalidation of the whole
    /// space while everything is unmapped, then every page table is freed.
    /// After it the address space is dead: CPU accesses fault with SIGSEGV and device
    /// operations fail with EINVAL. Idempotent.
    public func exitMMap() {
        defer { machine.operationDone("exit") }
        mmapWriteLock(); defer { mmapWriteUnlock() }
        guard !isDead else { return }
        // Faults under a VMA lock hold no mmap lock: lock every VMA first, so that no fault
        // is between an invalidation's start and end when the subscribers are released.
        for vma in vmaList { vmaStartWrite(vma) }
        notifiers.release(self)
        zapVMAs(Array(vmaList), start: 0, end: UInt64.max, event: .unmap)
        while !vmaList.isEmpty { removeVMA(at: vmaList.count - 1) }
        freePageTables(0, taskSize + pageSize, floor: 0, ceiling: taskSize + pageSize)
        markDeadAndFreePGD()
        memory.thp.putHugeZeroFolio(for: self)
        machine.unregister(self)
    }
}
