import MMSync

extension PageTable {
    /// Calls `body` for leaf PTE slots in [start, end), as Linux 7.2's `apply_to_page_range`
    /// (`allocate`: missing tables are allocated and every slot is visited, empty ones included)
    /// and `apply_to_existing_page_range` (no allocation; missing tables and empty PTEs are
    /// skipped, so `body` sees only existing entries). A huge leaf (PMD or PUD) in the range is
    /// an error in both modes (EINVAL), not skipped; so is a non-present PMD/PUD entry when
    /// allocating (it would have to be cleared), while the existing-only walk skips it.
    ///
    /// Locking: caller holds the mmap lock; `body` runs under the PTE table's lock and must not
    /// sleep. MMU notifiers go around this call, never inside `body`.
    /// Return: nil; EINVAL for an empty range or a leaf; ENOMEM if a table could not be
    /// allocated; or the first error `body` returned (the walk stops there; slots before it
    /// were already visited).
    @discardableResult
    public func applyToPfnRange(_ start: UInt64, _ end: UInt64, allocate: Bool,
                                _ body: (EntryPointer, UInt64) -> Errno?) -> Errno? {
        Lockdep.assertSomeRWSemHeld()
        guard isPageAligned(start), isPageAligned(end), start < end else { return .EINVAL }
        var addr = start
        while addr < end {
            let next = PageTableLevel.pmd.addressEnd(addr, end)
            if let above = lookup(addr, level: .pte), above.level != .pte {
                let v = above.entry.load()
                if v.isPresent && v.isHuge { return .EINVAL }          // WARN_ON_ONCE(pmd_leaf)
                if !v.isNone && !v.isPresent {
                    if allocate { return .EINVAL }
                    addr = above.level.addressEnd(addr, end)
                    continue
                }
            }
            let found: (entry: EntryPointer, table: Page, level: PageTableLevel)?
            if allocate {
                do { found = try walkAllocating(addr, level: .pte) } catch { return error }
            } else {
                found = lookup(addr, level: .pte)
            }
            if let f = found, f.level == .pte {
                f.table.ptl.lock()
                var a = addr
                var e = f.entry
                while a < next {
                    if allocate || !e.load().isNone {
                        if let err = body(e, a) { f.table.ptl.unlock(); return err }
                    }
                    a += pageSize; e = e + 1
                }
                f.table.ptl.unlock()
            }
            addr = next                                                 // done, or no table here
        }
        return nil
    }
}
