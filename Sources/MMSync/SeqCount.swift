import Synchronization

/// A sequence counter: odd while a writer is inside; readers retry when it moved.
///
/// Lockdep: a writer section is held like a lock of class `seqcount NAME`; a reader's wait is
/// an acquire and release of it (the kernel's `seqcount_lockdep_reader_access`), so a reader
/// that waits while holding a lock the writer section takes is an order inversion.
public final class SeqCount: @unchecked Sendable {
    @usableFromInline let seq = Atomic<UInt64>(0)
    public let name: StaticString
    /// This counter's lockdep class: every `SeqCount` of one name (made once, here).
    public let lockClass: Lockdep.LockClass
    public init(_ name: StaticString = "seqcount") { self.name = name; lockClass = Lockdep.LockClass(.seqcount, "\(name)") }
    @usableFromInline var instance: UnsafeRawPointer { UnsafeRawPointer(Unmanaged.passUnretained(self).toOpaque()) }

    @inlinable public func writeBegin(file: StaticString = #fileID, line: UInt = #line) {
        if Lockdep.enabled { Lockdep.acquire(lockClass, instance, Lockdep.Site(file, line)) }
        Sync.point(.seqWrite, instance)
        let old = seq.wrappingAdd(1, ordering: .sequentiallyConsistent).oldValue
        precondition(old & 1 == 0, "nested seqcount writer")
    }
    @inlinable public func writeEnd(file: StaticString = #fileID, line: UInt = #line) {
        if Lockdep.enabled { Lockdep.release(lockClass, instance, Lockdep.Site(file, line)) }
        let old = seq.wrappingAdd(1, ordering: .sequentiallyConsistent).oldValue
        precondition(old & 1 == 1, "seqcount writeEnd without writeBegin")
        Sync.point(.seqWrite, instance)
    }
    /// Waits until no writer is inside and returns the sequence.
    @inlinable public func readBegin(file: StaticString = #fileID, line: UInt = #line) -> UInt64 {
        if Lockdep.enabled {
            let site = Lockdep.Site(file, line)
            Lockdep.mayWait(site)
            Lockdep.acquire(lockClass, instance, site)
            Lockdep.release(lockClass, instance, site)
        }
        Sync.point(.seqRead, instance)
        var round = 0
        while true {
            let s = seq.load(ordering: .acquiring)
            if s & 1 == 0 { return s }
            Sync.spinWait(&round, .seqRead, instance)
        }
    }
    @inlinable public func readRetry(_ start: UInt64) -> Bool {
        atomicFence()
        return seq.load(ordering: .acquiring) != start
    }
    @inlinable public var value: UInt64 { seq.load(ordering: .acquiring) }
}
