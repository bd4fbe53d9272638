import MMSync

/// What each device action costs in virtual time (nanoseconds). Every SVM run reports its
/// virtual time beside its wall time, so that policies compare the same way on a busy shared
/// machine as on an idle one. The defaults are of the order UVM's papers report for a PCIe 4
/// GPU (a fault batch costs tens of microseconds; the link moves about 16 GB/s); set your own
/// to model another device.
public struct SVMCosts: Sendable, Equatable {
    /// Fixed cost of servicing one batch: the interrupt, reading the fault buffer, the
    /// driver's bookkeeping (UVM's "batch service" time).
    public var faultBatchNs: UInt64 = 20_000
    /// Per distinct fault in a batch (after duplicates are dropped).
    public var perFaultNs: UInt64 = 1_000
    /// Copy bandwidth of the link, bytes per nanosecond (16 = 16 GB/s), for migrations both ways.
    public var linkBytesPerNs: UInt64 = 16
    /// One device TLB invalidation (a notifier callback that dropped entries).
    public var tlbInvalidateNs: UInt64 = 2_000
    /// Replaying the faulted engines after a batch.
    public var replayNs: UInt64 = 2_000
    /// One 8-byte access to device memory.
    public var localAccessNs: UInt64 = 1
    /// One 8-byte access to system memory over the link (a remote mapping).
    public var remoteAccessNs: UInt64 = 400

    public init() {}

    /// Virtual time of copying `bytes` over the link.
    public func copyNs(_ bytes: Int) -> UInt64 { UInt64(bytes) / max(linkBytesPerNs, 1) }
}

/// A monotonic virtual clock that several threads push forward: by a cost, or up to a time.
final class SVMClock: @unchecked Sendable {
    private let word = AtomicCounter(0)
    var now: UInt64 { UInt64(word.load()) }
    /// Adds `d` (a cost charged by one thread; others may charge at the same time).
    func advance(by d: UInt64) { word.add(Int(d)) }
    /// Moves the clock to `t` if it is behind.
    func advance(to t: UInt64) {
        while true {
            let cur = word.load()
            if UInt64(cur) >= t || word.compareExchange(expected: cur, desired: Int(t)) { return }
        }
    }
}
