import MMSync

extension AddressSpace {
    /// `do_fault` for shmem-backed VMAs (shared anonymous memory and tmpfs files): the page-cache
    /// page is mapped with the VMA's `vm_page_prot` — writable in a shared writable mapping
    /// (tmpfs wants no write notification), read-only otherwise — and dirty only for a write
    /// fault; write faults in private mappings copy it into a new anonymous page
    /// (`do_cow_fault`).
    func doFilePage(_ vma: VMA, _ address: UInt64, _ ptep: EntryPointer, _ ptl: SpinLockRef,
                    flags: FaultFlags) -> FaultResult {
        guard let file = vma.file else { return .sigbus }
        let page: Page
        do { page = try file.getPage(vma.linearPageIndex(address)) } catch {
            return error == .ENOMEM ? .oom : .sigbus
        }
        let write = flags.contains(.write)
        if write && !vma.isShared {
            return wpPageCopyFromFile(vma, address, ptep, ptl, source: page)
        }
        ptl.lock()
        guard ptep.load().isNone else { ptl.unlock(); memory.put(page); return .retry }
        memory.addRmap(page) // the reference from getPage becomes the mapping's
        ptep.store(.page(page.pfn, write: vma.isShared && vma.flags.contains(.write), dirty: write))
        if write { page.set(.dirty) }
        ptl.unlock()
        machine.stats.count(vma.file?.isAnonymousShared == true ? .faultShared : .faultFileRead)
        return .ok
    }

    /// `do_cow_fault`: first write to a private file mapping.
    private func wpPageCopyFromFile(_ vma: VMA, _ address: UInt64, _ ptep: EntryPointer, _ ptl: SpinLockRef,
                                    source: Page) -> FaultResult {
        defer { memory.put(source) }
        let av = anonVMAPrepare(vma)
        guard let new = memory.allocate(order: 0) else { return .oom }
        memory.frame(new.pfn).copyMemory(from: memory.frame(source.pfn), byteCount: Int(pageSize))
        ptl.lock()
        guard ptep.load().isNone else { ptl.unlock(); memory.put(new); return .retry }
        memory.addNewAnonRmap(new, vma: vma, address: address, anonVMA: av)
        ptep.store(.page(new.pfn, write: vma.flags.contains(.write), dirty: true))
        ptl.unlock()
        machine.stats.count(.faultCOWCopy)
        return .ok
    }
}
