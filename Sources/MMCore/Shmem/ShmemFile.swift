import MMSync

/// A tmpfs/shmem file: a size and a page cache of frames, plus the VMAs mapping it
/// (`struct address_space` with its `i_mmap`). Shared anonymous mappings are backed by one
/// of these, as in the kernel.
/// Sendable: `cacheLock` guards the page cache and size, `mappingLock` the mappings.
public final class ShmemFile: @unchecked Sendable {
    public let machine: Machine
    var memory: PhysicalMemory { machine.memory }
    /// Locking: `cacheLock` guards `pages` and `size`.
    let cacheLock = Lock("i_pages")
    var pages: [UInt64: UInt64] = [:]
    /// Pages swapped out: the swap entry in place of the page (the page cache's value entries,
    /// `swp_to_radix_entry`); each holds one swap count. Locking: cacheLock.
    var swapped: [UInt64: SwapEntry] = [:]
    public private(set) var size: UInt64
    /// Locking: `mappingLock` (i_mmap_rwsem) guards `mappings`.
    let mappingLock = RWSem("i_mmap")
    var mappings: [VMA] = []
    public let name: String
    /// The object behind a shared anonymous mapping (`shmem_zero_setup`), not a named file.
    public let isAnonymousShared: Bool

    /// Creates a file of `size` bytes (like `O_TMPFILE` + `ftruncate`).
    public init(machine: Machine, size: UInt64 = 0, name: String = "tmpfile", anonymousShared: Bool = false) {
        self.machine = machine; self.size = size; self.name = name; self.isAnonymousShared = anonymousShared
        machine.register(self)
    }

    deinit {
        machine.unregister(self)
        for (_, pfn) in pages { drop(memory.page(pfn)) }
        for (_, e) in swapped { if let p = memory.swap.putEntryDirect(e) { memory.put(p) } }
    }

    /// Pages of the file now in swap (`info->swapped`).
    public var swappedPages: Int { cacheLock.withLock { swapped.count } }
    /// The swap entries in the page cache (for the invariant checkers).
    func swapEntries() -> [SwapEntry] { cacheLock.withLock { Array(swapped.values) } }

    private func drop(_ page: Page) {
        page.releaseOwner()
        memory.put(page)
    }

    func linkMapping(_ vma: VMA) { mappingLock.withWrite { mappings.append(vma) } }
    func unlinkMapping(_ vma: VMA) { mappingLock.withWrite { mappings.removeAll { $0 === vma } } }
    /// `linkMapping` / `unlinkMapping` inside `withVMAPrepared` (vma_complete).
    /// Locking: caller holds `mappingLock` for write.
    func linkMappingLocked(_ vma: VMA) {
        precondition(mappingLock.isWriteLockedByCurrentThread, "i_mmap not held")
        mappings.append(vma)
    }
    /// Locking: caller holds `mappingLock` for write.
    func unlinkMappingLocked(_ vma: VMA) {
        precondition(mappingLock.isWriteLockedByCurrentThread, "i_mmap not held")
        mappings.removeAll { $0 === vma }
    }

    /// The cached pages of indices first...last inside the file that fault-around may map
    /// (`next_uptodate_folio`: uptodate and not locked), each with a reference taken.
    func pagesForFaultAround(_ first: UInt64, _ last: UInt64) -> [(UInt64, Page)] {
        cacheLock.withLock {
            let filePages = (size + pageSize - 1) >> pageShift
            guard filePages > 0, first <= min(last, filePages - 1) else { return [] }
            var out: [(UInt64, Page)] = []
            for i in first...min(last, filePages - 1) {
                guard let pfn = pages[i] else { continue }
                let p = memory.page(pfn)
                guard p.test(.uptodate), !p.isLocked else { continue }
                memory.get(p)
                out.append((i, p))
            }
            return out
        }
    }

    private enum Slot { case page(Page), swapped(SwapEntry), none }

    /// What the page cache holds at `index`: a page (with a reference taken), a swap entry, or
    /// nothing; EFAULT beyond the end.
    private func cachedPage(_ index: UInt64) throws(Errno) -> Slot {
        cacheLock.lock()
        defer { cacheLock.unlock() }
        guard index < (size + pageSize - 1) >> pageShift else { throw .EFAULT }
        if let e = swapped[index] { return .swapped(e) }
        guard let pfn = pages[index] else { return .none }
        let p = memory.page(pfn)
        memory.get(p)
        return .page(p)
    }

    /// `shmem_swapin_folio`: the page swapped out at `index` as `e` comes back — from the swap
    /// cache if reclaim has not freed it yet, else read into a new page — and takes the swap
    /// entry's place in the page cache, dirty; the slot is freed. Racing callers meet on the
    /// swap-cache page's lock. Return: the page with a reference for the caller, or nil when
    /// the entry changed meanwhile (look again). Throws ENOMEM.
    /// Locking: no spin lock held; takes the page lock, the swap area's and cacheLock.
    private func swapIn(_ index: UInt64, _ e: SwapEntry, fault: Bool) throws(Errno) -> Page? {
        Lockdep.assertNoSpinLockHeld()
        let swap = memory.swap
        let page: Page
        if let cached = swap.lookup(e) {
            swap.updateClusterReadahead(cached, stats: machine.stats)
            cached.lock()
            guard swap.matches(cached, e) else { cached.unlock(); memory.put(cached); return nil }
            page = cached
        } else {
            // shmem_swapin_cluster: from a swap file, the slots around this one first.
            if swap.withArea(e, { $0.synchronous }) == false { memory.swapClusterReadahead(around: e, stats: machine.stats) }
            // (Shmem is on the anonymous LRU lists, as readNewSwapPage puts the page.)
            switch memory.readNewSwapPage(e, stats: machine.stats) {
            case .read(let new):
                if fault { machine.stats.count(.pgmajfault) }
                page = new
            case .noMemory: throw .ENOMEM
            case .gone: return nil
            }
        }
        cacheLock.lock()
        guard swapped[index] == e else { cacheLock.unlock(); page.unlock(); memory.put(page); return nil }
        swapped[index] = nil
        pages[index] = page.pfn
        page.setOwner(file: self)
        page.index = index
        page.set([.uptodate, .swapBacked])
        memory.get(page)   // the page cache's reference; the caller keeps the lookup's
        cacheLock.unlock()
        swap.folioPutSwap(page, e)
        // The slot goes (nothing else counts on a file's slot); the page is dirty: its only copy.
        let freed = swap.folioFreeSwap(page)
        precondition(freed, "shmem swap-in: \(e) still counted after the file's entry was put")
        page.unlock()
        return page
    }

    /// `shmem_writeout` for reclaim: a locked, unmapped page of this file that only the page
    /// cache and the caller hold gets a swap slot, gives its place in the page cache to the
    /// swap entry, and is written out; it stays in the swap cache for `__remove_mapping`. A
    /// clean page (never written: zeros) simply leaves the page cache. Return: false when the
    /// page must stay (no slot, not the file's page any more, or someone took a reference).
    /// Locking: caller holds the page lock and its reference; takes the swap area's lock and
    /// cacheLock.
    func writeOutForReclaim(_ page: Page) -> Bool {
        precondition(page.isLocked && page.order == 0, "writeOutForReclaim: \(page)")
        let swap = memory.swap
        let dirty = page.test(.dirty)
        if dirty {
            guard swap.folioAllocSwap(page) != nil else { return false }
        }
        cacheLock.lock()
        // Only the page cache's reference and the caller's (plus the swap cache's, just taken):
        // frozen for the look at the dirty bit, as `__remove_mapping` does, so that a writer
        // who held the page meanwhile (pwrite) has both dirtied it and let it go, or still
        // holds it. A page that became dirty goes round again.
        let expected: Int32 = dirty ? 3 : 2
        guard pages[page.index] == page.pfn, page.mapcount == 0,
              page.refcountWord.compareExchange(expected: expected, desired: 0).exchanged else {
            cacheLock.unlock()
            if dirty { swap.delete(page) }
            return false
        }
        let dirtied = !dirty && page.test(.dirty)
        page.refcountWord.store(expected)
        guard !dirtied else { cacheLock.unlock(); return false }
        pages[page.index] = nil
        if dirty {
            let e = swap.folioDupSwap(page)
            swapped[page.index] = e
        }
        page.releaseOwner()
        cacheLock.unlock()
        memory.put(page)   // the page cache's reference
        if dirty {
            page.clear(.dirty)
            swap.writeOut(page)
            machine.stats.count(.pswpout)
        }
        return true
    }

    /// Whether the page cache holds page `index` (`mincore_page`).
    public func isCached(_ index: UInt64) -> Bool { cacheLock.withLock { pages[index] != nil } }

    /// Number of pages in the page cache.
    public var cachedPages: Int { cacheLock.withLock { pages.count } }

    /// `shmem_get_folio`: the page at `index`, created zero-filled if absent, with a reference
    /// taken for the caller. Throws EFAULT (SIGBUS) beyond end of file, ENOMEM if no frame is
    /// free even after direct reclaim (the new page is allocated outside the cache's lock, as
    /// `shmem_alloc_and_add_folio` does, so reclaim may run; a racing creator wins).
    /// Locking: no spin lock held (may reclaim); takes cacheLock.
    /// A page that was swapped out is read back first (`shmem_swapin_folio`; a major fault
    /// when `fault`).
    public func getPage(_ index: UInt64, fault: Bool = false) throws(Errno) -> Page {
        Lockdep.assertNoSpinLockHeld()
        while true {
            switch try cachedPage(index) {
            case .page(let p): return p
            case .swapped(let e): if let p = try swapIn(index, e, fault: fault) { return p }
            case .none: if let p = try addNewPage(index) { return p }
            }
        }
    }

    /// `SGP_READ`: the page at `index` with a reference taken, a swapped-out one read back
    /// first; nil for a hole (none is made). Throws EFAULT beyond the end, ENOMEM.
    /// Locking: no spin lock held (a swap-in may reclaim).
    private func existingPage(_ index: UInt64) throws(Errno) -> Page? {
        Lockdep.assertNoSpinLockHeld()
        switch try cachedPage(index) {
        case .page(let p): return p
        case .swapped: return try getPage(index)
        case .none: return nil
        }
    }

    /// A new zero-filled page at `index`, unless another thread put one (or a swap entry) there
    /// meanwhile (nil: look again).
    private func addNewPage(_ index: UInt64) throws(Errno) -> Page? {
        guard let new = memory.allocate(order: 0, zeroed: true, mayReclaim: true, lru: true) else { throw .ENOMEM }
        cacheLock.lock()
        defer { cacheLock.unlock() }
        guard index < (size + pageSize - 1) >> pageShift else { memory.put(new); throw .EFAULT }
        if pages[index] != nil || swapped[index] != nil { memory.put(new); return nil }
        let p = new
        p.setOwner(file: self)
        p.index = index
        p.set([.uptodate, .swapBacked])
        pages[index] = p.pfn
        memory.get(p) // cache reference + caller reference
        return p
    }

    /// `pread`: reads up to `count` bytes at `offset`; short at end of file. EINVAL for a
    /// negative-equivalent (overflowing) range, ENOMEM when a swapped-out page cannot be read
    /// back.
    public func pread(offset: UInt64, count: Int) throws(Errno) -> [UInt8] {
        guard count >= 0 else { throw .EINVAL }
        let (endOff, o) = offset.addingReportingOverflow(UInt64(count))
        guard !o else { throw .EINVAL }
        let limit = min(endOff, size)
        guard limit > offset else { return [] }
        var out = [UInt8](repeating: 0, count: Int(limit - offset))
        var pos = offset
        while pos < limit {
            let idx = pos >> pageShift
            let inPage = Int(pos & (pageSize - 1))
            let n = min(Int(limit - pos), Int(pageSize) - inPage)
            // A hole reads as zeros; a swapped-out page is read back (SGP_READ).
            let page: Page?
            do throws(Errno) {
                page = try existingPage(idx)
            } catch .EFAULT {
                return Array(out.prefix(Int(pos - offset)))   // truncated meanwhile: a short read
            }
            if let page {
                out.withUnsafeMutableBytes { b in
                    (b.baseAddress! + Int(pos - offset)).copyMemory(from: memory.frame(page.pfn) + inPage, byteCount: n)
                }
                memory.put(page)
            }
            pos += UInt64(n)
        }
        return out
    }

    /// `pwrite`: writes bytes at `offset`, extending the file. Returns the count written.
    @discardableResult
    public func pwrite(offset: UInt64, bytes: [UInt8]) throws(Errno) -> Int {
        let (endOff, o) = offset.addingReportingOverflow(UInt64(bytes.count))
        guard !o, endOff <= 1 << 44 else { throw .EINVAL }
        cacheLock.withLock { if endOff > size { size = endOff } }
        var pos = offset
        while pos < endOff {
            let idx = pos >> pageShift
            let inPage = Int(pos & (pageSize - 1))
            let n = min(Int(endOff - pos), Int(pageSize) - inPage)
            let page = try getPage(idx)
            bytes.withUnsafeBytes { b in
                (memory.frame(page.pfn) + inPage).copyMemory(from: b.baseAddress! + Int(pos - offset), byteCount: n)
            }
            page.set(.dirty)
            memory.put(page)
            pos += UInt64(n)
        }
        return bytes.count
    }

    /// `ftruncate`: sets the size; pages beyond it are unmapped from every mapping and dropped.
    public func ftruncate(_ newSize: UInt64) throws(Errno) {
        guard newSize <= 1 << 44 else { throw .EINVAL }
        let old = cacheLock.withLock { () -> UInt64 in let o = size; size = newSize; return o }
        guard newSize < old else { return }
        let firstGone = (newSize + pageSize - 1) >> pageShift
        // shmem_setattr: unmap, truncate the cache, unmap again (for a fault or COW that raced
        // in between) — both only if whole pages go.
        let wholePagesGo = old > firstGone << pageShift
        if wholePagesGo { unmapMappingRange(fromIndex: firstGone) }
        let (gone, goneSwap): ([UInt64], [SwapEntry]) = cacheLock.withLock {
            let keys = pages.keys.filter { $0 >= firstGone }.sorted()
            let swapKeys = swapped.keys.filter { $0 >= firstGone }.sorted()
            return (keys.map { pages.removeValue(forKey: $0)! }, swapKeys.map { swapped.removeValue(forKey: $0)! })
        }
        if wholePagesGo { unmapMappingRange(fromIndex: firstGone) }
        for pfn in gone { drop(memory.page(pfn)) }
        for e in goneSwap { if let p = memory.swap.putEntryDirect(e) { memory.put(p) } }
        // A partial last page is zeroed beyond the new end, as tmpfs does
        // (`shmem_get_partial_folio`: a swapped-out one is read back first; a hole stays one),
        // under its lock and a reference, and dirtied.
        if newSize & (pageSize - 1) != 0 {
            let idx = newSize >> pageShift
            if let page = try existingPage(idx) {
                page.lock()
                let inPage = Int(newSize & (pageSize - 1))
                memset(memory.frame(page.pfn) + inPage, 0, Int(pageSize) - inPage)
                page.set(.dirty)
                page.unlock()
                memory.put(page)
            }
        }
    }

    /// `unmap_mapping_range`: zaps every mapping of file pages at index ≥ `fromIndex`.
    func unmapMappingRange(fromIndex: UInt64) {
        // The mapping lock is held across the zaps, so no VMA is unlinked (and no table of it
        // freed) under us; like the kernel, private COW copies are zapped too.
        mappingLock.lockRead(); defer { mappingLock.unlockRead() }
        for vma in mappings {
            let vmaPages = (vma.end - vma.start) >> pageShift
            guard fromIndex < vma.pgoff + vmaPages else { continue }
            let start = fromIndex > vma.pgoff ? vma.start + ((fromIndex - vma.pgoff) << pageShift) : vma.start
            vma.mm.zapRange(vma: vma, start: start, end: vma.end, event: .clear) // zap_vma_range_batched: CLEAR
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
