import MMSync

/// The reservation map of a private hugetlb mapping (`struct resv_map` with
/// `HPAGE_RESV_OWNER`): the mapping reserved one huge page per huge page of its range at mmap;
/// this records which of them a fault has consumed since. The VMAs a split makes share it.
/// A forked child's VMA has none: its faults take unreserved pages.
///
/// Locking: `lock` (the map's own spin lock in the kernel) guards `consumed`.
final class HugetlbResvMap: @unchecked Sendable {
    let lock = Lock("resv_map")
    /// Huge page indices (`vma_hugecache_offset`) whose reservation was consumed.
    private var consumed: Set<UInt64> = []

    /// Marks `index` consumed (`vma_commit_reservation`). Return: whether it still had its
    /// reservation (`vma_needs_reservation` == 0).
    func consume(_ index: UInt64) -> Bool { lock.withLock { consumed.insert(index).inserted } }

    /// Gives `index` its reservation back: undoes `consume` for a page that was never mapped
    /// (`vma_end_reservation` on error), or a zap's restore (`vma_add_reservation`).
    /// Return: whether the index had consumed it (else nothing changed).
    @discardableResult
    func restore(_ index: UInt64) -> Bool { lock.withLock { consumed.remove(index) != nil } }

    /// Reservations still held for indices [first, first + count) (`region_count` inverted):
    /// what closing that part of the mapping gives back.
    func unconsumed(_ first: UInt64, count: UInt64) -> Int {
        lock.withLock { Int(count) - consumed.filter { $0 >= first && $0 < first + count }.count }
    }
}

extension VMA {
    /// Whether this is a hugetlb mapping (`is_vm_hugetlb_page`).
    @inlinable public var isHugetlb: Bool { flags.contains(.hugetlb) }

    /// `vma_hugecache_offset`: the huge page index of `address` (in huge pages, counted from
    /// the mapping's page offset). Precondition: a hugetlb VMA.
    func hugePageIndex(_ address: UInt64) -> UInt64 {
        let h = hstate!
        return (address - start) >> (pageShift + UInt64(h.order)) + (pgoff >> UInt64(h.order))
    }
}

extension AddressSpace {
    /// `hugetlb_vm_op_close`: a private hugetlb VMA that owns reservations gives back the ones
    /// its range has not consumed; a shared one lets go of its file (the last VMA takes the
    /// file's pages and reservations with it). Locking: mmap lock held for write.
    func hugetlbVMAClose(_ vma: VMA) {
        mmapLock.assertWriteLocked()
        if let f = vma.hugetlbFile { f.detach() }
        guard let h = vma.hstate, let resv = vma.hugetlbResv else { return }
        let first = vma.hugePageIndex(vma.start)
        let count = (vma.end - vma.start) >> (pageShift + UInt64(h.order))
        memory.hugetlb.unreserve(h, resv.unconsumed(first, count: count))
    }
}
