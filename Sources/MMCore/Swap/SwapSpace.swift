#if canImport(Glibc)
import Glibc
#endif
import MMArch
import MMSync

/// The machine's swap areas (`swap_info[]`) and the swap cache over them, following Linux
/// 7.2's `mm/swapfile.c` and `mm/swap_state.c`.
///
/// An area is a ramdisk in host memory (synchronous I/O, `SWP_SYNCHRONOUS_IO`, as zram or
/// brd: a swap-in reads the slot at once and drops the swap cache when no swap PTE names the
/// slot any more, `should_try_to_free_swap`) or a host file (a swap file on a disk: swap-in
/// reads ahead, `swap_vma_readahead`, and the cache keeps what it read; see `SwapBacking`).
///
/// Sendable: areas are published through `areaSlots` (an unretained pointer per type, written
/// under `swaponLock` and kept alive by `areas`); each area guards its own slots.
public final class SwapSpace: @unchecked Sendable {
    /// The memory these areas serve, uncounted (it owns this object): borrowed per call with
    /// `withMemory`, as an `unowned` load would count it twice per use.
    @usableFromInline let memoryRef: Unmanaged<PhysicalMemory>
    let swaponLock = Lock("swapon")
    /// Locking: swaponLock.
    var areas: [SwapArea] = []
    @usableFromInline let areaSlots: UnsafeMutablePointer<UInt64>

    init(memory: PhysicalMemory) {
        memoryRef = .passUnretained(memory)
        areaSlots = .allocate(capacity: Int(SwapEntry.maxSwapFiles))
        areaSlots.initialize(repeating: 0, count: Int(SwapEntry.maxSwapFiles))
    }
    deinit { areaSlots.deallocate() }

    /// Calls `body` with the memory borrowed (no reference counting).
    @inlinable @inline(__always)
    func withMemory<R>(_ body: (PhysicalMemory) throws -> R) rethrows -> R { try memoryRef._withUnsafeGuaranteedRef(body) }

    /// `swapon`: adds an area of `bytes` backed by host memory or a host file (`backing`),
    /// committed now with `populate`. Return: the new area. Throws EINVAL for a bad size or a
    /// path that is not a regular file, EISDIR for a directory, EBUSY for a file an area
    /// already uses, EPERM when all 24 swap types are taken (`MAX_SWAPFILES`), ENOMEM if the
    /// host refuses the memory, the host's errno when it cannot open, size, allocate or map
    /// the file.
    @discardableResult
    public func swapOn(bytes: UInt64, populate: Bool = false, backing: SwapBacking = .memory) throws(Errno) -> SwapArea {
        swaponLock.lock(); defer { swaponLock.unlock() }
        guard areas.count < Int(SwapEntry.maxSwapFiles) else { throw .EPERM }
        let area = try SwapArea(type: UInt8(areas.count), bytes: bytes, populate: populate, backing: backing)
        areas.append(area)
        AtomicU64Ref(UnsafeMutableRawPointer(areaSlots + Int(area.type)))
            .store(UInt64(UInt(bitPattern: Unmanaged.passUnretained(area).toOpaque())))
        return area
    }

    /// The area of swap type `type`, if it exists (read without a lock: `get_swap_device`).
    @inlinable public func area(_ type: UInt8) -> SwapArea? { areaRef(type)?.takeUnretainedValue() }
    /// The same, uncounted (areas live as long as the machine).
    @inlinable func areaRef(_ type: UInt8) -> Unmanaged<SwapArea>? {
        guard type < SwapEntry.maxSwapFiles else { return nil }
        let bits = AtomicU64Ref(UnsafeMutableRawPointer(areaSlots + Int(type))).load()
        guard bits != 0 else { return nil }
        return Unmanaged<SwapArea>.fromOpaque(UnsafeRawPointer(bitPattern: UInt(bits))!)
    }

    /// `vm_swap_full`: fewer than half of all slots are free (the swap cache is then given up
    /// more eagerly). Reads the published areas without the swapon lock.
    var isHalfFull: Bool {
        var type: UInt8 = 0, free = 0, total = 0
        while let ref = areaRef(type) {
            type += 1
            ref._withUnsafeGuaranteedRef { free += $0.freeSlots; total += $0.totalSlots }
        }
        return free * 2 < total
    }

    /// `vm.page-cluster`: swap readahead reads up to `1 << pageCluster` pages (at most 32 for
    /// VMA-based readahead, `SWAP_RA_ORDER_CEILING`); 0 turns it off. 7.2's `swap_setup` sets
    /// 2 below 16 MiB of RAM and 3 otherwise. Read without a lock (`READ_ONCE`).
    public var pageCluster: Int { Int(pageClusterWord.loadRelaxed()) }
    let pageClusterWord = AtomicWord(3)
    /// Cluster readahead's state (`swapin_readahead_hits`, which starts at 4, and
    /// `swapin_nr_pages`' `prev_offset` and `last_readahead_pages`): see `swapinNrPages`.
    let clusterReadaheadHits = AtomicWord(4)
    let clusterPrevOffset = AtomicWord(0)
    let clusterLastPages = AtomicWord(0)
    /// Sets `vm.page-cluster` (the sysctl takes 0...31). Throws EINVAL otherwise.
    public func setPageCluster(_ value: Int) throws(Errno) {
        guard (0...31).contains(value) else { throw .EINVAL }
        pageClusterWord.store(UInt64(value))
    }

    /// Every area, in swap-type order.
    public var allAreas: [SwapArea] { swaponLock.withLock { areas } }
    /// Usable slots in all areas (`SwapTotal`, in pages).
    public var totalSlots: Int { allAreas.reduce(0) { $0 + $1.totalSlots } }
    /// Free slots in all areas (`SwapFree`, in pages).
    public var freeSlots: Int { allAreas.reduce(0) { $0 + $1.freeSlots } }

    /// The area and slot an entry names, if the area exists and the slot is inside it
    /// (`get_swap_device`; 7.2 logs "Bad swap file entry" / "Bad swap offset entry" otherwise).
    func resolve(_ e: SwapEntry) -> SwapArea? {
        withArea(e) { $0 }
    }

    /// Calls `body` with the area `e` names, borrowed (no reference counting), if the area
    /// exists and the slot is inside it; nil otherwise.
    @inline(__always)
    func withArea<R>(_ e: SwapEntry, _ body: (SwapArea) throws -> R) rethrows -> R? {
        guard e.isSwapSlot, let ref = areaRef(e.type) else { return nil }
        return try ref._withUnsafeGuaranteedRef { a in a.isValidOffset(e.offset) ? try body(a) : nil }
    }

    // MARK: the swap cache

    /// `folio_alloc_swap`: gives a locked anonymous page a slot and puts it in the swap cache
    /// with swap count 0; the cache takes a reference. The first area with a free slot is used
    /// (7.2 goes by priority; every area here has the default one, so swapon order).
    /// Return: the entry, or nil when every area is full.
    /// Locking: caller holds the page lock and a reference; takes area and cluster locks.
    func folioAllocSwap(_ page: Page) -> SwapEntry? {
        precondition(page.isLocked && !page.test(.swapCache) && page.order == 0, "folioAllocSwap: \(page)")
        return withMemory { memory -> SwapEntry? in
            // The published areas in swap-type order (swapon only adds), without the swapon lock.
            var type: UInt8 = 0
            while let ref = areaRef(type) {
                type += 1
                let got: (entry: SwapEntry, filled: Bool)? = ref._withUnsafeGuaranteedRef { area in
                    // A full area is off the list allocations look at (swap_usage_add).
                    guard area.freeSlots > 0 else { return nil }
                    area.lock.lock(); defer { area.lock.unlock() }
                    guard let offset = area.allocateLocked(caching: page, memory: memory) else { return nil }
                    return (SwapEntry(type: area.type, offset: offset), area.freeSlots == 0)
                }
                guard let got else { continue }
                // swap_range_alloc: the allocation that fills an area while swap is half full
                // schedules the area's reclaim worker (swap_reclaim_full_clusters(si, true));
                // here it runs at once, in this thread (D21).
                if got.filled && isHalfFull { _ = ref._withUnsafeGuaranteedRef { reclaimCacheOnlySlots($0, except: page) } }
                return got.entry
            }
            return nil
        }
    }

    /// `swap_reclaim_full_clusters(si, true)`: gives back every slot of `area` that only a page
    /// in the swap cache holds (swap count 0), as `__try_to_reclaim_swap(TTRS_ANYWAY)` does:
    /// the page is locked with a trylock (the caller holds a page lock: `own`, whose slot is
    /// passed over), must still cache that slot (else the slot is looked up again), and leaves
    /// the swap cache dirty, mapped or not (its only copy is in memory now); the count is
    /// checked under the slot's cluster lock (`folioFreeSwap`). Return: the slots given back.
    /// Locking: no area or cluster lock held (takes them); the caller may hold `own`'s lock.
    func reclaimCacheOnlySlots(_ area: SwapArea, except own: Page) -> Int {
        area.assertNoLockHeld()
        var given = 0
        for offset in 1..<area.slots {
            guard let pfn = area.cachedPfn(offset), pfn != own.pfn else { continue }
            let e = SwapEntry(type: area.type, offset: offset)
            while let page = lookup(e) {
                defer { withMemory { $0.put(page) } }
                guard page.tryLock() else { break }
                defer { page.unlock() }
                guard matches(page, e) else { continue }
                if folioFreeSwap(page) { given += 1 }
                break
            }
        }
        return given
    }

    /// `__swap_cache_add_folio`'s page side: the flag, the entry, the cache's reference.
    private func attach(_ page: Page, _ e: SwapEntry) {
        withMemory { SwapSpace.attach(page, e, memory: $0) }
    }
    @inline(__always) static func attach(_ page: Page, _ e: SwapEntry, memory: PhysicalMemory) {
        memory.get(page)
        page.privateWord = e.pte().raw
        page.set(.swapCache)
    }

    /// The swap entry of a page in the swap cache (`folio->swap`).
    public func entry(of page: Page) -> SwapEntry? {
        guard page.test(.swapCache) else { return nil }
        return PTE(raw: page.privateWord).swapEntry
    }

    /// `swap_cache_get_folio`: the page caching `e`, with a reference taken, unlocked; nil if
    /// none. The caller must lock it and check that it still caches `e`
    /// (`folio_matches_swap_entry`). Takes no lock (reads the table word).
    func lookup(_ e: SwapEntry) -> Page? {
        withArea(e) { area in
            withMemory { memory -> Page? in
                var round = 0
                while true {
                    guard let pfn = area.cachedPfn(e.offset) else { return nil }
                    let page = memory.page(pfn)
                    // A count of 0: the page is being removed from the cache (frozen) or freed;
                    // its slot's word changes next. Wait for it (a yield under the explorer:
                    // the remover may be the thread that has to run).
                    guard memory.tryGet(page) else { Sync.spinWait(&round); continue }
                    if area.cachedPfn(e.offset) == pfn { return page }
                    memory.put(page)
                }
            }
        } ?? nil
    }

    /// Whether `page` (locked) still caches `e` (`folio_matches_swap_entry`).
    func matches(_ page: Page, _ e: SwapEntry) -> Bool {
        page.test(.swapCache) && page.privateWord == e.pte().raw
    }

    /// The outcome of putting a new page into the swap cache for a swap-in: `added` with the
    /// slot's shadow (`SwapArea.evictionShadow`, or the plain one).
    enum CacheAdd: Equatable { case added(shadow: UInt64), raced, slotFree }

    /// `swap_cache_alloc_folio`'s insert: the new, locked page caches `e` if the slot is still
    /// in use (count ≥ 1) and no other page caches it. `.raced`: another page caches it (look
    /// it up again); `.slotFree`: the slot was freed meanwhile (the PTE changed).
    /// Locking: caller holds the page lock; takes the slot's cluster lock.
    func addForSwapIn(_ page: Page, _ e: SwapEntry) -> CacheAdd {
        precondition(page.isLocked, "addForSwapIn: page not locked")
        return withArea(e) { area -> CacheAdd in
            area.lockCluster(e.offset); defer { area.unlockCluster(e.offset) }
            let w = area.tableWord(e.offset).load()
            if w == 0 || area.counts[Int(e.offset)] == 0 { return .slotFree }
            if !SwapArea.isShadow(w) { return .raced }
            area.tableWord(e.offset).store(page.pfn << 2 | SwapArea.cachedTag)
            attach(page, e)
            return .added(shadow: w)
        } ?? .slotFree
    }

    /// `swap_cache_del_folio`: the page leaves the swap cache; its slot keeps its count (and is
    /// freed when that is 0); the cache's reference is dropped.
    /// Locking: caller holds the page lock and a reference of its own; takes the slot's cluster lock.
    func delete(_ page: Page) {
        precondition(page.isLocked, "swap cache delete: page not locked")
        guard let e = entry(of: page), withArea(e, { area -> Bool in
            area.withCluster(e.offset) { detachLocked(page, e, area) }
            return true
        }) == true else { return }
        withMemory { $0.put(page) }
    }

    /// `__swap_cache_del_folio` without the reference drop: a slot still in use keeps
    /// `shadow`. Locking: the slot's cluster lock held.
    private func detachLocked(_ page: Page, _ e: SwapEntry, _ area: SwapArea, shadow: UInt64 = SwapArea.shadow) {
        area.assertClusterHeld(e.offset)
        page.clear(.swapCache)
        page.privateWord = 0
        if area.counts[Int(e.offset)] == 0 { area.freeLocked(e.offset) } else { area.tableWord(e.offset).store(shadow) }
    }

    /// `folio_free_swap`: drops a locked page from the swap cache if no swap PTE names its
    /// slot any more (`folio_maybe_swapped` false), and marks it dirty (its only copy is now in
    /// memory). Return: whether it left the cache.
    /// Locking: caller holds the page lock and a reference; takes the slot's cluster lock.
    @discardableResult
    package func folioFreeSwap(_ page: Page) -> Bool {
        precondition(page.isLocked, "folioFreeSwap: page not locked")
        guard let e = entry(of: page), withArea(e, { area -> Bool in
            area.lockCluster(e.offset); defer { area.unlockCluster(e.offset) }
            guard area.counts[Int(e.offset)] == 0 else { return false }
            detachLocked(page, e, area)
            return true
        }) == true else { return false }
        page.set(.dirty)
        withMemory { $0.put(page) }
        return true
    }

    /// `__remove_mapping` for a swap-cache page that reclaim isolated: freezes the reference
    /// count at the cache's and the caller's (so no lookup can take one meanwhile), drops the
    /// page from the swap cache (its slot keeps an eviction shadow) and frees it. Fails if the page is dirty or anybody else holds
    /// a reference. On success the page is unlocked and freed.
    /// Locking: caller holds the page lock and one reference, which this consumes on success;
    /// takes the slot's cluster lock.
    func removeMapping(_ page: Page) -> Bool {
        precondition(page.isLocked, "removeMapping: page not locked")
        guard let e = entry(of: page) else { return false }
        return withMemory { memory in
            guard withArea(e, { area -> Bool in
                area.lockCluster(e.offset); defer { area.unlockCluster(e.offset) }
                guard page.refcountWord.compareExchange(expected: 2, desired: 0).exchanged else { return false }
                if page.test(.dirty) { page.refcountWord.store(2); return false }
                // workingset_eviction: the slot records how old the LRU was when the page left.
                detachLocked(page, e, area, shadow: memory.withLRU { $0.workingsetEviction(page) })
                return true
            }) == true else { return false }
            page.unlock()
            memory.freeFrozen(page)
            return true
        }
    }

    /// `folio_migrate_mapping` for a swap-cache page: `new` caches the slot instead of `old`,
    /// and the cache's reference moves with it (the caller drops `old`'s).
    /// Locking: caller holds both pages' locks; takes the slot's cluster lock.
    func migrateCache(from old: Page, to new: Page) {
        precondition(old.isLocked && new.isLocked && !new.test(.swapCache), "migrateCache: \(old) → \(new)")
        guard let e = entry(of: old) else { return }
        withMemory { memory in
            _ = withArea(e) { area in
                memory.get(new)
                area.lockCluster(e.offset)
                area.tableWord(e.offset).store(new.pfn << 2 | SwapArea.cachedTag)
                new.privateWord = old.privateWord
                new.set(.swapCache)
                old.clear(.swapCache)
                old.privateWord = 0
                area.unlockCluster(e.offset)
                memory.put(old)
            }
        }
    }

    // MARK: swap counts

    /// `folio_dup_swap` for an order-0 page: one more swap PTE will name its slot (the unmap).
    /// Locking: caller holds the page lock (the page is in the swap cache); takes the slot's cluster lock.
    func folioDupSwap(_ page: Page) -> SwapEntry {
        precondition(page.isLocked, "folioDupSwap: page not locked")
        let e = entry(of: page)!
        withArea(e) { area in area.withCluster(e.offset) { area.counts[Int(e.offset)] += 1 } }!
        return e
    }

    /// `folio_put_swap`: one swap PTE fewer names the slot of a page in the swap cache (the
    /// swap-in that replaced it, an unmap that backed out). Never frees: the cache holds it.
    /// Locking: caller holds the page lock; takes the slot's cluster lock.
    func folioPutSwap(_ page: Page, _ e: SwapEntry) {
        precondition(page.isLocked, "folioPutSwap: page not locked")
        withArea(e) { area in
            area.withCluster(e.offset) {
                precondition(area.counts[Int(e.offset)] > 0, "swap count underflow on \(e)")
                area.counts[Int(e.offset)] -= 1
            }
        }
    }

    /// `swap_dup_entry_direct` (fork): one more PTE names a slot already named by one.
    /// Return: false for an entry that names no slot in use (-EINVAL in 7.2).
    /// Locking: may be called under page-table locks; takes the slot's cluster lock.
    func dupEntryDirect(_ e: SwapEntry) -> Bool {
        guard let area = resolve(e) else { return false }
        area.assertNoLockHeld()
        return area.withCluster(e.offset) {
            guard area.counts[Int(e.offset)] > 0 else { return false }
            area.counts[Int(e.offset)] += 1
            return true
        }
    }

    /// `swap_put_entries_direct` for one entry (zap): one PTE fewer names the slot. A slot
    /// left with count 0 is freed if no page caches it; if one does, the page is dropped from
    /// the cache when its lock can be taken (`__try_to_reclaim_swap` with TTRS_UNMAPPED).
    /// Return: a page whose last reference the caller must drop (after its TLB flush, outside
    /// page-table locks), or nil.
    /// Locking: may be called under page-table locks; takes the slot's cluster lock, trylocks the page.
    func putEntryDirect(_ e: SwapEntry) -> Page? {
        guard let area = resolve(e) else { return nil }
        area.lockCluster(e.offset)
        let c = area.counts[Int(e.offset)]
        precondition(c > 0, "swap count underflow on \(e)")
        area.counts[Int(e.offset)] = c - 1
        let cached = c == 1 ? area.cachedPfn(e.offset) : nil
        if c == 1 && cached == nil { area.freeLocked(e.offset) }
        area.unlockCluster(e.offset)
        guard cached != nil, let page = lookup(e) else { return nil }
        // Only a page no process maps and nobody else uses is dropped here (TTRS_UNMAPPED).
        guard page.mapcount == 0, page.tryLock() else { return page }
        if matches(page, e) {
            area.lockCluster(e.offset)
            if area.counts[Int(e.offset)] == 0 {
                detachLocked(page, e, area)
                area.unlockCluster(e.offset)
                withMemory { $0.put(page) }   // the cache's reference (the lookup's is the caller's)
            } else {
                area.unlockCluster(e.offset)
            }
        }
        page.unlock()
        return page
    }

    // MARK: I/O

    /// `swap_writeout` to a ramdisk: the page's bytes into its slot, with streaming stores (the
    /// slot is not read again until a swap-in, so it should not push the cache out).
    /// Locking: caller holds the page lock (the page is in the swap cache).
    func writeOut(_ page: Page) {
        precondition(page.isLocked, "writeOut: page not locked")
        let e = entry(of: page)!
        let frame = withMemory { $0.frame(page.pfn) }
        withArea(e) { mm_copy_page_nocache($0.slotBytes(e.offset), frame) }!
    }

    /// `swap_read_folio` from a ramdisk: the slot's bytes into the page, streamed but for the
    /// line at `hot` (the faulting access's offset in the page), which stays in the cache as
    /// the copy-on-write copy leaves it.
    /// Locking: caller holds the page lock (the page is in the swap cache).
    func readIn(_ page: Page, hot: UInt64 = 0) {
        precondition(page.isLocked, "readIn: page not locked")
        let e = entry(of: page)!
        let frame = withMemory { $0.frame(page.pfn) }
        withArea(e) { mm_copy_user_page(frame, $0.slotBytes(e.offset), UInt(hot & (pageSize - 1))) }!
        page.set(.uptodate)
    }
}
