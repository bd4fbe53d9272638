import MMCore
import MMSync

/// The canonical driver fault loop, written once (test_hmm.c's `dmirror_range_fault`):
///
/// ```
/// while true {
///     if timed out { return EBUSY }
///     range.notifierSeq = notifier.readBegin()
///     mmap_read_lock(); ret = hmm_range_fault(&range); mmap_read_unlock()
///     if ret == EBUSY { continue }            // the range changed while we walked
///     if ret != 0 { return ret }
///     driver_lock()
///     if notifier.readRetry(range.notifierSeq) { driver_unlock(); continue }
///     program the device from range.hmmPfns   // still under the driver lock
///     driver_unlock(); return 0
/// }
/// ```
///
/// The driver's interval-notifier callback must take the same `driverLock` around
/// `setSeq`, which is what makes the final `readRetry` check reliable.
public enum HMMMirror {
    /// Default timeout of the loop (`HMM_RANGE_DEFAULT_TIMEOUT`, 1000 ms).
    public static let defaultTimeoutNanoseconds: UInt64 = 1_000_000_000

    /// Runs the loop over `range`, calling `program` under `driverLock` with a range that is
    /// known current. Locking: caller holds neither the mmap lock nor `driverLock`.
    /// Errors: EBUSY on timeout, or whatever `hmmRangeFault`/`program` returns.
    /// Return: the number of passes (1 when nothing raced).
    @discardableResult
    public static func faultAndProgram(_ range: inout HMMRange, driverLock: Lock,
                                       timeoutNanoseconds: UInt64 = defaultTimeoutNanoseconds,
                                       program: (HMMRange) throws(Errno) -> Void) throws(Errno) -> Int {
        guard let mm = range.notifier.mm else { throw .EINVAL }
        mm.mmapLock.assertNotHeld(); driverLock.assertNotHeld()
        let deadline = monotonicNanoseconds() &+ timeoutNanoseconds
        var passes = 0
        while true {
            passes += 1
            if Sync.scheduler == nil {
                if monotonicNanoseconds() > deadline { throw .EBUSY }
            } else if passes > 1 {
                // Under the explorer: rounds, not the clock (a replay must take the same path).
                Sync.retryLoop(passes, "the mirror's fault loop retried")
            }
            range.notifierSeq = range.notifier.readBegin()
            mm.mmapLock.lockRead()
            do {
                try mm.hmmRangeFault(&range)
            } catch {
                mm.mmapLock.unlockRead()
                if error == .EBUSY { mm.machine.stats.count(.notifierRetries); continue }
                throw error
            }
            mm.mmapLock.unlockRead()
            driverLock.lock()
            if !Mutation.on(.mirrorWithoutReadRetry) && range.notifier.readRetry(range.notifierSeq) {
                driverLock.unlock()
                mm.machine.stats.count(.notifierRetries)
                continue
            }
            do { try program(range) } catch { driverLock.unlock(); throw error }
            driverLock.unlock()
            return passes
        }
    }
}
