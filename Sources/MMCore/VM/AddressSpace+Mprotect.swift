import MMSync

/// Rewrites the protection of every entry in a range (`change_pte_range`): present entries get
/// the VMA's new permissions (write only ever removed here; write faults add it back), and
/// writable migration, device-private and device-exclusive entries become their read forms.
struct ChangeProtectionWalker: PageWalker {
    let readable: Bool
    let writable: Bool
    var changed = false

    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        let old = pte.load()
        var new = old
        if old.isPresent {
            var r = old.raw
            if !writable { r &= ~PTE.write }
            if readable { r |= PTE.user } else { r &= ~(PTE.user | PTE.write) }
            new = PTE(raw: r)
        } else if old.isSwap, !writable {
            let s = old.swapEntry
            if s.isWrite { new = s.readOnly().pte(softDirty: old.isSoftDirty) }
        }
        if new != old {
            pte.store(new)
            changed = true
        }
        return .next
    }

    mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let v = pmd.load()
        guard v.isHuge || !v.isPresent else { return .next }
        table.ptl.lock(); defer { table.ptl.unlock() }
        var r = v.raw
        if v.isPresent {
            if !writable { r &= ~PTE.write }
            if readable { r |= PTE.user } else { r &= ~(PTE.user | PTE.write) }
        } else if !writable, v.swapEntry.isWrite {
            r = v.swapEntry.readOnly().pte(softDirty: v.isSoftDirty, pmd: true).raw
        }
        if r != v.raw { pmd.store(PTE(raw: r)); changed = true }
        return .skip
    }
}

extension AddressSpace {
    /// `mprotect`. EINVAL for an unaligned start or unknown protection bits; ENOMEM when the
    /// range wraps, lies outside the address space, or is not fully mapped (VMAs before the
    /// first hole are still changed, as Linux does). Zero length succeeds.
    /// Locking: takes the mmap lock for write.
    public func mprotect(_ address: UInt64, length: UInt64, prot: Protection) throws(Errno) {
        defer { machine.operationDone("mprotect") }
        guard isPageAligned(address) else { throw .EINVAL }
        guard prot.rawValue & ~Protection.known == 0 else { throw .EINVAL }
        guard length > 0 else { return }
        guard let len = pageAlignUp(length), address.addingReportingOverflow(len).overflow == false else { throw .ENOMEM }
        let end = address + len
        guard end <= taskSize + pageSize else { throw .ENOMEM }
        mmapLock.lockWrite(); defer { mmapLock.unlockWrite() }
        // The range must start inside a VMA; each later VMA must follow without a gap.
        var i = vmaIndex(atOrAfter: address)
        guard i < vmaList.count, vmaList[i].start <= address else { throw .ENOMEM }
        splitAround(address, end)
        i = vmaIndex(atOrAfter: address)
        var cursor = address
        while cursor < end {
            guard i < vmaList.count, vmaList[i].start == cursor else { throw .ENOMEM }
            let vma = vmaList[i]
            changeProtection(vma, prot: prot)
            cursor = vma.end
            i += 1
        }
    }

    /// `mprotect_fixup` + `change_protection` for one whole VMA.
    func changeProtection(_ vma: VMA, prot: Protection) {
        var flags = vma.flags.subtracting(.accessMask)
        if prot.contains(.read) { flags.insert(.read) }
        if prot.contains(.write) { flags.insert(.write) }
        if prot.contains(.exec) { flags.insert(.exec) }
        vma.flags = flags
        // Like the kernel, the invalidation fires whether permissions shrink or grow: mirrors
        // drop their entries and refault with the new permissions.
        let range = MMUNotifierRange(start: vma.start, end: vma.end, event: .protectionVMA)
        notifiers.invalidateRangeStart(range)
        var w = ChangeProtectionWalker(readable: flags.contains(.read) || flags.contains(.write) || flags.contains(.exec),
                                       writable: flags.contains(.write))
        _ = pageTable.walk(vma.start, vma.end, &w)
        if w.changed { flushTLB() }
        notifiers.invalidateRangeEnd(range)
    }
}
