#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import MMArch

/// A non-zero number naming the calling model thread, used as lock owner in assertions: the
/// OS thread, or on an explorer's carrier the execution context running there (each model
/// thread of an exploration is one, see `ExecutionContext`).
@inlinable @inline(__always)
public func currentThreadID() -> UInt64 {
    let me = osThreadID()
    return me == mm_context_carrier() ? ExecutionContext.Running.current : me
}

@usableFromInline func pthread_self_shim() -> OpaquePointer? {
    #if canImport(Glibc)
    return OpaquePointer(bitPattern: UInt(pthread_self()))
    #else
    return OpaquePointer(pthread_self())
    #endif
}

@usableFromInline func sched_yield_shim() { sched_yield() }

/// Sleeps the calling OS thread. In explorer mode this is a yield to the scheduler.
public func syncSleep(nanoseconds: UInt64, file: StaticString = #fileID, line: UInt = #line) {
    if Lockdep.enabled { Lockdep.mayWait(Lockdep.Site(file, line)) }
    if let scheduler = Sync.scheduler, scheduler.controlsCurrentThread { scheduler.blocked(.yield, object: nil); return }
    hostSleep(nanoseconds)
}

/// `nanosleep` for the whole time, through interruptions.
private func hostSleep(_ nanoseconds: UInt64) {
    var ts = timespec(tv_sec: Int(nanoseconds / 1_000_000_000), tv_nsec: Int(nanoseconds % 1_000_000_000))
    var rem = timespec()
    while nanosleep(&ts, &rem) != 0 { ts = rem }
}

/// A modelled device delay (a TLB shootdown's latency): sleeps on real threads; under the
/// explorer it is only a scheduling point (the explorer has no clock, and a sleep there is a
/// block that, with no other thread to run, it would report as a deadlock).
public func syncDelay(nanoseconds: UInt64, file: StaticString = #fileID, line: UInt = #line) {
    if Lockdep.enabled { Lockdep.mayWait(Lockdep.Site(file, line)) }
    if let scheduler = Sync.scheduler, scheduler.controlsCurrentThread { scheduler.schedulingPoint(.yield, object: nil); return }
    hostSleep(nanoseconds)
}

/// Monotonic clock in nanoseconds.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
