import MMSync

/// Event counters of one machine (`/proc/vmstat`): per-CPU, relaxed increments, summed when
/// read for `--stats` and tests.
/// Sendable: the counters are atomics.
public final class MMStats: @unchecked Sendable {
    public enum Counter: Int, CaseIterable, Sendable {
        case faultAnonZeroPage, faultAnonNewPage, faultCOWCopy, faultCOWReuse, faultFileRead, faultShared
        case faultWriteShared, faultMigrationWait, faultDevicePrivate, faultDeviceExclusive
        case faultSIGSEGV, faultSIGBUS, faultRetry
        /// Per-VMA-lock faults (`VMA_LOCK_SUCCESS`, `_ABORT`, `_RETRY`, `_MISS` in /proc/vmstat).
        case vmaLockSuccess, vmaLockAbort, vmaLockRetry, vmaLockMiss
        case tlbShootdown, tlbShootdownWaits, tlbFlushLocal
        case pagesMigrated, pagesMigrationFailed, pagesMigratedToDevice, pagesMigratedToSystem
        case notifierInvalidations, notifierRetries
        case invalidateUnmap, invalidateClear, invalidateProtectionVMA, invalidateProtectionPage
        case invalidateSoftDirty, invalidateRelease, invalidateMigrate, invalidateExclusive
        case bytesCopied, forks, gupPages, pins
        /// hugetlb faults: a new huge page mapped, a COW copy, a COW reuse.
        case hugetlbFaultNewPage, hugetlbFaultCOWCopy, hugetlbFaultCOWReuse
        /// Transparent huge pages, printed with their /proc/vmstat names (`thp_fault_alloc`, …).
        case thpFaultAlloc, thpFaultFallback, thpZeroPageAlloc, thpSplitPMD, thpSplitPage, thpSplitPageFailed
        case thpDeferredSplitPage, thpCollapseAlloc, thpCollapseAllocFailed, thpMigrationSuccess, thpMigrationFail, thpMigrationSplit
        /// THPs reclaim split to swap them page by page (`thp_swpout_fallback`).
        case thpSwpoutFallback
        /// Swap and reclaim, named as in /proc/vmstat: pages read from and written to swap,
        /// swap-ins that had to read (major faults), pages reclaim gave back to the active
        /// list or MADV_COLD moved to the inactive one, MADV_FREE pages discarded.
        case pswpin, pswpout, pgmajfault, pgactivate, pgdeactivate, pglazyfreed
        /// LRU reclaim: pages isolated from the inactive list by kswapd and by allocating
        /// threads (`pgscan_kswapd`, `pgscan_direct`, `pgscan_anon`), freed by each
        /// (`pgsteal_*`), taken off the active list to be aged (`pgrefill`), direct reclaims
        /// entered (`allocstall`), kswapd wake-ups (`pageoutrun`).
        case pgscanKswapd, pgscanDirect, pgscanAnon, pgstealKswapd, pgstealDirect, pgstealAnon, pgrefill, allocstall, pageoutrun
        /// Processes the OOM killer killed (`oom_kill`).
        case oomKill
        /// Pages read back from a slot that held their shadow since reclaim evicted them
        /// (`workingset_refault_anon`), those of them activated because they came back within
        /// the working set's size (`workingset_activate_anon`), and those that were in the
        /// working set when evicted (`workingset_restore_anon`).
        case workingsetRefaultAnon, workingsetActivateAnon, workingsetRestoreAnon
        /// Pages swap readahead read beside the one a fault asked for (`swap_ra`), and faults
        /// that found one of them in the swap cache (`swap_ra_hit`).
        case swapRa, swapRaHit
    }
    @usableFromInline let counters = PerCPUCounters(count: Counter.allCases.count)
    public init() {}
    @inlinable @inline(__always) public func count(_ c: Counter, _ n: Int = 1) { counters.add(c.rawValue, n) }
    public subscript(_ c: Counter) -> Int { counters[c.rawValue] }

    /// The per-event invalidation counter for `event`.
    public static func invalidationCounter(_ event: MMUNotifyEvent) -> Counter {
        switch event {
        case .unmap: return .invalidateUnmap
        case .clear: return .invalidateClear
        case .protectionVMA: return .invalidateProtectionVMA
        case .protectionPage: return .invalidateProtectionPage
        case .softDirty: return .invalidateSoftDirty
        case .release: return .invalidateRelease
        case .migrate: return .invalidateMigrate
        case .exclusive: return .invalidateExclusive
        }
    }
    public func snapshot() -> [(String, Int)] { Counter.allCases.map { ($0.name, self[$0]) } }
}

extension MMStats.Counter {
    /// The counter's name in `--stats`: its Swift name, except the THP, reclaim-scan and OOM
    /// counters, which take their /proc/vmstat names (`thpFaultAlloc` is `thp_fault_alloc`,
    /// `thpSplitPMD` is `thp_split_pmd`, `pgscanKswapd` is `pgscan_kswapd`, `oomKill` is
    /// `oom_kill`, `workingsetRefaultAnon` is `workingset_refault_anon`, `swapRaHit` is
    /// `swap_ra_hit`).
    public var name: String {
        let s = "\(self)"
        guard s.hasPrefix("thp") || s.hasPrefix("pgscan") || s.hasPrefix("pgsteal") || s.hasPrefix("oom") || s.hasPrefix("workingset") || s.hasPrefix("swapRa") else { return s }
        var out = ""
        var previousUpper = false
        for c in s {
            if c.isUppercase {
                if !previousUpper { out += "_" }
                out += c.lowercased()
                previousUpper = true
            } else {
                out.append(c); previousUpper = false
            }
        }
        return out
    }
}
