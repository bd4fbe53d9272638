import Synchronization

/// A sequence counter: odd while a writer is inside; readers retry when it moved.
public final class SeqCount: @unchecked Sendable {
    @usableFromInline let seq = Atomic<UInt64>(0)
    public init() {}
    @inlinable public func writeBegin() {
        Sync.point(.seqWrite)
        let old = seq.wrappingAdd(1, ordering: .sequentiallyConsistent).oldValue
        precondition(old & 1 == 0, "nested seqcount writer")
    }
    @inlinable public func writeEnd() {
        let old = seq.wrappingAdd(1, ordering: .sequentiallyConsistent).oldValue
        precondition(old & 1 == 1, "seqcount writeEnd without writeBegin")
    }
    /// Waits until no writer is inside and returns the sequence.
    @inlinable public func readBegin() -> UInt64 {
        Sync.point(.seqRead)
        var round = 0
        while true {
            let s = seq.load(ordering: .acquiring)
            if s & 1 == 0 { return s }
            Sync.spinWait(&round, .seqRead)
        }
    }
    @inlinable public func readRetry(_ start: UInt64) -> Bool {
        atomicFence()
        return seq.load(ordering: .acquiring) != start
    }
    @inlinable public var value: UInt64 { seq.load(ordering: .acquiring) }
}
