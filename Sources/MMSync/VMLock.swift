import Synchronization

/// The write sequence of an address space (`mm->mm_lock_seq`): bumped each time the mmap lock
/// is released for write, which releases at once every per-VMA lock taken for write under it.
public final class MMLockSeq: @unchecked Sendable {
    @usableFromInline let value = Atomic<UInt64>(0)
    public init() {}
    /// The current sequence (a reader's snapshot).
    @inlinable @inline(__always) public func load() -> UInt64 { value.load(ordering: .acquiring) }
    /// `mmap_write_unlock`'s `vma_end_write_all`. Locking: caller holds the mmap lock for write.
    public func endWriteAll() {
        Lockdep.assertSomeRWSemHeld()
        Sync.point(.rwsemRelease, UnsafeRawPointer(Unmanaged.passUnretained(self).toOpaque()))
        value.wrappingAdd(1, ordering: .releasing)
    }
}

/// The per-VMA lock of Linux 6.4+ (`vma->vm_refcnt` and `vm_lock_seq`): page faults take it
/// for read without the mmap lock (`vma_start_read`), and everyone who changes a VMA takes it
/// for write (`vma_start_write`) while holding the mmap lock for write. A write lock is not
/// released by its holder: it lasts until the mmap lock is released for write (`MMLockSeq`).
///
/// A reader fails rather than waits (the fault then falls back to the mmap lock); a writer
/// waits for the readers already inside to leave.
///
/// Lockdep: a read hold is tracked like an rwsem's (class `rwsem vm_lock`); a write lock is an
/// acquire and release at once, recording the order (mmap_lock → vm_lock) without a hold, as
/// the kernel's `vma_start_write` does.
public final class VMLock: @unchecked Sendable {
    /// The `MMLockSeq` value under which a writer locked this VMA; while it equals the mm's
    /// current sequence, the VMA is write-locked. Read-mostly (`vm_lock_seq`).
    @usableFromInline let lockSeq = Atomic<UInt64>(UInt64.max)
    /// Padding on both sides of `readers`, so that its 64-byte line holds nothing else (as the
    /// kernel's `vm_refcnt` is `____cacheline_aligned_in_smp`): every fault writes it twice,
    /// and `lockSeq` and the VMA's bounds stay shared in the faulting CPUs' caches. (An
    /// object is 16-byte aligned: 56 bytes each side keep any line that holds `readers`
    /// inside this object; a separately allocated aligned block made `mmap` 50% slower.)
    private let padBefore: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0)
    /// Readers inside, plus `writerBit` while a writer waits for them to drain.
    @usableFromInline let readers = Atomic<Int>(0)
    private let padAfter: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0)
    @usableFromInline static let writerBit = 1 << 40

    public init() {}

    public static let lockClass = Lockdep.LockClass(.rwsem, "vm_lock")
    @usableFromInline var instance: UnsafeRawPointer { UnsafeRawPointer(Unmanaged.passUnretained(self).toOpaque()) }

    /// `vma_start_read`: takes the lock for read unless a writer holds it (under the mm's
    /// current write sequence) or is draining readers. Never waits. Return: whether it is held.
    @inlinable
    public func tryLockRead(_ seq: MMLockSeq, file: StaticString = #fileID, line: UInt = #line) -> Bool {
        Sync.point(.rwsemRead, instance)
        if lockSeq.load(ordering: .acquiring) == seq.load() { return false }
        var r = readers.load(ordering: .relaxed)
        while true {
            if r & VMLock.writerBit != 0 { return false }
            let (ok, seen) = readers.compareExchange(expected: r, desired: r + 1, ordering: .acquiringAndReleasing)
            if ok { break }
            r = seen
        }
        // A writer may have locked and released the drain between the first check and the
        // increment: its sequence stamp is visible now (the drain's release orders it).
        if lockSeq.load(ordering: .acquiring) == seq.load() {
            readers.wrappingSubtract(1, ordering: .releasing)
            return false
        }
        if Lockdep.enabled { Lockdep.acquire(VMLock.lockClass, instance, Lockdep.Site(file, line), trylock: true) }
        return true
    }

    /// `vma_end_read`.
    @inlinable
    public func unlockRead(file: StaticString = #fileID, line: UInt = #line) {
        if Lockdep.enabled { Lockdep.release(VMLock.lockClass, instance, Lockdep.Site(file, line)) }
        let old = readers.wrappingSubtract(1, ordering: .releasing).oldValue
        precondition(old & (VMLock.writerBit - 1) > 0, "vm_lock: read unlock without read lock")
        Sync.point(.rwsemRelease, instance)
    }

    /// Whether a writer holds the lock under `seq` (`__is_vma_write_locked`).
    @inlinable public func isWriteLocked(_ seq: MMLockSeq) -> Bool { lockSeq.load(ordering: .acquiring) == seq.load() }

    /// `vma_start_write`: locks for write until the mmap write lock is released, waiting for
    /// the readers inside to leave. Idempotent under one write sequence.
    /// Locking: caller holds the owning mm's mmap lock for write (the caller asserts it).
    public func lockWrite(_ seq: MMLockSeq, file: StaticString = #fileID, line: UInt = #line) {
        Lockdep.assertSomeRWSemHeld()
        let current = seq.load()
        if lockSeq.load(ordering: .relaxed) == current { return }
        if Lockdep.enabled {
            let site = Lockdep.Site(file, line)
            Lockdep.mayWait(site)
            Lockdep.acquire(VMLock.lockClass, instance, site)
            Lockdep.release(VMLock.lockClass, instance, site)
        }
        Sync.point(.rwsemWrite, instance)
        readers.wrappingAdd(VMLock.writerBit, ordering: .sequentiallyConsistent)
        var round = 0
        while readers.load(ordering: .acquiring) != VMLock.writerBit { Sync.spinWait(&round, .wait, instance) }
        lockSeq.store(current, ordering: .releasing)
        readers.wrappingSubtract(VMLock.writerBit, ordering: .releasing)
    }

    /// Readers inside now (for tests and invariant checks).
    public var readerCount: Int { readers.load(ordering: .relaxed) & (VMLock.writerBit - 1) }
}
