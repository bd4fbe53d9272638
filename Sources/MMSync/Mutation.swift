/// Re-introduced bugs for the explorer's catalogue (issue 13, docs/explorer.md): each named
/// mutation, when on, makes one function behave as a historical kernel bug or review finding
/// did, so that the explorer can show it finds it. All are off unless a test or
/// `hmm explore --mutation NAME` turns one on; when off, the check is one load of a word that
/// is zero.
public enum Mutation: Int, CaseIterable, Sendable, CustomStringConvertible {
    /// The driver programs its page table from a `hmm_range_fault` snapshot without
    /// `mmu_interval_read_retry` under its lock (the protocol of Documentation/mm/hmm.rst).
    case mirrorWithoutReadRetry
    /// `mprotect` changes the PTEs without invalidating secondary MMUs.
    case mprotectWithoutInvalidate
    /// The CPU fault on a device-exclusive entry sends its CLEAR invalidation while holding
    /// the PTE lock: the notifier callbacks may sleep, so they must run outside it.
    case notifierUnderPTL
    /// The driver holds its own lock across `migrate_vma_setup` in `migrate_to_ram`, and its
    /// invalidation callback takes the same lock.
    case driverLockInMigrateToRAM
    /// `fork` copies a device-exclusive entry, restored to a present PTE, without
    /// write-protecting it in a copy-on-write mapping: parent and child share a writable page.
    case forkExclusiveWithoutWrprotect
    /// `migrate_vma_collect` unmaps pages without flushing the TLB before they are copied: a
    /// CPU writes through its stale translation into the old page after the copy.
    case migrateCollectWithoutTLBFlush
    /// The fault on a device-private entry takes its page reference before the page lock and
    /// keeps it while it waits: the winner's migration sees the waiters' references and fails,
    /// and threads faulting one page livelock (before commit 1afaeb8293c9, 2025).
    case devicePrivateFaultReferenceFirst
    /// Kernel-thread migration (`migrate_pages` without the owning process) walks the rmap of
    /// a page it unmapped without holding a reference on the page's anon_vma: a concurrent
    /// munmap or exit frees the anon_vma under it (the 2007 race, fixed by taking the
    /// reference: commit 3f6c82728f4e, "mm: migration: take a reference to the anon_vma
    /// before migrating"; before it, commit dc386d4d1e98 held rcu_read_lock).
    case migrateWithoutAnonVMAReference
    /// The CPU fault on a device-exclusive entry restores the PTE without checking, under the
    /// PTE lock, that it still holds the entry it read (`pte_same` in
    /// `remove_device_exclusive_entry`): a zap that ran in between is undone.
    case exclusiveRestoreWithoutRecheck
    /// Migration's rmap walk (`try_to_migrate`) passes over device-exclusive entries, as
    /// migration did before the 2025 rework that kept the mapcount of those entries and taught
    /// `try_to_migrate_one` to convert them: the entry keeps its mapping and reference, so the
    /// page never migrates and memory offlining retries it forever.
    case migrateSkipsDeviceExclusive

    public var description: String {
        switch self {
        case .mirrorWithoutReadRetry: return "mirror-without-read-retry"
        case .mprotectWithoutInvalidate: return "mprotect-without-invalidate"
        case .notifierUnderPTL: return "notifier-under-ptl"
        case .driverLockInMigrateToRAM: return "driver-lock-in-migrate-to-ram"
        case .forkExclusiveWithoutWrprotect: return "fork-exclusive-without-wrprotect"
        case .migrateCollectWithoutTLBFlush: return "migrate-collect-without-tlb-flush"
        case .devicePrivateFaultReferenceFirst: return "device-private-fault-reference-first"
        case .migrateWithoutAnonVMAReference: return "migrate-without-anon-vma-reference"
        case .exclusiveRestoreWithoutRecheck: return "exclusive-restore-without-recheck"
        case .migrateSkipsDeviceExclusive: return "migrate-skips-device-exclusive"
        }
    }

    public init?(name: String) {
        guard let m = Mutation.allCases.first(where: { $0.description == name }) else { return nil }
        self = m
    }

    /// The mutations on, one bit each. Set before the machine's threads start.
    @exclusivity(unchecked) nonisolated(unsafe) public static var active: UInt64 = 0

    /// The `active` word with exactly `mutations` on.
    public static func mask(_ mutations: [Mutation]) -> UInt64 {
        mutations.reduce(0) { $0 | (1 << UInt64($1.rawValue)) }
    }

    /// Whether `m` is on.
    @inlinable @inline(__always) public static func on(_ m: Mutation) -> Bool {
        _slowPath(active != 0) && active & (1 << UInt64(m.rawValue)) != 0
    }

    /// Runs `body` with exactly `mutations` on.
    public static func with<T>(_ mutations: [Mutation], _ body: () throws -> T) rethrows -> T {
        let saved = active
        active = mask(mutations)
        defer { active = saved }
        return try body()
    }
}
