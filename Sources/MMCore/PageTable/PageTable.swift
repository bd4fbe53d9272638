import MMSync

/// A pointer to one page-table entry inside a table frame. Loads and stores are atomic, because
/// CPU threads walk tables without locks (as a hardware walker does).
@frozen
public struct EntryPointer: Equatable {
    public let address: UnsafeMutableRawPointer
    @inlinable @inline(__always) public init(_ address: UnsafeMutableRawPointer) { self.address = address }
    @inlinable @inline(__always) public func load() -> PTE { PTE(raw: AtomicU64Ref(address).load(.acquire)) }
    @inlinable @inline(__always) public func store(_ e: PTE) { AtomicU64Ref(address).store(e.raw, .release) }
    /// Atomically replaces the entry, returning the old one (`ptep_get_and_clear`).
    @inlinable @inline(__always) public func exchange(_ e: PTE) -> PTE { PTE(raw: AtomicU64Ref(address).exchange(e.raw)) }
    @inlinable @inline(__always) public func compareExchange(_ expected: PTE, _ desired: PTE) -> Bool {
        AtomicU64Ref(address).compareExchange(expected: expected.raw, desired: desired.raw).exchanged
    }
    @inlinable public static func + (p: EntryPointer, i: Int) -> EntryPointer { EntryPointer(p.address + i &* 8) }
    /// Replaces the entry with `transform(old)` atomically (`ptep_modify_prot_start/commit`):
    /// a CPU's lock-free walk may set the accessed or dirty bit at any moment, and a plain store
    /// of a value computed from an earlier load would lose it. Return: (old, new).
    /// Used under the entry's page-table lock, which excludes other writers: only the
    /// hardware-style bit updates race (the page walks that call it hold that lock).
    @inlinable @discardableResult
    public func modify(_ transform: (PTE) -> PTE) -> (old: PTE, new: PTE) {
        while true {
            let old = load()
            let new = transform(old)
            if new == old || compareExchange(old, new) { return (old, new) }
        }
    }
}

/// One address space's 4-level page table. Tables live in frames of physical memory.
///
/// Locking: the table's structure (which tables exist) may grow under the mmap lock held for
/// read (new tables are installed with compare-and-swap) and shrinks only under the mmap lock
/// held for write, after a TLB shootdown. Each PTE table and each PMD table has its own lock:
/// the `ptl` word in the table frame's metadata (split page-table locks). Leaf PTEs are changed
/// under the lock of the PTE table holding them; PMD entries under the lock of the PMD table.
public final class PageTable: @unchecked Sendable {
    public let memory: PhysicalMemory
    public let pgd: Page
    let tablePages = AtomicCounter(1)

    /// A new, empty page table: its PGD may be reclaimed for (`pgd_alloc`, GFP_PGTABLE_USER).
    /// Locking: no spin lock held.
    init(memory: PhysicalMemory) throws(Errno) {
        Lockdep.assertNoSpinLockHeld()
        self.memory = memory
        guard let p = PageTable.allocateTable(memory, mayReclaim: true) else { throw .ENOMEM }
        pgd = p
    }

    /// Number of table frames in use (for accounting and benchmarks).
    public var tableFrames: Int { tablePages.load() }

    static func allocateTable(_ memory: PhysicalMemory, mayReclaim: Bool = false) -> Page? {
        if FaultInjection.shouldFail(.pageTableAllocation) { return nil }
        guard let p = memory.allocate(order: 0, zeroed: true, mayReclaim: mayReclaim) else { return nil }
        p.set(.pageTable)
        p.ptl.word.store(0)
        return p
    }

    @inlinable @inline(__always)
    public func entry(inTable pfn: UInt64, index: Int) -> EntryPointer {
        EntryPointer(memory.frame(pfn) + index &* 8)
    }

    /// The entry for `address` at `level`, if every table above it exists. Does not allocate.
    /// Returns the entry pointer and the table page holding it (whose `ptl` guards it).
    /// Stops early (returning the higher entry) when it meets a leaf or non-present entry above
    /// `level`.
    public func lookup(_ address: UInt64, level: PageTableLevel) -> (entry: EntryPointer, table: Page, level: PageTableLevel)? {
        var tablePfn = pgd.pfn
        var l = PageTableLevel.pgd
        while true {
            let e = entry(inTable: tablePfn, index: l.index(address))
            if l == level { return (e, memory.page(tablePfn), l) }
            let v = e.load()
            if v.isNone { return nil }
            if !v.isPresent || v.isHuge { return (e, memory.page(tablePfn), l) }
            tablePfn = v.pfn
            l = PageTableLevel(rawValue: l.rawValue - 1)!
        }
    }

    /// The entry for `address` at `level`, allocating missing tables above it
    /// (`pte_alloc`/`pmd_alloc`). Returns nil with ENOMEM if a table frame cannot be allocated.
    /// If a leaf (huge or non-present) entry is met above `level`, that entry is returned.
    /// With `mayReclaim` (a fault's `pte_alloc`, which may enter direct reclaim) the caller
    /// holds no page-table lock.
    /// Locking: caller holds the mmap lock (read or write).
    public func walkAllocating(_ address: UInt64, level: PageTableLevel, mayReclaim: Bool = false) throws(Errno) -> (entry: EntryPointer, table: Page, level: PageTableLevel) {
        Lockdep.assertSomeRWSemHeld()
        var tablePfn = pgd.pfn
        var l = PageTableLevel.pgd
        while true {
            let e = entry(inTable: tablePfn, index: l.index(address))
            if l == level { return (e, memory.page(tablePfn), l) }
            var v = e.load()
            if v.isNone {
                guard let t = PageTable.allocateTable(memory, mayReclaim: mayReclaim) else { throw .ENOMEM }
                if e.compareExchange(.none, .table(t.pfn)) {
                    tablePages.add(1)
                    v = .table(t.pfn)
                } else {
                    t.clear(.pageTable)
                    memory.put(t)
                    v = e.load()
                }
            }
            if !v.isPresent || v.isHuge { return (e, memory.page(tablePfn), l) }
            tablePfn = v.pfn
            l = PageTableLevel(rawValue: l.rawValue - 1)!
        }
    }

    /// Frees a table frame that no longer has entries.
    func freeTable(_ page: Page) {
        precondition(!page.ptl.isLocked, "freeing a locked page table")
        page.clear(.pageTable)
        tablePages.add(-1)
        memory.put(page)
    }
}
