#if canImport(Glibc)
import Glibc
#endif
import MMSync

/// The buddy allocator over system frames: free blocks of order 0…10 on doubly linked lists
/// threaded through the page metadata (`lruNext`/`lruPrev`).
extension PhysicalMemory {
    func initFreeLists() {
        zoneLock.lock(); defer { zoneLock.unlock() }
        let blockPages = UInt64(1) << PhysicalMemory.maxOrder
        var pfn: UInt64 = 1
        while pfn < systemFrames {
            if pfn % blockPages == 0 && pfn + blockPages <= systemFrames {
                freeBlockLocked(pfn, order: PhysicalMemory.maxOrder)
                pfn += blockPages
            } else {
                freeBlockLocked(pfn, order: 0)
                pfn += 1
            }
        }
    }

    /// Allocates a block of 2^order frames. Returns nil when no block is free (ENOMEM) or when
    /// fault injection fails the allocation. Contents are not cleared; the caller zeroes or
    /// copies. The head page starts with refcount 1; tail pages are marked `.tail`.
    /// With `mayReclaim` (a user page: `GFP_HIGHUSER_MOVABLE`), a single frame that cannot be
    /// had is reclaimed for (`__alloc_pages_direct_reclaim`) until it can, or until 16 rounds in
    /// a row freed nothing anywhere (`MAX_RECLAIM_RETRIES`; a round whose own reclaim freed
    /// nothing still counts as progress when other reclaimers freed pages meanwhile, as the
    /// free pages `should_reclaim_retry` looks at grow; and one that found nothing to take while
    /// other reclaimers held isolated pages waits for them, up to 1 ms, as `reclaim_throttle`
    /// does); at most 4,096 rounds. The caller must then hold no page-table lock.
    /// With `lru` (a new anonymous page or THP: `folio_add_lru`), a single frame goes on the LRU too
    /// (through the per-CPU add batch; see `LRULists`), or a large folio by its head.
    public func allocate(order: Int = 0, zeroed: Bool = false, mayReclaim: Bool = false, lru: Bool = false) -> Page? {
        precondition(order >= 0 && order <= PhysicalMemory.maxOrder)
        if FaultInjection.shouldFail(.frameAllocation) { return nil }
        if kswapd.running.loadRelaxed() != 0 && buddyFreeFrames.load() < watermarks.low { kswapd.wakeIfBelowLow(self) }
        var got: UInt64?
        var prepared = false
        if lru && order == 0 && pcpBatch > 0 {
            got = allocateFromPCP(lru: true) ?? { drainAllPCP(); return allocateFromPCP(lru: true) }()
            prepared = got != nil
        } else {
            got = takeFrames(order: order)
        }
        if got == nil && mayReclaim && order == 0, let reclaim = directReclaimHook {
            var idle = 0, rounds = 0
            Lockdep.assertNoSpinLockHeld()
            var seen = self.lru.reclaimedTotal.load()
            while got == nil && idle < 16 && rounds < 4096 {
                rounds += 1
                let mine = reclaim()
                let now = self.lru.reclaimedTotal.load()
                defer { seen = now }
                if mine > 0 || now != seen {
                    idle = 0
                } else if self.lru.isolatedCount.load() > 0 {
                    self.lru.throttle.wait(timeoutNanoseconds: 1_000_000) { self.lru.isolatedCount.load() == 0 }
                } else {
                    idle += 1
                }
                got = takeFrames(order: order)
            }
            // __alloc_pages_may_oom: reclaim gave up; the OOM killer frees a victim's memory
            // (when the machine has it on) and the allocation tries again, a few victims at most.
            var kills = 0
            while got == nil && kills < 8, let oom = oomHook, oom() {
                kills += 1
                drainAllPCP()
                got = takeFrames(order: order)
            }
        }
        guard let pfn = got else { return nil }
        let head = page(pfn)
        if !prepared {
            prepareAllocated(head, order: order)
            if lru { self.lru.add(head) }
        }
        if zeroed { clearFrames(pfn, order: order) }
        return head
    }

    /// A block of 2^order frames from the per-CPU lists or the buddy lists (draining the
    /// per-CPU lists once when the buddy lists are empty), or nil.
    private func takeFrames(order: Int) -> UInt64? {
        if order == 0 && pcpBatch > 0 { return allocateFromPCP() ?? { drainAllPCP(); return allocateFromPCP() }() }
        return takeBlock(order: order) ?? { () -> UInt64? in
            guard pcpBatch > 0 else { return nil }
            drainAllPCP()
            return takeBlock(order: order)
        }()
    }

    /// Allocates up to `count` single frames under one hold of the zone lock (as the kernel
    /// refills a per-cpu page list in one go), each as `allocate(order: 0)`. Returns fewer when
    /// memory runs out or when fault injection fails some of the allocations (each slot is one
    /// allocation attempt; a failed one is skipped, the others still happen).
    /// Locking: takes the zone lock; the caller must not hold it.
    /// With `mayReclaim` (user pages, as a driver's `alloc_page_vma(GFP_HIGHUSER_MOVABLE)`),
    /// frames the batch could not get are then allocated one by one with direct reclaim.
    public func allocateBatch(_ count: Int, mayReclaim: Bool) -> [Page] {
        assert(!zoneLock.isHeldByCurrentThread, "allocateBatch under the zone lock")
        var pages = allocateBatch(count)
        while mayReclaim && pages.count < count, let p = allocate(order: 0, mayReclaim: true) { pages.append(p) }
        return pages
    }

    public func allocateBatch(_ count: Int) -> [Page] {
        assert(!zoneLock.isHeldByCurrentThread, "allocateBatch under the zone lock")
        var want = 0
        for _ in 0..<max(count, 0) where !FaultInjection.shouldFail(.frameAllocation) { want += 1 }
        guard want > 0 else { return [] }
        var pfns: [UInt64] = []
        pfns.reserveCapacity(want)
        for attempt in 0..<2 {
            if attempt == 1 { guard pfns.count < want, pcpBatch > 0 else { break }; drainAllPCP() }
            zoneLock.lock()
            let before = pfns.count
            while pfns.count < want, let pfn = takeBlockLocked(order: 0) { pfns.append(pfn) }
            buddyFreeFrames.add(-(pfns.count - before))
            zoneLock.unlock()
        }
        return pfns.map { pfn in let p = page(pfn); prepareAllocated(p, order: 0); return p }
    }

    /// A block of `order` from the buddy lists, counted as allocated. Locking: takes the zone lock.
    private func takeBlock(order: Int) -> UInt64? {
        zoneLock.lock(); defer { zoneLock.unlock() }
        guard let pfn = takeBlockLocked(order: order) else { return nil }
        buddyFreeFrames.add(-(1 << order))
        return pfn
    }

    /// Takes a free block of `order` off the lists, splitting a larger one if needed (the upper
    /// halves go back). Locking: zoneLock held. Return: its first pfn, or nil when none is free.
    func takeBlockLocked(order: Int) -> UInt64? {
        zoneLock.assertHeld()
        guard let found = (order...PhysicalMemory.maxOrder).first(where: { freeListHead[$0] != PhysicalMemory.nilLink }) else { return nil }
        let pfn = UInt64(freeListHead[found])
        removeFromFreeList(page(pfn), order: found)
        var o = found
        while o > order {
            o -= 1
            freeListInsert(pfn + (UInt64(1) << o), order: o)
        }
        return pfn
    }

    func prepareAllocated(_ head: Page, order: Int) {
        precondition(head.flags.isEmpty && head.refcount == 0 && head.mapcount == 0,
                     "allocating a frame that is in use: \(head)")
        head.order = order
        head.kind = .system
        head.refcountWord.store(1)
        if order > 0 {
            head.set(.head)
            for i in 1..<(UInt64(1) << order) {
                let t = page(head.pfn + i); t.order = 0; t.set(.tail); t.privateWord = head.pfn
            }
            // The folio's mapcount lives in its first tail's page-table-lock word. A page table
            // is freed unlocked (word 0), so this is only defensive; the free checks it is 0.
            head.largeMapcountWord.store(0)
        }
    }

    /// Returns a block to the allocator. Called when the refcount dropped to zero.
    /// Precondition: no mapping, no pin, owner already released.
    func freeBlock(_ head: Page) {
        prepareFree(head)
        if head.order == 0 && pcpBatch > 0 { freeToPCP(head.pfn); return }
        zoneLock.lock()
        buddyFreeFrames.add(1 << head.order)
        freeBlockLocked(head.pfn, order: head.order, countIt: false)
        zoneLock.unlock()
    }

    /// Clears a block's metadata before it goes back (no lock needed: nobody else holds it).
    private func prepareFree(_ head: Page) {
        let order = head.order
        precondition(head.mapcount == 0 && head.pincount == 0, "freeing a mapped or pinned frame \(head)")
        if order > 0 {
            for i in 1..<(UInt64(1) << order) {
                let t = page(head.pfn + i)
                precondition(t.mapcount == 0 && (i != 1 || (t.pincount == 0 && head.largeMapcountWord.load() == 0)),
                             "freeing a folio whose page \(t) is mapped")
                t.flagsWord.store(0); t.privateWord = 0; t.mapcountWord.store(0)
                t.ownerBits = 0; t.index = 0; t.refcountWord.store(0); t.pincountWord.store(0)
            }
        }
        head.flagsWord.store(0)
        head.privateWord = 0
        head.index = 0
    }

    /// Inserts a block, merging with free buddies. Locking: caller holds zoneLock.
    func freeBlockLocked(_ start: UInt64, order startOrder: Int, countIt: Bool = true) {
        zoneLock.assertHeld()
        if countIt { buddyFreeFrames.add(1 << startOrder) }
        var pfn = start, order = startOrder
        while order < PhysicalMemory.maxOrder {
            let buddy = pfn ^ (UInt64(1) << order)
            guard buddy != 0, buddy + (UInt64(1) << order) <= systemFrames else { break }
            let b = page(buddy)
            guard b.test(.buddy), b.order == order else { break }
            removeFromFreeList(b, order: order)
            // Inside a free block only its head keeps an order: whichever of the two stops
            // being a head is reset, so a block can later be handed out page by page
            // without touching each page (the per-CPU refill takes whole blocks).
            if buddy < pfn { page(pfn).order = 0 } else { b.order = 0 }
            pfn = min(pfn, buddy)
            order += 1
        }
        freeListInsert(pfn, order: order)
    }

    private func freeListInsert(_ pfn: UInt64, order: Int) {
        let p = page(pfn)
        p.order = order
        p.flagsWord.store(PageFlags.buddy.rawValue)
        p.refcountWord.store(0)
        let head = freeListHead[order]
        p.lruNext = head
        p.lruPrev = PhysicalMemory.nilLink
        if head != PhysicalMemory.nilLink { page(UInt64(head)).lruPrev = UInt32(pfn) }
        freeListHead[order] = UInt32(pfn)
        freeCountByOrder[order] += 1
    }

    private func removeFromFreeList(_ p: Page, order: Int) {
        let next = p.lruNext, prev = p.lruPrev
        if prev != PhysicalMemory.nilLink { page(UInt64(prev)).lruNext = next } else { freeListHead[order] = next }
        if next != PhysicalMemory.nilLink { page(UInt64(next)).lruPrev = prev }
        p.flagsWord.store(0)
        p.lruNext = 0; p.lruPrev = 0
        freeCountByOrder[order] -= 1
    }

    // MARK: gigantic blocks

    /// `alloc_contig_pages` for a block above the largest buddy order (a 1 GiB huge page): the
    /// lowest naturally aligned range of 2^order frames whose every maximal buddy block is
    /// free, taken off the free lists at once. The head gets reference count 1 and the tails
    /// point at it, as `allocate` does. Return: nil when no such range is free.
    /// Locking: takes the per-CPU list locks (to drain them) and the zone lock.
    func allocateContiguous(order: Int) -> Page? {
        assert(!zoneLock.isHeldByCurrentThread, "allocateContiguous under the zone lock")
        precondition(order > PhysicalMemory.maxOrder && order < 32)
        if FaultInjection.shouldFail(.frameAllocation) { return nil }
        let count = UInt64(1) << UInt64(order), block = UInt64(1) << UInt64(PhysicalMemory.maxOrder)
        guard systemFrames >= count else { return nil }
        drainAllPCP()
        zoneLock.lock()
        var base: UInt64 = 0
        var found: UInt64? = nil
        while base + count <= systemFrames {
            let free = stride(from: base, to: base + count, by: Int(block)).allSatisfy { pfn in
                let b = page(pfn)
                return b.test(.buddy) && b.order == PhysicalMemory.maxOrder
            }
            if free { found = base; break }
            base += count
        }
        guard let start = found else { zoneLock.unlock(); return nil }
        for pfn in stride(from: start, to: start + count, by: Int(block)) { removeFromFreeList(page(pfn), order: PhysicalMemory.maxOrder) }
        buddyFreeFrames.add(-Int(count))
        zoneLock.unlock()
        let head = page(start)
        prepareAllocated(head, order: order)
        return head
    }

    /// Gives a block from `allocateContiguous` back, as maximal buddy blocks.
    /// Precondition: no reference, mapping or pin left. Locking: takes the zone lock.
    func freeContiguous(_ head: Page) {
        assert(!zoneLock.isHeldByCurrentThread, "freeContiguous under the zone lock")
        let order = head.order
        precondition(order > PhysicalMemory.maxOrder)
        head.releaseOwner()
        prepareFree(head)
        head.order = 0
        head.refcountWord.store(0)
        let count = UInt64(1) << UInt64(order), block = UInt64(1) << UInt64(PhysicalMemory.maxOrder)
        zoneLock.lock()
        for pfn in stride(from: head.pfn, to: head.pfn + count, by: Int(block)) { freeBlockLocked(pfn, order: PhysicalMemory.maxOrder) }
        zoneLock.unlock()
    }

    // MARK: reference counting

    /// `folio_get`: a page's reference is its folio's (a tail page has none of its own).
    @inlinable public func get(_ page: Page) {
        let p = page.folioHead
        let n = p.refcountWord.add(1)
        precondition(n > 1, "get on a free page \(p)")
    }

    /// `folio_try_get`: takes a reference on the page's folio unless its count is already zero.
    /// The folio is looked up again after the increment (a split may have made the page a
    /// folio of its own meanwhile: the reference then goes back and the page's own is tried).
    /// A reserved page (the zero pages) is never freed and takes no count, as `put` drops none.
    public func tryGet(_ page: Page) -> Bool {
        while true {
            let p = page.folioHead
            if p.test(.reserved) { return true }
            let c = p.refcount
            if c <= 0 { return false }
            guard p.refcountWord.compareExchange(expected: c, desired: c + 1).exchanged else { continue }
            if page.folioHead == p { return true }
            put(p)
        }
    }

    /// `folio_put`: drops a reference on the page's folio and frees it (or calls the device's
    /// page-free callback) when it was the last.
    public func put(_ page: Page) {
        let p = page.folioHead
        if p.test(.reserved) { return }
        let n = p.refcountWord.add(-1)
        precondition(n >= 0, "refcount underflow on \(p)")
        if n == 0 { release(p) }
    }

    /// Frees a page whose reference count a caller froze at 0 (`folio_ref_freeze`, then
    /// `free_folio`): nobody can take a reference any more. Precondition: not mapped.
    package func freeFrozen(_ p: Page) {
        precondition(p.refcount == 0 && p.mapcount == 0 && !p.isZoneDevice, "freeFrozen: \(p)")
        release(p)
    }

    private func release(_ p: Page) {
        if p.test(.hugetlb) { hugetlb.freeFolio(p); return }
        if p.flagsWord.load(.relaxed) & (PageFlags.lru.rawValue | PageFlags.lruBatched.rawValue) != 0 { lru.removeFreed(p) }
        if p.isZoneDevice {
            prepareDeviceFree(p)
            if let pgmap = pagemap(of: p) { pgmap.pageFree(p) }
            return
        }
        p.releaseOwner()
        freeBlock(p)
    }

    /// `free_zone_device_folio`: the folio loses its anonymous identity on every page (the
    /// exclusive bits, the tails' owner and index); a large device folio stays large, as the
    /// kernel keeps it compound: its driver recycles it whole (or splits it itself).
    private func prepareDeviceFree(_ p: Page) {
        precondition(!p.folioMapped && p.entireMapcount == 0, "freeing a mapped device page \(p)")
        if p.test(.head) {
            for i in 1..<p.folioPages {
                let t = page(p.pfn + i)
                t.clear([.anonExclusive])
                t.ownerBits = 0
                t.index = 0
            }
        }
        p.clear([.anon, .anonExclusive, .dirty, .lazyFree, .referenced])
        p.releaseOwner()
        p.index = 0
    }

    /// `folios_put`: drops one reference on each page, as `put`; the system frames whose count
    /// reaches zero go back under one hold of the zone lock, device pages to their owners in
    /// one `pageFreeBatch` per run of pages of the same registration.
    /// Locking: takes the zone lock (and, through `pageFreeBatch`, the drivers' locks); the
    /// caller holds neither, nor any page-table lock.
    public func putBatch(_ pages: [Page]) {
        assert(!zoneLock.isHeldByCurrentThread, "putBatch under the zone lock")
        var frames: [Page] = []
        var device: [Page] = []
        var devicePagemap: DevicePagemap? = nil
        func flushDevice() {
            if let g = devicePagemap, !device.isEmpty { g.pageFreeBatch(device) }
            device.removeAll(keepingCapacity: true)
        }
        for page in pages {
            let p = page.folioHead
            if p.test(.reserved) { continue }
            let n = p.refcountWord.add(-1)
            precondition(n >= 0, "refcount underflow on \(p)")
            guard n == 0 else { continue }
            if p.test(.hugetlb) { hugetlb.freeFolio(p); continue }
            if p.isZoneDevice {
                prepareDeviceFree(p)
                if !(devicePagemap?.contains(p.pfn) ?? false) {
                    flushDevice()
                    devicePagemap = pagemap(of: p)
                }
                if devicePagemap != nil { device.append(p) }
            } else {
                if p.flagsWord.load(.relaxed) & (PageFlags.lru.rawValue | PageFlags.lruBatched.rawValue) != 0 { lru.removeFreed(p) }
                p.releaseOwner()
                prepareFree(p)
                frames.append(p)
            }
        }
        flushDevice()
        guard !frames.isEmpty else { return }
        if pcpBatch > 0 {
            // Split first: a frame pushed on a per-CPU list may be drained and merged into a
            // larger free block, whose head's order is then no longer 0.
            let single = frames.filter { $0.order == 0 }
            frames.removeAll { $0.order == 0 }
            for p in single { freeToPCP(p.pfn) }
            guard !frames.isEmpty else { return }
        }
        zoneLock.lock()
        for p in frames {
            buddyFreeFrames.add(1 << p.order)
            freeBlockLocked(p.pfn, order: p.order, countIt: false)
        }
        zoneLock.unlock()
    }
}
