import MMCore
import MMSync

extension AddressSpace {
    /// `make_device_exclusive` (Linux 7.2, mm/rmap.c): gives a device exclusive (atomic) access
    /// to the page at `address`. The page is faulted in writable (breaking COW, replacing the
    /// zero page, bringing a device-private page back), an EXCLUSIVE invalidation owned by
    /// `owner` tells every other device to drop it, and the PTE is cleared and flushed (its
    /// dirty bit moves to the page) and replaced by the device-exclusive entry, which keeps the
    /// soft-dirty bit. The page stays mapped: rmap, reference and anon-exclusive bit are those of
    /// the PTE it replaced. Any later CPU access restores the PTE (`restore_exclusive_pte`).
    ///
    /// Locking: caller holds the mmap lock for read. Return: the page, locked and referenced
    /// (the caller maps it in its device and then unlocks and releases it).
    /// Errors: EFAULT (no VMA, no write permission, fault failure), EOPNOTSUPP for a page that is
    /// not anonymous (shmem, page cache) or is hugetlb; device-coherent pages are anonymous and
    /// accepted. EBUSY if the page keeps changing under us (the kernel retries forever).
    public func makeDeviceExclusive(_ address: UInt64, owner: AnyObject?) throws(Errno) -> Page {
        mmapLock.assertLocked()
        guard isPageAligned(address) else { throw .EINVAL }
        for _ in 0..<1000 {
            // get_user_page_vma_remote(FOLL_GET | FOLL_WRITE | FOLL_SPLIT_PMD): faulted in
            // writable, referenced, a THP's PMD split (the folio stays whole).
            let page = try getUserPagesRemote(address, count: 1, flags: [.write, .splitPMD])[0]
            guard page.isAnon, !page.folioHead.test(.hugetlb) else { putUserPages([page]); throw .EOPNOTSUPP }
            page.lock()
            let range = MMUNotifierRange(start: address, end: address + pageSize, event: .exclusive, owner: owner)
            notifiers.invalidateRangeStart(range)
            // A second look: still this page, mapped writable by a PTE?
            var done = false
            if let found = pageTable.lookup(address, level: .pte), found.level == .pte {
                found.table.ptl.lock()
                let v = found.entry.load()
                if v.isPresent, !v.isSpecial, v.pfn == page.pfn, v.isWrite {
                    // ptep_clear_flush, then the entry.
                    let old = found.entry.exchange(.none)
                    flushTLB()
                    if old.isDirty { page.set(.dirty) }
                    found.entry.store(SwapEntry.deviceExclusive(pfn: page.pfn).pte(softDirty: old.isSoftDirty))
                    done = true
                }
                found.table.ptl.unlock()
            }
            notifiers.invalidateRangeEnd(range)
            if done { return page }
            page.unlock()
            memory.put(page)
        }
        throw .EBUSY
    }
}
