import Synchronization

/// Named fault-injection sites. A test or the explorer arms a site to fail its next `n`
/// evaluations; code asks `FaultInjection.shouldFail(.frameAllocation)` at the site.
public enum FaultSite: Int, CaseIterable, Sendable {
    case frameAllocation = 0, pageTableAllocation, deviceAllocation
}

public enum FaultInjection {
    static let armed: [AtomicCounter] = FaultSite.allCases.map { _ in AtomicCounter(0) }
    @exclusivity(unchecked) nonisolated(unsafe) static var anyArmed = false

    /// Makes the next `count` evaluations of `site` fail.
    public static func arm(_ site: FaultSite, count: Int = 1) {
        armed[site.rawValue].store(count); anyArmed = true
    }
    public static func disarmAll() { for a in armed { a.store(0) }; anyArmed = false }

    @inlinable public static func shouldFail(_ site: FaultSite) -> Bool {
        guard _anyArmed else { return false }
        return consume(site)
    }
    @usableFromInline static var _anyArmed: Bool { anyArmed }
    @usableFromInline static func consume(_ site: FaultSite) -> Bool {
        let c = armed[site.rawValue]
        while true {
            let v = c.load()
            if v <= 0 { return false }
            if c.compareExchange(expected: v, desired: v - 1) { return true }
        }
    }
}
