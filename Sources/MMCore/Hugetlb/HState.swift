import MMSync

/// One huge page size and its pool (`struct hstate`): 2 MiB pages mapped by PMD leaves, 1 GiB
/// pages mapped by PUD leaves. The pool holds the free huge pages; the counters are those of
/// `/sys/kernel/mm/hugepages/hugepages-<size>kB/` and `/proc/meminfo`'s `HugePages_*`.
///
/// Locking: every variable field is guarded by `HugeTLB.lock` (`hugetlb_lock`).
public final class HState: @unchecked Sendable, CustomStringConvertible {
    /// Order of the folios (9: 2 MiB, 18: 1 GiB).
    public let order: Int
    /// The page-table level whose leaves map these pages.
    public let level: PageTableLevel
    /// Head pfns of the free huge pages (`hugepage_freelists`).
    var freeList: [UInt64] = []
    /// `nr_huge_pages`: every huge page of this size, free or in use, surplus included.
    public internal(set) var nrHugePages = 0
    /// `free_huge_pages`: on the free list (reserved ones included).
    public internal(set) var freeHugePages = 0
    /// `resv_huge_pages`: free pages promised to mappings that have not faulted them yet.
    public internal(set) var resvHugePages = 0
    /// `surplus_huge_pages`: pages above the persistent pool size (left in use when the pool
    /// shrank); each goes back to the buddy allocator when freed.
    public internal(set) var surplusHugePages = 0

    init(order: Int, level: PageTableLevel) { self.order = order; self.level = level }

    /// Bytes per huge page (`huge_page_size`).
    public var size: UInt64 { pageSize << UInt64(order) }
    /// `huge_page_mask`.
    public var mask: UInt64 { ~(size - 1) }
    /// `a` rounded up to a whole number of huge pages; nil on overflow.
    public func alignUp(_ a: UInt64) -> UInt64? {
        let (s, o) = a.addingReportingOverflow(size - 1)
        return o ? nil : s & mask
    }
    /// Base pages per huge page (`pages_per_huge_page`).
    public var pagesPerHugePage: UInt64 { UInt64(1) << UInt64(order) }
    /// The pool's size as set by `nr_hugepages` (`persistent_huge_pages`).
    public var persistentHugePages: Int { nrHugePages - surplusHugePages }
    /// The sysfs directory name, `hugepages-2048kB`.
    public var name: String { "hugepages-\(size >> 10)kB" }
    public var description: String { size >= 1 << 30 ? "\(size >> 30)GiB" : "\(size >> 20)MiB" }
}

/// The counters of one pool at one moment (read under the hugetlb lock).
public struct HugePoolCounters: Equatable, Sendable, CustomStringConvertible {
    public var total: Int, free: Int, reserved: Int, surplus: Int
    public init(total: Int, free: Int, reserved: Int, surplus: Int) {
        self.total = total; self.free = free; self.reserved = reserved; self.surplus = surplus
    }
    public var description: String { "total \(total) free \(free) rsvd \(reserved) surp \(surplus)" }
}
