#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// A sleeping mutual-exclusion lock (the kernel's mutex / spinlock analogue).
///
/// `lock()` and `unlock()` may be called from different functions (as kernel code does with
/// spinlocks), but by the same thread. `assertHeld()` checks ownership in debug builds.
public final class Lock: @unchecked Sendable {
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
    @usableFromInline let owner = Atomic<UInt64>(0)
    public let name: StaticString

    public init(_ name: StaticString = "lock") {
        self.name = name
        lockClass = Lockdep.LockClass(.mutex, "\(name)")
        mutex = .allocate(capacity: 1)
        var attr = pthread_mutexattr_t()
        pthread_mutexattr_init(&attr)
        #if DEBUG
        pthread_mutexattr_settype(&attr, Int32(PTHREAD_MUTEX_ERRORCHECK))
        #elseif os(Linux)
        // Critical sections are short (the zone lock covers a free-list operation): a waiter
        // spins a little before sleeping, as the kernel's spinlocks would not sleep at all.
        pthread_mutexattr_settype(&attr, Int32(PTHREAD_MUTEX_ADAPTIVE_NP))
        #endif
        pthread_mutex_init(mutex, &attr)
        pthread_mutexattr_destroy(&attr)
    }
    deinit { pthread_mutex_destroy(mutex); mutex.deallocate() }

    @inlinable public func lock(file: StaticString = #fileID, line: UInt = #line) {
        if Lockdep.enabled { Lockdep.acquire(lockClass, UnsafeRawPointer(mutex), Lockdep.Site(file, line)) }
        if let scheduler = Sync.scheduler, scheduler.controlsCurrentThread {
            scheduler.schedulingPoint(.lockAcquire, object: UnsafeRawPointer(mutex))
            while pthread_mutex_trylock(mutex) != 0 { scheduler.blocked(.lockAcquire, object: UnsafeRawPointer(mutex)) }
        } else {
            let rc = pthread_mutex_lock(mutex)
            precondition(rc == 0, "Lock \(name): pthread_mutex_lock failed (\(rc)): recursive locking?")
        }
        owner.store(currentThreadID(), ordering: .relaxed)
    }

    @inlinable public func tryLock(file: StaticString = #fileID, line: UInt = #line) -> Bool {
        Sync.point(.lockAcquire, UnsafeRawPointer(mutex))
        guard pthread_mutex_trylock(mutex) == 0 else { return false }
        owner.store(currentThreadID(), ordering: .relaxed)
        if Lockdep.enabled { Lockdep.acquire(lockClass, UnsafeRawPointer(mutex), Lockdep.Site(file, line), trylock: true) }
        return true
    }

    /// This lock's lockdep class: every `Lock` of one name (made once, at init).
    public let lockClass: Lockdep.LockClass

    @inlinable public func unlock(file: StaticString = #fileID, line: UInt = #line) {
        if Lockdep.enabled { Lockdep.release(lockClass, UnsafeRawPointer(mutex), Lockdep.Site(file, line)) }
        assert(Lockdep.enabled || isHeldByCurrentThread, "Lock \(name) released by a thread that does not hold it")
        owner.store(0, ordering: .relaxed)
        pthread_mutex_unlock(mutex)
        Sync.point(.lockRelease, UnsafeRawPointer(mutex))
    }

    @inlinable @discardableResult
    public func withLock<T>(file: StaticString = #fileID, line: UInt = #line, _ body: () throws -> T) rethrows -> T {
        lock(file: file, line: line); defer { unlock(file: file, line: line) }
        return try body()
    }

    @inlinable public var isHeldByCurrentThread: Bool {
        owner.load(ordering: .relaxed) == currentThreadID()
    }

    /// Debug-build assertion that the calling thread holds this lock.
    @inlinable public func assertHeld(file: StaticString = #file, line: UInt = #line) {
        assert(isHeldByCurrentThread, "Lock \(name) not held", file: file, line: line)
    }
    /// Debug-build assertion that the calling thread does not hold this lock.
    @inlinable public func assertNotHeld(file: StaticString = #file, line: UInt = #line) {
        assert(!isHeldByCurrentThread, "Lock \(name) held", file: file, line: line)
    }
}

/// A spinlock living in one 64-bit word of raw memory (the split page-table lock stored in the
/// page-table page's metadata). The word holds 0 when free and the owner's thread id when held.
@frozen
public struct SpinLockRef {
    public let word: AtomicU64Ref
    @inlinable @inline(__always) public init(_ pointer: UnsafeMutableRawPointer) { word = AtomicU64Ref(pointer) }

    /// Every page-table lock is one lockdep class (the kernel's `ptlock`).
    public static let lockClass = Lockdep.LockClass(.spinlock, "ptlock")

    @inlinable public func lock(file: StaticString = #fileID, line: UInt = #line) {
        if Lockdep.enabled { Lockdep.acquire(SpinLockRef.lockClass, UnsafeRawPointer(word.pointer), Lockdep.Site(file, line)) }
        let me = currentThreadID()
        var round = 0
        while true {
            if word.compareExchange(expected: 0, desired: me).exchanged { return }
            precondition(word.load(.relaxed) != me, "spinlock: recursive acquisition")
            Sync.spinWait(&round, .lockAcquire, UnsafeRawPointer(word.pointer))
        }
    }
    @inlinable public func tryLock(file: StaticString = #fileID, line: UInt = #line) -> Bool {
        guard word.compareExchange(expected: 0, desired: currentThreadID()).exchanged else { return false }
        if Lockdep.enabled { Lockdep.acquire(SpinLockRef.lockClass, UnsafeRawPointer(word.pointer), Lockdep.Site(file, line), trylock: true) }
        return true
    }
    @inlinable public func unlock(file: StaticString = #fileID, line: UInt = #line) {
        if Lockdep.enabled { Lockdep.release(SpinLockRef.lockClass, UnsafeRawPointer(word.pointer), Lockdep.Site(file, line)) }
        assert(Lockdep.enabled || isHeldByCurrentThread, "spinlock released by non-owner")
        word.store(0, .release)
        Sync.point(.lockRelease, UnsafeRawPointer(word.pointer))
    }
    @inlinable public var isHeldByCurrentThread: Bool { word.load(.relaxed) == currentThreadID() }
    @inlinable public var isLocked: Bool { word.load(.relaxed) != 0 }
    @inlinable public func assertHeld(file: StaticString = #file, line: UInt = #line) {
        assert(isHeldByCurrentThread, "page-table lock not held", file: file, line: line)
    }
}
