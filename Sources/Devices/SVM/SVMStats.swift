import MMSync

/// What an SVM device did, counted as UVM's and nouveau's statistics count it.
public final class SVMStats: @unchecked Sendable {
    public enum Counter: Int, CaseIterable, Sendable, CustomStringConvertible {
        /// Fault buffer entries read (each engine access that missed).
        case faults
        /// Entries dropped as duplicates of another in the same batch (same page).
        case duplicates
        /// Batches serviced.
        case batches
        /// Pages migrated to device memory, and back to system memory (CPU faults and evictions).
        case migratedToDevice, migratedToSystem
        /// Bytes moved over the link by those migrations.
        case bytesToDevice, bytesToSystem
        /// Device memory chunks (2 MiB) evicted to make room.
        case evictions
        /// Pages mapped where they are (system memory, over the link).
        case remoteMaps
        /// Device-exclusive grabs for atomics on system memory.
        case exclusiveGrabs
        /// Notifier callbacks that dropped device entries.
        case invalidations
        /// Engines replayed.
        case replays
        /// Kernels cancelled by a fatal fault.
        case fatalFaults
        /// Device-private pages the CPU took back (migrate_to_ram).
        case cpuFaultsBack
        /// Pages a policy found thrashing (bouncing between CPU and device) and pinned.
        case thrashing
        /// Access-counter notifications: a remotely mapped region the engines touched often.
        case accessCounters
        /// Engine TLB lookups that hit, that missed (a walk of the device page table), and TLB
        /// flushes (a shootdown after an invalidation found the TLB holding entries).
        case tlbHits, tlbMisses, tlbFlushes
        /// 2 MiB device pages: moved into device memory whole, and back to system memory whole.
        case hugeToDevice, hugeToSystem

        public var description: String {
            ["faults", "duplicates", "batches", "migrated_to_device", "migrated_to_system", "bytes_to_device",
             "bytes_to_system", "evictions", "remote_maps", "exclusive_grabs", "invalidations", "replays",
             "fatal_faults", "cpu_faults_back", "thrashing", "access_counters", "tlb_hits", "tlb_misses", "tlb_flushes",
             "huge_to_device", "huge_to_system"][rawValue]
        }
    }

    private let counters = (0..<Counter.allCases.count).map { _ in AtomicCounter(0) }

    public init() {}
    public func count(_ c: Counter, _ n: Int = 1) { counters[c.rawValue].add(n) }
    public subscript(_ c: Counter) -> Int { counters[c.rawValue].load() }
    /// Every counter by name, for tables and reports.
    public var snapshot: [(String, Int)] { Counter.allCases.map { ($0.description, self[$0]) } }
}
