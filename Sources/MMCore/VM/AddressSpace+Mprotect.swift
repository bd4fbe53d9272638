import MMSync

/// Rewrites the protection of every entry in a range as Linux 7.2's `change_pte_range` does.
/// Present entries get the VMA's new `vm_page_prot` (`pte_modify`): readable as the VMA allows;
/// writable for shared writable mappings; for private writable mappings
/// (`MM_CP_TRY_CHANGE_WRITABLE`) writable only where `can_change_pte_writable` allows (an
/// exclusive anonymous page), every other page waits for its write fault. Non-present entries
/// (`change_softleaf_pte`) whatever the new protection: a writable migration entry becomes
/// read-exclusive (anonymous page) or read, a writable device-private entry becomes read (its
/// soft-dirty bit is not kept), a device-exclusive entry is left alone.
struct ChangeProtectionWalker: PageWalker {
    let mm: AddressSpace
    let vma: VMA
    /// A present entry lost a permission (`pte_needs_flush`): only then must TLBs be flushed.
    /// An entry that gained one needs no flush: a TLB miss refills it, and the software TLB
    /// never caches write permission for a read-only PTE.
    var needsFlush = false

    static func losesPermission(_ old: PTE, _ new: PTE) -> Bool {
        old.isPresent && ((old.isWrite && !new.isWrite) || (old.isUser && !new.isUser))
    }

    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        let (old, new) = pte.modify { old in
            var new = old
            if old.isPresent {
                var r = old.raw & ~(PTE.write | PTE.user)
                if vma.pageProtReadable { r |= PTE.user }
                if vma.isShared && vma.flags.contains(.write) { r |= PTE.write }
                new = PTE(raw: r)
                if !new.isWrite, vma.wantsManualPTEWriteUpgrade, mm.canChangePTEWritable(vma, pte, new) { new = new.mkwrite() }
            } else if old.isSwap {
                let s = old.swapEntry
                if s.type == SwapEntry.migrationWrite {
                    let anon = mm.memory.page(s.pfn).isAnon
                    new = s.readableMigration(exclusive: anon).pte(softDirty: old.isSoftDirty)
                } else if s.type == SwapEntry.devicePrivateWrite {
                    new = s.readOnly().pte()
                }
            }
            return new
        }
        if ChangeProtectionWalker.losesPermission(old, new) { needsFlush = true }
        return .next
    }

    /// PMD entries: THP leaves and PMD migration entries go to `changeHugePMD` (split first
    /// when the range covers part of one); hugetlb leaves: write removed unless the VMA is
    /// writable and shared (`hugetlb_change_protection` leaves a private page for its write
    /// fault to make writable again); writable PMD-level entries become their read forms.
    mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let v = pmd.load()
        guard v.isHuge || !v.isPresent else { return .next }
        if !vma.isHugetlb {
            // A THP leaf: changed whole (`change_huge_pmd`) when the range covers it, else
            // split and changed PTE by PTE.
            guard start & (pmdSize - 1) == 0 && end - start == pmdSize else {
                mm.splitHugePMD(vma, start)
                return .next
            }
            return changeHugePMD(pmd, table: table)
        }
        return changeHugeLeaf(pmd, table: table)
    }

    /// `change_huge_pmd`: a THP leaf takes the VMA's protection as a PTE does; writable in a
    /// private writable VMA only for an exclusive folio (`can_change_pmd_writable`), never for
    /// the huge zero folio. Return: `.next` if a split raced (the walk goes below).
    /// A writable PMD migration entry becomes read-exclusive (`change_non_present_huge_pmd`:
    /// the folio is anonymous; the fault after the migration makes it writable again).
    private mutating func changeHugePMD(_ pmd: EntryPointer, table: Page) -> WalkStep {
        table.ptl.lock(); defer { table.ptl.unlock() }
        let v = pmd.load()
        if PageTable.isTHPMigration(v) {
            let s = v.swapEntry
            if s.isWritableMigration {
                pmd.store(s.readableMigration(exclusive: true).pte(softDirty: v.isSoftDirty, pmd: true))
            }
            return .skip
        }
        if PageTable.isTHPDevicePrivate(v) {
            // A writable device-private PMD becomes read (its soft-dirty bit is not kept, as
            // the kernel's change_non_present_huge_pmd builds the new entry without it).
            let s = v.swapEntry
            if s.isWrite { pmd.store(SwapEntry.devicePrivate(pfn: s.pfn, write: false).pte(pmd: true)) }
            return .skip
        }
        guard PageTable.isTHPLeaf(v) else { return .next }
        let (old, new) = pmd.modify { v in
            var r = v.raw & ~(PTE.write | PTE.user)
            if vma.pageProtReadable { r |= PTE.user }
            if !v.isSpecial, vma.wantsManualPTEWriteUpgrade, vma.pageProtReadable,
               mm.memory.page(v.pfn).test(.anonExclusive) { r |= PTE.write }
            return PTE(raw: r)
        }
        if ChangeProtectionWalker.losesPermission(old, new) { needsFlush = true }
        return .skip
    }

    /// PUD leaves (1 GiB hugetlb pages): as PMD leaves.
    mutating func pudLeaf(_ pud: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        changeHugeLeaf(pud, table: table)
    }

    /// Under the leaf's table lock, with `modify`: a CPU's walk may set the accessed or
    /// dirty bit meanwhile.
    private mutating func changeHugeLeaf(_ e: EntryPointer, table: Page) -> WalkStep {
        table.ptl.lock(); defer { table.ptl.unlock() }
        let (old, new) = e.modify { v in
            if v.isPresent {
                var r = v.raw & ~(PTE.write | PTE.user)
                if vma.pageProtReadable { r |= PTE.user }
                if vma.isShared && vma.flags.contains(.write) { r |= PTE.write }
                return PTE(raw: r)
            }
            if v.isSwap, v.swapEntry.isWrite, !v.swapEntry.isDeviceExclusive {
                return v.swapEntry.readOnly().pte(softDirty: v.isSoftDirty, pmd: true)
            }
            return v
        }
        if ChangeProtectionWalker.losesPermission(old, new) { needsFlush = true }
        return .skip
    }
}

extension AddressSpace {
    /// `mprotect`. EINVAL for an unaligned start or unknown protection bits; ENOMEM when the
    /// range wraps, lies outside the address space, or is not fully mapped (VMAs before the
    /// first hole are still changed, as Linux does). Zero length succeeds.
    /// Locking: takes the mmap lock for write.
    public func mprotect(_ address: UInt64, length: UInt64, prot: Protection) throws(Errno) {
        mmapLock.assertNotHeld()
        defer { machine.operationDone("mprotect") }
        guard isPageAligned(address) else { throw .EINVAL }
        guard prot.rawValue & ~Protection.known == 0 else { throw .EINVAL }
        guard length > 0 else { return }
        guard let len = pageAlignUp(length), address.addingReportingOverflow(len).overflow == false else { throw .ENOMEM }
        let end = address + len
        guard end <= taskSize + pageSize else { throw .ENOMEM }
        mmapWriteLock(); defer { mmapWriteUnlock() }
        // The range must start inside a VMA; each later VMA must follow without a gap.
        var i = vmaIndex(atOrAfter: address)
        guard i < vmaList.count, vmaList[i].start <= address else { throw .ENOMEM }
        defer { mergeVMAs(around: address, end) }   // also when a hole or an error ends it early
        // mprotect_fixup, VMA by VMA: one whose flags change is split at the range's edges
        // and changed; one whose flags stay is left whole (an unchanged hugetlb VMA is not
        // split at an unaligned edge, which would be EINVAL). An error stops the walk with the
        // VMAs before it changed.
        var cursor = address
        while cursor < end {
            guard i < vmaList.count, vmaList[i].start <= cursor else { throw .ENOMEM }
            var vma = vmaList[i]
            if mprotectFlags(vma, prot) != vma.flags {
                if vma.start < address { try splitVMA(at: i, address: address); i += 1; vma = vmaList[i] }
                if vma.end > end { try splitVMA(at: i, address: end); vma = vmaList[i] }
                changeProtection(vma, prot: prot)
            }
            cursor = vma.end
            i += 1
        }
    }

    /// The flags `mprotect` gives `vma` for `prot` (`mprotect_fixup`'s `newflags`, with its
    /// accounting: a mapping that turns writable is charged unless it already is, or is
    /// shared, hugetlb or MAP_NORESERVE; one that turns read-only is uncharged only while it
    /// has no anonymous pages).
    func mprotectFlags(_ vma: VMA, _ prot: Protection) -> VMFlags {
        let old = vma.flags
        var flags = vma.flags.subtracting(.accessMask)
        if prot.contains(.read) { flags.insert(.read) }
        if prot.contains(.write) { flags.insert(.write) }
        if prot.contains(.exec) { flags.insert(.exec) }
        if flags.contains(.write) {
            if old.isDisjoint(with: [.account, .write, .hugetlb, .shared, .noReserve]) { flags.insert(.account) }
        } else if old.contains(.account) && vma.isAnonymous && vma.anonVMA == nil {
            flags.remove(.account)
        }
        return flags
    }

    /// `mprotect_fixup` + `change_protection` for one whole VMA.
    func changeProtection(_ vma: VMA, prot: Protection) {
        let flags = mprotectFlags(vma, prot)
        vmaStartWrite(vma)
        vma.flags = flags
        // Like the kernel, the invalidation fires whether permissions shrink or grow: mirrors
        // drop their entries and refault with the new permissions.
        let range = MMUNotifierRange(start: vma.start, end: vma.end, event: .protectionVMA)
        let invalidate = !Mutation.on(.mprotectWithoutInvalidate)
        if invalidate { notifiers.invalidateRangeStart(range) }
        var w = ChangeProtectionWalker(mm: self, vma: vma)
        _ = pageTable.walk(vma.start, vma.end, &w)
        if w.needsFlush { flushTLB() }
        if invalidate { notifiers.invalidateRangeEnd(range) }
    }
}
