import MMCore
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
    /// An engine's TLB miss: a walk of the device page table.
    public var tlbMissNs: UInt64 = 200
    /// Replaying the faulted engines after a batch.
    public var replayNs: UInt64 = 2_000
    /// One 8-byte access to device memory.
    public var localAccessNs: UInt64 = 1
    /// One 8-byte access to system memory over the link (a remote mapping).
    public var remoteAccessNs: UInt64 = 400

    public init() {}

    /// Each cost by its name on the command line, with its key path.
    public static var names: [(String, WritableKeyPath<SVMCosts, UInt64>)] { [
        ("fault-batch-ns", \.faultBatchNs), ("per-fault-ns", \.perFaultNs), ("link-bytes-per-ns", \.linkBytesPerNs),
        ("tlb-invalidate-ns", \.tlbInvalidateNs), ("tlb-miss-ns", \.tlbMissNs), ("replay-ns", \.replayNs),
        ("local-access-ns", \.localAccessNs), ("remote-access-ns", \.remoteAccessNs),
    ] }

    /// Sets the costs named in `overrides` ("name=value", as in `SVMCosts.names`; the link's
    /// bandwidth at least 1). Errors: EINVAL for an unknown name or a value that is not a
    /// number (no cost is changed then).
    public mutating func apply(_ overrides: [String]) throws(Errno) {
        var changed = self
        for o in overrides {
            let parts = o.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, let key = SVMCosts.names.first(where: { $0.0 == parts[0] })?.1,
                  let v = UInt64(parts[1]) else { throw .EINVAL }
            if key == \SVMCosts.linkBytesPerNs && v == 0 { throw .EINVAL }
            changed[keyPath: key] = v
        }
        self = changed
    }

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
