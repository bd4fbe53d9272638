import MMArch
import MMSync

/// The LRU lists of the machine's one node (`struct lruvec`, classic two-list LRU of Linux 7.2's
/// `mm/vmscan.c` without MGLRU): inactive and active lists of anonymous pages, threaded through
/// the page metadata (`lruNext`/`lruPrev`, free while a page is allocated), new pages at the
/// head, reclaim from the tail.
///
/// New pages come through per-CPU add batches (`cpu_fbatches.lru_add`, 31 pages), moved to the
/// lists under one hold of the LRU lock, so faulting CPUs do not share that lock per fault.
/// Unlike the kernel's, a batch holds no page reference (the model's migration and reuse
/// checks count references exactly): a page freed while batched is taken out of its batch.
///
/// Small anonymous and shmem pages and anonymous THPs (by their head) are on the lists (shmem
/// is swap-backed: on the anonymous lists, as in 7.2); hugetlb folios, zone-device and
/// page-table pages are not. The counts are in pages (`lru_zone_size`): a THP counts 512. A
/// THP that is split (`lru_add_split_folio`) leaves its pages beside its head on the same list.
///
/// Sendable: the lists are guarded by `lock`; each batch by its own lock (taken first).
public final class LRULists: @unchecked Sendable {
    public enum List: Int, CaseIterable, Sendable { case inactiveAnon = 0, activeAnon = 1 }

    /// The memory, uncounted: it owns these lists (the fault path adds every new page here,
    /// and a counted or `unowned` reference costs a retain and a release per use). Borrowed
    /// with `withMemory`; page handles come from the copied metadata base (`pageAt`).
    let memoryRef: Unmanaged<PhysicalMemory>
    private let metaBase: UnsafeMutableRawPointer
    private let totalPfns: UInt64
    /// `lruvec->lru_lock`.
    let lock = Lock("lru_lock")
    /// Each list's head, tail and length, by `List` (raw memory: no copy-on-write checks).
    /// Locking: lock.
    let heads: UnsafeMutablePointer<UInt32>
    let tails: UnsafeMutablePointer<UInt32>
    let counts: UnsafeMutablePointer<Int>
    static let nilLink: UInt32 = .max
    static let batchSize = 31
    /// The add batches, by CPU slot (kept alive by `batchOwners`).
    let batches: UnsafeMutablePointer<Unmanaged<LRUAddBatch>>
    let batchOwners: [LRUAddBatch]
    /// Pages reclaim has taken off the lists and not yet freed or put back (`NR_ISOLATED_ANON`).
    let isolatedCount = AtomicCounter(0)
    /// `lruvec->nonresident_age`: grows with every eviction and every activation; an evicted
    /// page's shadow keeps its value, and a refault compares the distance since with the
    /// working set (`mm/workingset.c`).
    let nonresidentAge = AtomicCounter(0)
    /// Pages any reclaimer has freed so far: an allocation whose own reclaim freed nothing
    /// keeps trying while this grows (others' reclaim is making frames free).
    let reclaimedTotal = AtomicCounter(0)
    /// Allocations that found nothing to reclaim while others held isolated pages wait here
    /// for those to be dealt with (`reclaim_throttle` on `VMSCAN_THROTTLE_ISOLATED`).
    let throttle = WaitQueue()

    /// `batchLocks`: the lock guarding each slot's batch (the per-CPU page list's own, so the
    /// allocation that adds a page holds it already), or nil for a lock per batch.
    init(memory: PhysicalMemory, batchLocks: [Lock]?) {
        memoryRef = .passUnretained(memory)
        metaBase = memory.metaBase
        totalPfns = memory.totalPfns
        heads = .allocate(capacity: List.allCases.count); heads.initialize(repeating: LRULists.nilLink, count: List.allCases.count)
        tails = .allocate(capacity: List.allCases.count); tails.initialize(repeating: LRULists.nilLink, count: List.allCases.count)
        counts = .allocate(capacity: List.allCases.count); counts.initialize(repeating: 0, count: List.allCases.count)
        batchOwners = (0..<PhysicalMemory.pcpSlots).map { LRUAddBatch(capacity: LRULists.batchSize, lock: batchLocks?[$0] ?? Lock("lru_add_batch")) }
        batches = .allocate(capacity: batchOwners.count)
        for (i, b) in batchOwners.enumerated() { (batches + i).initialize(to: .passUnretained(b)) }
    }

    /// Calls `body` with the memory borrowed (no reference counting).
    @inline(__always) func withMemory<R>(_ body: (PhysicalMemory) throws -> R) rethrows -> R {
        try memoryRef._withUnsafeGuaranteedRef(body)
    }
    /// The metadata handle of `pfn` (as `PhysicalMemory.page`).
    @inline(__always) func pageAt(_ pfn: UInt64) -> Page {
        precondition(pfn < totalPfns, "pfn out of range")
        return Page(pfn: pfn, meta: metaBase + Int(pfn) &* Page.metadataStride)
    }
    deinit { heads.deallocate(); tails.deallocate(); counts.deallocate(); batches.deallocate() }

    /// Pages on `list`. Locking: takes the LRU lock.
    public func count(_ list: List) -> Int {
        lock.assertNotHeld()
        return lock.withLock { counts[list.rawValue] }
    }
    /// The same read without the lock, as the kernel reads `lruvec_page_state` (a value that
    /// may be a moment old; for heuristics such as the refault distance).
    func countUnlocked(_ list: List) -> Int {
        Int(bitPattern: UInt(AtomicU64Ref(UnsafeMutableRawPointer(counts + list.rawValue)).load(.relaxed)))
    }

    // MARK: adding (folio_add_lru)

    /// `folio_add_lru`: a new small anonymous or shmem page, or a new anonymous THP's head, will
    /// go on the inactive list, through the calling CPU's batch. Tail pages, hugetlb folios and
    /// zone-device pages are not added.
    /// Locking: takes the batch's lock (then the LRU lock when the batch is full); no spin
    /// lock may be held by a caller that could be freeing this page meanwhile.
    public func add(_ page: Page) {
        guard !page.test(.tail), !page.test(.hugetlb), !page.isZoneDevice, page.order == 0 || page.test(.head) else { return }
        assert(!page.test(.lru) && !page.test(.lruBatched), "lru add: \(page) is already on the LRU")
        let slot = withMemory { $0.pcpSlot() }
        batches[slot]._withUnsafeGuaranteedRef { b in
            b.lock.lock()
            addLocked(page, slot: slot)
            b.lock.unlock()
        }
    }

    /// `add` for a caller that holds the lock of batch `slot` (the allocation path, holding the
    /// per-CPU list's lock) and a page nobody else can see yet (its flags are stored, not
    /// changed atomically: no other thread can hold its lock or test its bits yet).
    @inline(__always)
    func addLocked(_ page: Page, slot: Int) {
        batches[slot]._withUnsafeGuaranteedRef { b in
            page.lruSlot = UInt8(slot)
            page.flagsWord.store(page.flagsWord.load(.relaxed) | PageFlags.lruBatched.rawValue, .relaxed)
            b.pfns[b.count] = UInt32(page.pfn)
            b.count += 1
            if b.count == LRULists.batchSize { drainLocked(b) }
        }
    }

    /// Moves a batch's pages to the inactive list. Locking: caller holds the batch's lock.
    private func drainLocked(_ b: LRUAddBatch) {
        b.lock.assertHeld()
        guard b.count > 0 else { return }
        lock.lock()
        for i in 0..<b.count where b.pfns[i] != LRULists.nilLink {
            let p = pageAt(UInt64(b.pfns[i]))
            // lru_add: an activated refault goes on the active list, any other page inactive.
            let active = p.test(.active)
            p.changeFlags(set: .lru, clear: .lruBatched)
            linkHeadLocked(p, active ? .activeAnon : .inactiveAnon, flagged: true)
        }
        lock.unlock()
        b.count = 0
    }

    /// `lru_add_drain_all`: every batch onto the lists (reclaim starts with it here).
    /// Locking: takes each batch's lock, then the LRU lock; the caller holds neither.
    public func drainAll() {
        lock.assertNotHeld()
        for b in batchOwners where b.count > 0 { b.lock.lock(); drainLocked(b); b.lock.unlock() }
    }

    /// `lru_add_drain`: the calling CPU's batch onto the lists (swap readahead drains after
    /// reading, so the pages it read are reclaimable at once).
    /// Locking: takes the batch's lock, then the LRU lock; the caller holds neither.
    public func drainLocal() {
        lock.assertNotHeld()
        let slot = withMemory { $0.pcpSlot() }
        batches[slot]._withUnsafeGuaranteedRef { b in
            b.lock.lock(); drainLocked(b); b.lock.unlock()
        }
    }

    // MARK: the working set (mm/workingset.c without MGLRU and memcg)

    /// `workingset_eviction` for a page reclaim is freeing: the shadow its slot keeps (the
    /// age now, and its PG_workingset), and the age grows by the page.
    /// Locking: the caller holds the page lock and froze its count.
    func workingsetEviction(_ page: Page) -> UInt64 {
        assert(page.isLocked && page.refcount == 0, "workingsetEviction: \(page) not locked and frozen")
        let age = UInt64(nonresidentAge.add(Int(page.folioPages)) - Int(page.folioPages))
        return SwapArea.evictionShadow(age: age, workingset: page.test(.workingset))
    }

    /// `workingset_refault` for a page just read back from a slot with `shadow` (new, locked,
    /// in an add batch or on the inactive list): counted as a refault when the shadow is an
    /// eviction record; activated (`workingset_activate_anon`) when it was evicted less than
    /// the working set ago — the pages evicted since (the refault distance) are no more than
    /// the active list (`workingset_test_recent` for anonymous pages with swap: the model has
    /// no file lists) — and then PG_workingset again if it had it (`workingset_restore_anon`).
    /// Return: whether the page was activated.
    /// Locking: caller holds the page lock; takes the batch and LRU locks.
    @discardableResult
    func workingsetRefault(_ page: Page, shadow: UInt64, stats: MMStats) -> Bool {
        assert(page.isLocked, "workingsetRefault: \(page) not locked")
        guard shadow & SwapArea.shadowRecord != 0 else { return false }
        stats.count(.workingsetRefaultAnon)
        let eviction = shadow >> 4, now = UInt64(nonresidentAge.load())
        let distance = (now &- eviction) & (~UInt64(0) >> 4)
        // The active list counts only while swap has room (a distance is at least 1).
        guard distance <= UInt64(max(0, countUnlocked(.activeAnon))), withMemory({ $0.swap.freeSlots > 0 }) else { return false }
        activateNew(page)
        nonresidentAge.add(Int(page.folioPages))
        stats.count(.workingsetActivateAnon)
        if shadow & SwapArea.shadowWorkingset != 0 {
            page.set(.workingset)
            stats.count(.workingsetRestoreAnon)
        }
        return true
    }

    /// `folio_set_active` before `folio_add_lru` for a page that the allocation already
    /// added: in its batch it is only flagged (the drain puts it on the active list); already
    /// drained, it moves from the inactive list to the active one.
    /// Locking: takes the page's batch lock, then the LRU lock.
    private func activateNew(_ page: Page) {
        lock.assertNotHeld()
        if whileBatched(page, { _ in page.set(.active) }) { return }
        lock.lock(); defer { lock.unlock() }
        guard page.test(.lru), !page.test(.active) else { return }
        unlinkLocked(page)
        page.set(.active)
        linkHeadLocked(page, .activeAnon, flagged: true)
    }

    // MARK: the lists

    /// Locking: LRU lock held. `flagged`: the caller set PG_active as the list wants.
    private func linkHeadLocked(_ p: Page, _ list: List, flagged: Bool = false) {
        lock.assertHeld()
        let l = list.rawValue
        p.lruPrev = LRULists.nilLink
        p.lruNext = heads[l]
        if heads[l] != LRULists.nilLink { pageAt(UInt64(heads[l])).lruPrev = UInt32(p.pfn) } else { tails[l] = UInt32(p.pfn) }
        heads[l] = UInt32(p.pfn)
        counts[l] += Int(p.folioPages)
        if !flagged { if list == .activeAnon { p.set(.active) } else { p.clear(.active) } }
    }

    /// Locking: LRU lock held.
    private func unlinkLocked(_ p: Page) {
        lock.assertHeld()
        let l = p.test(.active) ? List.activeAnon.rawValue : List.inactiveAnon.rawValue
        let next = p.lruNext, prev = p.lruPrev
        if prev != LRULists.nilLink { pageAt(UInt64(prev)).lruNext = next } else { heads[l] = next }
        if next != LRULists.nilLink { pageAt(UInt64(next)).lruPrev = prev } else { tails[l] = prev }
        p.lruNext = 0; p.lruPrev = 0
        counts[l] -= Int(p.folioPages)
    }

    /// `lru_add_split_folio` for a THP being split to order 0 (`pages` pages): `becomeSmall`
    /// (which makes the head a small page) runs where no drain or list change can see the head
    /// half-way: under its batch's lock while it is batched (the drain then links it as one
    /// page), else under the LRU lock. A head on a list stays there and counts one page; its
    /// other pages are linked on its newer side, in order (7.2's `list_add_tail` before the
    /// head: the head is reclaimed first), flagged for that list. A head that is batched or on
    /// no list (isolated) leaves its other pages to the caller, which adds them (`add`) or
    /// keeps them for itself (reclaim's list).
    /// Return: whether the other pages were put on a list here.
    /// Locking: the caller froze the folio (count 0: nobody isolates or frees it) and holds its
    /// lock; takes the head's batch lock, then the LRU lock.
    func splitFolio(_ head: Page, pages: UInt64, becomeSmall: () -> Void) -> Bool {
        lock.assertNotHeld()
        if whileBatched(head, { _ in becomeSmall() }) { return false }
        lock.lock(); defer { lock.unlock() }
        guard head.test(.lru) else { becomeSmall(); return false }
        let active = head.test(.active)
        let l = active ? List.activeAnon.rawValue : List.inactiveAnon.rawValue
        counts[l] -= Int(pages) - 1
        becomeSmall()
        for i in 1..<pages {
            let t = pageAt(head.pfn + i)
            let prev = head.lruPrev
            t.lruPrev = prev
            t.lruNext = UInt32(head.pfn)
            if prev != LRULists.nilLink { pageAt(UInt64(prev)).lruNext = UInt32(t.pfn) } else { heads[l] = UInt32(t.pfn) }
            head.lruPrev = UInt32(t.pfn)
            counts[l] += 1
            t.set(active ? [.lru, .active] : [.lru])
        }
        return true
    }

    /// Runs `body` with the batch that holds `page`, under that batch's lock, if the page is
    /// in one (a drain cannot move it meanwhile).
    /// Return: false if the page is not batched (never was, or drained meanwhile: then it is on
    /// a list, or isolated).
    /// Locking: takes the page's batch lock; the caller holds neither it nor the LRU lock.
    private func whileBatched(_ page: Page, _ body: (LRUAddBatch) -> Void) -> Bool {
        lock.assertNotHeld()
        guard page.test(.lruBatched) else { return false }
        let b = batchOwners[Int(page.lruSlot)]
        b.lock.lock(); defer { b.lock.unlock() }
        guard page.test(.lruBatched) else { return false }
        body(b)
        return true
    }

    /// `__page_cache_release` / `lruvec_del_folio`: a page whose last reference went leaves
    /// its list or batch. Locking: the caller holds no LRU or batch lock; takes them.
    func removeFreed(_ p: Page) {
        lock.assertNotHeld()
        let taken = whileBatched(p) { b in
            for i in 0..<b.count where b.pfns[i] == UInt32(p.pfn) { b.pfns[i] = LRULists.nilLink }
            p.clear(.lruBatched)
        }
        if taken { return }
        guard p.test(.lru) else { return }
        lock.lock()
        unlinkLocked(p)
        p.clear([.lru, .active])
        lock.unlock()
    }

    /// `isolate_lru_folios`: takes folios from the tail of `list` until `max` pages are taken
    /// (a THP counts all of its own: one THP may take the whole budget), each with a reference
    /// and off the list (PG_lru clear). Pages being freed (no reference left) stay.
    /// Locking: takes the LRU lock.
    func isolate(_ list: List, max: Int) -> [Page] {
        lock.assertNotHeld()
        var out: [Page] = []
        lock.lock()
        var link = tails[list.rawValue]
        var looked = 0
        var taken = 0
        while link != LRULists.nilLink && taken < max && looked < 4 * max {
            let p = pageAt(UInt64(link))
            link = p.lruPrev
            looked += 1
            guard withMemory({ $0.tryGet(p) }) else { continue }
            unlinkLocked(p)
            p.clear(.lru)
            out.append(p)
            taken += Int(p.folioPages)   // a THP uses 512 of the budget (scan += nr_pages)
        }
        lock.unlock()
        isolatedCount.add(out.count)
        return out
    }

    /// Isolated pages that reclaim freed or put back: throttled allocations may go on.
    func isolationDone(_ n: Int) {
        guard n > 0 else { return }
        if isolatedCount.add(-n) == 0 { throttle.wakeAll() }
    }

    /// `folio_putback_lru` / `move_folios_to_lru`: isolated pages go back (to the active list
    /// when `active`), and the isolation's reference is dropped.
    /// Locking: takes the LRU lock; the caller holds none.
    func putBack(_ pages: [Page], active: Bool) {
        lock.assertNotHeld()
        guard !pages.isEmpty else { return }
        lock.lock()
        var activated = 0
        for p in pages {
            p.set(.lru)
            linkHeadLocked(p, active ? .activeAnon : .inactiveAnon)
            if active { activated += Int(p.folioPages) }
        }
        lock.unlock()
        // move_folios_to_lru: an activation ages the non-resident pages too.
        if activated > 0 { nonresidentAge.add(activated) }
        withMemory { $0.putBatch(pages) }
    }

    /// Every violated LRU invariant: each list's links agree both ways and with its count (in
    /// pages), its pages are allocated small pages or anonymous THP heads flagged for that list; batched
    /// pages are allocated and flagged.
    /// Locking: takes every batch's lock and the LRU lock; run while memory is quiescent.
    func checkInvariants() -> [String] {
        lock.assertNotHeld()
        var problems: [String] = []
        for b in batchOwners { b.lock.lock() }
        defer { for b in batchOwners.reversed() { b.lock.unlock() } }
        for b in batchOwners {
            for i in 0..<b.count where b.pfns[i] != LRULists.nilLink {
                let p = pageAt(UInt64(b.pfns[i]))
                if !p.test(.lruBatched) || p.isFreeFrame { problems.append("lru batch: \(p) not a batched page in use") }
            }
        }
        lock.lock(); defer { lock.unlock() }
        for list in List.allCases {
            var link = heads[list.rawValue], prev = LRULists.nilLink, n = 0
            while link != LRULists.nilLink {
                let p = pageAt(UInt64(link))
                if !p.test(.lru) || p.test(.active) != (list == .activeAnon) || p.isFreeFrame || p.test(.tail)
                    || (p.order != 0 && !(p.test(.head) && !p.test(.hugetlb) && !p.isZoneDevice)) {
                    problems.append("\(list): \(p) is not a page in use flagged for it (flags \(String(p.flags.rawValue, radix: 16)))")
                }
                if p.lruPrev != prev { problems.append("\(list): \(p) links back to \(p.lruPrev), not \(prev)") }
                prev = link; link = p.lruNext; n += Int(p.folioPages)
                if n > Int(withMemory { $0.systemFrames }) { problems.append("\(list) loops"); break }
            }
            if prev != tails[list.rawValue] { problems.append("\(list): tail \(tails[list.rawValue]) but the walk ends at \(prev)") }
            if n != counts[list.rawValue] { problems.append("\(list): \(n) pages, counter says \(counts[list.rawValue])") }
        }
        return problems
    }
}

/// One CPU's batch of pages on their way to the LRU lists.
/// Sendable: `lock` guards `pfns` and `count`.
final class LRUAddBatch: @unchecked Sendable {
    /// Its own lock, or the per-CPU page list's of the same slot.
    let lock: Lock
    let pfns: UnsafeMutablePointer<UInt32>
    /// Pages in `pfns`, guarded by `lock`.
    @exclusivity(unchecked) var count = 0

    init(capacity: Int, lock: Lock) { pfns = .allocate(capacity: capacity); self.lock = lock }
    deinit { pfns.deallocate() }
}
