import MMSync

extension AddressSpace {
    /// `exit_mmap`: tells notifier subscribers, unmaps everything, frees every page table.
    /// After it the address space is dead: CPU accesses fault with SIGSEGV and device
    /// operations fail with EINVAL. Idempotent.
    public func exitMMap() {
        defer { machine.operationDone("exit") }
        mmapLock.lockWrite(); defer { mmapLock.unlockWrite() }
        guard !isDead else { return }
        notifiers.release(self)
        for vma in vmaList { zapRange(vma: vma, start: vma.start, end: vma.end, event: .release) }
        while !vmaList.isEmpty { removeVMA(at: vmaList.count - 1) }
        freePageTables(0, taskSize + pageSize, floor: 0, ceiling: taskSize + pageSize)
        markDeadAndFreePGD()
        machine.unregister(self)
    }
}
