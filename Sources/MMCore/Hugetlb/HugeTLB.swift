import MMSync

/// The machine's hugetlb pools (`mm/hugetlb.c`): one `HState` per supported size, the
/// `hugetlb_lock` that guards them, and the fault mutexes.
///
/// A free huge page is a compound folio (head flagged `.hugetlb` and `.head`, tails `.tail`)
/// with reference count 0 on its pool's free list. Allocating one for a fault gives it
/// reference count 1; dropping its last reference brings it back here (`free_huge_folio`), or
/// to the buddy allocator if it is surplus.
///
/// Locking: `lock` guards every pool's list and counters. It is never held while taking a
/// page-table lock, nor while the buddy allocator's zone lock is taken (pages move between
/// the two with neither held).
public final class HugeTLB: @unchecked Sendable {
    unowned let memory: PhysicalMemory
    /// `hugetlb_lock`.
    let lock = Lock("hugetlb")
    /// The sizes, smallest first: 2 MiB (PMD) and 1 GiB (PUD), as x86-64 with `pdpe1gb`.
    public let hstates: [HState] = [HState(order: 9, level: .pmd), HState(order: 18, level: .pud)]
    /// `hugetlb_fault_mutex_table`: faults on one huge page of one mapping (its hugetlbfs
    /// file, shared by forked children) are serialised, so two threads racing to fault it never
    /// both allocate (one would fail on an exactly sized pool).
    let faultMutexes: [Lock] = (0..<64).map { _ in Lock("hugetlb_fault_mutex") }

    init(memory: PhysicalMemory) { self.memory = memory }

    /// `default_hstate`: 2 MiB, as on x86-64 without `default_hugepagesz=`.
    public var defaultHState: HState { hstates[0] }

    /// The pool of pages of `size` bytes, if that size is supported.
    public func hstate(size: UInt64) -> HState? { hstates.first { $0.size == size } }

    /// The pool a `MAP_HUGETLB` mapping uses: the size encoded in bits 26…31 of the flags as
    /// log2 of the size (`MAP_HUGE_SHIFT`), or the default size when they are 0.
    /// Errors: EINVAL for a size with no pool (`hstate_sizelog` returns none).
    public func hstate(mapFlags: MapFlags) throws(Errno) -> HState {
        let log = (UInt32(bitPattern: mapFlags.rawValue) >> MapFlags.hugeShift) & MapFlags.hugeMask
        if log == 0 { return defaultHState }
        guard log < 64, let h = hstate(size: UInt64(1) << UInt64(log)) else { throw .EINVAL }
        return h
    }

    /// The counters of `h`.
    public func counters(_ h: HState) -> HugePoolCounters {
        lock.withLock { HugePoolCounters(total: h.nrHugePages, free: h.freeHugePages, reserved: max(0, h.resvHugePages), surplus: h.surplusHugePages) }
    }

    // MARK: pool size (nr_hugepages)

    /// Writes `nr_hugepages` of `h` (`set_max_huge_pages`). Growing allocates huge pages from
    /// the buddy allocator (a 2 MiB block; for 1 GiB pages a free, aligned gigantic range, as
    /// `alloc_contig_pages` finds one) until the pool has `count` or memory runs out. Shrinking
    /// frees free pages that no mapping has reserved, never below the pages in use plus the
    /// reserved ones; pages in use above the new size become surplus and go back to the
    /// buddy allocator when freed.
    /// Return: the persistent pool size reached (read `counters` for the rest).
    /// Locking: takes the hugetlb lock and the zone lock, never both at once; caller holds
    /// neither (nor any page-table lock).
    @discardableResult
    public func setPoolSize(_ h: HState, _ count: Int) -> Int {
        Lockdep.assertNoSpinLockHeld()
        let count = max(0, count)
        lock.lock()
        // Surplus pages count toward the new size first (adjust_pool_surplus(-1)).
        while h.surplusHugePages > 0 && count > h.persistentHugePages { h.surplusHugePages -= 1 }
        while count > h.persistentHugePages {
            lock.unlock()
            let head = allocateFreshFolio(h)
            lock.lock()
            guard let head else { break }
            h.nrHugePages += 1
            enqueueLocked(h, head)
        }
        // Never below what is in use or promised (min_count).
        let minCount = max(0, h.resvHugePages) + h.nrHugePages - h.freeHugePages
        let target = max(count, minCount)
        var released: [Page] = []
        while target < h.persistentHugePages, h.freeHugePages > 0 {
            let head = dequeueLocked(h)
            h.nrHugePages -= 1
            released.append(head)
        }
        // What is still above the target is in use or reserved: it becomes surplus
        // (adjust_pool_surplus(+1)), freed to the buddy allocator when it is.
        while count < h.persistentHugePages && h.surplusHugePages < h.nrHugePages {
            h.surplusHugePages += 1
        }
        let reached = h.persistentHugePages
        lock.unlock()
        for head in released { freeToBuddy(h, head) }
        return reached
    }

    /// A new huge page from the buddy allocator, made a frozen hugetlb folio (refcount 0).
    private func allocateFreshFolio(_ h: HState) -> Page? {
        let head: Page?
        if h.order <= PhysicalMemory.maxOrder {
            head = memory.allocate(order: h.order)
        } else {
            head = memory.allocateContiguous(order: h.order)
        }
        guard let head else { return nil }
        head.set(.hugetlb)
        head.refcountWord.store(0)
        return head
    }

    /// A huge page leaves the pool for good.
    private func freeToBuddy(_ h: HState, _ head: Page) {
        head.clear(.hugetlb)
        if h.order <= PhysicalMemory.maxOrder {
            head.refcountWord.store(1)
            memory.put(head)
        } else {
            memory.freeContiguous(head)
        }
    }

    /// Locking: hugetlb lock held.
    private func enqueueLocked(_ h: HState, _ head: Page) {
        lock.assertHeld()
        h.freeList.append(head.pfn)
        h.freeHugePages += 1
    }

    /// Locking: hugetlb lock held; a free page exists.
    private func dequeueLocked(_ h: HState) -> Page {
        lock.assertHeld()
        let head = memory.page(h.freeList.removeLast())
        h.freeHugePages -= 1
        return head
    }

    // MARK: allocation for faults

    /// `alloc_hugetlb_folio`: a free huge page of `h` for a fault, with reference count 1,
    /// zeroed unless the caller copies into it (`zero`). With `reserved` it consumes one of the
    /// pool's reservations (the mapping holds one for this page); without, it needs a free page
    /// nobody reserved.
    /// Return: nil when there is none (the fault gets SIGBUS), or when fault injection fails
    /// the allocation.
    /// Locking: takes the hugetlb lock; caller holds no spin lock.
    func allocateFolio(_ h: HState, reserved: Bool, zero: Bool = true) -> Page? {
        Lockdep.assertNoSpinLockHeld()
        if FaultInjection.shouldFail(.frameAllocation) { return nil }
        lock.lock()
        // (`resv` may be below the reservations mappings hold while a page that gives one back
        // when freed is still referenced, as in the kernel: a free page is needed either way.)
        guard h.freeHugePages > 0, reserved || h.freeHugePages > h.resvHugePages else { lock.unlock(); return nil }
        if reserved { h.resvHugePages -= 1 }
        let head = dequeueLocked(h)
        head.refcountWord.store(1)
        lock.unlock()
        if zero { memory.clearHugePage(head) }
        return head
    }

    /// A folio from `allocateFolio` that was never mapped goes back, and gives back the
    /// reservation it consumed (`restore_reserve_on_error`).
    /// Locking: takes the hugetlb lock; caller holds no spin lock.
    func abandonFolio(_ h: HState, _ head: Page, restoreReservation: Bool) {
        Lockdep.assertNoSpinLockHeld()
        if restoreReservation { lock.withLock { h.resvHugePages += 1 } }
        head.refcountWord.store(0)
        freeFolio(head)
    }

    /// `free_huge_folio`: the last reference to a hugetlb folio is gone. Surplus pages return
    /// to the buddy allocator, the others to the pool's free list.
    /// Locking: takes the hugetlb lock; caller holds no spin lock.
    func freeFolio(_ head: Page) {
        Lockdep.assertNoSpinLockHeld()
        guard let h = hstates.first(where: { $0.order == head.order }) else { preconditionFailure("\(head): hugetlb folio of order \(head.order)") }
        precondition(head.mapcount == 0 && head.pincount == 0, "freeing a mapped or pinned huge page \(head)")
        head.releaseOwner()
        let restore = head.test(.hugetlbRestoreReserve)
        head.clear([.anon, .anonExclusive, .swapBacked, .dirty, .uptodate, .referenced, .lazyFree, .hugetlbRestoreReserve])
        head.index = 0
        lock.lock()
        if restore { h.resvHugePages += 1 }
        if h.surplusHugePages > 0 {
            h.surplusHugePages -= 1
            h.nrHugePages -= 1
            lock.unlock()
            freeToBuddy(h, head)
            return
        }
        enqueueLocked(h, head)
        lock.unlock()
    }

    // MARK: reservations

    /// `hugetlb_acct_memory(h, delta)` for a new mapping: reserves `count` free pages.
    /// Errors: ENOMEM when the free pages not yet reserved are fewer (no overcommit:
    /// `nr_overcommit_hugepages` is 0).
    /// Locking: takes the hugetlb lock.
    func reserve(_ h: HState, _ count: Int) throws(Errno) {
        Lockdep.assertNoSpinLockHeld()
        lock.lock(); defer { lock.unlock() }
        guard h.resvHugePages + count <= h.freeHugePages else { throw .ENOMEM }
        h.resvHugePages += count
    }

    /// Gives back `count` reservations (a mapping closed before faulting its pages), and
    /// frees as many free surplus pages to the buddy allocator (`return_unused_surplus_pages`).
    /// The count may go below zero for a while: a reservation a zap gave back to its mapping
    /// reaches the pool only when its page is freed, and the mapping may close first (the
    /// kernel's counter wraps the same way).
    /// Locking: takes the hugetlb lock, then the zone lock without it.
    func unreserve(_ h: HState, _ count: Int) {
        Lockdep.assertNoSpinLockHeld()
        guard count > 0 else { return }
        lock.lock()
        h.resvHugePages -= count
        var released: [Page] = []
        while released.count < min(count, h.surplusHugePages), h.freeHugePages > 0 {
            released.append(dequeueLocked(h))
        }
        h.surplusHugePages -= released.count
        h.nrHugePages -= released.count
        lock.unlock()
        for head in released { freeToBuddy(h, head) }
    }

    /// `__unmap_hugepage_range`'s restore: the reservation owner's last mapping of an
    /// anonymous huge page went; unless the pool has surplus pages, the page gives its
    /// reservation back to the pool when it is freed, and the caller gives it back to the
    /// mapping. Return: whether it will.
    /// Locking: takes the hugetlb lock; caller holds no spin lock.
    func restoreReservationOnFree(_ h: HState, _ head: Page) -> Bool {
        Lockdep.assertNoSpinLockHeld()
        return lock.withLock {
            guard h.surplusHugePages == 0 else { return false }
            head.set(.hugetlbRestoreReserve)
            return true
        }
    }

    /// The lock serialising faults on huge page `index` of the mapping `key` (its hugetlbfs
    /// file: `hugetlb_fault_mutex_hash(mapping, idx)`).
    func faultMutex(key: ObjectIdentifier, index: UInt64) -> Lock {
        var hasher = Hasher()
        hasher.combine(key); hasher.combine(index)
        return faultMutexes[Int(UInt(bitPattern: hasher.finalize()) % UInt(faultMutexes.count))]
    }

    // MARK: /proc/meminfo

    /// `hugetlb_report_meminfo`: the default size's counters and the bytes every pool holds,
    /// as `/proc/meminfo` prints them (values in pages, sizes in kB).
    public func meminfo() -> [(String, UInt64)] {
        lock.withLock {
            let d = defaultHState
            let bytes = hstates.reduce(UInt64(0)) { $0 + UInt64($1.nrHugePages) * $1.size }
            return [("HugePages_Total", UInt64(d.nrHugePages)), ("HugePages_Free", UInt64(d.freeHugePages)),
                    ("HugePages_Rsvd", UInt64(max(0, d.resvHugePages))), ("HugePages_Surp", UInt64(d.surplusHugePages)),
                    ("Hugepagesize", d.size >> 10), ("Hugetlb", bytes >> 10)]
        }
    }
}

extension PhysicalMemory {
    /// Zeroes every frame of a huge folio (`folio_zero_user`), streamed.
    func clearHugePage(_ head: Page) {
        clearFrames(head.pfn, order: head.order)
    }

    /// Copies a huge folio's bytes (`copy_user_large_folio`).
    func copyHugePage(to dst: Page, from src: Page) {
        frame(dst.pfn).copyMemory(from: frame(src.pfn), byteCount: Int(pageSize << UInt64(src.order)))
    }
}
