import MMArch
import MMSync

/// Per-CPU page lists (`struct per_cpu_pages`, mm/page_alloc.c): single frames are allocated
/// from and freed to a list of the host CPU the thread runs on, refilled from and drained to
/// the buddy lists `batch` frames at a time under one hold of the zone lock. Threads faulting on
/// different CPUs then share neither the zone lock nor the free lists' lines.
///
/// Frames on these lists count as free (`freeFrames`). When the buddy lists cannot satisfy an
/// allocation, every list is drained back and the allocation retried (`drain_all_pages`), so
/// memory exhaustion stays exact. Under the explorer (a scheduler installed) every thread uses
/// list 0, so the frames an execution gets do not depend on host scheduling.
///
/// Locking: each list's own lock (`pcp->lock`), taken before the zone lock.
final class PerCPUPages: @unchecked Sendable {
    let lock = Lock("pcp")
    /// Frames on the list. Locking: changed under `lock` (a load and a store, not a locked
    /// read-modify-write); read anywhere (`freeFrames`).
    let countWord = AtomicCounter(0)
    var count: Int {
        @inline(__always) get { countWord.load() }
        @inline(__always) set { countWord.store(newValue) }
    }
    let pfns: UnsafeMutablePointer<UInt32>
    let capacity: Int

    init(capacity: Int) {
        self.capacity = capacity
        pfns = .allocate(capacity: max(capacity, 1))
    }
    deinit { pfns.deallocate() }
}

extension PhysicalMemory {
    /// Lists (host CPUs modulo this).
    static let pcpSlots = 16

    /// `zone_batchsize`: a quarter of a thousandth of the zone, at most 1 MiB of frames, made
    /// one less than a power of two (63 for a zone of 1 GiB and more); 0 disables the lists
    /// (machines under 64 MiB: their frames would sit on lists more than in the zone).
    static func pcpBatch(systemFrames: UInt64) -> Int {
        var batch = Int(min(systemFrames >> 10, (1 << 20) >> pageShift)) / 4
        guard batch >= 4 else { return 0 }
        batch += batch / 2
        var p = 1
        while p * 2 <= batch { p *= 2 }
        return p - 1
    }

    /// The calling thread's list.
    @inline(__always) func pcpList() -> Unmanaged<PerCPUPages> { pcpLists[pcpSlot()] }
    /// The calling thread's slot (its host CPU's; always 0 under the explorer).
    @inline(__always) func pcpSlot() -> Int {
        Sync.scheduler == nil ? Int(mm_current_cpu()) & (PhysicalMemory.pcpSlots - 1) : 0
    }

    /// `rmqueue_pcplist`: one frame from the calling CPU's list, refilled with `pcpBatch`
    /// frames when empty. Return: its pfn, or nil when the buddy lists are empty too.
    /// Locking: takes the list's lock, then the zone lock to refill.
    /// With `lru`, the frame is also made an allocated page and put in the slot's LRU add
    /// batch under the same hold of the list's lock (which guards that batch too), so a new
    /// user page costs no lock of its own to reach the LRU.
    func allocateFromPCP(lru: Bool = false) -> UInt64? {
        assert(!zoneLock.isHeldByCurrentThread, "allocation under the zone lock")
        let slot = pcpSlot()
        return pcpLists[slot]._withUnsafeGuaranteedRef { pcp -> UInt64? in
            pcp.lock.lock(); defer { pcp.lock.unlock() }
            if pcp.count == 0 {
                zoneLock.lock()
                // rmqueue_bulk: `pcpBatch` single frames, taken a block at a time (the largest
                // that still fits the batch), so a refill touches one page's metadata per
                // block, not per frame: the frames inside a free block are already clean.
                // (The kernel takes order 0 first. Either way a refill leaves at most one
                // buddy per order below the batch's, which the next refill uses; taking the
                // small leftovers first measured 15% slower faults here.)
                var n = 0
                while n < pcpBatch {
                    var order = min(PhysicalMemory.maxOrder, Int.bitWidth - 1 - (pcpBatch - n).leadingZeroBitCount)
                    var block = takeBlockLocked(order: order)
                    while block == nil && order > 0 { order -= 1; block = takeBlockLocked(order: order) }
                    guard let pfn = block else { break }
                    page(pfn).order = 0
                    for i in 0..<(1 << order) { pcp.pfns[n + i] = UInt32(pfn) + UInt32(i) }
                    n += 1 << order
                }
                buddyFreeFrames.add(-n)
                // The list pops from its end: reverse it, so consecutive faults get each
                // block's frames consecutively and ascending, the blocks in the order taken,
                // as the kernel's rmqueue_bulk list order gives (no sort: it cost 3% of a fault).
                var i = 0, j = n - 1
                while i < j { let t = pcp.pfns[i]; pcp.pfns[i] = pcp.pfns[j]; pcp.pfns[j] = t; i += 1; j -= 1 }
                pcp.count = n
                zoneLock.unlock()
                guard pcp.count > 0 else { return nil }
            }
            let n = pcp.count - 1
            pcp.count = n
            let pfn = UInt64(pcp.pfns[n])
            if lru {
                let p = page(pfn)
                prepareAllocated(p, order: 0)
                withLRU { $0.addLocked(p, slot: slot) }
            }
            return pfn
        }
    }

    /// `free_frozen_page_commit`: a single frame goes on the calling CPU's list; past `high`,
    /// a batch of the coldest goes back to the buddy lists.
    /// Locking: takes the list's lock, then the zone lock to drain.
    func freeToPCP(_ pfn: UInt64) {
        assert(!zoneLock.isHeldByCurrentThread, "free under the zone lock")
        pcpList()._withUnsafeGuaranteedRef { pcp in
            pcp.lock.lock(); defer { pcp.lock.unlock() }
            if pcp.count == pcp.capacity { drainLocked(pcp, pcpBatch) }
            let n = pcp.count
            pcp.pfns[n] = UInt32(pfn); pcp.count = n + 1
        }
    }

    /// Gives the `n` oldest frames of `pcp` back to the buddy lists (`free_pcppages_bulk`).
    /// Locking: caller holds `pcp.lock`; takes the zone lock.
    private func drainLocked(_ pcp: PerCPUPages, _ n: Int) {
        pcp.lock.assertHeld()
        let k = min(n, pcp.count)
        guard k > 0 else { return }
        zoneLock.lock()
        for i in 0..<k { freeBlockLocked(UInt64(pcp.pfns[i]), order: 0) }
        zoneLock.unlock()
        for i in k..<pcp.count { pcp.pfns[i - k] = pcp.pfns[i] }

        pcp.count -= k
    }

    /// `drain_all_pages`: every list back to the buddy lists (before an allocation is refused,
    /// and for the invariant checks). Locking: caller holds no pcp or zone lock.
    func drainAllPCP() {
        assert(!zoneLock.isHeldByCurrentThread, "drain under the zone lock")
        for slot in 0..<PhysicalMemory.pcpSlots {
            pcpLists[slot]._withUnsafeGuaranteedRef { pcp in
                pcp.lock.lock(); drainLocked(pcp, pcp.count); pcp.lock.unlock()
            }
        }
    }

    /// Frames on the per-CPU lists. Locking: takes each list's lock in turn.
    var pcpFrames: Int {
        (0..<PhysicalMemory.pcpSlots).reduce(0) { sum, slot in
            sum + pcpLists[slot]._withUnsafeGuaranteedRef { pcp in pcp.lock.withLock { pcp.count } }
        }
    }
}
