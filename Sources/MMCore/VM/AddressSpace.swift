import MMSync

/// An address space (`struct mm_struct`): VMAs, a page table, MMU notifier subscriptions and
/// the CPUs that run in it.
///
/// Locking: `mmapLock` (rwsem) guards the VMA list and VMA fields: read for faults and walks,
/// write for mmap/munmap/mprotect/mremap/fork. `pageTableLock` serialises anon_vma setup.
public final class AddressSpace: @unchecked Sendable {
    public let machine: Machine
    /// The machine's memory and counters, as stored `let`s of this class: the fault path then
    /// uses them borrowed, without retain/release (a `let` of another object, or an
    /// `unowned(unsafe)` one, costs a retain and a release around each call).
    public let memory: PhysicalMemory
    /// The machine's THP settings, a stored `let` here for the same reason: every anonymous
    /// fault asks them (`thp_vma_allowable_order`), and `memory.thp.allowsFault` retained and
    /// released the one machine-wide object around the call, a cache line every faulting CPU
    /// wrote (two threads' faults then stopped scaling once the page clear was gone).
    let thp: TransparentHugepage
    @usableFromInline let stats: MMStats
    public let id: Int32
    public let mmapLock = RWSem("mmap_lock")
    /// `mm_lock_seq`: bumped when the mmap lock is released for write, which releases every
    /// VMA write lock taken under it (see `VMA+Lock.swift`).
    public let vmLockSeq = MMLockSeq()
    /// Bumped for each VMA that leaves the tree; CPUs drop cached VMAs when it moves.
    let detachGeneration = AtomicWord(0)
    /// VMAs out of the tree that a CPU's cache may still name, with the generation of their
    /// detach (freed by `reapDetachedVMAs`). Locking: mmap write lock.
    @exclusivity(unchecked) var detachedVMAs: [(vma: VMA, generation: UInt64)] = []
    public let pageTable: PageTable
    let pageTableLock = Lock("page_table_lock")
    /// Sorted, non-overlapping, in a balanced tree. Locking: mmapLock.
    @exclusivity(unchecked) var vmaList = VMATree(floor: mmapMinAddress)
    public let notifiers: MMUNotifierSubscriptions
    /// Set once the address space was torn down (exit_mmap); later operations fail with EINVAL
    /// for devices, as a dead mm does in the kernel.
    public var isDead: Bool { deadFlag.load() != 0 }
    @usableFromInline let deadFlag = AtomicWord(0)
    /// The OOM killer's mark: alive, killed (being reaped) or reaped (see `OOMKill.swift`).
    @usableFromInline let oomState = AtomicWord(0)
    let oomBadnessAtKill = AtomicWord(0)
    /// 1 while this address space holds the huge zero folio (`MMF_HUGE_ZERO_FOLIO`).
    let holdsHugeZeroFolio = AtomicWord(0)
    /// 1 once a THP or huge zero PMD leaf was mapped here: faults then look at the PMD level
    /// even where new THPs are not allowed (an address space that never had one skips it).
    let thpMapped = AtomicWord(0)
    @inline(__always) public var mayHoldTHP: Bool { thpMapped.loadRelaxed() != 0 }
    var pgdFreed = false
    /// `mm_users`-like count of holders that keep the address space usable.
    let users = AtomicCounter(1)

    // TLB shootdown state (see CPU.swift).
    /// The TLB flush generation, in raw memory so CPUs can keep a direct pointer to it.
    @usableFromInline let flushGenerationWord: UnsafeMutableRawPointer = {
        let p = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
        p.storeBytes(of: UInt64(0), as: UInt64.self)
        return p
    }()
    @inlinable var flushGeneration: AtomicU64Ref { AtomicU64Ref(flushGenerationWord) }
    let cpusLock = Lock("mm-cpus")
    /// The attached CPUs, each retained once from `attach` to `detach`: a plain table, so the
    /// shootdown walks it without a reference on an array buffer that every reclaiming and
    /// faulting thread would otherwise share. Locking: `cpusLock`.
    private var cpuTable = UnsafeMutablePointer<Unmanaged<CPU>>.allocate(capacity: 4)
    private var cpuTableCapacity = 4
    private var cpuCount = 0
    /// The attached CPUs, as an array (a copy of the table). Locking: `cpusLock` (the explorer's
    /// step checks read it without: every other thread is stopped then).
    var cpus: [CPU] { (0..<cpuCount).map { cpuTable[$0].takeUnretainedValue() } }

    deinit {
        if !isDead { exitMMap() }
        flushGenerationWord.deallocate()
        for i in 0..<cpuCount { cpuTable[i].release() }
        cpuTable.deallocate()
    }

    init(machine: Machine) throws(Errno) {
        self.machine = machine
        memory = machine.memory
        thp = machine.memory.thp
        stats = machine.stats
        id = machine.allocatePid()
        pageTable = try PageTable(memory: machine.memory)
        notifiers = MMUNotifierSubscriptions()
        notifiers.mm = self
        notifiers.machineStats = machine.stats
        machine.register(self)
    }

    /// Creates an empty address space on `machine`.
    public static func create(on machine: Machine) throws(Errno) -> AddressSpace { try AddressSpace(machine: machine) }

    // MARK: VMA lookup (caller holds mmapLock)

    /// Index of the first VMA whose end is above `address`.
    func vmaIndex(atOrAfter address: UInt64) -> Int { vmaList.index(atOrAfter: address) }

    /// `find_vma`: the first VMA with end > address. Locking: mmap lock held.
    public func findVMA(_ address: UInt64) -> VMA? {
        mmapLock.assertLocked()
        let i = vmaIndex(atOrAfter: address)
        return i < vmaList.count ? vmaList[i] : nil
    }
    /// `vma_lookup`: the VMA containing address. Locking: mmap lock held.
    public func vmaLookup(_ address: UInt64) -> VMA? {
        mmapLock.assertLocked()
        guard let v = findVMA(address), v.start <= address else { return nil }
        return v
    }
    /// A copy of the VMA list. Locking: mmap lock held.
    public var vmas: [VMA] { mmapLock.assertLocked(); return Array(vmaList) }

    /// A snapshot of the VMA list, taking the mmap lock for read.
    public func snapshotVMAs() -> [VMA] { mmapLock.withRead { Array(vmaList) } }

    func insertVMA(_ vma: VMA) {
        mmapLock.assertWriteLocked()
        let i = vmaIndex(atOrAfter: vma.start)
        precondition(i == vmaList.count || vmaList.bounds(at: i).start >= vma.end, "overlapping VMA insert")
        vmaList.insert(vma, at: i)
        vma.isAttached = true
        if let f = vma.file { f.linkMapping(vma) }
    }

    /// Unlinks the VMA at `i` from the tree and every rmap (`vma_mark_detached`, `remove_vma`).
    /// Locking: mmap lock held for write; the VMA is write-locked here if it was not already.
    func removeVMA(at i: Int) {
        mmapLock.assertWriteLocked()
        vmaStartWrite(vmaList[i])
        let vma = vmaList.remove(at: i)
        vma.isAttached = false
        hugetlbVMAClose(vma)
        retireDetachedVMA(vma)
        if let f = vma.file { f.unlinkMapping(vma) }
        unlinkAnonVMAs(vma)
    }

    /// Finds a free range of `length` bytes starting at a multiple of `align` (top-down from
    /// mmapBase), honouring a hint (a huge page mapping's rounded up to `align`, as
    /// hugetlb_get_unmapped_area does).
    func unmappedArea(length: UInt64, hint: UInt64, align: UInt64 = pageSize) -> UInt64? {
        let h = align == pageSize ? pageAlignDown(hint) : hint.addingReportingOverflow(align - 1).overflow ? 0 : (hint &+ align &- 1) & ~(align - 1)
        if hint != 0, h >= mmapMinAddress, length <= taskSize, h <= taskSize - length {
            let i = vmaIndex(atOrAfter: h)
            if i == vmaList.count || vmaList[i].start >= h + length { return h }
        }
        // Top-down below mmapBase: the highest gap that fits, found through the tree's gaps
        // (with room to align the start: the highest aligned start in the gap found).
        guard align > pageSize else { return vmaList.highestFreeRange(length: length, below: mmapBase) }
        guard let a = vmaList.highestFreeRange(length: length + align - pageSize, below: mmapBase) else { return nil }
        return (a + align - pageSize) & ~(align - 1)
    }

    // MARK: CPUs and TLB

    func attach(_ cpu: CPU) {
        cpusLock.withLock {
            if cpuCount == cpuTableCapacity {
                let bigger = UnsafeMutablePointer<Unmanaged<CPU>>.allocate(capacity: 2 * cpuTableCapacity)
                bigger.moveInitialize(from: cpuTable, count: cpuCount)
                cpuTable.deallocate()
                cpuTable = bigger
                cpuTableCapacity *= 2
            }
            cpuTable[cpuCount] = .passRetained(cpu)
            cpuCount += 1
        }
    }
    /// A CPU leaves (its thread ended, or its process exited). It stops using its VMA cache
    /// first, and a lookup it may be inside (when another thread detaches it) finishes: after
    /// that, the grace period for detached VMAs no longer needs to look at it.
    /// Locking: takes `cpusLock`; caller holds no mmap lock.
    func detach(_ cpu: CPU) {
        mmapLock.assertNotHeld()
        cpu.vmaCache.dead.store(1)
        var round = 0
        while cpu.vmaCache.active.load() != 0 { Sync.spinWait(&round, .wait, nil) }
        cpusLock.withLock {
            guard let i = (0..<cpuCount).first(where: { cpuTable[$0].takeUnretainedValue() === cpu }) else { return }
            cpuTable[i].release()
            (cpuTable + i).moveInitialize(from: cpuTable + i + 1, count: cpuCount - i - 1)
            cpuCount -= 1
        }
    }

    /// TLB shootdown (`flush_tlb_mm`/`flush_tlb_range`): when this returns, no CPU of this
    /// address space can still reach a frame through a translation that was changed before the
    /// call. Every CPU that is inside an access acknowledges at its next access boundary; CPUs
    /// outside any access flush when they next enter one.
    /// Locking: may be called with page-table locks held; must not be called by a CPU thread
    /// that is inside an access.
    public func flushTLB() {
        // Contract not checkable here: which thread is a CPU inside an access is the CPU's
        // state, not the thread's (the shootdown would wait for itself and hang, loudly).
        let gen = flushGeneration.fetchAdd(1) &+ 1
        stats.count(.tlbShootdown)
        // The CPU list is walked under its lock (its table, no count on each CPU): an
        // acknowledgement never takes that lock, and attaching or detaching a CPU waits.
        cpusLock.lock(); defer { cpusLock.unlock() }
        var waits = 0
        for i in 0..<cpuCount {
            cpuTable[i]._withUnsafeGuaranteedRef { cpu in
                var round = 0
                var waited = false
                while cpu.inUser.load() != 0 && cpu.ackGeneration.load() < gen {
                    waited = true
                    Sync.spinWait(&round, .wait, nil)
                }
                if waited { waits += 1 }
            }
        }
        if waits > 0 { stats.count(.tlbShootdownWaits, waits) }
    }

    /// Marks the address space dead and frees its top-level table once no CPU can be walking
    /// it: a CPU checks `isDead` after entering user mode and before walking, and the shootdown
    /// waits for CPUs that entered before the mark.
    func markDeadAndFreePGD() {
        deadFlag.store(1)
        flushTLB()
        if !pgdFreed { pgdFreed = true; pageTable.freeTable(pageTable.pgd) }
    }
}

extension AddressSpace {
    /// Number of VMAs. Locking: takes the mmap lock for read.
    public var vmaCount: Int { mmapLock.withRead { vmaList.count } }
}
