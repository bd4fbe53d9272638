import MMSync

/// The OOM killer (Linux 7.2, `mm/oom_kill.c`), when a machine has it on
/// (`Machine.oomKillerEnabled`): an allocation that may reclaim and still finds no frame after
/// direct reclaim gave up (`__alloc_pages_may_oom`) calls `outOfMemory`, which picks the address
/// space with the highest `oom_badness` (its resident pages, swap entries and page-table pages;
/// every `oom_score_adj` is 0, and of equal scores the newest wins, as `select_bad_process`
/// keeps the last of a tie), kills it (`oom_kill`) and has the OOM reaper take its private
/// memory (`__oom_reap_task_mm`: every anonymous or private, non-hugetlb, non-pfn-mapped VMA is
/// zapped under the mmap lock taken for read, with CLEAR invalidations). The allocation then
/// tries again. A killed process's CPUs get OOM at their next fault; its page tables, shared
/// memory and device mappings go when it exits.
/// Sendable: the state is atomics on each address space; `oomLock` serializes selection.
extension Machine {
    /// `out_of_memory`: kills a victim, or waits for the one already killed to be reaped.
    /// Return: whether memory may have come back (a victim was reaped), so the allocation
    /// should try again; false when the killer is off or no address space has anything to take.
    /// Locking: no spin lock held (sleeps while the reaper works).
    func outOfMemory() -> Bool {
        Lockdep.assertNoSpinLockHeld()
        guard oomKillerEnabled else { return false }
        oomLock.lock()
        let spaces = addressSpaces
        if let pending = spaces.first(where: { $0.oomState.load() == AddressSpace.oomKilled }) {
            // oom_killer_disable'd selection: a victim is still being reaped; wait for it.
            oomLock.unlock()
            oomWait.wait(timeoutNanoseconds: 1_000_000_000) { pending.oomState.load() != AddressSpace.oomKilled }
            return true
        }
        var victim: AddressSpace? = nil, chosen = 0
        for mm in spaces where mm.oomState.load() == AddressSpace.oomAlive && !mm.isDead {
            let points = oomBadness(mm)
            if points > 0 && points >= chosen { victim = mm; chosen = points }
        }
        guard let victim else { oomLock.unlock(); return false }
        victim.oomState.store(AddressSpace.oomKilled)
        victim.oomBadnessAtKill.store(UInt64(chosen))
        stats.count(.oomKill)
        oomLock.unlock()
        // The OOM reaper: a thread of its own (the allocating thread may hold the victim's
        // mmap lock, and a read lock is not taken twice by one thread).
        let reaper = ModelThread.spawn(name: "oom_reaper") { [weak victim] in
            victim?.oomReap()
            self.oomWait.wakeAll()
        }
        oomWait.wait(timeoutNanoseconds: 1_000_000_000) { victim.oomState.load() != AddressSpace.oomKilled }
        reaper.join()
        return true
    }

    /// `oom_badness`: pages resident (present entries; a PMD leaf counts its 512), swap entries
    /// and page-table pages of `mm` (0 if its mmap lock cannot be had for read now: counted
    /// from its page tables, which 7.2 keeps counters of instead).
    /// Locking: takes the mmap lock (trylock) and PTE locks.
    public func oomBadness(_ mm: AddressSpace) -> Int {
        Lockdep.assertNoSpinLockHeld()
        var tables = mm.pageTable.tableFrames
        guard mm.mmapLock.tryLockRead() else { return tables }
        defer { mm.mmapLock.unlockRead() }
        guard !mm.isDead else { return 0 }
        var counter = RSSCounter()
        _ = mm.pageTable.walk(0, taskSize + pageSize, &counter)
        tables = mm.pageTable.tableFrames
        return counter.pages + tables
    }
}

/// Resident pages and swap entries of a page table (`get_mm_rss` + `MM_SWAPENTS`).
struct RSSCounter: PageWalker {
    var pages = 0
    mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        let v = pmd.load()
        guard v.isHuge else { return .next }
        if v.isPresent || v.isSwap { pages += Int(pmdSize / pageSize) }
        return .skip
    }
    mutating func pudLeaf(_ pud: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep {
        if pud.load().isPresent { pages += Int((end - start) / pageSize) }
        return .skip
    }
    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep {
        let v = pte.load()
        if v.isPresent || v.isSwap { pages += 1 }
        return .next
    }
}

extension AddressSpace {
    static let oomAlive: UInt64 = 0, oomKilled: UInt64 = 1, oomReaped: UInt64 = 2

    /// Whether the OOM killer chose this address space's process.
    public var isOOMKilled: Bool { oomState.load() != AddressSpace.oomAlive }
    /// Its `oom_badness` when it was killed (pages), 0 if it was not.
    public var oomBadnessWhenKilled: Int { Int(oomBadnessAtKill.load()) }

    /// `oom_reap_task`: up to 10 tries (`MAX_OOM_REAP_RETRIES`, 100 ms apart as `HZ/10`) of
    /// `oom_reap_task_mm`, which fails when the mmap lock cannot be had for read or when part
    /// of the space could not be reaped. Marked reaped either way (`MMF_OOM_SKIP`).
    /// Return: how many tries it took (11: it gave up).
    /// Locking: caller holds no lock; takes the mmap lock (trylock) and what zapping takes.
    @discardableResult
    func oomReap() -> Int {
        Lockdep.assertNoLocksHeld()
        defer { oomState.store(AddressSpace.oomReaped) }
        var attempts = 0
        while attempts < AddressSpace.maxOOMReapRetries {
            attempts += 1
            if oomReapOnce() { return attempts }
            machine.oomWait.wait(timeoutNanoseconds: 100_000_000) { false }
        }
        return attempts + 1
    }

    static let maxOOMReapRetries = 10

    /// `oom_reap_task_mm` + `__oom_reap_task_mm`: with the mmap lock taken for read (trylock),
    /// every anonymous or private VMA that is not hugetlb or pfn-mapped is zapped without
    /// blocking (`zap_vma_for_reaping`), from the top of the space down; one whose invalidation
    /// a subscriber refused (a device that would have to wait for its lock) is left for the
    /// next try. Return: whether the whole space was reaped (or was gone already).
    /// Locking: caller holds no lock; takes the mmap lock (trylock) and what zapping takes.
    private func oomReapOnce() -> Bool {
        Lockdep.assertNoLocksHeld()
        guard mmapLock.tryLockRead() else { return false }
        defer { mmapLock.unlockRead() }
        guard !isDead else { return true }
        var reaped = true
        for vma in vmaList.reversed() where !vma.isHugetlb && !vma.flags.contains(.pfnMap) && (vma.isAnonymous || !vma.isShared) {
            if !zapVMAForReaping(vma) { reaped = false }
        }
        return reaped
    }
}
