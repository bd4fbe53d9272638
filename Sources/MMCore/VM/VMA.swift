import MMSync

/// `vm_flags`.
public struct VMFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let read = VMFlags(rawValue: 1 << 0)
    public static let write = VMFlags(rawValue: 1 << 1)
    public static let exec = VMFlags(rawValue: 1 << 2)
    public static let shared = VMFlags(rawValue: 1 << 3)
    public static let mayRead = VMFlags(rawValue: 1 << 4)
    public static let mayWrite = VMFlags(rawValue: 1 << 5)
    public static let mayExec = VMFlags(rawValue: 1 << 6)
    public static let mayShare = VMFlags(rawValue: 1 << 7)
    public static let io = VMFlags(rawValue: 1 << 14)
    /// `VM_SEQ_READ`, `VM_RAND_READ` (madvise SEQUENTIAL / RANDOM).
    public static let seqRead = VMFlags(rawValue: 1 << 15)
    public static let randRead = VMFlags(rawValue: 1 << 16)
    public static let dontCopy = VMFlags(rawValue: 1 << 17)
    /// `VM_ACCOUNT` (committed memory is charged: private writable mappings) and
    /// `VM_NORESERVE` (MAP_NORESERVE). They decide no access, but VMAs differing in them do not
    /// merge, as in the kernel.
    public static let account = VMFlags(rawValue: 1 << 20)
    public static let noReserve = VMFlags(rawValue: 1 << 21)
    public static let pfnMap = VMFlags(rawValue: 1 << 10)
    public static let mixedMap = VMFlags(rawValue: 1 << 28)
    public static let hugePage = VMFlags(rawValue: 1 << 29)
    public static let noHugePage = VMFlags(rawValue: 1 << 30)
    public static let hugetlb = VMFlags(rawValue: 1 << 22)
    public static let accessMask: VMFlags = [.read, .write, .exec]
}

/// A virtual memory area (`struct vm_area_struct`): [start, end) of one address space with one
/// protection and one backing (anonymous, or a shmem file at page offset `pgoff`).
///
/// Locking: the fields change only under the owning mm's mmap lock held for write and, once
/// the VMA is in the tree, its own lock taken for write (`vma_start_write`); readers hold the
/// mmap lock for read or this VMA's lock for read (a page fault). The setters assert it in
/// debug builds. Bounds and `pgoff` of a VMA linked into rmap change with its file's
/// `i_mmap` and its anon_vma root held for write as well (`withVMAPrepared`), because rmap
/// walkers read them under those locks alone. The anon_vma chain changes under the anon_vma
/// root lock.
public final class VMA: @unchecked Sendable, CustomStringConvertible {
    @exclusivity(unchecked) public internal(set) var start: UInt64 { willSet { assertChangeable(); assertRmapPrepared() } }
    @exclusivity(unchecked) public internal(set) var end: UInt64 { willSet { assertChangeable(); assertRmapPrepared() } }
    @exclusivity(unchecked) public internal(set) var flags: VMFlags { willSet { assertChangeable() } }
    /// Page offset of `start`: in the file for file mappings; `start >> PAGE_SHIFT` at creation
    /// for anonymous ones (kept across mremap so anonymous rmap still finds pages).
    @exclusivity(unchecked) public internal(set) var pgoff: UInt64 { willSet { assertChangeable(); assertRmapPrepared() } }
    /// The shmem/tmpfs file behind the mapping (shared anonymous mappings have one too).
    public let file: ShmemFile?
    /// The anon_vma new anonymous pages of this VMA get (`vma->anon_vma`). Set once under the
    /// mmap lock and `page_table_lock` (anon_vma_prepare), or under the VMA's write lock.
    @exclusivity(unchecked) package internal(set) var anonVMA: AnonVMA? {
        didSet { anonVMABits.storeRelease(anonVMA.map { UInt64(UInt(bitPattern: Unmanaged.passUnretained($0).toOpaque())) } ?? 0) }
    }
    /// `anonVMA` without a reference, for the fault path (the chain below holds the reference):
    /// a fault under the VMA lock reads it while another may be setting it (anon_vma_prepare
    /// under `page_table_lock`), so it is published with a release store.
    let anonVMABits = AtomicWord(0)
    /// `vma->swap_readahead_info`: the last swap fault's address, readahead window and hits
    /// (`SWAP_RA_VAL`), read and written without a lock as 7.2 does.
    let swapReadaheadInfo = AtomicWord(0)
    @inline(__always) var anonVMARef: Unmanaged<AnonVMA>? {
        let bits = anonVMABits.load()
        return bits == 0 ? nil : Unmanaged.fromOpaque(UnsafeRawPointer(bitPattern: UInt(bits))!)
    }
    /// The per-VMA lock (`vm_refcnt`/`vm_lock_seq`): page faults take it for read instead of
    /// the mmap lock; writers take it for write under the mmap write lock.
    public let vmLock = VMLock()
    /// Whether the VMA is in its mm's tree (the kernel's `vma->detached`, inverted). A fault
    /// that locked a VMA from its per-CPU cache checks it. Locking: mmap write lock + VMA write
    /// lock to clear; set before the VMA is reachable.
    @exclusivity(unchecked) var isAttached = false
    /// Every anon_vma this VMA is linked into (`anon_vma_chain`).
    @exclusivity(unchecked) var anonVMAChain: [AnonVMA] = []
    public unowned let mm: AddressSpace
    /// The same mm, uncounted: rmap walks borrow it (`RmapHit.withVMA`) without touching its
    /// reference count (an unowned load counts twice, and the mm's count lives in a side table).
    @usableFromInline let mmRef: Unmanaged<AddressSpace>
    /// Device-file mappings (dmirror's mmap) are "special": mixed maps with driver pages.
    @exclusivity(unchecked) public internal(set) var isSpecialMapping = false
    /// The huge page size of a hugetlb mapping (`hstate_vma`); nil for every other.
    @exclusivity(unchecked) public internal(set) var hstate: HState? = nil
    /// The reservations of a private hugetlb mapping made by this process's mmap (shared by
    /// the VMAs a split makes; none in a forked child).
    @exclusivity(unchecked) var hugetlbResv: HugetlbResvMap? = nil
    /// The hugetlbfs file of a hugetlb mapping (the key of its fault mutex; for a shared
    /// mapping also its page cache and reservations).
    @exclusivity(unchecked) public internal(set) var hugetlbFile: HugetlbFile? = nil

    init(mm: AddressSpace, start: UInt64, end: UInt64, flags: VMFlags, pgoff: UInt64, file: ShmemFile?) {
        self.mm = mm; mmRef = .passUnretained(mm); self.start = start; self.end = end; self.flags = flags; self.pgoff = pgoff; self.file = file
    }

    /// A change to a VMA in the tree needs its write lock (`vma_assert_write_locked`).
    @inline(__always) func assertChangeable(file: StaticString = #fileID, line: UInt = #line) {
        assert(!isAttached || vmLock.isWriteLocked(mm.vmLockSeq), "\(self) changed without vma_start_write", file: file, line: line)
    }

    /// Bounds and page offset of a VMA that rmap walkers can reach change with their locks held
    /// for write (`vma_prepare`: the anon_vma root, and the file's `i_mmap`).
    @inline(__always) func assertRmapPrepared(file: StaticString = #fileID, line: UInt = #line) {
        assert(anonVMAChain.first.map { $0.lock.isWriteLockedByCurrentThread } ?? true,
               "\(self) bounds changed without its anon_vma locked (vma_prepare)", file: file, line: line)
        assert(self.file.map { f in f.mappingLock.isWriteLockedByCurrentThread || f.mappingLock.withRead { !f.mappings.contains { $0 === self } } } ?? true,
               "\(self) bounds changed without its file's i_mmap locked (vma_prepare)", file: file, line: line)
    }

    /// `vma_is_anonymous`: no file behind it (shared anonymous memory is shmem, so not anonymous).
    /// A hugetlb mapping is not anonymous either: the kernel backs it with a hugetlbfs file.
    public var isAnonymous: Bool { file == nil && !isSpecialMapping && !flags.contains(.hugetlb) }
    public var isShared: Bool { flags.contains(.shared) }
    /// `is_cow_mapping`: private and may become writable.
    public var isCOWMapping: Bool { !flags.contains(.shared) && flags.contains(.mayWrite) }
    public var length: UInt64 { end - start }
    public func contains(_ address: UInt64) -> Bool { address >= start && address < end }

    /// `linear_page_index`.
    @inlinable public func linearPageIndex(_ address: UInt64) -> UInt64 { ((address - start) >> pageShift) + pgoff }
    /// The address a page of index `index` would have in this VMA (`vma_address`), if inside.
    public func address(ofPageIndex index: UInt64) -> UInt64? {
        guard index >= pgoff else { return nil }
        let delta = index - pgoff
        guard delta < (end - start) >> pageShift else { return nil }
        return start + (delta << pageShift)
    }

    public var protection: Protection {
        var p: Protection = []
        if flags.contains(.read) { p.insert(.read) }
        if flags.contains(.write) { p.insert(.write) }
        if flags.contains(.exec) { p.insert(.exec) }
        return p
    }

    public var description: String {
        let hex = { (v: UInt64) in "0x" + String(v, radix: 16) }
        var s = "\(hex(start))-\(hex(end)) "
        s += flags.contains(.read) ? "r" : "-"
        s += flags.contains(.write) ? "w" : "-"
        s += flags.contains(.exec) ? "x" : "-"
        s += isShared ? "s" : "p"
        s += file != nil ? " file@\(pgoff)" : hstate.map { " hugetlb \($0)" } ?? " anon"
        return s
    }

    /// Copies this VMA's shape for a split or fork (anon_vma chain handled by the caller).
    func duplicate(into mm: AddressSpace) -> VMA {
        let v = VMA(mm: mm, start: start, end: end, flags: flags, pgoff: pgoff, file: file)
        v.isSpecialMapping = isSpecialMapping
        v.hstate = hstate
        v.hugetlbResv = hugetlbResv
        v.hugetlbFile = hugetlbFile
        hugetlbFile?.attach()
        // vm_area_init_from copies the swap readahead state too.
        v.swapReadaheadInfo.store(swapReadaheadInfo.load())
        return v
    }
}

/// `PROT_*`.
public struct Protection: OptionSet, Sendable, Hashable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let none: Protection = []
    public static let read = Protection(rawValue: 1)
    public static let write = Protection(rawValue: 2)
    public static let exec = Protection(rawValue: 4)
    public static let readWrite: Protection = [.read, .write]
    static let known: Int32 = 0x7 | 0x8 // PROT_SEM (0x8) is accepted and ignored, as on x86
}

/// `MAP_*` flags.
public struct MapFlags: OptionSet, Sendable, Hashable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let shared = MapFlags(rawValue: 0x01)
    public static let `private` = MapFlags(rawValue: 0x02)
    public static let fixed = MapFlags(rawValue: 0x10)
    public static let anonymous = MapFlags(rawValue: 0x20)
    public static let noReserve = MapFlags(rawValue: 0x4000)
    public static let populate = MapFlags(rawValue: 0x8000)
    public static let hugetlb = MapFlags(rawValue: 0x40000)
    public static let fixedNoReplace = MapFlags(rawValue: 0x100000)
    /// `MAP_HUGE_SHIFT`, `MAP_HUGE_MASK`: with MAP_HUGETLB, log2 of the page size in bits 26…31.
    public static let hugeShift: UInt32 = 26
    public static let hugeMask: UInt32 = 0x3f
    /// `MAP_HUGE_2MB`, `MAP_HUGE_1GB`.
    public static let huge2MB = MapFlags(rawValue: 21 << 26)
    public static let huge1GB = MapFlags(rawValue: 30 << 26)
}
