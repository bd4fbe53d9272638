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
    }

    deinit {
        for (_, pfn) in pages { drop(memory.page(pfn)) }
    }

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

    /// The cached page at `index` with a reference taken, nil if absent; EFAULT beyond the end.
    private func cachedPage(_ index: UInt64) throws(Errno) -> Page? {
        cacheLock.lock()
        defer { cacheLock.unlock() }
        guard index < (size + pageSize - 1) >> pageShift else { throw .EFAULT }
        guard let pfn = pages[index] else { return nil }
        let p = memory.page(pfn)
        memory.get(p)
        return p
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
    public func getPage(_ index: UInt64) throws(Errno) -> Page {
        Lockdep.assertNoSpinLockHeld()
        if let p = try cachedPage(index) { return p }
        guard let new = memory.allocate(order: 0, zeroed: true, mayReclaim: true) else { throw .ENOMEM }
        cacheLock.lock()
        defer { cacheLock.unlock() }
        guard index < (size + pageSize - 1) >> pageShift else { memory.put(new); throw .EFAULT }
        if let pfn = pages[index] {
            memory.put(new)
            let p = memory.page(pfn)
            memory.get(p)
            return p
        }
        let p = new
        p.setOwner(file: self)
        p.index = index
        p.set([.uptodate, .swapBacked])
        pages[index] = p.pfn
        memory.get(p) // cache reference + caller reference
        return p
    }

    /// `pread`: reads up to `count` bytes at `offset`; short at end of file. EINVAL for a
    /// negative-equivalent (overflowing) range.
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
            let pfn = cacheLock.withLock { pages[idx] }
            if let pfn {
                out.withUnsafeMutableBytes { b in
                    (b.baseAddress! + Int(pos - offset)).copyMemory(from: memory.frame(pfn) + inPage, byteCount: n)
                }
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
        let gone: [UInt64] = cacheLock.withLock {
            let keys = pages.keys.filter { $0 >= firstGone }.sorted()
            return keys.map { pages.removeValue(forKey: $0)! }
        }
        if wholePagesGo { unmapMappingRange(fromIndex: firstGone) }
        for pfn in gone { drop(memory.page(pfn)) }
        // A partial last page is zeroed beyond the new end, as tmpfs does.
        if newSize & (pageSize - 1) != 0, let pfn = cacheLock.withLock({ pages[newSize >> pageShift] }) {
            let inPage = Int(newSize & (pageSize - 1))
            memset(memory.frame(pfn) + inPage, 0, Int(pageSize) - inPage)
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
