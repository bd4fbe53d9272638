#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// A wait queue: threads sleep until a condition they re-check becomes true (`wait_event`).
/// Wakers change the state first, then call `wakeAll()`.
public final class WaitQueue: @unchecked Sendable {
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
    @usableFromInline let cond: UnsafeMutablePointer<pthread_cond_t>
    @usableFromInline let waiters = Atomic<Int>(0)

    public init() {
        mutex = .allocate(capacity: 1); cond = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil); pthread_cond_init(cond, nil)
    }
    deinit {
        pthread_cond_destroy(cond); pthread_mutex_destroy(mutex)
        cond.deallocate(); mutex.deallocate()
    }

    /// Sleeps until `condition()` is true. The condition is evaluated with the queue's internal
    /// mutex held, so it must not take locks that a waker holds while calling `wakeAll()`.
    /// Returns false if `timeoutNanoseconds` elapsed first.
    @discardableResult
    public func wait(timeoutNanoseconds: UInt64? = nil, file: StaticString = #fileID, line: UInt = #line,
                     until condition: () -> Bool) -> Bool {
        if condition() { return true }
        if Lockdep.enabled { Lockdep.mayWait(Lockdep.Site(file, line)) }
        if let scheduler = Sync.scheduler, scheduler.controlsCurrentThread {
            // The scheduler's time: a timed wait times out only when nothing else can run.
            while !condition() {
                if timeoutNanoseconds != nil {
                    if scheduler.blockedTimed(.wait, object: UnsafeRawPointer(mutex)) { return condition() }
                } else {
                    scheduler.blocked(.wait, object: UnsafeRawPointer(mutex))
                }
            }
            return true
        }
        let deadline = timeoutNanoseconds.map { monotonicNanoseconds() &+ $0 }
        pthread_mutex_lock(mutex)
        waiters.wrappingAdd(1, ordering: .sequentiallyConsistent)
        defer {
            waiters.wrappingSubtract(1, ordering: .sequentiallyConsistent)
            pthread_mutex_unlock(mutex)
        }
        while !condition() {
            // Bounded sleeps: a missed wake-up costs at most one millisecond, never a hang.
            var now = timespec(); clock_gettime(CLOCK_REALTIME, &now)
            var sliceNs = 1_000_000 as UInt64
            if let d = deadline {
                let t = monotonicNanoseconds()
                if t >= d { return false }
                sliceNs = min(sliceNs, d - t)
            }
            var ts = now
            let ns = UInt64(ts.tv_nsec) + sliceNs
            ts.tv_sec += Int(ns / 1_000_000_000); ts.tv_nsec = Int(ns % 1_000_000_000)
            pthread_cond_timedwait(cond, mutex, &ts)
        }
        return true
    }

    /// Wakes every sleeper so that it re-checks its condition.
    public func wakeAll() {
        atomicFence()
        wakeAllAfterBarrier()
    }

    /// `wakeAll` for a caller whose last access to the condition's state was a sequentially
    /// consistent read-modify-write (a full barrier already: the store is ordered before the
    /// load of the waiter count, so a sleeper either sees it or is counted and woken).
    public func wakeAllAfterBarrier() {
        Sync.point(.wake, UnsafeRawPointer(mutex))
        guard waiters.load(ordering: .sequentiallyConsistent) > 0 else { return }
        pthread_mutex_lock(mutex)
        pthread_cond_broadcast(cond)
        pthread_mutex_unlock(mutex)
    }
}

/// A one-shot completion (`struct completion`).
public final class Completion: @unchecked Sendable {
    let done = AtomicCounter(0)
    let queue = WaitQueue()
    public init() {}
    public func complete() { done.store(1); queue.wakeAll() }
    public var isCompleted: Bool { done.load() != 0 }
    @discardableResult
    public func wait(timeoutNanoseconds: UInt64? = nil) -> Bool {
        queue.wait(timeoutNanoseconds: timeoutNanoseconds) { self.done.load() != 0 }
    }
}
