import MMSync

extension AddressSpace {
    /// `mmap`. Anonymous (private or shared) when `file` is nil and `.anonymous` is set;
    /// otherwise maps `file` at byte `offset`.
    ///
    /// MAP_HUGETLB maps huge pages of the size in its MAP_HUGE_SHIFT bits (2 MiB by default):
    /// the length rounds up to it, and the mapping reserves its pages now unless MAP_NORESERVE.
    /// Errors as Linux: EINVAL for length 0, unaligned offset or fixed address (for hugetlb:
    /// aligned to the huge page), not exactly one of MAP_SHARED/MAP_PRIVATE, a huge page size
    /// with no pool, MAP_HUGETLB of a (tmpfs) file; ENOMEM when the pool cannot reserve the pages; EBADF (as EINVAL here:
    /// there are no fds) for a file mapping without a file; ENOMEM when the range does not fit
    /// or no address is free; EEXIST for MAP_FIXED_NOREPLACE over an existing mapping.
    /// Locking: takes the mmap lock for write.
    public func mmap(address: UInt64 = 0, length: UInt64, prot: Protection, flags: MapFlags,
                     file: ShmemFile? = nil, offset: UInt64 = 0) throws(Errno) -> UInt64 {
        mmapLock.assertNotHeld()
        defer { machine.operationDone("mmap") }
        guard length > 0 else { throw .EINVAL }
        guard var len = pageAlignUp(length), len <= taskSize else { throw .ENOMEM }
        let shared = flags.contains(.shared), priv = flags.contains(.private)
        guard shared != priv else { throw .EINVAL }
        guard isPageAligned(offset) else { throw .EINVAL }
        let anonymous = flags.contains(.anonymous)
        // MAP_HUGETLB (ksys_mmap_pgoff): the size from MAP_HUGE_SHIFT, the length rounded up
        // to it, a hugetlbfs file behind the mapping (the VMA's hstate, and for a shared
        // mapping a `HugetlbFile` with its page cache).
        var hstate: HState? = nil
        // A file that is not on hugetlbfs (every file here) cannot be mapped MAP_HUGETLB; with
        // MAP_ANONYMOUS the file is ignored.
        if flags.contains(.hugetlb) && !anonymous { throw .EINVAL }
        if flags.contains(.hugetlb) {
            let h = try memory.hugetlb.hstate(mapFlags: flags)
            guard let l = h.alignUp(len), l <= taskSize else { throw .ENOMEM }
            // hugetlbfs_file_mmap: the offset must be a whole number of huge pages.
            guard offset & (h.size - 1) == 0 else { throw .EINVAL }
            len = l
            hstate = h
        }
        guard anonymous || file != nil else { throw .EINVAL }
        guard offset.addingReportingOverflow(len).overflow == false else { throw .EOVERFLOW }
        let fixed = flags.contains(.fixed) || flags.contains(.fixedNoReplace)
        if fixed {
            guard isPageAligned(address) else { throw .EINVAL }
            // hugetlb_get_unmapped_area → prepare_hugepage_range: a fixed address must be
            // aligned to the huge page size.
            if let h = hstate, address & (h.size - 1) != 0 { throw .EINVAL }
            guard address <= taskSize - len, address >= mmapMinAddress else { throw fixed && address < mmapMinAddress ? .EPERM : .ENOMEM }
        }
        mmapWriteLock(); defer { mmapWriteUnlock() }
        guard !isDead else { throw .ENOMEM }
        // Too many mappings (do_mmap: map_count > sysctl_max_map_count).
        guard vmaList.count <= machine.maxMapCount else { throw .ENOMEM }
        // hugetlbfs_file_mmap → hugetlb_reserve_pages: a private mapping reserves one huge
        // page per huge page of its range now (unless MAP_NORESERVE), so its faults cannot
        // fail later; ENOMEM when the pool cannot promise them. Before anything is unmapped:
        // a MAP_FIXED mapping that cannot reserve leaves the old one in place (7.2 aborts the
        // gathered unmap).
        var resv: HugetlbResvMap? = nil
        var hugeFile: HugetlbFile? = nil
        if let h = hstate {
            // hugetlb_file_setup: every hugetlb mapping has its file (the fault mutex's key);
            // a shared one keeps its pages and reservations there.
            let f = HugetlbFile(hstate: h, memory: memory)
            hugeFile = f
            if !flags.contains(.noReserve) {
                if shared {
                    try f.reserve(offset / h.size, count: len / h.size)   // the inode's resv_map
                } else {
                    try memory.hugetlb.reserve(h, Int(len / h.size))
                    resv = HugetlbResvMap()
                }
            }
        }
        /// Gives back the reservations if the mapping is not made after all.
        func undoReservation() {
            if let h = hstate, resv != nil { memory.hugetlb.unreserve(h, Int(len / h.size)) }
            if let f = hugeFile { f.attach(); f.detach() }
        }
        let start: UInt64
        do throws(Errno) {
            if fixed {
                if flags.contains(.fixedNoReplace) {
                    let i = vmaIndex(atOrAfter: address)
                    if i < vmaList.count && vmaList[i].start < address + len { throw .EEXIST }
                } else {
                    try unmapLocked(address, address + len)
                }
                start = address
            } else {
                guard let a = unmappedArea(length: len, hint: address, align: hstate?.size ?? pageSize) else { throw .ENOMEM }
                start = a
            }
        } catch {
            undoReservation()
            throw error
        }
        var vmFlags: VMFlags = [.mayRead, .mayWrite, .mayExec]
        if prot.contains(.read) { vmFlags.insert(.read) }
        if prot.contains(.write) { vmFlags.insert(.write) }
        if prot.contains(.exec) { vmFlags.insert(.exec) }
        if shared { vmFlags.formUnion([.shared, .mayShare]) }
        if flags.contains(.noReserve) { vmFlags.insert(.noReserve) }
        // accountable_mapping: private, writable, not MAP_NORESERVE (hugetlb pages are
        // accounted by their pool instead).
        if !shared && prot.contains(.write) && !flags.contains(.noReserve) && hstate == nil { vmFlags.insert(.account) }
        if hstate != nil { vmFlags.insert(.hugetlb) }
        var backing = file
        var pgoff = offset >> pageShift
        if hstate != nil {
            backing = nil
            pgoff = offset >> pageShift   // in its own hugetlbfs file
        } else if anonymous && shared {
            backing = ShmemFile(machine: machine, size: len, name: "dev/zero", anonymousShared: true)
            pgoff = 0
        } else if anonymous {
            backing = nil
            pgoff = start >> pageShift
        }
        let vma = VMA(mm: self, start: start, end: start + len, flags: vmFlags, pgoff: pgoff, file: backing)
        vma.hstate = hstate
        vma.hugetlbResv = resv
        vma.hugetlbFile = hugeFile
        hugeFile?.attach()
        insertVMA(vma)
        mergeVMAs(around: start, start + len)
        if flags.contains(.populate) { populateLocked(start, start + len) }
        return start
    }

    /// MAP_POPULATE: faults every page of [start, end) in (write faults for writable private
    /// mappings). The new mapping may have merged with a neighbour: the VMA is looked up.
    private func populateLocked(_ start: UInt64, _ end: UInt64) {
        mmapWriteDowngrade()
        defer { mmapLock.unlockRead(); mmapWriteLock() }
        var a = start
        while a < end, let vma = vmaLookup(a) {
            // populate_vma_page_range: an inaccessible VMA is skipped (mmap ignores the error).
            guard accessPermitted(vma, write: false) else { a = vma.end; continue }
            let write = vma.flags.contains(.write) && !vma.isShared
            if case .ok = handleMMFault(vma: vma, address: a, flags: write ? [.write] : []) {} else { break }
            a += vma.hstate?.size ?? pageSize
        }
    }

    /// `munmap`. EINVAL for an unaligned start, zero length, or a range outside the user
    /// address space. Unmapping unmapped memory succeeds. Locking: takes the mmap lock for write.
    public func munmap(_ address: UInt64, length: UInt64) throws(Errno) {
        mmapLock.assertNotHeld()
        defer { machine.operationDone("munmap") }
        guard isPageAligned(address), length > 0, let len = pageAlignUp(length),
              address <= taskSize, len <= taskSize - address else { throw .EINVAL }
        mmapWriteLock(); defer { mmapWriteUnlock() }
        try unmapLocked(address, address + len)
    }

    /// `do_vmi_munmap`: splits VMAs at the edges, zaps, unlinks and frees page tables.
    /// Errors: ENOMEM when the range lies inside one VMA (two splits, one VMA more after the
    /// unmap) and the address space already has `max_map_count` VMAs; nothing changes then.
    /// Other splits are not counted (`__split_vma`): the count may pass the limit for a moment.
    /// Locking: mmap lock held for write.
    func unmapLocked(_ start: UInt64, _ end: UInt64) throws(Errno) {
        mmapLock.assertWriteLocked()
        let hit = vmaIndex(atOrAfter: start)
        if hit < vmaList.count, vmaList[hit].start < start, vmaList[hit].end > end,
           vmaList.count >= machine.maxMapCount { throw .ENOMEM }
        guard try splitAround(start, end, counted: false) else { return }
        var i = vmaIndex(atOrAfter: start)
        var removed: [VMA] = []
        while i < vmaList.count && vmaList[i].start < end {
            removed.append(vmaList[i]); i += 1
        }
        guard !removed.isEmpty else { return }
        // vms_gather_munmap_vmas: no fault may map a page into them once they are zapped.
        for vma in removed { vmaStartWrite(vma) }
        zapVMAs(removed, start: start, end: end, event: .unmap)
        let first = vmaIndex(atOrAfter: start)
        for _ in removed { removeVMA(at: first) }
        let floor = first > 0 ? vmaList[first - 1].end : 0
        let ceiling = first < vmaList.count ? vmaList[first].start : taskSize + pageSize
        freePageTables(removed.first!.start, removed.last!.end, floor: floor, ceiling: ceiling)
    }

    /// Splits VMAs so that `start` and `end` fall on VMA boundaries. Returns whether any VMA
    /// intersects [start, end). Errors (`counted`, as `split_vma` for mprotect and madvise):
    /// ENOMEM at `max_map_count`; a split made before the failing one stays, as in the kernel.
    /// Locking: mmap lock held for write.
    @discardableResult
    func splitAround(_ start: UInt64, _ end: UInt64, counted: Bool = true) throws(Errno) -> Bool {
        mmapLock.assertWriteLocked()
        let i = vmaIndex(atOrAfter: start)
        guard i < vmaList.count, vmaList[i].start < end else { return false }
        if vmaList[i].start < start { try splitVMA(at: i, address: start, counted: counted) }
        let j = vmaIndex(atOrAfter: end - 1)
        if j < vmaList.count, vmaList[j].start < end, vmaList[j].end > end { try splitVMA(at: j, address: end, counted: counted) }
        return true
    }

    /// `split_vma` (`counted`) or `__split_vma`: vmaList[i] becomes [start, address) and a new
    /// VMA [address, end) follows it. Errors: EINVAL inside a huge page of a hugetlb VMA;
    /// ENOMEM when `counted` and the address space already has `max_map_count` VMAs. Locking: mmap lock held for write; write-locks the VMA.
    func splitVMA(at i: Int, address: UInt64, counted: Bool = true) throws(Errno) {
        let vma = vmaList[i]
        guard !counted || vmaList.count < machine.maxMapCount else { throw .ENOMEM }
        // vm_ops->may_split (hugetlb_vm_op_split): a hugetlb VMA splits only at a huge page
        // boundary.
        if let h = vma.hstate, address & (h.size - 1) != 0 { throw .EINVAL }
        precondition(vma.start < address && address < vma.end && isPageAligned(address))
        vmaStartWrite(vma)
        if mayHoldTHP && vma.isAnonymous { splitHugePMDAtBoundary(vma, address) }
        let tail = vma.duplicate(into: self)
        tail.start = address
        tail.pgoff = vma.pgoff + ((address - vma.start) >> pageShift)
        anonVMAClone(dst: tail, src: vma)
        // vma_complete: the tail joins i_mmap under the same hold that shortens the head, so
        // a file rmap walk never sees the range covered by neither.
        withVMAPrepared(vma) {
            vma.end = address
            tail.file?.linkMappingLocked(tail)
        }
        vmaList.insert(tail, at: i + 1)
        tail.isAttached = true
    }
}

extension Errno {
    public static let EBADF = Errno(9)
    public static let EOVERFLOW = Errno(75)
}

extension AddressSpace {
    /// A driver's `mmap` that inserts its own pages (`vm_insert_page` into a VM_MIXEDMAP VMA):
    /// every page of the new mapping is mapped at once, read-only in a private mapping (so a
    /// write copies it), writable in a shared writable one. Each mapping takes a reference;
    /// the caller keeps its own.
    /// Errors: EINVAL (page count does not match the length, bad flags), ENOMEM.
    /// Locking: takes the mmap lock for write.
    package func mmapDriverPages(length: UInt64, prot: Protection, flags: MapFlags, pages: [Page]) throws(Errno) -> UInt64 {
        mmapLock.assertNotHeld()
        guard length > 0, let len = pageAlignUp(length), len >> pageShift == UInt64(pages.count) else { throw .EINVAL }
        let shared = flags.contains(.shared)
        guard shared != flags.contains(.private) else { throw .EINVAL }
        mmapWriteLock(); defer { mmapWriteUnlock() }
        // A driver's mmap goes through do_mmap: the same map-count limit.
        guard !isDead, vmaList.count <= machine.maxMapCount, let start = unmappedArea(length: len, hint: 0) else { throw .ENOMEM }
        var vmFlags: VMFlags = [.mayRead, .mayWrite, .mixedMap]
        if prot.contains(.read) { vmFlags.insert(.read) }
        if prot.contains(.write) { vmFlags.insert(.write) }
        if shared { vmFlags.formUnion([.shared, .mayShare]) }
        let vma = VMA(mm: self, start: start, end: start + len, flags: vmFlags, pgoff: 0, file: nil)
        vma.isSpecialMapping = true
        insertVMA(vma)
        let writable = shared && prot.contains(.write)
        for (i, page) in pages.enumerated() {
            let a = start + (UInt64(i) << pageShift)
            let found: (entry: EntryPointer, table: Page, level: PageTableLevel)
            do { found = try pageTable.walkAllocating(a, level: .pte) } catch {
                try? unmapLocked(start, start + len)   // the whole new VMA: no split, cannot fail
                throw error
            }
            found.table.ptl.lock()
            memory.get(page)
            memory.addRmap(page)
            found.entry.store(.page(page.pfn, write: writable, dirty: writable))
            found.table.ptl.unlock()
        }
        return start
    }
}
