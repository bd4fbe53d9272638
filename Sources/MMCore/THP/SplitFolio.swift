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
    public func splitFolio(_ folio: Page) -> Errno? { splitFolio(folio, toList: nil) }

    /// `split_folio_to_list`: `splitFolio`, and every new folio but the caller's goes to
    /// `toList` with a reference of its own (reclaim's list: the new folios make their own pass
    /// through it). A folio that was isolated from the LRU leaves its new folios isolated too
    /// (they are not added to a list); one on a list leaves them beside it there.
    /// Locking: as `splitFolio`.
    func splitFolio(_ folio: Page, toList: ((Page) -> Void)?) -> Errno? {
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
            guard head.pincount == 0, head.refcount == head.folioMapcount + 1 else {
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
            splitFrozenFolio(head, tailsLocked: .inherited, isolated: toList != nil)
            for i in 0..<n where entries[i] > 0 {
                let p = memory.page(head.pfn + UInt64(i))
                removeMigrationPTEs(from: p, to: p, av: av, index: index + UInt64(i), entries: entries[i])
            }
            for i in 1..<n {
                let t = memory.page(head.pfn + UInt64(i))
                t.unlockInherited()
                if let toList { toList(t) } else { memory.put(t) }
            }
            stats.count(.thpSplitPage)
            return nil
        }
    }

    /// How the new folios of a split hold their lock: inherited in their flags (the splitter
    /// unlocks them itself), or taken through the page lock (someone else unlocks them).
    enum SplitTailLock { case inherited, taken }

    /// `__split_unmapped_folio` on a frozen folio (count 0, unmapped): each tail stops being
    /// one (its flags first: until then it names the head, whose count is 0) with the head's
    /// anonymous flags, kind and device membership, and stays at count 0 until every page is
    /// whole; a device-private folio's driver is told of each new folio and then of the head
    /// (`zone_device_private_split_cb`); then every new folio gets one reference (the head
    /// the caller's) and is locked. The new folios' LRU places: see `LRULists.splitFolio`; a
    /// head off every list leaves the others to be added, unless `isolated` (the caller took
    /// the head off its list and keeps the new folios off theirs too).
    /// Locking: `head` locked and frozen by the caller.
    private func splitFrozenFolio(_ head: Page, tailsLocked: SplitTailLock, isolated: Bool = false) {
        assert(head.isLocked && head.refcount == 0, "splitFrozenFolio: the folio must be locked and frozen")
        precondition(head.largeMapcountWord.load() == 0, "splitFrozenFolio: \(head) is still mapped")
        let n = head.folioPages
        var common = head.flags.intersection([.anon, .swapBacked, .uptodate, .dirty, .referenced, .workingset, .lazyFree, .zoneDevice])
        if tailsLocked == .inherited { common.insert(.locked) }
        let kind = head.kind
        for i in 1..<n {
            let t = memory.page(head.pfn + i)
            t.flagsWord.store(common.rawValue)
            t.privateWord = 0
            t.order = 0
            t.kind = kind
        }
        // lru_add_split_folio, while the folio is frozen (nobody isolates or frees it); the
        // head becomes small where the LRU sees it change (see `LRULists.splitFolio`).
        let becomeSmall = { head.order = 0; head.clear(.head) }
        let linked: Bool
        if head.isZoneDevice { becomeSmall(); linked = false } else { linked = memory.lru.splitFolio(head, pages: n, becomeSmall: becomeSmall) }
        // Whether the head is on a list or in a batch, read while it is frozen (once it has a
        // reference again, reclaim may isolate it).
        let headPlaced = head.test(.lruBatched) || head.test(.lru)
        if head.isDevicePrivate, let g = memory.pagemap(of: head) {
            for i in 1..<n { g.folioSplit(head: head, tail: memory.page(head.pfn + i)) }
            g.folioSplit(head: head, tail: nil)
        }
        for i in 1..<n {
            let t = memory.page(head.pfn + i)
            if tailsLocked == .taken { let locked = t.tryLock(); precondition(locked, "a new folio of a split is locked by someone") }
            t.refcountWord.store(1)
        }
        head.refcountWord.store(1)
        // The new small system folios of a head that was on no list go on the LRU now (the
        // head too unless it is isolated or batched: its isolator or batch places it).
        if !head.isZoneDevice && !linked && (headPlaced || !isolated) {
            if !headPlaced { memory.lru.add(head) }
            for i in 1..<n { memory.lru.add(memory.page(head.pfn + i)) }
        }
    }

    /// `folio_split_unmapped` (to order 0): splits a locked, unmapped large anonymous folio
    /// (its mappings are migration entries the caller turns into per-page ones itself) whose
    /// only reference is the caller's. The new folios are locked and referenced once each
    /// (the head keeps the caller's lock and reference).
    /// Return: false (EAGAIN, nothing changed) if anyone else holds a reference.
    /// Locking: caller holds the folio's lock and one reference; no page-table lock held.
    package func splitUnmappedFolio(_ head: Page) -> Bool {
        Lockdep.assertNoSpinLockHeld()
        assert(head.isLocked && head.test(.head) && head.isAnon && !head.folioMapped, "splitUnmappedFolio: a locked, unmapped anonymous large folio")
        guard head.refcountWord.compareExchange(expected: 1, desired: 0).exchanged else { return false }
        splitFrozenFolio(head, tailsLocked: .taken)
        stats.count(.thpSplitPage)
        return true
    }
}
