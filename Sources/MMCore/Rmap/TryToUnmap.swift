import MMSync

extension Machine {
    /// `try_to_unmap`: removes every mapping of `page` (the reclaim and memory-failure path).
    /// Page-cache pages can always go (a later fault maps them again); anonymous pages would
    /// need a swap entry, which the model does not have yet, so they are left mapped.
    /// Locking: caller holds the page lock and a reference; takes the rmap lock, notifiers
    /// (CLEAR, outside PTE locks) and PTE locks.
    /// Return: true if the page is no longer mapped anywhere.
    @discardableResult
    public func tryToUnmap(_ page: Page) -> Bool {
        precondition(page.isLocked, "tryToUnmap: page must be locked")
        guard page.file != nil else { return page.mapcount == 0 }
        memory.rmapWalk(page) { hit in
            let mm = hit.vma.mm
            let range = MMUNotifierRange(start: hit.address, end: hit.address + pageSize, event: .clear)
            mm.notifiers.invalidateRangeStart(range)
            let unmapped = mm.withMappedPTE(hit.address, pfn: page.pfn) { ptep, found -> Bool in
                guard case .present(let v) = found else { return false }
                ptep.store(.none)
                if v.isDirty { page.set(.dirty) }
                mm.flushTLB()
                memory.removeRmap(page)
                return true
            } ?? false
            mm.notifiers.invalidateRangeEnd(range)
            if unmapped { memory.put(page) }
            return true
        }
        return page.mapcount == 0
    }
}
