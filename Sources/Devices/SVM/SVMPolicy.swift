import MMCore
import MMSync

/// Where a fault group's pages should live: the driver asks its policy once per group.
/// Write your own: return the range to migrate into device memory (covering the group, or
/// more of its VMA to prefetch), or nil to map the pages where they are (over the link).
public protocol SVMPolicy: AnyObject, Sendable {
    var name: String { get }
    /// Called by the fault thread, one group at a time.
    func placement(for group: SVMFaultGroup, device: SVMDevice) -> Range<UInt64>?
}

/// Migrate on first touch: every faulting page moves into device memory (nouveau's default,
/// and UVM's without hints).
public final class SVMFirstTouchPolicy: SVMPolicy {
    public let name = "first-touch"
    public init() {}
    public func placement(for group: SVMFaultGroup, device: SVMDevice) -> Range<UInt64>? { group.start..<group.end }
}

/// Map remotely, never migrate: the device reads and writes system memory over the link
/// (UVM's `SetAccessedBy` / preferred location CPU).
public final class SVMRemoteMapPolicy: SVMPolicy {
    public let name = "remote-map"
    public init() {}
    public func placement(for group: SVMFaultGroup, device: SVMDevice) -> Range<UInt64>? { nil }
}

/// Density prefetch (after UVM's `uvm_perf_prefetch.c`): each 2 MiB region keeps the set of
/// pages that faulted in it; when more than `threshold` of a region has faulted, the whole
/// region (within the VMA) migrates, once; before and after that, only the group. (A second
/// whole-region migration would move nothing new, but its invalidation would drop every
/// entry the device has mapped in the region since.)
public final class SVMDensityPrefetchPolicy: SVMPolicy, @unchecked Sendable {
    public let name = "density-prefetch"
    /// The fraction of a region that must have faulted (UVM's default: 51 %).
    public let threshold: Double
    private let lock = Lock("svm-prefetch")
    /// Region (its 2 MiB-aligned address) → faulted pages. Locking: `lock`.
    private var faulted: [UInt64: Set<UInt64>] = [:]
    /// Regions already migrated whole. Locking: `lock`.
    private var prefetched: Set<UInt64> = []
    public init(threshold: Double = 0.51) { self.threshold = threshold }

    public func placement(for group: SVMFaultGroup, device: SVMDevice) -> Range<UInt64>? {
        let region = group.start & pmdMask
        let dense: Bool = lock.withLock {
            guard !prefetched.contains(region) else { return false }
            var pages = faulted[region, default: []]
            for a in stride(from: group.start, to: group.end, by: Int(pageSize)) { pages.insert(a) }
            guard Double(pages.count) > threshold * Double(ptrsPerTable) else { faulted[region] = pages; return false }
            faulted[region] = nil
            prefetched.insert(region)
            return true
        }
        guard dense else { return group.start..<group.end }
        let s = max(region, group.vmaStart), e = min(region + pmdSize, group.vmaEnd)
        return s..<e
    }
}
