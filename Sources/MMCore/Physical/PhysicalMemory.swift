#if canImport(Glibc)
import Glibc
#endif
import MMSync

/// The machine's physical memory: one host reservation of frames (real bytes) and one flat
/// array of 64-byte page metadata, both indexed by pfn.
///
/// Pfns `0 ..< systemFrames` are system RAM managed by a buddy allocator (pfn 0 is the shared
/// zero page). Pfns above are device pfn space: ranges are handed to device memory
/// registrations (`DevicePagemap`) in 256 MiB chunks; their bytes are the device's memory.
/// The host commits memory lazily, so only touched frames cost host RAM.
public final class PhysicalMemory: @unchecked Sendable {
    public let systemFrames: UInt64
    public let totalPfns: UInt64
    @usableFromInline let frameBase: UnsafeMutableRawPointer
    @usableFromInline let metaBase: UnsafeMutableRawPointer
    let frameBytes: Int
    let metaBytes: Int

    /// Buddy allocator state. Locking: `zoneLock` guards the free lists.
    let zoneLock = Lock("zone")
    static let maxOrder = 10
    @exclusivity(unchecked) var freeListHead = [UInt32](repeating: PhysicalMemory.nilLink, count: PhysicalMemory.maxOrder + 1)
    @exclusivity(unchecked) var freeCountByOrder = [Int](repeating: 0, count: PhysicalMemory.maxOrder + 1)
    static let nilLink: UInt32 = .max
    /// Free frames on the buddy lists. Locking: changed under the zone lock; read anywhere.
    let buddyFreeFrames = AtomicCounter(0)
    /// Per-CPU page lists (see `PhysicalMemory+PerCPUPages.swift`): `pcpSlots` of them, each
    /// held by `pcpOwners`; `pcpBatch` 0 when the machine is too small to have them.
    let pcpBatch: Int
    let pcpLists: UnsafeMutablePointer<Unmanaged<PerCPUPages>>
    let pcpOwners: [PerCPUPages]

    /// The hugetlb pools (set once, at the end of init).
    private var hugetlbPools: HugeTLB? = nil
    /// The hugetlb pools of this memory (`hstates`).
    public var hugetlb: HugeTLB { hugetlbPools.unsafelyUnwrapped }
    /// `__alloc_pages_direct_reclaim`'s way to its machine's reclaim (set by the machine).
    @exclusivity(unchecked) nonisolated(unsafe) var directReclaimHook: (() -> Int)? = nil
    /// `__alloc_pages_may_oom`'s way to its machine's OOM killer (set by the machine): true
    /// when memory may have come back.
    @exclusivity(unchecked) nonisolated(unsafe) var oomHook: (() -> Bool)? = nil
    /// The machine's background reclaim thread's state; an allocation wakes it while it runs.
    let kswapd = Kswapd()
    /// The zone's watermarks in pages (`__setup_per_zone_wmarks`).
    public let watermarks: Watermarks
    /// The LRU lists (set once, at the end of init).
    private var lruState: LRULists? = nil
    /// The LRU lists of this memory (`lruvec`).
    public var lru: LRULists { lruState.unsafelyUnwrapped }
    /// The same, for the allocation path without reference counting (the memory owns it).
    private(set) var lruUnmanaged: Unmanaged<LRULists>? = nil
    /// The swap areas and the swap cache (set once, at the end of init).
    private var swapState: SwapSpace? = nil
    /// The swap areas of this machine and their swap cache.
    public var swap: SwapSpace { swapState.unsafelyUnwrapped }
    /// The same, uncounted (the memory owns it).
    private(set) var swapUnmanaged: Unmanaged<SwapSpace>? = nil
    /// Calls `body` with the swap space borrowed: reclaim's paths use it once per page, and
    /// `swap` would retain and release the one object every reclaiming thread shares.
    @inline(__always) func withSwap<R>(_ body: (SwapSpace) throws -> R) rethrows -> R {
        try swapUnmanaged.unsafelyUnwrapped._withUnsafeGuaranteedRef(body)
    }
    /// The LRU lists, borrowed the same way.
    @inline(__always) func withLRU<R>(_ body: (LRULists) throws -> R) rethrows -> R {
        try lruUnmanaged.unsafelyUnwrapped._withUnsafeGuaranteedRef(body)
    }
    /// The transparent-huge-page settings and the huge zero folio (set once, at the end of init).
    private var thpState: TransparentHugepage? = nil
    /// The transparent-huge-page settings of this memory (`transparent_hugepage/*`).
    public var thp: TransparentHugepage { thpState.unsafelyUnwrapped }

    /// Next unassigned device pfn.
    var nextDevicePfn: UInt64
    let deviceLock = Lock("device-pfn")
    /// Device registrations by 256 MiB chunk of pfn space, read without a lock (`page_pgmap`
    /// is on every device-page path): one word per chunk holding an unretained pointer to its
    /// `DevicePagemap`, or 0. Every registration stays alive in `pagemaps` as long as this
    /// memory, so a reader racing with an unregistration never sees a freed object.
    /// Locking: written under deviceLock.
    let pagemapSlots: UnsafeMutablePointer<UInt64>
    let pagemapSlotCount: Int
    /// Locking: deviceLock.
    var pagemaps: [DevicePagemap] = []
    /// Device pfn ranges given back by `unregisterDeviceMemory`, reused by later registrations.
    var releasedDeviceRanges: [(start: UInt64, count: UInt64)] = []

    /// Creates physical memory of `systemBytes` of RAM and `devicePfnSpaceBytes` of device
    /// pfn space. Throws ENOMEM if the host refuses the reservation, EINVAL for sizes that are
    /// not page multiples or too small.
    ///
    /// The host commits the arenas lazily, so the first touch of each frame costs a host page
    /// fault (and, in a VM, possibly the hypervisor's too: several microseconds). With
    /// `populateRAM` the frames and metadata of system RAM are committed here instead, as a
    /// real machine's RAM exists before its kernel runs; benchmarks use it so that they time
    /// the simulated mm, not the host's first touch.
    public init(systemBytes: UInt64, devicePfnSpaceBytes: UInt64 = 16 << 30, populateRAM: Bool = false) throws(Errno) {
        guard systemBytes >= 4 * pmdSize, isPageAligned(systemBytes), isPageAligned(devicePfnSpaceBytes),
              systemBytes <= 1 << 40, devicePfnSpaceBytes <= 1 << 42 else { throw .EINVAL }
        systemFrames = systemBytes >> pageShift
        // Device pfns start at the first 256 MiB chunk boundary above RAM, so the whole
        // `devicePfnSpaceBytes` is usable by registrations (chunks are never split).
        let deviceStart = (systemFrames + PhysicalMemory.deviceChunkPages - 1) & ~(PhysicalMemory.deviceChunkPages - 1)
        totalPfns = devicePfnSpaceBytes == 0 ? systemFrames : deviceStart + (devicePfnSpaceBytes >> pageShift)
        guard totalPfns < UInt64(UInt32.max) else { throw .EINVAL }
        frameBytes = Int(totalPfns << pageShift)
        metaBytes = Int(totalPfns) * Page.metadataStride
        let flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
        guard let f = mmap(nil, frameBytes, PROT_READ | PROT_WRITE, flags, -1, 0), f != MAP_FAILED else { throw .ENOMEM }
        guard let m = mmap(nil, metaBytes, PROT_READ | PROT_WRITE, flags, -1, 0), m != MAP_FAILED else {
            munmap(f, frameBytes); throw .ENOMEM
        }
        frameBase = f; metaBase = m
        pagemapSlotCount = Int(totalPfns / PhysicalMemory.deviceChunkPages) + 1
        pagemapSlots = .allocate(capacity: pagemapSlotCount)
        pagemapSlots.initialize(repeating: 0, count: pagemapSlotCount)
        // Let the host back the arenas with transparent huge pages: one host fault per 2 MiB of
        // frames instead of one per frame (the host's fault cost would otherwise dominate ours).
        _ = madvise(f, frameBytes, MADV_HUGEPAGE)
        _ = madvise(m, metaBytes, MADV_HUGEPAGE)
        if populateRAM {
            PhysicalMemory.populate(f, Int(systemFrames << pageShift))
            PhysicalMemory.populate(m, Int(systemFrames) * Page.metadataStride)
        }
        nextDevicePfn = deviceStart
        watermarks = Watermarks(managedPages: Int(systemFrames) - 1)
        pcpBatch = PhysicalMemory.pcpBatch(systemFrames: systemFrames)
        let batch = pcpBatch
        pcpOwners = (0..<PhysicalMemory.pcpSlots).map { _ in PerCPUPages(capacity: 4 * batch) }
        pcpLists = .allocate(capacity: PhysicalMemory.pcpSlots)
        for (i, o) in pcpOwners.enumerated() { (pcpLists + i).initialize(to: .passUnretained(o)) }
        let zero = page(0)
        zero.set([.reserved, .uptodate])
        zero.refcountWord.store(1)
        initFreeLists()
        hugetlbPools = HugeTLB(memory: self)
        thpState = TransparentHugepage(memory: self)
        swapState = SwapSpace(memory: self)
        swapUnmanaged = .passUnretained(swapState!)
        // swap_setup: smaller readahead clusters when RAM (pages not reserved: all but pfn 0)
        // is under 16 MiB.
        if (systemFrames - 1) >> (20 - pageShift) < 16 { try? swapState?.setPageCluster(2) }
        let lists = LRULists(memory: self, batchLocks: pcpBatch > 0 ? pcpOwners.map(\.lock) : nil)
        lruState = lists
        lruUnmanaged = .passUnretained(lists)
    }

    /// Commits host memory: MADV_POPULATE_WRITE, or a write to every host page where the
    /// host lacks it. The bytes stay zero.
    static func populate(_ base: UnsafeMutableRawPointer, _ bytes: Int) {
        #if os(Linux)
        if madvise(base, bytes, 23 /* MADV_POPULATE_WRITE */) == 0 { return }
        #endif
        var off = 0
        while off < bytes { base.storeBytes(of: 0, toByteOffset: off, as: UInt8.self); off += Int(pageSize) }
    }

    deinit { munmap(frameBase, frameBytes); munmap(metaBase, metaBytes); pagemapSlots.deallocate(); pcpLists.deallocate() }

    /// The metadata handle of `pfn`. Precondition: pfn < totalPfns.
    @inlinable @inline(__always) public func page(_ pfn: UInt64) -> Page {
        precondition(pfn < totalPfns, "pfn out of range")
        return Page(pfn: pfn, meta: metaBase + Int(pfn) &* Page.metadataStride)
    }
    /// The host address of frame `pfn`'s bytes.
    @inlinable @inline(__always) public func frame(_ pfn: UInt64) -> UnsafeMutableRawPointer {
        frameBase + Int(pfn << pageShift)
    }
    @inlinable public func isValidPfn(_ pfn: UInt64) -> Bool { pfn < totalPfns }
    /// The page-table page holding the entry `e` (whose `ptl` guards it).
    @inlinable public func tablePage(of e: EntryPointer) -> Page {
        page(UInt64(e.address - frameBase) >> pageShift)
    }

    /// The shared zero page.
    public var zeroPage: Page { page(0) }
    public static let zeroPfn: UInt64 = 0

    /// Free frames: on the buddy lists and on the per-CPU lists (D9). Exact when no allocation
    /// or free is under way.
    public var freeFrames: Int {
        var n = buddyFreeFrames.load()
        for slot in 0..<PhysicalMemory.pcpSlots { n += pcpLists[slot]._withUnsafeGuaranteedRef { $0.count } }
        return n
    }
    public var usedFrames: Int { Int(systemFrames) - 1 - freeFrames }

    /// Assigns a fresh range of device pfns (aligned to 2 MiB) for a device memory registration.
    /// Throws ENOMEM when the device pfn space is exhausted.
    func assignDevicePfns(count: UInt64) throws(Errno) -> UInt64 {
        deviceLock.lock(); defer { deviceLock.unlock() }
        if let i = releasedDeviceRanges.firstIndex(where: { $0.count == count }) {
            return releasedDeviceRanges.remove(at: i).start
        }
        let start = nextDevicePfn
        guard count > 0, start + count <= totalPfns else { throw .ENOMEM }
        nextDevicePfn = (start + count + PhysicalMemory.deviceChunkPages - 1) & ~(PhysicalMemory.deviceChunkPages - 1)
        return start
    }
}

/// A zone's free-page watermarks (Linux 7.2, `__setup_per_zone_wmarks` with the default
/// `watermark_scale_factor` of 10): `min` from `min_free_kbytes` = √(16 × memory in KiB),
/// between 128 KiB and 256 MiB; `low` and `high` one step of max(min / 4, 0.1 % of the zone)
/// above each other. kswapd wakes below `low` and sleeps again above `high`.
public struct Watermarks: Sendable, Equatable {
    public let min: Int, low: Int, high: Int
    init(managedPages: Int) {
        let kib = managedPages * Int(pageSize / 1024)
        let minFreeKiB = Swift.min(Swift.max(Int(Double(kib * 16).squareRoot()), 128), 262_144)
        let m = minFreeKiB / Int(pageSize / 1024)
        let step = Swift.max(m / 4, managedPages * 10 / 10_000)
        min = m; low = m + step; high = m + 2 * step
    }
}
