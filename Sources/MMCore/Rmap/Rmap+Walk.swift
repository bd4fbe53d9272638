import MMSync

/// One place a page is mapped, as found by an rmap walk. Valid only inside the walk's body:
/// the VMA is borrowed without a reference (the walk's rmap lock keeps it linked and alive),
/// so a hit must not be kept.
public struct RmapHit {
    @usableFromInline let vmaRef: Unmanaged<VMA>
    public let address: UInt64
    @inlinable init(vma: VMA, address: UInt64) { vmaRef = .passUnretained(vma); self.address = address }
    /// The VMA (a counted reference: hot paths borrow it with `withVMA` instead).
    public var vma: VMA { vmaRef.takeUnretainedValue() }
    /// Calls `body` with the VMA and its mm borrowed, without reference counting.
    @inlinable @inline(__always)
    public func withVMA<R>(_ body: (VMA, AddressSpace) throws -> R) rethrows -> R {
        try vmaRef._withUnsafeGuaranteedRef { vma in try vma.mmRef._withUnsafeGuaranteedRef { try body(vma, $0) } }
    }
}

extension PhysicalMemory {
    /// `rmap_walk`: calls `body` for every VMA that may map `page`, with the address the page
    /// would have there. `body` returns false to stop.
    ///
    /// Locking: caller holds the page lock (so `owner` and `index` are stable) or a reference
    /// plus the anon_vma it pinned; the walk takes the anon_vma (or file mapping) lock for read.
    /// It does not take any mmap lock: the VMAs it visits cannot be freed while linked.
    public func rmapWalk(_ page: Page, _ body: (RmapHit) -> Bool) {
        assert(page.isLocked || page.refcount > 0, "rmapWalk: the page must be locked or referenced")
        if let av = page.anonVMARef {
            av._withUnsafeGuaranteedRef { rmapWalkAnon($0, index: page.index, body) }
        } else if let file = page.file {
            file.mappingLock.lockRead()
            let list = file.mappings
            for vma in list {
                if let a = vma.address(ofPageIndex: page.index), !body(RmapHit(vma: vma, address: a)) { break }
            }
            file.mappingLock.unlockRead()
        }
    }

    /// The anonymous half of `rmapWalk`, for callers that pinned the anon_vma themselves
    /// (migration keeps it from before the unmap until after the remap).
    public func rmapWalkAnon(_ av: AnonVMA, index: UInt64, _ body: (RmapHit) -> Bool) {
        av.lock.lockRead()
        // The list is read in place, each VMA borrowed (a copy of the array would count its
        // buffer, which every reclaiming thread shares): writers take the lock for write.
        av.vmas.withUnsafeBufferPointer { list in
            for i in list.indices {
                let stop = Unmanaged.passUnretained(list[i])._withUnsafeGuaranteedRef { vma -> Bool in
                    guard let a = vma.address(ofPageIndex: index) else { return false }
                    return !body(RmapHit(vma: vma, address: a))
                }
                if stop { break }
            }
        }
        av.lock.unlockRead()
    }
}

/// What `pageVMAMappedWalk` found at one address.
public enum MappedEntry {
    /// A present PTE mapping the page.
    case present(PTE)
    /// A migration / device-private / device-exclusive entry naming the page.
    case swap(SwapEntry)
}

extension AddressSpace {
    /// `page_vma_mapped_walk` for one base page: if the PTE at `address` maps `pfn` (present,
    /// or a migration/device entry naming it), calls `body` with the entry pointer under the PTE
    /// lock and returns its result. Returns nil if the address does not map the page.
    /// Locking: rmap lock held (anon_vma or file mapping) or mmap lock; takes the PTE lock.
    public func withMappedPTE<T>(_ address: UInt64, pfn: UInt64,
                                 _ body: (EntryPointer, MappedEntry) -> T) -> T? {
        Lockdep.assertSomeRWSemHeld()
        guard let found = pageTable.lookup(address, level: .pte), found.level == .pte else { return nil }
        found.table.ptl.lock(); defer { found.table.ptl.unlock() }
        let v = found.entry.load()
        if v.isPresent {
            guard !v.isSpecial, v.pfn == pfn else { return nil }
            return body(found.entry, .present(v))
        }
        if v.isSwap {
            let s = v.swapEntry
            guard s.hasPfn, s.pfn == pfn else { return nil }
            return body(found.entry, .swap(s))
        }
        return nil
    }
}
