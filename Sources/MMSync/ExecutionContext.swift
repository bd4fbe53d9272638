#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MMArch
import Synchronization

/// A user-level execution context on one OS thread, the carrier (MMArch's `mm_context`): the
/// explorer runs each model thread of an execution as one, so a scheduling hand-off is a
/// context switch in one thread (the cost `hmm bench` compares with `swapcontext`), not a
/// wake-up of another CPU.
///
/// What a model thread takes to be its own follows the context: `currentThreadID()` (lock
/// owners), lockdep's stack of held locks, Swift's dynamic-exclusivity accesses, and the
/// `owner` its runner gave it (the explorer's thread).
///
/// Locking: contexts are made, switched and recycled on the carrier only, one carrier at a
/// time (the explorer runs one exploration at a time in a process); the stack pool has its own
/// mutex.
public final class ExecutionContext: @unchecked Sendable {
    let raw: OpaquePointer
    /// The carrier's own context (no stack of its own).
    public let isCarrier: Bool
    /// The identity `currentThreadID()` gives the code running on this context: the address of
    /// its `mm_context` (never an OS thread's id), or the carrier's own thread id.
    public let id: UInt64
    /// What this context runs for, unretained (the explorer's model thread); nil for the carrier.
    public private(set) var owner: UnsafeMutableRawPointer?
    /// Lockdep's stack of held locks for this context (retained) while it is switched out.
    var lockdepStack: UnsafeMutableRawPointer?
    /// Whether it ever ran (a context that never did may go back to the pool).
    public private(set) var started = false

    private init(raw: OpaquePointer, isCarrier: Bool, id: UInt64) {
        self.raw = raw; self.isCarrier = isCarrier; self.id = id
    }

    /// The calling OS thread becomes the carrier: the returned context is its own, and the
    /// contexts it switches to run on it. Undo with `endCarrier()`.
    public static func beginCarrier() -> ExecutionContext {
        precondition(mm_context_carrier() == 0, "ExecutionContext: a carrier is already running contexts")
        let me = osThreadID()
        let c = ExecutionContext(raw: mm_context_create_carrier(), isCarrier: true, id: me)
        Running.current = me
        Running.owner = nil
        mm_context_set_carrier(me)
        return c
    }

    /// Ends the carrier's role (called on the carrier, running its own context). The context
    /// of every thread that finished goes back to the pool with `recycle()` first.
    public func endCarrier() {
        precondition(isCarrier && ExecutionContext.onCarrier && Running.current == id, "ExecutionContext.endCarrier: not on the carrier's own context")
        mm_context_set_carrier(0)
        Running.current = 0
        mm_context_destroy(raw)
    }

    /// A context with a stack (8 MiB reserved, committed as it is touched), from the pool when
    /// one is there, that runs for `owner` and will run `entry(owner)` at its first switch-in.
    /// `entry` must end by `switchForGood`. nil when no memory can be had for a stack.
    public static func make(entry: @convention(c) (UnsafeMutableRawPointer?) -> Void, owner: UnsafeMutableRawPointer) -> ExecutionContext? {
        assert(onCarrier, "ExecutionContext.make: not on a carrier")
        guard let raw = Pool.take() ?? mm_context_create(stackBytes) else { return nil }
        mm_context_prepare(raw, entry, owner)
        let c = ExecutionContext(raw: raw, isCarrier: false, id: UInt64(UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(raw)))))
        c.owner = owner
        return c
    }
    static let stackBytes = 8 << 20

    /// Gives a context that ran to its end (its entry switched away for good) or never ran back
    /// to the pool, with its lockdep stack. A context left suspended for good (its execution
    /// failed while it waited) must not be recycled: its stack still holds live frames.
    public func recycle() {
        precondition(!isCarrier && ExecutionContext.onCarrier && Running.current != id, "ExecutionContext.recycle: off the carrier, the carrier itself, or a running context")
        if let s = lockdepStack { Lockdep.releaseThreadStack(s); lockdepStack = nil }
        Pool.give(raw)
    }

    /// Switches from this context (the running one) to `next`; returns when a switch comes back.
    public func switchTo(_ next: ExecutionContext) {
        let (from, to) = prepareSwitch(to: next)
        mm_context_switch(from, to)
    }

    /// The bookkeeping of a switch to `next`, without the switch: the identity, the owner and
    /// lockdep's stack become `next`'s. Returns the raw pair for `switchForGood`.
    public func prepareSwitch(to next: ExecutionContext) -> (OpaquePointer, OpaquePointer) {
        assert(Running.current == id && ExecutionContext.onCarrier, "ExecutionContext: switching from a context that is not running")
        lockdepStack = Lockdep.exchangeThreadStack(next.lockdepStack)
        next.lockdepStack = nil
        next.started = true
        Running.current = next.id
        Running.owner = next.owner
        return (raw, next.raw)
    }

    /// The last switch of a context whose entry is done (after `prepareSwitch`): nothing is
    /// retained in the calling frame, which is never resumed.
    public static func switchForGood(_ pair: (OpaquePointer, OpaquePointer)) -> Never {
        mm_context_switch(pair.0, pair.1)
        fatalError("ExecutionContext: a finished context was resumed")
    }

    /// The owner of the context running on the calling thread, or nil when the caller is not
    /// on a carrier's context with an owner (any other OS thread, or the carrier's own context).
    @inline(__always)
    public static var runningOwner: UnsafeMutableRawPointer? { onCarrier ? Running.owner : nil }

    /// Whether the calling OS thread is running a carrier's contexts.
    @inline(__always)
    public static var onCarrier: Bool { mm_context_carrier() == osThreadID() }

    /// The context switched in on the carrier, read only there. (The carrier's id, read by
    /// every thread, is MMArch's `mm_context_carrier()`: a relaxed atomic without a lazy
    /// initialiser, as `currentThreadID()` reads it at every lock acquisition.)
    @usableFromInline enum Running {
        /// The running context's identity.
        @usableFromInline @exclusivity(unchecked) nonisolated(unsafe) static var current: UInt64 = 0
        @exclusivity(unchecked) nonisolated(unsafe) static var owner: UnsafeMutableRawPointer? = nil
    }

    /// Stacks kept for the next contexts (a few: an execution's threads come and go together).
    enum Pool {
        static let kept = Mutex<[UInt]>([])
        static let limit = 32
        /// Stacks kept now (for tests).
        static var count: Int { kept.withLock { $0.count } }
        static func take() -> OpaquePointer? {
            kept.withLock { $0.popLast() }.flatMap { OpaquePointer(bitPattern: $0) }
        }
        static func give(_ raw: OpaquePointer) {
            let bits = UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(raw)))
            let keep = kept.withLock { list in
                guard list.count < limit else { return false }
                list.append(bits)
                return true
            }
            if !keep { mm_context_destroy(raw) }
        }
    }
}

/// The calling OS thread's id (`pthread_self`).
@inlinable @inline(__always)
func osThreadID() -> UInt64 {
    UInt64(UInt(bitPattern: Int(bitPattern: UnsafeRawPointer(pthread_self_shim()))))
}
