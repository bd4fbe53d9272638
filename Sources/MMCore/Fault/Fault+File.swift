import MMSync

extension AddressSpace {
    /// `do_fault` for shmem-backed VMAs (shared anonymous memory and tmpfs files): the page-cache
    /// page is mapped with the VMA's `vm_page_prot` — writable in a shared writable mapping
    /// (tmpfs wants no write notification), read-only otherwise — and dirty only for a write
    /// fault; write faults in private mappings copy it into a new anonymous page
    /// (`do_cow_fault`).
    func doFilePage(_ vma: VMA, _ address: UInt64, _ ptep: EntryPointer, _ ptl: SpinLockRef,
                    flags: FaultFlags, realAddress: UInt64) -> FaultResult {
        guard let file = vma.file else { return .sigbus }
        let write = flags.contains(.write)
        if !write && faultAround(vma, file, address, ptep, ptl, flags: flags) {
            stats.count(file.isAnonymousShared ? .faultShared : .faultFileRead)
            return .ok
        }
        // do_cow_fault prepares the anon_vma before it reads the page: a COW fault that then
        // fails (past the end of the file) still leaves the VMA with one.
        if write && !vma.isShared && vmfAnonPrepare(vma, flags) == nil { return .retry }
        let page: Page
        do { page = try file.getPage(vma.linearPageIndex(address), fault: true) } catch {
            return error == .ENOMEM ? .oom : .sigbus
        }
        if write && !vma.isShared {
            return wpPageCopyFromFile(vma, address, ptep, ptl, source: page, flags: flags, realAddress: realAddress)
        }
        ptl.lock()
        guard ptep.load().isNone else { ptl.unlock(); memory.put(page); return .retry }
        memory.addRmap(page) // the reference from getPage becomes the mapping's
        ptep.store(.page(page.pfn, write: vma.isShared && vma.flags.contains(.write), dirty: write))
        if write { page.set(.dirty) }
        ptl.unlock()
        stats.count(vma.file?.isAnonymousShared == true ? .faultShared : .faultFileRead)
        return .ok
    }

    /// Pages mapped around a read fault (`fault_around_bytes`, 64 KiB).
    static let faultAroundPages: UInt64 = 16

    /// `do_fault_around` + `filemap_map_pages`: a read fault maps, besides the faulting page,
    /// every page already in the page cache (uptodate, not locked, inside the file) within the
    /// 64 KiB-aligned window around it, clipped to the VMA and the PTE table, wherever the PTE
    /// is empty — as the VMA's `vm_page_prot` gives them, clean. Return: whether the faulting
    /// address itself got mapped (its page was cached).
    /// Locking: the fault's lock (mmap lock for read, or the VMA's lock); takes the PTE lock.
    private func faultAround(_ vma: VMA, _ file: ShmemFile, _ address: UInt64, _ ptep: EntryPointer,
                             _ ptl: SpinLockRef, flags: FaultFlags) -> Bool {
        assertFaultLocked(vma, flags)
        let nr = AddressSpace.faultAroundPages
        let pteOff = (address >> pageShift) & 511
        let vmaOff = (address - vma.start) >> pageShift
        let from = max(pteOff & ~(nr - 1), pteOff - min(pteOff, vmaOff))
        let to = min(from + nr, 512, pteOff + ((vma.end - vma.start) >> pageShift) - vmaOff) - 1
        let pgoff = vma.linearPageIndex(address)
        let candidates = file.pagesForFaultAround(pgoff - (pteOff - from), pgoff + (to - pteOff))
        guard !candidates.isEmpty else { return false }
        var unused: [Page] = []
        var mappedSelf = false
        let writable = vma.isShared && vma.flags.contains(.write)
        ptl.lock()
        for (index, page) in candidates {
            let e = ptep + (Int(index) - Int(pgoff))
            guard e.load().isNone else { unused.append(page); continue }
            memory.addRmap(page) // the reference taken for us becomes the mapping's
            e.store(.page(page.pfn, write: writable))
            if index == pgoff { mappedSelf = true }
        }
        ptl.unlock()
        for p in unused { memory.put(p) }
        return mappedSelf
    }

    /// `do_cow_fault`: first write to a private file mapping.
    private func wpPageCopyFromFile(_ vma: VMA, _ address: UInt64, _ ptep: EntryPointer, _ ptl: SpinLockRef,
                                    source: Page, flags: FaultFlags, realAddress: UInt64) -> FaultResult {
        defer { memory.put(source) }
        guard let av = vmfAnonPrepare(vma, flags) else { return .retry }
        guard let new = memory.allocate(order: 0, mayReclaim: true, lru: true) else { return .oom }
        memory.copyUserPage(to: new, from: source, address: realAddress)
        ptl.lock()
        guard ptep.load().isNone else { ptl.unlock(); memory.put(new); return .retry }
        memory.addNewAnonRmap(new, vma: vma, address: address, anonVMA: av)
        ptep.store(.page(new.pfn, write: vma.flags.contains(.write), dirty: true))
        ptl.unlock()
        stats.count(.faultCOWCopy)
        return .ok
    }
}
