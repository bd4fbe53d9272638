import MMCore
import MMSync

/// A device's TLB shootdown as issue 17 models it: after the device's entries for a range are
/// gone, the device takes `latencyNanoseconds` to confirm that no TLB still holds them. The
/// wait happens in the notifier's one pass, or, with `twoPhase`, in the finish pass of Linux
/// 7.2's two-pass interval notifiers (issued in the first pass, waited for after every other
/// notifier has issued its own, so N devices cost about one latency). A non-blockable range
/// (the OOM reaper's) that would have to wait is refused. With `fails` the device never
/// confirms: after ten times the latency (at least 1 ms) the owner is told to cut the mirror
/// off. Shared by dmirror and the SVM device.
public final class DeviceShootdown: @unchecked Sendable {
    /// The latency, in nanoseconds (0: none; at most 10 s).
    public var latencyNanoseconds: UInt64 {
        get { UInt64(latencyWord.load()) }
        set { latencyWord.store(Int(min(newValue, 10_000_000_000))) }
    }
    /// Whether the shootdown is waited for in the second pass.
    public var twoPhase: Bool {
        get { twoPhaseWord.load() != 0 }
        set { twoPhaseWord.store(newValue ? 1 : 0) }
    }
    /// Fault injection: the device never confirms a shootdown.
    public var fails: Bool {
        get { failWord.load() != 0 }
        set { failWord.store(newValue ? 1 : 0) }
    }
    /// Shootdowns waited for in a second pass.
    public let finishPasses = AtomicCounter(0)
    private let latencyWord = AtomicCounter(0)
    private let twoPhaseWord = AtomicCounter(0)
    private let failWord = AtomicCounter(0)

    public init() {}

    /// The first pass of an invalidation: refused (`wouldBlock`) for a non-blockable range
    /// that would wait (`mayNeed()` before anything is dropped: whether the device may hold
    /// entries of the range); else `drop` removes the device's entries (false: it would block
    /// on the device's lock), and the shootdown, if `needed()` after the drop (a device that
    /// held none of the range's entries may skip it), is waited for now, or returned as the
    /// finish (refused after all for a non-blockable range whose entries appeared meanwhile).
    /// The closure `cutOff()` makes runs after a failed shootdown; it is made only when a
    /// shootdown is waited for (an invalidation that drops nothing or waits for nothing
    /// allocates no closure). A mirror already cut off (`isCutOff`) waits for nothing.
    /// Locking: called from an interval notifier, with no device lock held.
    public func start(blockable: Bool, isCutOff: Bool, mayNeed: () -> Bool = { true }, needed: () -> Bool = { true },
                      drop: () -> Bool, cutOff: () -> (() -> Void)) -> IntervalInvalidationStart {
        Lockdep.assertNoSpinLockHeld()
        let latency = latencyNanoseconds, fails = self.fails
        let waits = !isCutOff && (latency > 0 || fails)
        if !blockable && waits && mayNeed() { return .wouldBlock }
        guard drop() else { return .wouldBlock }
        guard waits, needed() else { return .done }
        if !blockable { return .wouldBlock }
        let issued = monotonicNanoseconds()
        let cut = cutOff()
        guard twoPhase else {
            DeviceShootdown.wait(issued: issued, latency: latency, fails: fails, cutOff: cut)
            return .done
        }
        let passes = finishPasses
        return .finish {
            passes.add(1)
            DeviceShootdown.wait(issued: issued, latency: latency, fails: fails, cutOff: cut)
        }
    }

    /// Waits until `latency` after `issued` for the device to confirm; a device that never
    /// confirms is given ten times as long (at least 1 ms), then `cutOff` runs (the 2014 HMM
    /// review's rule: tear the mirror down, never leave it stale access).
    private static func wait(issued: UInt64, latency: UInt64, fails: Bool, cutOff: () -> Void) {
        let (ten, overflow) = latency.multipliedReportingOverflow(by: 10)
        let until = issued &+ (fails ? max(overflow ? UInt64.max / 2 : ten, 1_000_000) : latency)
        let now = monotonicNanoseconds()
        // Under the explorer the wait is a scheduling point whatever the clock says (a replay
        // must take the same path).
        if Sync.scheduler != nil { syncDelay(nanoseconds: 0) } else if now < until { syncDelay(nanoseconds: until - now) }
        if fails { cutOff() }
    }
}
