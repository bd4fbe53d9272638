import MMSync

extension PageTable {
    /// Calls `body` for every leaf PTE slot in [start, end) (`apply_to_page_range` /
    /// `apply_to_existing_page_range`). With `allocate`, missing tables are allocated; without,
    /// ranges whose tables are missing are skipped. Ranges covered by a huge or non-present
    /// PMD/PUD entry are skipped (callers split those first).
    ///
    /// Locking: caller holds the mmap lock; `body` runs under the PTE table's lock and must not
    /// sleep. MMU notifiers go around this call, never inside `body`.
    /// Return: nil, ENOMEM if a table could not be allocated, or the first error `body` returned
    /// (the walk stops there; slots before it were already visited).
    @discardableResult
    public func applyToPfnRange(_ start: UInt64, _ end: UInt64, allocate: Bool,
                                _ body: (EntryPointer, UInt64) -> Errno?) -> Errno? {
        precondition(isPageAligned(start) && isPageAligned(end) && start <= end)
        var addr = start
        while addr < end {
            let next = PageTableLevel.pmd.addressEnd(addr, end)
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
                    if let err = body(e, a) { f.table.ptl.unlock(); return err }
                    a += pageSize; e = e + 1
                }
                f.table.ptl.unlock()
            }
            addr = next
        }
        return nil
    }
}
