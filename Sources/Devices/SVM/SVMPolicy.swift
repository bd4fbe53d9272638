import MMCore
import MMSync

/// Where a fault group's pages should live: the driver asks its policy once per group.
/// Write your own: return the range to migrate into device memory (covering the group, or
/// more of its VMA to prefetch), or nil to map the pages where they are (over the link).
public protocol SVMPolicy: AnyObject, Sendable {
    var name: String { get }
    /// Called by the fault thread, one group at a time.
    func placement(for group: SVMFaultGroup, device: SVMDevice) -> Range<UInt64>?
    /// Several ranges to migrate for one group (a policy that treats the group's pages
    /// differently); by default `placement`'s one range, or none.
    func placements(for group: SVMFaultGroup, device: SVMDevice) -> [Range<UInt64>]
    /// Remote accesses to one 64 KiB region (of system memory mapped on the device) that make
    /// the device notify the driver (UVM's access counters); nil: no counting. Read when a
    /// kernel is launched.
    var accessCounterThreshold: Int? { get }
    /// A region's counter fired: the range to migrate (within `region`'s VMA), or nil.
    func accessCounterFired(region: SVMFaultGroup, device: SVMDevice) -> Range<UInt64>?
    /// Whether the device may grow a placement to the whole THP it touches (a 2 MiB device
    /// page); false for a policy whose ranges must not cover pages it keeps apart. Default true.
    var allowsWholeTHPs: Bool { get }
}

extension SVMPolicy {
    public func placements(for group: SVMFaultGroup, device: SVMDevice) -> [Range<UInt64>] {
        placement(for: group, device: device).map { [$0] } ?? []
    }
    public var accessCounterThreshold: Int? { nil }
    public func accessCounterFired(region: SVMFaultGroup, device: SVMDevice) -> Range<UInt64>? { nil }
    public var allowsWholeTHPs: Bool { true }
}

/// Migrate on first touch: every faulting page moves into device memory (UVM's default without
/// hints; nouveau instead maps system memory and migrates only on an explicit bind).
public final class SVMFirstTouchPolicy: SVMPolicy {
    public let name = "first-touch"
    public init() {}
    public func placement(for group: SVMFaultGroup, device: SVMDevice) -> Range<UInt64>? { group.start..<group.end }
}

/// Map remotely, never migrate: the device reads and writes system memory over the link
/// (nouveau's fault path; UVM with the preferred location set to the CPU).
public final class SVMRemoteMapPolicy: SVMPolicy {
    public let name = "remote-map"
    public init() {}
    public func placement(for group: SVMFaultGroup, device: SVMDevice) -> Range<UInt64>? { nil }
}

/// Density prefetch (after UVM's `uvm_perf_prefetch.c`): the pages of a fault group's 2 MiB
/// region that are in device memory now (asked of the device, `SVMDevice.residency`) or in the
/// group, seen as a binary tree of aligned nodes (2, 4, …, 512 pages). The largest node holding
/// the group whose share of such pages is above `threshold` is prefetched: the span of its
/// other pages (with the group) migrates. A sequential stream so faults at pages 0, 1, 2, 4,
/// 8, … of a region: about ten faults per 2 MiB instead of 512. A page evicted or taken back
/// by the CPU no longer counts, as in UVM (which asks the block's residency).
public final class SVMDensityPrefetchPolicy: SVMPolicy {
    public let name = "density-prefetch"
    /// The share of a node that must be resident or faulting (UVM's default: 51 %).
    public let threshold: Double
    public init(threshold: Double = 0.51) { self.threshold = threshold }

    public func placement(for group: SVMFaultGroup, device: SVMDevice) -> Range<UInt64>? {
        let region = group.start & pmdMask
        let first = Int((group.start - region) >> pageShift), last = Int((group.end - 1 - region) >> pageShift) + 1
        // The region's residency within the group's VMA (outside it nothing can move).
        let lo = max(region, group.vmaStart), hi = min(region + pmdSize, group.vmaEnd)
        var bits = [Bool](repeating: false, count: ptrsPerTable)
        for (k, r) in device.residency(group.space, lo, hi).enumerated() where r { bits[Int((lo - region) >> pageShift) + k] = true }
        for i in first..<last { bits[i] = true }
        var spanLo = first, spanHi = last
        var size = 2
        while size <= ptrsPerTable {
            let s = first & ~(size - 1), e = s + size
            if last <= e, Double(bits[s..<e].reduce(0) { $0 + ($1 ? 1 : 0) }) > threshold * Double(size) {
                // The node qualifies: its other pages, with the group, are the span.
                if let u = bits[s..<e].firstIndex(of: false) { spanLo = min(spanLo, u) }
                if let u = bits[s..<e].lastIndex(of: false) { spanHi = max(spanHi, u + 1) }
            }
            size *= 2
        }
        let s = max(region + UInt64(spanLo) << pageShift, group.vmaStart)
        let e = min(region + UInt64(spanHi) << pageShift, group.vmaEnd)
        return s < e ? s..<e : group.start..<group.end
    }
}

/// Thrashing detection (after UVM's `uvm_perf_thrashing.c`): a page that faults on the device
/// `threshold` times within `windowNs` of virtual time keeps being taken away (by the CPU, or
/// by eviction) and brought back; it is pinned to system memory and mapped remotely for
/// `pinNs`, after which it may migrate again. Other pages follow `base`, each run of them
/// between pinned pages placed as a group of its own (clipped to the run: no prefetch over
/// a pinned page).
public final class SVMThrashingPolicy: SVMPolicy, @unchecked Sendable {
    public let name: String
    public let base: SVMPolicy
    public let threshold: Int
    public let windowNs: UInt64
    public let pinNs: UInt64
    private let lock = Lock("svm-thrashing")
    private struct Key: Hashable { let space: ObjectIdentifier; let page: UInt64 }
    /// Page of a space → (faults in the current window, the window's start, pinned until).
    /// Locking: `lock`.
    private var pages: [Key: (count: Int, since: UInt64, pinnedUntil: UInt64)] = [:]
    /// A pinned page must stay where it is: no range may grow over it.
    public var allowsWholeTHPs: Bool { false }

    public init(base: SVMPolicy = SVMFirstTouchPolicy(), threshold: Int = 3, windowNs: UInt64 = 500_000_000,
                pinNs: UInt64 = 2_000_000_000) {
        self.base = base; self.threshold = threshold; self.windowNs = windowNs; self.pinNs = pinNs
        name = "thrashing-aware"
    }

    /// The group's pages not pinned, in runs of consecutive pages, each placed by `base`.
    public func placements(for group: SVMFaultGroup, device: SVMDevice) -> [Range<UInt64>] {
        let now = device.virtualNanoseconds
        let (pinned, newlyPinned): ([Bool], Int) = lock.withLock {
            var pinned: [Bool] = [], newly = 0
            let space = ObjectIdentifier(group.space)
            for a in stride(from: group.start, to: group.end, by: Int(pageSize)) {
                let key = Key(space: space, page: a)
                var e = pages[key] ?? (0, now, 0)
                if now < e.pinnedUntil { pinned.append(true); continue }
                if now - e.since > windowNs { e = (0, now, 0) }
                e.count += 1
                let pin = e.count >= threshold
                if pin { e = (0, now, now + pinNs); newly += 1 }
                pinned.append(pin)
                pages[key] = e
            }
            return (pinned, newly)
        }
        if newlyPinned > 0 { device.stats.count(.thrashing, newlyPinned) }
        guard pinned.contains(true) else { return base.placements(for: group, device: device) }
        // Each run of pages not pinned is a group of its own for the base policy.
        var ranges: [Range<UInt64>] = []
        var i = 0
        while i < pinned.count {
            guard !pinned[i] else { i += 1; continue }
            var j = i
            while j < pinned.count && !pinned[j] { j += 1 }
            let run = SVMFaultGroup(space: group.space, start: group.start + UInt64(i) << pageShift, end: group.start + UInt64(j) << pageShift,
                                    access: group.access, vmaStart: group.vmaStart, vmaEnd: group.vmaEnd)
            // A pinned page stays where it is even if the base policy would prefetch over it.
            for r in base.placements(for: run, device: device) {
                let s = max(r.lowerBound, group.start + UInt64(i) << pageShift), e = min(r.upperBound, group.start + UInt64(j) << pageShift)
                if s < e { ranges.append(s..<e) }
            }
            i = j
        }
        return ranges
    }

    /// One range only when the group's pages to migrate are one run; nil otherwise (no range
    /// may cover a pinned page). Counts the group's faults as `placements` does.
    public func placement(for group: SVMFaultGroup, device: SVMDevice) -> Range<UInt64>? {
        let ranges = placements(for: group, device: device)
        return ranges.count == 1 ? ranges[0] : nil
    }
}

/// Access-counter migration (after UVM's access counters): faults map system memory remotely;
/// the device counts its remote accesses per 64 KiB region, and a region touched `threshold`
/// times migrates into device memory, so memory the device keeps using moves to it and memory
/// it touches once does not.
public final class SVMAccessCounterPolicy: SVMPolicy {
    public let name = "access-counters"
    public let threshold: Int
    public init(threshold: Int = 256) { self.threshold = threshold }
    public func placement(for group: SVMFaultGroup, device: SVMDevice) -> Range<UInt64>? { nil }
    public var accessCounterThreshold: Int? { threshold }
    public func accessCounterFired(region: SVMFaultGroup, device: SVMDevice) -> Range<UInt64>? { region.start..<region.end }
}
