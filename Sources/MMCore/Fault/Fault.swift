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
    /// `FAULT_FLAG_VMA_LOCK`: the handler runs under the VMA's lock, not the mmap lock; what
    /// needs the mmap lock returns `.retry` and the fault is redone under it.
    public static let vmaLock = FaultFlags(rawValue: 1 << 3)
}

extension AddressSpace {
    /// The CPU's fault entry (`do_user_addr_fault`): finds the VMA, checks access rights,
    /// handles the fault. Locking: takes the mmap lock for read; caller holds nothing.
    public func handleUserFault(_ address: UInt64, write: Bool) -> FaultResult {
        Lockdep.assertNoLocksHeld()
        return handleUserFault(address, write: write, cache: nil)
    }

    /// `do_user_addr_fault` for a CPU: first under the faulting VMA's own lock, found through
    /// the CPU's VMA cache (`lock_vma_under_rcu`); when that VMA is not at hand, is being
    /// changed, or the handler needs more than the VMA lock (`VM_FAULT_RETRY`), under the mmap
    /// lock, which also caches the VMA for the next fault.
    /// Locking: caller holds nothing.
    /// `cache` is passed without a reference (the CPU holds it).
    func handleUserFault(_ address: UInt64, write: Bool, cache: Unmanaged<VMACache>?) -> FaultResult {
        Lockdep.assertNoLocksHeld()
        defer { machine.operationDone("fault") }
        let flags: FaultFlags = write ? [.write] : []
        if let cache, let locked = cache._withUnsafeGuaranteedRef({ lockVMAUnderRCU(address, $0) }) {
            // The VMA is used borrowed: its lock keeps it in the tree, so no reference is taken
            // (a reference count would be one more line the CPUs faulting in it share).
            let r = locked._withUnsafeGuaranteedRef { vma -> FaultResult in
                defer { vma.vmLock.unlockRead() }
                guard accessPermitted(vma, write: write) else { return .sigsegv }
                return handleMMFault(vma: vma, address: address, flags: flags.union(.vmaLock))
            }
            if r != .retry {
                stats.count(.vmaLockSuccess)
                if r == .sigsegv { stats.count(.faultSIGSEGV) }
                if r == .sigbus { stats.count(.faultSIGBUS) }
                return r
            }
            // VM_FAULT_RETRY: the handler needs the mmap lock (or lost a race); redo it there.
            stats.count(.vmaLockRetry)
        }
        mmapLock.lockRead(); defer { mmapLock.unlockRead() }
        guard let vma = vmaLookup(address) else { stats.count(.faultSIGSEGV); return .sigsegv }
        if let cache { cache._withUnsafeGuaranteedRef { $0.insert(vma, generation: detachGeneration.load()) } }
        guard accessPermitted(vma, write: write) else { stats.count(.faultSIGSEGV); return .sigsegv }
        let r = handleMMFault(vma: vma, address: address, flags: flags)
        if r == .sigbus { stats.count(.faultSIGBUS) }
        if r == .retry { stats.count(.faultRetry) }
        return r
    }

    /// The lock a fault handler runs under: the mmap lock (read or write), or the faulting
    /// VMA's own lock for read when `flags` has `.vmaLock`.
    @inline(__always) func assertFaultLocked(_ vma: VMA, _ flags: FaultFlags, file: StaticString = #fileID, line: UInt = #line) {
        if flags.contains(.vmaLock) {
            assert(vma.vmLock.readerCount > 0, "fault under the VMA lock without it", file: file, line: line)
        } else {
            mmapLock.assertLocked(file: file, line: line)
        }
    }

    /// `access_error` (inverted): whether the VMA allows the access.
    func accessPermitted(_ vma: VMA, write: Bool) -> Bool {
        write ? vma.flags.contains(.write) : vma.flags.contains(.read) || vma.flags.contains(.write) || vma.flags.contains(.exec)
    }

    /// `handle_mm_fault`: makes the entry for `address` allow the access described by `flags`.
    /// The caller checked that the VMA permits it.
    /// Locking: mmap lock held for read (or write), or the VMA's lock for read with `.vmaLock`;
    /// no page-table lock held.
    /// Return: `.ok`, `.retry` (locks were dropped, e.g. after waiting for a migration; under
    /// the VMA lock also: this fault needs the mmap lock), `.sigbus`, or `.oom`.
    public func handleMMFault(vma: VMA, address addressIn: UInt64, flags: FaultFlags) -> FaultResult {
        assertFaultLocked(vma, flags)
        // A process the OOM killer chose dies at its next fault (its SIGKILL), whoever faults
        // for it (CPU, GUP, hmm_range_fault): 7.2's MMF_UNSTABLE check.
        if oomState.loadRelaxed() != AddressSpace.oomAlive { return .oom }
        let address = pageAlignDown(addressIn)
        if vma.isHugetlb { return hugetlbFault(vma: vma, address: address, flags: flags) }
        if vma.isAnonymous, thp.allowsFault(vma, address) || mayHoldTHP {
            // The PMD first (`create_huge_pmd`, `wp_huge_pmd`); a fallback goes on below.
            let pmd: (entry: EntryPointer, table: Page, level: PageTableLevel)
            do { pmd = try pageTable.walkAllocating(address, level: .pmd, mayReclaim: true) } catch { return .oom }
            if pmd.level == .pmd, let r = handleHugePMDFault(vma, address, pmd.entry, table: pmd.table,
                                                             flags: flags, realAddress: addressIn) { return r }
        }
        let found: (entry: EntryPointer, table: Page, level: PageTableLevel)
        do { found = try pageTable.walkAllocating(address, level: .pte, mayReclaim: true) } catch { return .oom }
        guard found.level == .pte else {
            // A THP leaf went in after this fault fell back (another thread's huge zero
            // folio): the access is simply taken again (7.2: pte_offset_map_lock fails, 0).
            if !vma.isHugetlb && found.level == .pmd {
                let v = found.entry.load()
                if PageTable.isTHPLeaf(v) { return .ok }
                if PageTable.isTHPMigration(v) { return pmdMigrationEntryWait(found.entry, table: found.table, v) }
                if PageTable.isTHPDevicePrivate(v) {
                    return doHugePMDDevicePrivate(vma, address, found.entry, table: found.table, v, flags: flags)
                }
            }
            return handleHugeEntry(vma: vma, address: address, found.entry, flags: flags)
        }
        let ptep = found.entry, ptl = found.table.ptl
        let entry = ptep.load()
        if entry.isNone {
            return vma.isAnonymous ? doAnonymousPage(vma, address, ptep, ptl, flags: flags, realAddress: addressIn)
                                   : doFilePage(vma, address, ptep, ptl, flags: flags, realAddress: addressIn)
        }
        if entry.isSwap {
            guard flags.contains(.vmaLock) else { return doSwapEntry(vma, address, ptep, ptl, entry, flags: flags) }
            // Linux 7.2's do_swap_page under the VMA lock: a device-private entry is retried
            // under the mmap lock ("migrate_to_ram is not yet ready to operate under VMA
            // lock"); a migration entry is waited out and a device-exclusive one restored
            // here, and the access is simply taken again (0, not VM_FAULT_RETRY).
            if entry.swapEntry.isDevicePrivate { return .retry }
            let r = doSwapEntry(vma, address, ptep, ptl, entry, flags: flags)
            return r == .retry ? .ok : r
        }
        ptl.lock()
        let now = ptep.load()
        guard now == entry || (now.isPresent && now.pfn == entry.pfn) else { ptl.unlock(); return .retry }
        if flags.contains(.write) || flags.contains(.unshare), !now.isWrite {
            return doWPPage(vma, address, ptep, ptl, now, flags: flags, realAddress: addressIn) // drops ptl
        }
        // Spurious fault: the entry already allows the access; just mark it young (and dirty).
        var r = now.raw | PTE.accessed
        if flags.contains(.write) { r |= PTE.dirty | PTE.softDirty }
        if r != now.raw { ptep.store(PTE(raw: r)) }
        ptl.unlock()
        return .ok
    }

    /// A PMD-level leaf met by a fault that did not look for one (none is made outside
    /// hugetlb and THP VMAs); reaching one means a caller created it by hand.
    func handleHugeEntry(vma: VMA, address: UInt64, _ entry: EntryPointer, flags: FaultFlags) -> FaultResult {
        let v = entry.load()
        if v.isPresent && v.isUser && (v.isWrite || !flags.contains(.write)) { return .ok }
        return .sigbus
    }
}
