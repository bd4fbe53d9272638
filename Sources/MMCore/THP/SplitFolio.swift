import MMSync

extension Machine {
    /// `split_folio` (`split_huge_page_to_list_to_order` to order 0) for an anonymous THP:
    /// every PMD mapping is split (`TTU_SPLIT_HUGE_PMD`), every PTE of every page becomes a
    /// migration entry (`try_to_migrate`), the folio's count is frozen at the caller's one
    /// reference, the 512 pages become folios of their own (locked, each with the folio's
    /// flags, owner and index), and every migration entry becomes a mapping of its page again
    /// (`remove_migration_ptes`). Pages left unmapped are freed; the caller keeps its reference
    /// and lock on the first page. A folio someone else also references (a pin, a GUP, a
    /// racing walker) is not split: checked first, and again once it is unmapped (its mappings
    /// then come back as they were); EAGAIN, as `split_folio`.
    /// Return: nil on success (also for a folio that is not large), EAGAIN, or EINVAL for a
    /// folio that is not anonymous.
    /// Locking: caller holds the folio's lock and one reference on it, and no page-table
    /// lock; takes the anon_vma lock, notifiers, PMD and PTE locks.
    public func splitFolio(_ folio: Page) -> Errno? {
        Lockdep.assertNoSpinLockHeld()
        assert(folio.isLocked && folio.folioHead.refcount > 0, "splitFolio: the folio must be locked and referenced")
        let head = folio.folioHead
        guard head.isInLargeFolio else { return nil }
        guard head.isAnon, let anon = head.anonVMA else { return .EINVAL }
        // The anon_vma stays pinned from the first unmap to the last remap.
        return withExtendedLifetime(anon) { () -> Errno? in
            unowned let av = anon
            let index = head.index
            let n = Int(head.folioPages)
            // can_split_folio, before anything is unmapped: every reference but the caller's
            // must be a mapping (a pin or a walker's reference: EAGAIN, the folio untouched).
            var mapped = Int(head.entireMapcount)
            for i in 0..<n { mapped += Int(memory.page(head.pfn + UInt64(i)).mapcount) }
            guard head.pincount == 0, Int(head.refcount) == mapped + 1 else {
                stats.count(.thpSplitPageFailed)
                return .EAGAIN
            }
            memory.rmapWalkAnon(av, index: index) { hit in
                hit.vma.mm.splitHugePMD(hit.vma, hit.address, pfn: head.pfn)
                return true
            }
            var entries = [Int](repeating: 0, count: n)
            for i in 0..<n { entries[i] = tryToMigrate(memory.page(head.pfn + UInt64(i)), av: av, index: index + UInt64(i)) }
            guard head.entireMapcount == 0, head.refcountWord.compareExchange(expected: 1, desired: 0).exchanged else {
                for i in 0..<n where entries[i] > 0 {
                    let p = memory.page(head.pfn + UInt64(i))
                    removeMigrationPTEs(from: p, to: p, av: av, index: index + UInt64(i), entries: entries[i])
                }
                stats.count(.thpSplitPageFailed)
                return .EAGAIN
            }
            // Frozen: nobody can take a reference; every page is unmapped. Each tail stops
            // being one (its flags first: until then it names the head, whose count is 0) and
            // stays at count 0 until every page is whole; then the counts are set.
            let common = head.flags.intersection([.anon, .swapBacked, .uptodate, .dirty, .referenced])
            for i in 1..<n {
                let t = memory.page(head.pfn + UInt64(i))
                t.flagsWord.store(common.union(.locked).rawValue)
                t.privateWord = 0
                t.order = 0
                t.kind = .system
            }
            head.order = 0
            head.clear(.head)
            for i in 1..<n { memory.page(head.pfn + UInt64(i)).refcountWord.store(1) }
            head.refcountWord.store(1)
            for i in 0..<n where entries[i] > 0 {
                let p = memory.page(head.pfn + UInt64(i))
                removeMigrationPTEs(from: p, to: p, av: av, index: index + UInt64(i), entries: entries[i])
            }
            for i in 1..<n {
                let t = memory.page(head.pfn + UInt64(i))
                t.unlockInherited()
                memory.put(t)
            }
            stats.count(.thpSplitPage)
            return nil
        }
    }
}
