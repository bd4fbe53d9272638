import Synchronization

/// Memory orderings exposed to the rest of swift-hmm (only MMSync imports Synchronization).
public enum MemoryOrder: Sendable { case relaxed, acquire, release, acqrel, seqcst }

/// Atomic operations on a 64-bit word that lives in raw memory (a page-table entry in a frame,
/// a field of page metadata). The pointer must be 8-byte aligned.
@frozen
public struct AtomicU64Ref {
    public let pointer: UnsafeMutableRawPointer
    @inlinable @inline(__always) public init(_ pointer: UnsafeMutableRawPointer) { self.pointer = pointer }
    @usableFromInline var a: UnsafeMutablePointer<Atomic<UInt64>> { pointer.assumingMemoryBound(to: Atomic<UInt64>.self) }

    @inlinable @inline(__always) public func load(_ order: MemoryOrder = .acquire) -> UInt64 {
        switch order {
        case .relaxed: return a.pointee.load(ordering: .relaxed)
        case .seqcst: return a.pointee.load(ordering: .sequentiallyConsistent)
        default: return a.pointee.load(ordering: .acquiring)
        }
    }
    @inlinable @inline(__always) public func store(_ value: UInt64, _ order: MemoryOrder = .release) {
        Sync.point(.atomic, UnsafeRawPointer(pointer))
        switch order {
        case .relaxed: a.pointee.store(value, ordering: .relaxed)
        case .seqcst: a.pointee.store(value, ordering: .sequentiallyConsistent)
        default: a.pointee.store(value, ordering: .releasing)
        }
    }
    @inlinable @inline(__always) public func exchange(_ value: UInt64) -> UInt64 {
        Sync.point(.atomic, UnsafeRawPointer(pointer))
        return a.pointee.exchange(value, ordering: .sequentiallyConsistent)
    }
    @inlinable @inline(__always)
    public func compareExchange(expected: UInt64, desired: UInt64) -> (exchanged: Bool, original: UInt64) {
        Sync.point(.atomic, UnsafeRawPointer(pointer))
        return a.pointee.compareExchange(expected: expected, desired: desired, ordering: .sequentiallyConsistent)
    }
    @inlinable @inline(__always) @discardableResult
    public func fetchAdd(_ value: UInt64) -> UInt64 {
        Sync.point(.atomic, UnsafeRawPointer(pointer))
        return a.pointee.wrappingAdd(value, ordering: .sequentiallyConsistent).oldValue
    }
    @inlinable @inline(__always) @discardableResult
    public func fetchOr(_ value: UInt64) -> UInt64 {
        Sync.point(.atomic, UnsafeRawPointer(pointer))
        return a.pointee.bitwiseOr(value, ordering: .sequentiallyConsistent).oldValue
    }
    @inlinable @inline(__always) @discardableResult
    public func fetchAnd(_ value: UInt64) -> UInt64 {
        Sync.point(.atomic, UnsafeRawPointer(pointer))
        return a.pointee.bitwiseAnd(value, ordering: .sequentiallyConsistent).oldValue
    }
}

/// Atomic operations on a 32-bit signed counter in raw memory (refcount, mapcount, pincount).
@frozen
public struct AtomicI32Ref {
    public let pointer: UnsafeMutableRawPointer
    @inlinable @inline(__always) public init(_ pointer: UnsafeMutableRawPointer) { self.pointer = pointer }
    @usableFromInline var a: UnsafeMutablePointer<Atomic<Int32>> { pointer.assumingMemoryBound(to: Atomic<Int32>.self) }

    @inlinable @inline(__always) public func load() -> Int32 { a.pointee.load(ordering: .acquiring) }
    @inlinable @inline(__always) public func store(_ v: Int32) {
        Sync.point(.atomic, UnsafeRawPointer(pointer))
        a.pointee.store(v, ordering: .releasing)
    }
    /// Adds and returns the new value.
    @inlinable @inline(__always) @discardableResult public func add(_ v: Int32) -> Int32 {
        Sync.point(.atomic, UnsafeRawPointer(pointer))
        return a.pointee.wrappingAdd(v, ordering: .sequentiallyConsistent).newValue
    }
    @inlinable @inline(__always)
    public func compareExchange(expected: Int32, desired: Int32) -> (exchanged: Bool, original: Int32) {
        Sync.point(.atomic, UnsafeRawPointer(pointer))
        return a.pointee.compareExchange(expected: expected, desired: desired, ordering: .sequentiallyConsistent)
    }
}

/// Atomic operations on a byte in raw memory (CPU byte-sized atomics go through the 64-bit word).
@inlinable @inline(__always)
public func atomicFence() { Synchronization.atomicMemoryFence(ordering: .sequentiallyConsistent) }

/// A heap-allocated atomic integer for counters and flags held by objects.
public final class AtomicCounter: @unchecked Sendable {
    @usableFromInline let value: Atomic<Int>
    public init(_ initial: Int = 0) { value = Atomic(initial) }
    @inlinable public func load() -> Int { value.load(ordering: .acquiring) }
    @inlinable public func store(_ v: Int) { Sync.point(.atomic); value.store(v, ordering: .releasing) }
    @inlinable @discardableResult public func add(_ v: Int) -> Int {
        Sync.point(.atomic); return value.wrappingAdd(v, ordering: .sequentiallyConsistent).newValue
    }
    @inlinable public func compareExchange(expected: Int, desired: Int) -> Bool {
        Sync.point(.atomic)
        return value.compareExchange(expected: expected, desired: desired, ordering: .sequentiallyConsistent).exchanged
    }
    /// Relaxed increment for statistics counters.
    @inlinable public func increment() { value.wrappingAdd(1, ordering: .relaxed) }
}

/// A heap-allocated atomic flag word with relaxed fast-path loads (TLB flush requests).
public final class AtomicWord: @unchecked Sendable {
    @usableFromInline let value: Atomic<UInt64>
    public init(_ initial: UInt64 = 0) { value = Atomic(initial) }
    @inlinable @inline(__always) public func loadRelaxed() -> UInt64 { value.load(ordering: .relaxed) }
    @inlinable @inline(__always) public func load() -> UInt64 { value.load(ordering: .sequentiallyConsistent) }
    @inlinable @inline(__always) public func store(_ v: UInt64) {
        Sync.point(.atomic); value.store(v, ordering: .sequentiallyConsistent)
    }
    @inlinable @inline(__always) public func storeRelease(_ v: UInt64) { value.store(v, ordering: .releasing) }
    @inlinable @inline(__always) @discardableResult public func add(_ v: UInt64) -> UInt64 {
        Sync.point(.atomic); return value.wrappingAdd(v, ordering: .sequentiallyConsistent).newValue
    }
    /// Stores `v` and returns the value it replaced (`atomic_xchg`).
    @inlinable @inline(__always) public func exchange(_ v: UInt64) -> UInt64 {
        Sync.point(.atomic); return value.exchange(v, ordering: .sequentiallyConsistent)
    }
}
