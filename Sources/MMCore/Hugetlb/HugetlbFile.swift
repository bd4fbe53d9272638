import MMSync

/// The hugetlbfs file behind a `MAP_HUGETLB` mapping (`hugetlb_file_setup`'s unlinked inode).
/// Every hugetlb mapping has one: it keys the fault mutex (`hugetlb_fault_mutex_hash`). A shared
/// mapping also keeps its page cache of huge pages there, and the reservations its mappings
/// made (the inode's `resv_map`; a private mapping's are in its VMA's `HugetlbResvMap`).
/// Forked children and the VMAs a split or mremap makes share it; when the last VMA mapping it
/// goes, the file goes (`hugetlbfs_evict_inode`): its pages are dropped and the reservations
/// no fault consumed are given back.
///
/// Locking: `lock` (the mapping's `i_mmap`/cache lock here) guards every variable field.
/// Page references: the cache holds one reference on each of its pages.
public final class HugetlbFile: @unchecked Sendable {
    let hstate: HState
    unowned let memory: PhysicalMemory
    let lock = Lock("hugetlb_file")
    /// Huge page index → head pfn.
    private var pages: [UInt64: UInt64] = [:]
    /// Indices reserved by a mapping and not yet consumed by a fault (`region_chg`/`region_add`
    /// minus the allocations that used them).
    private var reservedUnconsumed: Set<UInt64> = []
    /// Indices ever reserved (the region map: a second mapping of the same range reserves
    /// nothing more).
    private var reservedEver: Set<UInt64> = []
    /// VMAs mapping the file.
    private var mappings = 0

    init(hstate: HState, memory: PhysicalMemory) { self.hstate = hstate; self.memory = memory }

    /// `hugetlb_reserve_pages` for a shared mapping of indices [first, first + count): the
    /// indices not reserved yet are reserved now. Errors: ENOMEM (the pool cannot promise them).
    /// Locking: takes `lock`, then the hugetlb lock.
    func reserve(_ first: UInt64, count: UInt64) throws(Errno) {
        Lockdep.assertNoSpinLockHeld()
        lock.lock(); defer { lock.unlock() }
        // Counted before any index is listed: a huge request fails at once (the indices already
        // reserved are at most the pool's pages).
        let already = reservedEver.filter { $0 >= first && $0 - first < count }.count
        guard count - UInt64(already) <= UInt64(Int.max) else { throw .ENOMEM }
        try memory.hugetlb.reserve(hstate, Int(count) - already)
        for i in first..<first + count where reservedEver.insert(i).inserted { reservedUnconsumed.insert(i) }
    }

    /// One more VMA maps the file.
    func attach() { lock.withLock { mappings += 1 } }

    /// A VMA mapping the file went; the last takes the file's pages and unconsumed
    /// reservations with it (`hugetlbfs_evict_inode` → `remove_inode_hugepages`).
    /// Locking: takes `lock`, then the hugetlb lock; no spin lock held.
    func detach() {
        Lockdep.assertNoSpinLockHeld()
        lock.lock()
        mappings -= 1
        guard mappings == 0 else { lock.unlock(); return }
        let dropped = pages.values.map { memory.page($0) }
        let unreserve = reservedUnconsumed.count
        pages.removeAll(); reservedUnconsumed.removeAll(); reservedEver.removeAll()
        lock.unlock()
        for p in dropped { p.releaseOwner(); memory.put(p) }
        memory.hugetlb.unreserve(hstate, unreserve)
    }

    /// `hugetlb_no_page` for a shared mapping: the cached page at `index`, referenced, or a new
    /// zeroed page (from the index's reservation if it holds one) put in the cache. Return:
    /// the page and whether it is new, or nil when no huge page is free (SIGBUS).
    /// Locking: caller holds `faultMutex`, the hugetlb fault mutex of this index; no spin lock.
    func findOrAllocate(_ index: UInt64, pageIndex: UInt64, faultMutex: Lock) -> (page: Page, new: Bool)? {
        faultMutex.assertHeld()
        Lockdep.assertNoSpinLockHeld()
        lock.lock()
        if let pfn = pages[index] {
            let p = memory.page(pfn)
            memory.get(p)
            lock.unlock()
            return (p, false)
        }
        let reserved = reservedUnconsumed.remove(index) != nil
        lock.unlock()
        guard let p = memory.hugetlb.allocateFolio(hstate, reserved: reserved) else {
            if reserved { _ = lock.withLock { reservedUnconsumed.insert(index) } }
            return nil
        }
        p.index = pageIndex
        p.set([.uptodate, .dirty])
        p.ownerBits = UInt64(UInt(bitPattern: Unmanaged.passUnretained(self).toOpaque())) | Page.ownerTagHugetlbFile
        memory.get(p)   // the cache's reference; the caller's is the mapping's
        // (The fault mutex keeps every other fault of this index out: the slot is still empty.)
        lock.withLock { pages[index] = p.pfn }
        return (p, true)
    }

    /// The pfns of the cached pages (each holds one reference of the cache: the machine's
    /// checks count it in the refcount floor).
    func cachedPfns() -> [UInt64] { lock.withLock { Array(pages.values) } }
    /// Reservations the file still holds.
    func reservationsHeld() -> Int { lock.withLock { reservedUnconsumed.count } }
}

extension Page {
    @usableFromInline static let ownerTagHugetlbFile: UInt64 = 2
    /// The hugetlbfs file a shared hugetlb page belongs to (not retained: the file holds the
    /// page in its cache, and clears the owner when it drops it).
    public var hugetlbFile: HugetlbFile? {
        let bits = ownerBits
        guard bits & Page.ownerTagMask == Page.ownerTagHugetlbFile else { return nil }
        return Unmanaged<HugetlbFile>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(bits & ~Page.ownerTagMask))!).takeUnretainedValue()
    }
}
