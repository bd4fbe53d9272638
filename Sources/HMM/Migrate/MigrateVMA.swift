import MMCore
import MMSync

/// Bits of a `src`/`dst` migrate pfn entry (`MIGRATE_PFN_*`): flags in the low 6 bits, the pfn
/// above.
public enum MigratePfn {
    public static let valid: UInt64 = 1 << 0
    public static let migrate: UInt64 = 1 << 1
    public static let write: UInt64 = 1 << 3
    public static let compound: UInt64 = 1 << 4
    public static let shift: UInt64 = 6

    /// `migrate_pfn`: a valid entry for `pfn`.
    @inlinable public static func make(_ pfn: UInt64) -> UInt64 { pfn << shift | valid }
    /// `migrate_pfn_to_page`: the pfn of a valid entry.
    @inlinable public static func pfn(_ e: UInt64) -> UInt64? { e & valid != 0 ? e >> shift : nil }
}

/// Which source pages a migration selects (`MIGRATE_VMA_SELECT_*`).
public struct MigrateSelect: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let system = MigrateSelect(rawValue: 1 << 0)
    public static let devicePrivate = MigrateSelect(rawValue: 1 << 1)
    public static let deviceCoherent = MigrateSelect(rawValue: 1 << 2)
    public static let compound = MigrateSelect(rawValue: 1 << 3)
}

/// A migration of part of one VMA (`struct migrate_vma`), in the kernel's phases:
/// `setup` (collect + unmap: selected pages are locked and replaced by migration entries),
/// the driver allocates and locks destination pages into `dst` and copies the data,
/// `pages` (each page is moved, or clears its own MIGRATE flag and stays), `finalize` (entries
/// point at the new pages, or back at the old ones).
///
/// A page that cannot move never fails the batch: it loses `MigratePfn.migrate` and stays valid
/// where it was.
public final class MigrateVMA {
    public let vma: VMA
    public let start: UInt64
    @exclusivity(unchecked) public internal(set) var end: UInt64
    /// Source entries, one per page; filled by `setup`.
    @exclusivity(unchecked) public var src: [UInt64]
    /// Destination entries the driver fills between `setup` and `pages`.
    @exclusivity(unchecked) public var dst: [UInt64]
    /// Per page: had mappings besides the collected one (set by unmap). Locking: mmap lock.
    @exclusivity(unchecked) var remote: [Bool] = []
    /// Pages selected for migration by `setup` (`cpages`).
    @exclusivity(unchecked) public internal(set) var cpages = 0
    /// Pages that moved: still selected after `pages`, with a destination.
    public var migratedCount: Int {
        src.indices.reduce(0) { n, i in n + (src[i] & MigratePfn.migrate != 0 && MigratePfn.pfn(dst[i]) != nil ? 1 : 0) }
    }
    /// Pages walked (`npages`).
    @exclusivity(unchecked) public internal(set) var npages = 0
    public let pgmapOwner: AnyObject?
    public let flags: MigrateSelect
    /// The device-private page a CPU fault is migrating (`fault_page`); it carries one more
    /// reference (the fault's).
    public let faultPage: Page?
    /// The owner named in this migration's MIGRATE invalidations (default: `pgmapOwner`). A
    /// driver passes the context that keeps its own table up to date, so only it may skip them.
    public let notifierOwner: AnyObject?
    /// The VMA's address space and memory, held for the migration's life: read once here
    /// (a `vma.mm` load is an unowned one, counted through the mm's side table, and the
    /// phases use them per page).
    let mm: AddressSpace
    let memory: PhysicalMemory
    /// The mm's machine, held here too: `mm.machine` is a load from another object (a retain
    /// and a release of the machine, through its side table, at each use).
    let machine: Machine

    public init(vma: VMA, start: UInt64, end: UInt64, pgmapOwner: AnyObject?, flags: MigrateSelect, faultPage: Page? = nil,
                notifierOwner: AnyObject? = nil) {
        self.notifierOwner = notifierOwner ?? pgmapOwner
        self.vma = vma
        mm = vma.mm
        memory = mm.memory
        machine = mm.machine
        self.start = start & pageMask
        self.end = end & pageMask
        self.pgmapOwner = pgmapOwner
        self.flags = flags
        self.faultPage = faultPage
        let n = end > start ? Int((end - start) >> pageShift) : 0
        src = [UInt64](repeating: 0, count: n)
        dst = [UInt64](repeating: 0, count: n)
    }

    /// `migrate_vma_setup`: collects the selected pages of [start, end) and unmaps them.
    /// Locking: caller holds the mmap lock for read.
    /// Errors: EINVAL for a hugetlb, VM_IO/VM_PFNMAP/VM_MIXEDMAP VMA, an empty range, a range
    /// outside the VMA, or a fault page that is not device-private.
    public func setup() throws(Errno) {
        mm.mmapLock.assertLocked()
        let special: VMFlags = [.io, .pfnMap, .mixedMap, .hugetlb]
        guard vma.flags.isDisjoint(with: special), !vma.isSpecialMapping else { throw .EINVAL }
        guard end > start, start >= vma.start, start < vma.end, end > vma.start, end <= vma.end else { throw .EINVAL }
        if let f = faultPage, !f.isDevicePrivate { throw .EINVAL }
        for i in src.indices { src[i] = 0; dst[i] = 0 }
        cpages = 0; npages = 0
        remote = []
        collect()
        if cpages > 0 { unmap() }
    }
}
