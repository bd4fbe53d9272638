import MMSync

/// Per-VMA locks (Linux 6.4+, `include/linux/mmap_lock.h`): a page fault locks the one VMA it
/// needs instead of taking the mmap lock, so faults on different VMAs, or on one VMA while
/// another thread maps or unmaps elsewhere, do not serialise on the address space. Everything
/// that changes a VMA locks it for write (`vma_start_write`) under the mmap write lock; the
/// write locks last until the mmap lock is released for write (`mmapWriteUnlock`).
extension AddressSpace {
    /// `mmap_write_lock`. Locking: caller holds no mmap lock.
    @inline(__always) func mmapWriteLock(file: StaticString = #fileID, line: UInt = #line) {
        mmapLock.lockWrite(file: file, line: line)
    }

    /// `mmap_write_unlock`: releases every VMA write lock taken under it
    /// (`vma_end_write_all`), then the mmap lock. Locking: mmap lock held for write.
    @inline(__always) func mmapWriteUnlock(file: StaticString = #fileID, line: UInt = #line) {
        mmapLock.assertWriteLocked()
        reapDetachedVMAs()
        vmLockSeq.endWriteAll()
        mmapLock.unlockWrite(file: file, line: line)
    }

    /// `mmap_write_downgrade`: as the unlock, the VMA write locks end here.
    /// Locking: mmap lock held for write; held for read on return.
    func mmapWriteDowngrade() {
        mmapLock.assertWriteLocked()
        reapDetachedVMAs()
        vmLockSeq.endWriteAll()
        mmapLock.downgrade()
    }

    /// `vma_start_write`: no fault may use `vma` until the mmap write lock is released; waits
    /// for the faults inside it to finish. Locking: mmap lock held for write.
    func vmaStartWrite(_ vma: VMA, file: StaticString = #fileID, line: UInt = #line) {
        mmapLock.assertWriteLocked()
        vma.vmLock.lockWrite(vmLockSeq, file: file, line: line)
    }

    /// `lock_vma_under_rcu`: the VMA containing `address` locked for read, without the mmap
    /// lock, or nil (the caller falls back to the mmap lock). The kernel finds the VMA in the
    /// maple tree under RCU; here the lookup is the calling CPU's cache of the VMAs it last
    /// faulted in (`VMACache`; a divergence in mechanism only, D10). A VMA found there is
    /// checked again once locked (still attached, still covering the address), as the kernel
    /// re-checks what it found.
    /// Locking: caller holds no mmap lock; `cache` is the calling CPU's.
    /// Return: the VMA without a reference (its read lock keeps it alive), or nil.
    func lockVMAUnderRCU(_ address: UInt64, _ cache: VMACache) -> Unmanaged<VMA>? {
        mmapLock.assertNotHeld()
        // The read-side critical section: detached VMAs are not freed while it is open
        // (`reapDetachedVMAs`), and entries cached before a detach are dropped first.
        cache.active.store(1)
        defer { cache.active.storeRelease(0) }
        // A CPU detached from its address space (by another thread's exit) is no longer in the
        // grace period's scan: it must not use its cache (see `AddressSpace.detach`).
        if cache.dead.load() != 0 { return nil }
        cache.sync(detachGeneration.load())
        guard let found = cache.lookup(address) else {
            stats.count(.vmaLockAbort)
            return nil
        }
        return found._withUnsafeGuaranteedRef { vma -> Unmanaged<VMA>? in
            guard vma.vmLock.tryLockRead(vmLockSeq) else {
                stats.count(.vmaLockAbort)
                return nil
            }
            // Locked: the VMA cannot change until we unlock. It may have been detached
            // (refcount 0 in vma_start_read: VMA_LOCK_MISS) or changed before we locked it
            // (out of range: VMA_LOCK_ABORT), as lock_vma_under_rcu checks.
            guard vma.isAttached else {
                vma.vmLock.unlockRead()
                stats.count(.vmaLockMiss)
                return nil
            }
            guard vma.start <= address, address < vma.end else {
                // The VMA was split or shrunk since it was cached: keep its bounds as they are
                // now (read under its lock), so that the entry stops hiding its neighbours.
                cache.refresh(found, start: vma.start, end: vma.end)
                vma.vmLock.unlockRead()
                stats.count(.vmaLockAbort)
                return nil
            }
            return found
        }
    }

    /// A VMA leaves the tree: it is kept (`detached`) until no CPU can still find it in its
    /// cache (the kernel frees VMAs after an RCU grace period). Locking: mmap write lock.
    func retireDetachedVMA(_ vma: VMA) {
        mmapLock.assertWriteLocked()
        let gen = detachGeneration.add(1)
        detachedVMAs.append((vma, gen))
    }

    /// Frees the detached VMAs no CPU can reach any more: every CPU of this address space is
    /// either outside a VMA-cache lookup or has synchronised its cache past the detach.
    /// Locking: mmap write lock.
    func reapDetachedVMAs() {
        mmapLock.assertWriteLocked()
        guard !detachedVMAs.isEmpty else { return }
        let caches = cpusLock.withLock { cpus.map(\.vmaCache) }
        var oldestInUse = UInt64.max
        for c in caches where c.active.load() != 0 { oldestInUse = min(oldestInUse, c.seenGeneration.load()) }
        detachedVMAs.removeAll { $0.generation <= oldestInUse }
    }
}

/// A CPU's cache of the VMAs it last faulted in (the pre-6.1 kernel's per-thread `vmacache`),
/// the lookup of its lockless fault path. Entries hold no reference: a VMA leaving the tree is
/// kept by its address space until every CPU has dropped the entries made before (see
/// `reapDetachedVMAs`). The bounds kept with each entry are a hint, checked again under the
/// VMA's lock. The entries are the owning CPU thread's alone; `active` and
/// `seenGeneration` are read by writers.
final class VMACache: @unchecked Sendable {
    static let size = 4
    /// 1 while the owner is inside a lookup (the read-side critical section).
    let active = AtomicWord(0)
    /// 1 once the CPU is detached: the cache is not used any more.
    let dead = AtomicWord(0)
    /// The address space's detach generation the entries are valid for.
    let seenGeneration = AtomicWord(0)
    @exclusivity(unchecked) private var entries: [(start: UInt64, end: UInt64, vma: Unmanaged<VMA>)] = []
    @exclusivity(unchecked) private var next = 0

    /// Drops every entry if VMAs were detached since they were made. Owner thread only.
    @inline(__always) func sync(_ generation: UInt64) {
        if seenGeneration.loadRelaxed() != generation {
            entries.removeAll(keepingCapacity: true); next = 0
            seenGeneration.store(generation)
        }
    }

    func lookup(_ address: UInt64) -> Unmanaged<VMA>? {
        for e in entries where e.start <= address && address < e.end { return e.vma }
        return nil
    }

    /// Records `vma`, found under the mmap lock; entries whose bounds overlap it are dropped
    /// (they are out of date). Locking: mmap lock held (bounds and the detach generation are
    /// stable). Owner thread only.
    func insert(_ vma: VMA, generation: UInt64) {
        Lockdep.assertSomeRWSemHeld()
        guard dead.load() == 0 else { return }
        sync(generation)
        let e = (start: vma.start, end: vma.end, vma: Unmanaged.passUnretained(vma))
        entries.removeAll { $0.vma.toOpaque() != e.vma.toOpaque() && $0.start < e.end && e.start < $0.end }
        if next > entries.count { next = 0 }
        if let i = entries.firstIndex(where: { $0.vma.toOpaque() == e.vma.toOpaque() }) { entries[i] = e; return }
        if entries.count < VMACache.size { entries.append(e); return }
        entries[next] = e
        next = (next + 1) % VMACache.size
    }

    /// New bounds for a cached VMA. Locking: the VMA's read lock (its bounds are stable).
    /// Owner thread only.
    func refresh(_ vma: Unmanaged<VMA>, start: UInt64, end: UInt64) {
        Lockdep.assertSomeRWSemHeld()
        if let i = entries.firstIndex(where: { $0.vma.toOpaque() == vma.toOpaque() }) { entries[i] = (start, end, vma) }
    }
}
