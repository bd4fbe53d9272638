import MMCore
import MMSync

/// One thing an SVM device did, with its wall time and virtual time (nanoseconds).
public struct SVMEvent: Sendable {
    public enum Kind: Sendable {
        /// An engine missed and raised a fault.
        case fault(engine: Int, address: UInt64, access: SVMAccess)
        /// An engine resumed after its replay.
        case replay(engine: Int)
        /// The fault thread serviced a batch of `faults` entries (`serviced` after duplicates),
        /// taking `wallNs` of wall time from the event's time on.
        case batch(faults: Int, serviced: Int, wallNs: UInt64)
        /// Pages (their addresses) moved into device memory, or back to system memory.
        case toDevice(addresses: [UInt64])
        case toSystem(addresses: [UInt64], cause: SVMMoveCause)
        /// The device dropped its entries in [start, end).
        case invalidate(start: UInt64, end: UInt64)
        /// An engine started or ended a kernel.
        case kernelStart(engine: Int, name: String)
        case kernelEnd(engine: Int)
    }
    public let kind: Kind
    public let wallNs: UInt64
    public let virtualNs: UInt64
}

/// Why pages went back to system memory.
public enum SVMMoveCause: String, Sendable {
    case cpuFault = "cpu-fault", eviction, copyOnWrite = "copy-on-write"
}

/// A device's event log, when tracing is on (`SVMDevice.trace`): what the report plots and
/// the Perfetto trace shows.
public final class SVMTrace: @unchecked Sendable {
    private let lock = Lock("svm-trace")
    /// Locking: `lock`.
    private var log: [SVMEvent] = []
    /// Locking: `lock`. Set by `stop`: later events are not kept.
    private var stopped = false
    /// Events past `maxEvents` are counted, not kept (a huge run stays within memory).
    /// Locking: `lock`.
    public private(set) var dropped = 0
    public static let maxEvents = 400_000
    public let startWallNs = monotonicNanoseconds()
    public init() {}
    /// Records an event at `wall` (a `monotonicNanoseconds()` reading; now by default).
    func record(_ kind: SVMEvent.Kind, virtual: UInt64, wall: UInt64 = monotonicNanoseconds()) {
        let e = SVMEvent(kind: kind, wallNs: wall &- startWallNs, virtualNs: virtual)
        lock.withLock {
            guard !stopped else { return }
            if log.count < SVMTrace.maxEvents { log.append(e) } else { dropped += 1 }
        }
    }
    /// Keeps no more events (a run's own checks afterwards are not part of it).
    public func stop() { lock.withLock { stopped = true } }
    /// The events so far, in the order they were recorded.
    public var events: [SVMEvent] { lock.withLock { log } }
}
