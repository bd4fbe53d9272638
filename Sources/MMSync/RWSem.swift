import Synchronization

/// A reader/writer semaphore (the kernel's rw_semaphore, used for `mmap_lock`).
///
/// Writers are preferred once waiting, as in the kernel (a queued writer blocks new readers),
/// so a stream of readers cannot starve munmap/mprotect.
public final class RWSem: @unchecked Sendable {
    /// >0: number of readers; -1: write-locked; 0: free.
    @usableFromInline let state = Atomic<Int>(0)
    @usableFromInline let writersWaiting = Atomic<Int>(0)
    @usableFromInline let writer = Atomic<UInt64>(0)
    let queue = WaitQueue()
    public let name: StaticString

    /// This semaphore's lockdep class: every `RWSem` of one name (made once, here).
    public let lockClass: Lockdep.LockClass

    public init(_ name: StaticString = "rwsem") { self.name = name; lockClass = Lockdep.LockClass(.rwsem, "\(name)") }
    @usableFromInline var instance: UnsafeRawPointer { UnsafeRawPointer(Unmanaged.passUnretained(self).toOpaque()) }

    public func lockRead(file: StaticString = #fileID, line: UInt = #line) {
        if Lockdep.enabled { Lockdep.acquire(lockClass, instance, Lockdep.Site(file, line)) }
        Sync.point(.rwsemRead, instance)
        if tryLockReadUntracked() { return }
        precondition(writer.load(ordering: .relaxed) != currentThreadID(), "\(name): read lock while holding write lock")
        queue.wait { self.tryLockReadUntracked() }
    }

    public func tryLockRead(file: StaticString = #fileID, line: UInt = #line) -> Bool {
        guard tryLockReadUntracked() else { return false }
        if Lockdep.enabled { Lockdep.acquire(lockClass, instance, Lockdep.Site(file, line), trylock: true) }
        return true
    }

    @usableFromInline func tryLockReadUntracked() -> Bool {
        var s = state.load(ordering: .relaxed)
        while s >= 0 && writersWaiting.load(ordering: .relaxed) == 0 {
            let (ok, orig) = state.compareExchange(expected: s, desired: s + 1, ordering: .acquiring)
            if ok { return true }
            s = orig
        }
        return false
    }

    public func unlockRead(file: StaticString = #fileID, line: UInt = #line) {
        if Lockdep.enabled { Lockdep.release(lockClass, instance, Lockdep.Site(file, line)) }
        let old = state.wrappingSubtract(1, ordering: .releasing).oldValue
        precondition(old > 0, "\(name): read unlock without read lock")
        Sync.point(.rwsemRelease, instance)
        if old == 1 { queue.wakeAll() }
    }

    public func lockWrite(file: StaticString = #fileID, line: UInt = #line) {
        if Lockdep.enabled { Lockdep.acquire(lockClass, instance, Lockdep.Site(file, line)) }
        Sync.point(.rwsemWrite, instance)
        precondition(writer.load(ordering: .relaxed) != currentThreadID(), "\(name): recursive write lock")
        if tryLockWriteNoQueue() { return }
        writersWaiting.wrappingAdd(1, ordering: .sequentiallyConsistent)
        queue.wait { self.tryLockWriteNoQueue() }
        writersWaiting.wrappingSubtract(1, ordering: .sequentiallyConsistent)
        queue.wakeAll() // readers held back by this waiter may retry
    }

    public func tryLockWrite(file: StaticString = #fileID, line: UInt = #line) -> Bool {
        guard tryLockWriteNoQueue() else { return false }
        if Lockdep.enabled { Lockdep.acquire(lockClass, instance, Lockdep.Site(file, line), trylock: true) }
        return true
    }

    @usableFromInline func tryLockWriteNoQueue() -> Bool {
        if state.compareExchange(expected: 0, desired: -1, ordering: .acquiring).exchanged {
            writer.store(currentThreadID(), ordering: .relaxed)
            return true
        }
        return false
    }

    public func unlockWrite(file: StaticString = #fileID, line: UInt = #line) {
        if Lockdep.enabled { Lockdep.release(lockClass, instance, Lockdep.Site(file, line)) }
        precondition(writer.load(ordering: .relaxed) == currentThreadID(), "\(name): write unlock by non-owner")
        writer.store(0, ordering: .relaxed)
        state.store(0, ordering: .releasing)
        Sync.point(.rwsemRelease, instance)
        queue.wakeAll()
    }

    /// Converts a held write lock into a read lock (`mmap_write_downgrade`).
    public func downgrade() {
        precondition(writer.load(ordering: .relaxed) == currentThreadID())
        writer.store(0, ordering: .relaxed)
        state.store(1, ordering: .releasing)
        queue.wakeAll()
    }

    public var isLocked: Bool { state.load(ordering: .relaxed) != 0 }
    public var isWriteLockedByCurrentThread: Bool { writer.load(ordering: .relaxed) == currentThreadID() }

    /// `mmap_assert_locked`: held in some mode — by the calling thread when lockdep is on (it
    /// tracks readers); otherwise only that someone holds it.
    @inlinable public func assertLocked(file: StaticString = #file, line: UInt = #line) {
        assert(state.load(ordering: .relaxed) != 0 && (!Lockdep.enabled || Lockdep.holds(instance)), "\(name) not locked", file: file, line: line)
    }
    /// The calling thread does not hold this semaphore (it is about to take it). Exact when
    /// lockdep is on; otherwise checks the writer only.
    @inlinable public func assertNotHeld(file: StaticString = #file, line: UInt = #line) {
        assert(writer.load(ordering: .relaxed) != currentThreadID() && (!Lockdep.enabled || !Lockdep.holds(instance)),
               "\(name) already held", file: file, line: line)
    }
    /// `mmap_assert_write_locked`.
    @inlinable public func assertWriteLocked(file: StaticString = #file, line: UInt = #line) {
        assert(writer.load(ordering: .relaxed) == currentThreadID(), "\(name) not write-locked", file: file, line: line)
    }

    public func withRead<T>(file: StaticString = #fileID, line: UInt = #line, _ body: () throws -> T) rethrows -> T {
        lockRead(file: file, line: line); defer { unlockRead(file: file, line: line) }; return try body()
    }
    public func withWrite<T>(file: StaticString = #fileID, line: UInt = #line, _ body: () throws -> T) rethrows -> T {
        lockWrite(file: file, line: line); defer { unlockWrite(file: file, line: line) }; return try body()
    }
}
