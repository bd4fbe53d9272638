#if canImport(Glibc)
import Glibc
#endif
import MMSync

/// What backs a swap area's slots.
public enum SwapBacking: Sendable, Equatable {
    /// Host memory: a ramdisk with synchronous I/O (`SWP_SYNCHRONOUS_IO`, as zram or brd). A
    /// swap-in reads only the faulting page and drops the swap cache at once
    /// (`should_try_to_free_swap`).
    case memory
    /// A host file (created if missing, sized to the area, mapped shared): a swap file on a
    /// disk, without `SWP_SYNCHRONOUS_IO`. A swap-in reads ahead around the fault
    /// (`swap_vma_readahead`, `vm.page-cluster`), and the swap cache keeps a page read back
    /// unless swap is half full or the fault still has to write, so reclaim drops it again
    /// without a write while it stays clean.
    case file(String)
    /// A swap file as `file`, made for the area in `directory` (`$TMPDIR`, else /tmp, when
    /// nil) and unlinked as soon as it is open: nothing is left behind, whatever happens next.
    case temporaryFile(directory: String? = nil)
}

/// One swap area (`swap_info_struct`): `slots` page-sized slots backed by host memory or a
/// host file, and one table word per slot as Linux 7.2's swap table keeps it (`mm/swap_table.h`):
///
/// - 0: the slot is free;
/// - a shadow (low bits `01`): in use, not in the swap cache (swapped out); reclaim's eviction
///   leaves a record there (`workingset_eviction`): `eviction << 4 | workingset << 3 | 1 << 2 | 1`,
///   other removals the plain `SwapArea.shadow` (1);
/// - `pfn << 2 | 2`: in use and in the swap cache, whose folio is at `pfn`;
/// - `SwapArea.bad`: slot 0, the swap header, never handed out.
///
/// Beside it, each slot's swap count: the swap PTEs that name it (7.2 keeps it in the table
/// word's top bits and an extension table; the swap cache adds nothing to it, it holds folio
/// references instead). A slot is free again when its count drops to 0 while it is not
/// cached, or when a cached slot with count 0 leaves the swap cache.
///
/// Sendable: the table words are atomics (the swap cache is read without a lock, as
/// `swap_cache_get_folio` reads the table); a slot's count and every change of its table word
/// are guarded by its cluster's lock (512 slots each, `swap_cluster_info.lock`), the
/// allocation cursor by `lock`.
public final class SwapArea: @unchecked Sendable {
    /// The swap type: the index of this area in the machine's list (`si->type`).
    public let type: UInt8
    /// Slots, the header included (`si->max`).
    public let slots: UInt64
    @usableFromInline let storage: UnsafeMutableRawPointer
    /// What backs the slots.
    public let backing: SwapBacking
    /// `SWP_SYNCHRONOUS_IO`: a ramdisk's I/O completes at once, so swap-in skips readahead and
    /// the swap cache (7.2's `swapin_sync`, `should_try_to_free_swap`). False for a file.
    public let synchronous: Bool
    /// The host file's descriptor (-1 for memory).
    private let fd: Int32
    @usableFromInline let table: UnsafeMutablePointer<UInt64>
    let counts: UnsafeMutablePointer<UInt32>
    /// The allocator's lock (`si->lock` / `si->global_cluster_lock`): guards the cursor.
    /// Taken before a cluster lock.
    let lock = Lock("swap_info")
    /// Where the next allocation starts looking (`si->cluster_next`). Locking: `lock`.
    var cursor: UInt64 = 1
    /// Slots per cluster (`SWAPFILE_CLUSTER`, 512 with 4 KiB pages): each cluster has a lock.
    static let clusterShift: UInt64 = 9
    /// The cluster locks, one per 512 slots (`swap_cluster_info.lock`): a slot's count and
    /// table word change under its cluster's lock, so reclaim writing new slots and faults
    /// swapping in old ones rarely meet. Innermost: taken under page-table locks (unmap, zap),
    /// page locks (swap-in, swap cache removal) and the allocator's lock.
    private let clusterLocks: [Lock]
    private let clusterRefs: UnsafeMutablePointer<Unmanaged<Lock>>
    /// Free slots (`si->pages - si->inuse_pages`).
    let freeSlotCount: AtomicCounter

    @usableFromInline static let shadow: UInt64 = 1
    /// A shadow that records an eviction (its age and the page's PG_workingset).
    static let shadowRecord: UInt64 = 1 << 2
    static let shadowWorkingset: UInt64 = 1 << 3
    /// Whether a table word is a shadow (plain or with an eviction record).
    @inlinable static func isShadow(_ w: UInt64) -> Bool { w & 3 == shadow }
    /// The shadow reclaim leaves: the LRU's non-resident age at the eviction and whether the
    /// page was part of the working set (`pack_shadow`, without memcg and node).
    static func evictionShadow(age: UInt64, workingset: Bool) -> UInt64 {
        (age & (~UInt64(0) >> 4)) << 4 | (workingset ? shadowWorkingset : 0) | shadowRecord | shadow
    }
    @usableFromInline static let cachedTag: UInt64 = 2
    @usableFromInline static let bad: UInt64 = ~UInt64(0) << 3

    /// Creates an area of `bytes` (a page multiple of at least two pages: the header and one
    /// slot) on `backing`, its slots committed by the host now with `populate` (as the
    /// machine's RAM with `populateRAM`), else on first write. Throws EINVAL for a bad size or
    /// a path that is not a regular file, EISDIR for a directory, EBUSY for a file another
    /// area uses, ENOMEM if the host refuses the reservation, and the host's errno when it
    /// cannot open, size, allocate or map the file (ENOENT, EACCES, ENOSPC, …).
    init(type: UInt8, bytes: UInt64, populate: Bool = false, backing: SwapBacking = .memory) throws(Errno) {
        guard bytes >= 2 * pageSize, bytes % pageSize == 0, bytes <= 1 << 40 else { throw .EINVAL }
        self.type = type
        slots = bytes >> pageShift
        self.backing = backing
        switch backing {
        case .memory:
            synchronous = true
            fd = -1
            guard let s = mmap(nil, Int(bytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0),
                  s != MAP_FAILED else { throw .ENOMEM }
            storage = s
            // Backed by host huge pages where the host allows, as the frame arena is: a slot
            // copy then misses the host TLB once per 2 MiB instead of once per slot.
            _ = madvise(s, Int(bytes), MADV_HUGEPAGE)
        case .file, .temporaryFile:
            synchronous = false
            var path = "", temporary = false
            switch backing {
            case .file(let p): path = p
            case .temporaryFile(let dir):
                let d = dir ?? getenv("TMPDIR").map { String(cString: $0) } ?? "/tmp"
                path = "\(d)/swift-hmm-swap-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
                temporary = true
            case .memory: break
            }
            guard !path.isEmpty else { throw .ENOENT }
            let f = open(path, O_RDWR | O_CREAT | O_CLOEXEC | (temporary ? O_EXCL : 0), 0o600)
            // A directory is EISDIR (the open, as 7.2's file_open_name); anything else that is
            // not a regular file has no swap header to read: EINVAL.
            guard f >= 0 else { throw Errno(errno) }
            if temporary { unlink(path) }
            var st = stat()
            guard fstat(f, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { close(f); throw .EINVAL }
            // A file already in use as a swap area is EBUSY (7.2's IS_SWAPFILE); the lock goes
            // with the descriptor.
            guard flock(f, LOCK_EX | LOCK_NB) == 0 else { close(f); throw .EBUSY }
            // Sized and allocated now (a swap file may have no holes), so a full disk is ENOSPC
            // here rather than a SIGBUS at the first write-out.
            guard ftruncate(f, off_t(bytes)) == 0 else { let e = errno; close(f); throw Errno(e) }
            let r = posix_fallocate(f, 0, off_t(bytes))
            guard r == 0 else { close(f); throw Errno(r) }
            guard let s = mmap(nil, Int(bytes), PROT_READ | PROT_WRITE, MAP_SHARED, f, 0), s != MAP_FAILED else {
                let e = errno; close(f); throw Errno(e == ENODEV || e == EACCES ? e : ENOMEM)
            }
            fd = f
            storage = s
        }
        if populate { PhysicalMemory.populate(storage, Int(bytes)) }
        table = .allocate(capacity: Int(slots))
        table.initialize(repeating: 0, count: Int(slots))
        table[0] = SwapArea.bad
        counts = .allocate(capacity: Int(slots))
        counts.initialize(repeating: 0, count: Int(slots))
        freeSlotCount = AtomicCounter(Int(slots) - 1)
        let clusters = Int((slots + (1 << SwapArea.clusterShift) - 1) >> SwapArea.clusterShift)
        clusterLocks = (0..<clusters).map { _ in Lock("swap_cluster") }
        clusterRefs = .allocate(capacity: clusters)
        for (i, l) in clusterLocks.enumerated() { (clusterRefs + i).initialize(to: .passUnretained(l)) }
    }

    deinit {
        munmap(storage, Int(slots << pageShift)); table.deallocate(); counts.deallocate(); clusterRefs.deallocate()
        if fd >= 0 { close(fd) }
    }

    /// Takes the lock of the cluster holding slot `offset` (`swap_cluster_lock`).
    @inline(__always) func lockCluster(_ offset: UInt64, file: StaticString = #fileID, line: UInt = #line) {
        clusterRefs[Int(offset >> SwapArea.clusterShift)]._withUnsafeGuaranteedRef { $0.lock(file: file, line: line) }
    }
    /// Releases the lock of the cluster holding slot `offset`.
    @inline(__always) func unlockCluster(_ offset: UInt64, file: StaticString = #fileID, line: UInt = #line) {
        clusterRefs[Int(offset >> SwapArea.clusterShift)]._withUnsafeGuaranteedRef { $0.unlock(file: file, line: line) }
    }
    /// Runs `body` under the lock of the cluster holding slot `offset`.
    @inline(__always)
    func withCluster<R>(_ offset: UInt64, file: StaticString = #fileID, line: UInt = #line, _ body: () throws -> R) rethrows -> R {
        lockCluster(offset, file: file, line: line); defer { unlockCluster(offset, file: file, line: line) }
        return try body()
    }
    /// Debug-build assertion that the caller holds the lock of slot `offset`'s cluster.
    @inline(__always) func assertClusterHeld(_ offset: UInt64, file: StaticString = #file, line: UInt = #line) {
        clusterRefs[Int(offset >> SwapArea.clusterShift)]._withUnsafeGuaranteedRef { $0.assertHeld(file: file, line: line) }
    }
    /// Debug-build assertion that the caller holds no lock of this area.
    func assertNoLockHeld(file: StaticString = #file, line: UInt = #line) {
        lock.assertNotHeld(file: file, line: line)
        #if DEBUG
        for l in clusterLocks { l.assertNotHeld(file: file, line: line) }
        #endif
    }

    /// Usable slots (the header is not one).
    public var totalSlots: Int { Int(slots) - 1 }
    /// Slots not in use.
    public var freeSlots: Int { freeSlotCount.load() }

    @inlinable func tableWord(_ offset: UInt64) -> AtomicU64Ref {
        AtomicU64Ref(UnsafeMutableRawPointer(table + Int(offset)))
    }
    /// The host bytes of slot `offset`.
    @inlinable func slotBytes(_ offset: UInt64) -> UnsafeMutableRawPointer { storage + Int(offset << pageShift) }

    /// Whether `offset` names a slot of this area that can be in use (`get_swap_device`'s check).
    func isValidOffset(_ offset: UInt64) -> Bool { offset > 0 && offset < slots }

    /// The swap count of slot `offset` (`swap_count`). Locking: takes the slot's cluster lock.
    public func count(_ offset: UInt64) -> Int {
        assertNoLockHeld()
        guard isValidOffset(offset) else { return 0 }
        return withCluster(offset) { Int(counts[Int(offset)]) }
    }
    /// Whether slot `offset` is in use (counted or cached).
    public func isInUse(_ offset: UInt64) -> Bool {
        isValidOffset(offset) && tableWord(offset).load() != 0
    }

    /// Takes a free slot for a folio entering the swap cache: the slot's word names the page,
    /// its count is 0 (`__swap_cluster_alloc_entries` with `__swap_cache_add_folio`), and the
    /// page joins the cache (flag, entry, the cache's reference) under the slot's cluster lock.
    /// Return: the slot, or nil when the area is full.
    /// Locking: caller holds the area's lock and the page lock; takes cluster locks.
    func allocateLocked(caching page: Page, memory: PhysicalMemory) -> UInt64? {
        lock.assertHeld()
        let pfn = page.pfn
        guard freeSlotCount.load() > 0 else { return nil }
        var off = cursor
        for _ in 1..<slots {
            if off >= slots { off = 1 }
            // Free words are read without the cluster lock and claimed under it.
            if tableWord(off).load(.relaxed) == 0 {
                lockCluster(off)
                if tableWord(off).load(.relaxed) == 0 {
                    tableWord(off).store(pfn << 2 | SwapArea.cachedTag)
                    counts[Int(off)] = 0
                    freeSlotCount.add(-1)
                    cursor = off + 1
                    SwapSpace.attach(page, SwapEntry(type: type, offset: off), memory: memory)
                    unlockCluster(off)
                    return off
                }
                unlockCluster(off)
            }
            off += 1
        }
        return nil
    }

    /// Frees slot `offset` (`__swap_cluster_free_entries`). Locking: caller holds the slot's
    /// cluster lock.
    func freeLocked(_ offset: UInt64) {
        assertClusterHeld(offset)
        precondition(counts[Int(offset)] == 0, "freeing swap slot \(offset) with count \(counts[Int(offset)])")
        tableWord(offset).store(0)
        freeSlotCount.add(1)
    }

    /// The pfn of the folio caching slot `offset`, or nil. Read without the lock.
    @inlinable func cachedPfn(_ offset: UInt64) -> UInt64? {
        let w = tableWord(offset).load()
        guard w & 3 == SwapArea.cachedTag, w != SwapArea.bad else { return nil }
        return w >> 2
    }
}

extension SwapSpace {
    /// The key of a swap slot in the invariant checkers' entry counts (beside pfn keys).
    static func invariantKey(_ e: SwapEntry) -> UInt64 { PageTableChecker.swapSlotBit | UInt64(e.type) << 49 | e.offset }

    /// Every violated swap invariant: each slot's count equals the swap entries naming it
    /// (`refs`, keyed by `invariantKey`); a free slot has neither; a slot in use has a count or
    /// a cached page; a cached page is a small system page flagged as caching that very slot;
    /// the free-slot count matches. Adds one reference per cached page to `cacheRefs`.
    /// Locking: takes each area's lock; run while no other thread changes memory.
    func checkInvariants(refs: [UInt64: Int32], cacheRefs: inout [UInt64: Int32]) -> [String] {
        var problems: [String] = []
        var seen = 0
        for area in allAreas {
            area.assertNoLockHeld()
            area.lock.lock()
            var free = 0
            for off in 1..<area.slots {
                // One cluster at a time, under its lock.
                if off == 1 || off & ((1 << SwapArea.clusterShift) - 1) == 0 { area.lockCluster(off) }
                defer { if off == area.slots - 1 || (off + 1) & ((1 << SwapArea.clusterShift) - 1) == 0 { area.unlockCluster(off) } }
                let e = SwapEntry(type: area.type, offset: off)
                let w = area.table[Int(off)], c = Int32(area.counts[Int(off)])
                let r = refs[SwapSpace.invariantKey(e)] ?? 0
                if r != 0 { seen += 1 }
                if w == 0 {
                    free += 1
                    if c != 0 { problems.append("\(e): free slot with swap count \(c)") }
                    if r != 0 { problems.append("\(e): free slot named by \(r) swap entries") }
                    continue
                }
                if c != r { problems.append("\(e): swap count \(c) but \(r) swap entries name it") }
                if SwapArea.isShadow(w) {
                    if c == 0 { problems.append("\(e): slot in use with no swap entry and no cached page (leaked)") }
                    continue
                }
                let pfn = w >> 2
                guard w & 3 == SwapArea.cachedTag, pfn < withMemory({ $0.systemFrames }) else {
                    problems.append("\(e): bad table word \(String(w, radix: 16))"); continue
                }
                let p = withMemory { $0.page(pfn) }
                if !p.test(.swapCache) || p.privateWord != e.pte().raw { problems.append("\(e): cached pfn \(pfn) is not flagged as caching it") }
                if p.isFreeFrame { problems.append("\(e): cached pfn \(pfn) is a free frame") }
                if p.order != 0 { problems.append("\(e): cached pfn \(pfn) is a large folio") }
                cacheRefs[pfn, default: 0] += 1
            }
            if free != area.freeSlots { problems.append("swap area \(area.type): \(area.freeSlots) free slots counted, \(free) found") }
            area.lock.unlock()
        }
        let named = refs.keys.filter { $0 & PageTableChecker.swapSlotBit != 0 }.count
        if named != seen { problems.append("\(named - seen) swap entries name slots outside every swap area") }
        return problems
    }
}
