import MMSync

/// The outcome of a page fault (`vm_fault_t`).
public enum FaultResult: Equatable, Sendable {
    /// The entry now allows the access (or another thread fixed it).
    case ok
    /// The handler dropped locks and the caller must retry the access.
    case retry
    case sigsegv
    case sigbus
    case oom
}

/// `FAULT_FLAG_*`.
public struct FaultFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let write = FaultFlags(rawValue: 1 << 0)
    /// A fault on behalf of another context (GUP, a device): no SIGSEGV semantics.
    public static let remote = FaultFlags(rawValue: 1 << 1)
    /// Break COW sharing without a write (GUP pin of a shared anonymous page).
    public static let unshare = FaultFlags(rawValue: 1 << 2)
}

extension AddressSpace {
    /// The CPU's fault entry (`do_user_addr_fault`): finds the VMA, checks access rights,
    /// handles the fault. Locking: takes the mmap lock for read; caller holds nothing.
    public func handleUserFault(_ address: UInt64, write: Bool) -> FaultResult {
        Lockdep.assertNoLocksHeld()
        defer { machine.operationDone("fault") }
        mmapLock.lockRead(); defer { mmapLock.unlockRead() }
        guard let vma = vmaLookup(address) else { machine.stats.count(.faultSIGSEGV); return .sigsegv }
        guard accessPermitted(vma, write: write) else { machine.stats.count(.faultSIGSEGV); return .sigsegv }
        let r = handleMMFault(vma: vma, address: address, flags: write ? [.write] : [])
        if r == .sigbus { machine.stats.count(.faultSIGBUS) }
        if r == .retry { machine.stats.count(.faultRetry) }
        return r
    }

    /// `access_error` (inverted): whether the VMA allows the access.
    func accessPermitted(_ vma: VMA, write: Bool) -> Bool {
        write ? vma.flags.contains(.write) : vma.flags.contains(.read) || vma.flags.contains(.write) || vma.flags.contains(.exec)
    }

    /// `handle_mm_fault`: makes the entry for `address` allow the access described by `flags`.
    /// The caller checked that the VMA permits it.
    /// Locking: mmap lock held for read (or write); no page-table lock held.
    /// Return: `.ok`, `.retry` (locks were dropped, e.g. after waiting for a migration),
    /// `.sigbus`, or `.oom`.
    public func handleMMFault(vma: VMA, address addressIn: UInt64, flags: FaultFlags) -> FaultResult {
        mmapLock.assertLocked()
        let address = pageAlignDown(addressIn)
        let found: (entry: EntryPointer, table: Page, level: PageTableLevel)
        do { found = try pageTable.walkAllocating(address, level: .pte) } catch { return .oom }
        guard found.level == .pte else { return handleHugeEntry(vma: vma, address: address, found.entry, flags: flags) }
        let ptep = found.entry, ptl = found.table.ptl
        let entry = ptep.load()
        if entry.isNone {
            return vma.isAnonymous ? doAnonymousPage(vma, address, ptep, ptl, flags: flags)
                                   : doFilePage(vma, address, ptep, ptl, flags: flags)
        }
        if entry.isSwap { return doSwapEntry(vma, address, ptep, ptl, entry, flags: flags) }
        ptl.lock()
        let now = ptep.load()
        guard now == entry || (now.isPresent && now.pfn == entry.pfn) else { ptl.unlock(); return .retry }
        if flags.contains(.write) || flags.contains(.unshare), !now.isWrite {
            return doWPPage(vma, address, ptep, ptl, now, flags: flags) // drops ptl
        }
        // Spurious fault: the entry already allows the access; just mark it young (and dirty).
        var r = now.raw | PTE.accessed
        if flags.contains(.write) { r |= PTE.dirty | PTE.softDirty }
        if r != now.raw { ptep.store(PTE(raw: r)) }
        ptl.unlock()
        return .ok
    }

    /// PMD-level leaves (THP, device-private THP) are created only by the huge-page layer,
    /// which is not built yet; reaching one means a caller created it by hand.
    func handleHugeEntry(vma: VMA, address: UInt64, _ entry: EntryPointer, flags: FaultFlags) -> FaultResult {
        let v = entry.load()
        if v.isPresent && v.isUser && (v.isWrite || !flags.contains(.write)) { return .ok }
        return .sigbus
    }
}
