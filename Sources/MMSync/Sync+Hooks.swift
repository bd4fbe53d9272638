/// The single choke point through which every MMSync primitive reports what it is about to do.
///
/// In real mode `Sync.scheduler` is nil and each hook is one inlined nil check. The explorer
/// installs a scheduler that turns every reported point into a scheduling decision.
public enum SyncPointKind: UInt8, Sendable {
    case lockAcquire, lockRelease, rwsemRead, rwsemWrite, rwsemRelease
    case bitLockAcquire, bitLockRelease, seqWrite, seqRead
    case atomic, wait, wake, spin, threadStart, threadExit, yield
}

/// A controlled scheduler (explorer mode). Every method is called on the model thread that hit
/// the point; the scheduler may park that thread and run another one before returning.
public protocol SyncScheduler: AnyObject {
    /// Whether the calling thread is one the scheduler runs (a thread it does not run, such
    /// as a test's own thread, waits and blocks for real).
    var controlsCurrentThread: Bool { get }
    func schedulingPoint(_ kind: SyncPointKind, object: UnsafeRawPointer?)
    /// The calling thread cannot make progress until another thread acts (spinning on a lock,
    /// waiting for an event). The scheduler must run someone else.
    func blocked(_ kind: SyncPointKind, object: UnsafeRawPointer?)
    /// As `blocked`, for a wait with a timeout. Time is the scheduler's: it returns true (the
    /// wait timed out) only when no thread could make progress otherwise, so a timed wait
    /// ends the same way in every replay of a schedule.
    func blockedTimed(_ kind: SyncPointKind, object: UnsafeRawPointer?) -> Bool
    /// A retry loop went round again (`rounds` so far): the scheduler reports a livelock past
    /// its bound. `what` names the loop.
    func retrying(_ rounds: Int, _ what: @autoclosure () -> String)
    /// Adds a check to run at every scheduling decision of this execution, if the scheduler was
    /// asked to (see `Sync.addStepCheck`).
    func addStepCheck(_ check: @escaping () -> [String])
    /// Adds a way to name the objects of this execution's steps in failure reports (see
    /// `Sync.addObjectDescriber`).
    func addObjectDescriber(_ describe: @escaping (UnsafeRawPointer) -> String?)
}

public enum Sync {
    /// The installed explorer scheduler, or nil in real mode.
    @exclusivity(unchecked) nonisolated(unsafe) public static var scheduler: SyncScheduler? = nil

    @inlinable @inline(__always)
    public static func point(_ kind: SyncPointKind, _ object: UnsafeRawPointer? = nil) {
        if let scheduler = scheduler { scheduler.schedulingPoint(kind, object: object) }
    }

    /// Called inside every spin or retry loop: in real mode it yields the CPU after a few
    /// rounds; in explorer mode it tells the scheduler this thread is blocked.
    @inlinable
    public static func spinWait(_ round: inout Int, _ kind: SyncPointKind = .spin,
                                _ object: UnsafeRawPointer? = nil) {
        if let scheduler = scheduler, scheduler.controlsCurrentThread { scheduler.blocked(kind, object: object); return }
        round &+= 1
        if round > 64 { sched_yield_shim() } else { spinHint() }
    }

    /// A retry loop's round `rounds` (a fault retried, a range walk restarted): under the
    /// explorer, past its retry bound it is a livelock. Free in real mode.
    @inlinable
    public static func retryLoop(_ rounds: Int, _ what: @autoclosure () -> String) {
        if let scheduler = scheduler { scheduler.retrying(rounds, what()) }
    }

    /// Registers `check` with the explorer running this execution (called from one of its
    /// threads; from any other thread it does nothing): with `--check-every-step` it runs at
    /// every scheduling decision, and the first time it returns problems they fail the
    /// execution (the report lists up to five).
    /// It runs on the deciding model thread while every other one is stopped at a scheduling
    /// point, so it must read the model without MMSync locks or atomics that are points
    /// (`Machine.checkStepInvariants`). Nothing in real mode.
    public static func addStepCheck(_ check: @escaping () -> [String]) { scheduler?.addStepCheck(check) }

    /// Registers `describe` with the explorer running this execution (from one of its threads):
    /// a failure report names the objects each thread changed, or is about to change, with an
    /// atomic step (a page-table entry's store or exchange is one) through it, when it knows
    /// them (nil otherwise). It runs while the
    /// execution is stopped, under the same rules as a step check. Nothing in real mode.
    public static func addObjectDescriber(_ describe: @escaping (UnsafeRawPointer) -> String?) {
        scheduler?.addObjectDescriber(describe)
    }

    /// A named yield point for code that wants to offer the scheduler a switch.
    @inlinable
    public static func yieldPoint() { point(.yield) }
}

@usableFromInline func spinHint() {
    #if arch(x86_64)
    // A compiler barrier is enough for our purposes; `pause` is not exposed to Swift.
    _ = 0
    #endif
}
