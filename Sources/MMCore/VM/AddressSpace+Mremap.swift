import MMSync

/// `MREMAP_*` flags.
public struct MremapFlags: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let mayMove = MremapFlags(rawValue: 1)
    public static let fixed = MremapFlags(rawValue: 2)
    public static let dontUnmap = MremapFlags(rawValue: 4)
}

extension AddressSpace {
    /// `mremap`. Errors as Linux: EINVAL for unknown flags, FIXED or DONTUNMAP without MAYMOVE,
    /// DONTUNMAP with a size change, an unaligned address, zero new length, an overlapping or
    /// out-of-range FIXED target; EFAULT when [old, old+oldLength) is not inside one VMA
    /// (for a shrink in place, [old, old+newLength): the rest is unmapped whatever it holds);
    /// ENOMEM when growing in place is impossible without MAYMOVE. A hugetlb VMA cannot grow
    /// or keep its source (EINVAL); its lengths round up to its huge page size and its
    /// addresses must be aligned to it (EINVAL). As in Linux, growing a
    /// shared mapping does not grow the object behind it: pages beyond its size raise SIGBUS.
    /// Locking: takes the mmap lock for write.
    public func mremap(_ address: UInt64, oldLength: UInt64, newLength: UInt64, flags: MremapFlags,
                       newAddress: UInt64 = 0) throws(Errno) -> UInt64 {
        mmapLock.assertNotHeld()
        defer { machine.operationDone("mremap") }
        guard flags.rawValue & ~0x7 == 0 else { throw .EINVAL }
        if flags.contains(.fixed) && !flags.contains(.mayMove) { throw .EINVAL }
        if flags.contains(.dontUnmap) && (!flags.contains(.mayMove) || oldLength != newLength) { throw .EINVAL }
        guard isPageAligned(address) else { throw .EINVAL }
        guard var oldLen = pageAlignUp(oldLength), var newLen = pageAlignUp(newLength), newLen > 0, oldLen > 0 else { throw .EINVAL }
        let hstate = mmapLock.withRead { vmaLookup(address)?.hstate }
        if let h = hstate {
            // align_hugetlb (check_prep_vma): lengths round up to the huge page size; an
            // unaligned address or target, growing, and MREMAP_DONTUNMAP (the VMA is
            // VM_DONTEXPAND) are EINVAL.
            guard address & (h.size - 1) == 0, !flags.contains(.fixed) || newAddress & (h.size - 1) == 0,
                  !flags.contains(.dontUnmap) else { throw .EINVAL }
            guard let o = h.alignUp(oldLen), let n = h.alignUp(newLen), n <= o else { throw .EINVAL }
            oldLen = o; newLen = n
        }
        guard address <= taskSize, oldLen <= taskSize - address else { throw .EINVAL }
        guard newLen <= taskSize else { throw .ENOMEM } // can never fit
        if flags.contains(.fixed) {
            guard isPageAligned(newAddress), newLen <= taskSize, newAddress <= taskSize - newLen else { throw .EINVAL }
            if newAddress < address + oldLen && address < newAddress + newLen { throw .EINVAL }
        }
        mmapWriteLock(); defer { mmapWriteUnlock() }
        // check_map_count_against_split_early: room for the worst case of splits on the way
        // (two for an unmap first, two for a move, one more when DONTUNMAP keeps the source).
        guard vmaList.count + 4 + (flags.contains(.dontUnmap) ? 1 : 0) <= machine.maxMapCount else { throw .ENOMEM }
        guard let vma = vmaLookup(address) else { throw .EFAULT }
        // (A mapping changed between the size check above and here, by another thread.)
        guard vma.hstate === hstate else { throw .EINVAL }
        // A shrink may cross VMA boundaries in the part it unmaps (check_prep_vma): only
        // [address, address + newLen) must lie in the VMA then.
        let shrinking = newLen < oldLen
        guard address + (shrinking ? newLen : oldLen) <= vma.end else { throw .EFAULT }

        if flags.contains(.fixed) || flags.contains(.dontUnmap) {
            if !flags.contains(.fixed) {
                guard let target = unmappedArea(length: newLen, hint: 0, align: vma.hstate?.size ?? pageSize) else { throw .ENOMEM }
                return try moveVMA(vma, address, oldLen, to: target, newLen, dontUnmap: true)
            }
            if shrinking {
                // mremap_to: shrink first (the tail may span other VMAs), then move the rest.
                try unmapLocked(address + newLen, address + oldLen)
                guard let kept = vmaLookup(address) else { throw .EFAULT }
                return try moveVMA(kept, address, newLen, to: newAddress, newLen, dontUnmap: false)
            }
            return try moveVMA(vma, address, oldLen, to: newAddress, newLen, dontUnmap: flags.contains(.dontUnmap))
        }
        if newLen <= oldLen {
            if newLen < oldLen { try unmapLocked(address + newLen, address + oldLen) }
            return address
        }
        // Grow in place when the VMA ends where the old range ends and the space after is free.
        if address + oldLen == vma.end {
            let i = vmaIndex(atOrAfter: vma.end)
            let nextStart = i < vmaList.count ? vmaList[i].start : taskSize
            if address + newLen <= nextStart && address + newLen <= taskSize {
                vmaStartWrite(vma)   // vma_expand
                withVMAPrepared(vma) { vma.end = address + newLen }
                vmaList.boundsChanged(at: i - 1)
                mergeVMAs(around: address, address + newLen)   // vma_merge_extend
                return address
            }
        }
        guard flags.contains(.mayMove) else { throw .ENOMEM }
        guard let target = unmappedArea(length: newLen, hint: 0, align: vma.hstate?.size ?? pageSize) else { throw .ENOMEM }
        return try moveVMA(vma, address, oldLen, to: target, newLen, dontUnmap: flags.contains(.dontUnmap))
    }

    /// `move_vma`: a new VMA at `target` takes over the entries of [address, address+oldLen).
    private func moveVMA(_ vma: VMA, _ address: UInt64, _ oldLen: UInt64, to target: UInt64, _ newLen: UInt64,
                         dontUnmap: Bool) throws(Errno) -> UInt64 {
        // prep_move_vma: the copy and the source's splits may add two VMAs.
        guard vmaList.count + 2 <= machine.maxMapCount else { throw .ENOMEM }
        try unmapLocked(target, target + newLen)
        // A move splits the source VMA at the range's edges; MREMAP_DONTUNMAP does not (the
        // source stays mapped, whole: prep_move_vma splits ahead only for mlock()ed VMAs).
        if !dontUnmap { try splitAround(address, address + oldLen, counted: false) }
        guard let old = vmaLookup(address) else { throw .EFAULT }
        vmaStartWrite(old)   // move_vma: "We don't want racing faults"
        let moved = old.duplicate(into: self)
        moved.start = target
        moved.end = target + newLen
        moved.pgoff = old.pgoff + ((address - old.start) >> pageShift)
        // copy_vma: an anonymous VMA with no pages yet takes the page offset of its new
        // address, as every unfaulted anonymous VMA has (so it can merge there).
        if old.isAnonymous && old.anonVMA == nil { moved.pgoff = target >> pageShift }
        anonVMAClone(dst: moved, src: old)
        insertVMA(moved)
        let moveLen = min(oldLen, newLen)
        if let err = movePageTables(from: address, to: target, length: moveLen, level: old.hstate?.level ?? .pte) {
            // move_vma's error path: fixup_hugetlb_reservations clears the old VMA's (the new
            // one gives them back as it goes), so none is returned twice.
            if old.isHugetlb { old.hugetlbResv = nil }
            try? unmapLocked(target, target + newLen)   // exactly the new VMA: no split
            throw err
        }
        if !dontUnmap {
            // fixup_hugetlb_reservations: the reservations moved with the new VMA; the old one
            // gives none back when it goes.
            if old.isHugetlb { old.hugetlbResv = nil }
            try unmapLocked(address, address + oldLen)
        } else if old.start == address && old.end == address + oldLen {
            // dontunmap_complete: the whole old VMA moved its pages away; it is unfaulted now.
            unlinkAnonVMAs(old)
            old.anonVMA = nil
            if old.isAnonymous { old.pgoff = old.start >> pageShift }
        }
        // copy_vma's merge at the target; an unfaulted anonymous source that DONTUNMAP keeps
        // must stay a VMA of its own (no self-merge).
        let keepApart = dontUnmap && old.isAnonymous && old.anonVMA == nil ? old : nil
        mergeVMAs(around: target, target + newLen, keepApart: keepApart)
        return target
    }

    /// `move_page_tables` (`move_hugetlb_page_tables` for a hugetlb VMA, whose leaves are at
    /// `level`): moves every entry of [from, from+length) to [to, to+length), under both
    /// tables' locks, bracketed by an UNMAP invalidation of the old range.
    private func movePageTables(from: UInt64, to: UInt64, length: UInt64, level: PageTableLevel = .pte) -> Errno? {
        let step = level.size
        // THP leaves first: those that will not move whole are split now, and the
        // destination PMDs of those that will are allocated, so the tables below are all
        // allocated before anything moves.
        if level == .pte && mayHoldTHP, let err = prepareHugePMDMoves(from: from, to: to, length: length) { return err }
        // Allocate every destination table first, so a failure leaves nothing half-moved.
        var off: UInt64 = 0
        while off < length {
            let a = from + off
            off += step
            guard let src = pageTable.lookup(a, level: level), src.level == level, !src.entry.load().isNone else { continue }
            // Before any lock (mmap write lock aside): the tables may reclaim (GFP_KERNEL).
            do { _ = try pageTable.walkAllocating(to + (a - from), level: level, mayReclaim: true) } catch { return error }
        }
        let range = MMUNotifierRange(start: from, end: from + length, event: .unmap)
        notifiers.invalidateRangeStart(range)
        defer { notifiers.invalidateRangeEnd(range) }
        var moved = false
        if level == .pte && mayHoldTHP {
            switch moveHugePMDs(from: from, to: to, length: length) {
            case .failure(let e): return e
            case .success(let m): moved = m
            }
        }
        off = 0
        while off < length {
            let a = from + off
            off += step
            guard let src = pageTable.lookup(a, level: level), src.level == level, !src.entry.load().isNone else { continue }
            let dst: (entry: EntryPointer, table: Page, level: PageTableLevel)
            do { dst = try pageTable.walkAllocating(to + (a - from), level: level) } catch { return error }
            let same = src.table == dst.table
            src.table.ptl.lock()
            if !same { dst.table.ptl.lock() }
            let e = src.entry.exchange(.none)
            dst.entry.store(e)
            if !same { dst.table.ptl.unlock() }
            src.table.ptl.unlock()
            moved = true
        }
        if moved { flushTLB() }
        return nil
    }
}

extension AddressSpace {
    /// The THP leaves of [from, from+length) (2 MiB starts), each with its VMA and whether it
    /// can move whole: all of it inside the range, to a 2 MiB-aligned address.
    /// Locking: mmap lock held.
    fileprivate func thpLeaves(from: UInt64, to: UInt64, length: UInt64) -> [(address: UInt64, vma: VMA, whole: Bool)] {
        mmapLock.assertLocked()
        var leaves: [(address: UInt64, vma: VMA, whole: Bool)] = []
        var a = from & pmdMask
        while a < from + length {
            defer { a += pmdSize }
            guard let src = pageTable.lookup(a, level: .pmd), src.level == .pmd,
                  PageTable.isTHPEntry(src.entry.load()), let vma = vmaLookup(max(a, from)) else { continue }
            let whole = a >= from && a + pmdSize <= from + length && (to + (a &- from)) & (pmdSize - 1) == 0
            leaves.append((a, vma, whole))
        }
        return leaves
    }

    /// Before anything moves: a THP leaf of [from, from+length) that cannot move whole is
    /// split; one that can gets its destination PMD allocated. Return: ENOMEM, or nil.
    /// Locking: mmap lock held for write.
    fileprivate func prepareHugePMDMoves(from: UInt64, to: UInt64, length: UInt64) -> Errno? {
        mmapLock.assertWriteLocked()
        for leaf in thpLeaves(from: from, to: to, length: length) {
            if leaf.whole {
                do { _ = try pageTable.walkAllocating(to + (leaf.address - from), level: .pmd, mayReclaim: true) } catch { return error }
            } else {
                splitHugePMD(leaf.vma, leaf.address)
            }
        }
        return nil
    }

    /// The THP leaves of [from, from+length) before `move_page_tables` moves PTEs: a leaf
    /// whose whole 2 MiB moves to a 2 MiB-aligned empty PMD goes there as it is, with its
    /// deposited table (`move_huge_pmd`); any other is split, and its PTEs move with the rest.
    /// Return: whether a leaf moved (the caller flushes), or ENOMEM.
    /// Locking: mmap lock held for write; inside the move's UNMAP invalidation.
    fileprivate func moveHugePMDs(from: UInt64, to: UInt64, length: UInt64) -> Result<Bool, Errno> {
        mmapLock.assertWriteLocked()
        var moved = false
        for leaf in thpLeaves(from: from, to: to, length: length) {
            let a = leaf.address
            if leaf.whole, let src = pageTable.lookup(a, level: .pmd), src.level == .pmd {
                let dst: (entry: EntryPointer, table: Page, level: PageTableLevel)
                do { dst = try pageTable.walkAllocating(to + (a - from), level: .pmd) } catch { return .failure(error) }
                if dst.level == .pmd {
                    src.table.ptl.lock()
                    if dst.table != src.table { dst.table.ptl.lock() }
                    var done = false
                    if dst.entry.load().isNone, PageTable.isTHPEntry(src.entry.load()) {
                        let e = src.entry.exchange(.none)
                        let pgtable = pageTable.withdraw(from: src.table)
                        pageTable.deposit(pgtable, in: dst.table)
                        dst.entry.store(e)
                        done = true
                    }
                    if dst.table != src.table { dst.table.ptl.unlock() }
                    src.table.ptl.unlock()
                    if done { moved = true; continue }
                }
            }
            splitHugePMD(leaf.vma, a)
        }
        return .success(moved)
    }
}
