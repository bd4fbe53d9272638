import MMArch
import Synchronization

/// Event counters kept per host CPU and summed when read (the kernel's `vm_event_states`,
/// `count_vm_event`): an increment touches a cache line of the CPU it runs on, so threads
/// counting the same event on different CPUs do not bounce one line between them. Relaxed
/// increments; a read is a sum over the slots (exact once the counting threads are done).
/// Not a synchronization point: the explorer does not schedule around counters.
public final class PerCPUCounters: @unchecked Sendable {
    /// Slots (host CPUs modulo this); a power of two.
    @usableFromInline static let slots = 16
    @usableFromInline let count: Int
    /// Words per slot, rounded up to whole 64-byte lines.
    @usableFromInline let stride: Int
    @usableFromInline let base: UnsafeMutablePointer<Atomic<Int>>

    public init(count: Int) {
        self.count = count
        stride = (count + 7) & ~7
        base = .allocate(capacity: stride * PerCPUCounters.slots)
        for i in 0..<(stride * PerCPUCounters.slots) { (base + i).initialize(to: Atomic(0)) }
    }
    deinit { base.deallocate() }

    /// The calling thread's slot: its current CPU (`raw_smp_processor_id`).
    @inlinable @inline(__always) static func slot() -> Int {
        Int(mm_current_cpu()) & (slots - 1)
    }

    @inlinable @inline(__always) public func add(_ index: Int, _ n: Int = 1) {
        (base + (PerCPUCounters.slot() &* stride &+ index)).pointee.wrappingAdd(n, ordering: .relaxed)
    }

    /// The sum over every CPU's slot.
    public subscript(_ index: Int) -> Int {
        var s = 0
        for slot in 0..<PerCPUCounters.slots { s &+= (base + slot * stride + index).pointee.load(ordering: .relaxed) }
        return s
    }
}
