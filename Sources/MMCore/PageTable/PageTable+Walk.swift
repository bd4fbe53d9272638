import MMSync

/// What a walker callback wants next (`ACTION_SUBTREE`, `ACTION_CONTINUE`, `ACTION_AGAIN`).
public enum WalkStep: Equatable {
    /// Go on: descend into this entry if it is a table, else move to the next entry.
    case next
    /// Do not descend into this entry; move to the next one.
    case skip
    /// Re-read this entry and call the callback again.
    case again
    /// Stop the whole walk with this error (or with none).
    case stop(Errno?)
}

/// Callbacks of a page-table walk (`struct mm_walk_ops`). Every callback has a default, so a
/// walker implements only what it needs; dispatch is static (the walk is generic).
public protocol PageWalker {
    /// A range whose entry at `level` is empty (`pte_hole`; `.pud` means a missing PUD entry,
    /// a 1 GiB hole). Called with no lock held, except
    /// holes inside a PTE table, which arrive under that table's lock when `locksPTE`.
    mutating func hole(_ start: UInt64, _ end: UInt64, level: PageTableLevel) -> WalkStep
    /// A non-empty PMD entry, before descending (`pmd_entry`). Called with no lock held; the
    /// entry may be a table, a huge leaf or a PMD-level swap entry. `table` is the PMD table
    /// page whose `ptl` guards the entry.
    mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep
    /// A non-empty PUD entry that is a leaf or non-present (1 GiB mappings). No lock held.
    mutating func pudLeaf(_ pud: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep
    /// One PTE (possibly empty) in [addr, addr+PAGE_SIZE). Locking: called with the PTE table's
    /// lock held when `locksPTE` is true; must not sleep.
    mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep
    /// Whether `pteEntry` runs under the PTE lock (default true).
    var locksPTE: Bool { get }
    /// Whether empty PTEs are passed to `pteEntry` (true) or reported as holes (false, default).
    var visitsEmptyPTEs: Bool { get }
}

extension PageWalker {
    public mutating func hole(_ start: UInt64, _ end: UInt64, level: PageTableLevel) -> WalkStep { .next }
    public mutating func pmdEntry(_ pmd: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep { .next }
    public mutating func pudLeaf(_ pud: EntryPointer, table: Page, _ start: UInt64, _ end: UInt64) -> WalkStep { .next }
    public mutating func pteEntry(_ pte: EntryPointer, _ addr: UInt64, _ next: UInt64) -> WalkStep { .next }
    public var locksPTE: Bool { true }
    public var visitsEmptyPTEs: Bool { false }
}

extension PageTable {
    /// Walks [start, end) calling `walker` (`walk_page_range`). One function per level, as in
    /// `mm/pagewalk.c` (`walk_pgd_range` … `walk_pte_range`; the P4D level is folded, as on a
    /// 4-level x86-64 table). Each has the same shape: compute the next boundary, report a hole
    /// or the entry, descend unless the callback said otherwise.
    /// Return: nil, or the error a callback stopped with.
    /// Locking: caller holds the mmap lock (read or write) so no table is freed under the walk.
    /// Inlinable, so a walker in another module (HMM's collect and range walks) gets a walk
    /// specialised for it, with its callbacks called directly.
    @inlinable
    public func walk<W: PageWalker>(_ start: UInt64, _ end: UInt64, _ walker: inout W) -> Errno? {
        Lockdep.assertSomeRWSemHeld()
        precondition(start < end && isPageAligned(start) && isPageAligned(end))
        switch walkPGDRange(start, end, &walker) {
        case .stop(let e): return e
        default: return nil
        }
    }

    /// Calls `body(entry)` for the entries of one table level over [start, end), redoing an
    /// entry while `body` asks `.again`. Return: the first `.stop`, else `.next`.
    @inlinable @inline(__always)
    func forEachEntry(_ tablePfn: UInt64, _ level: PageTableLevel, _ start: UInt64, _ end: UInt64,
                              _ body: (EntryPointer, UInt64, UInt64) -> WalkStep) -> WalkStep {
        var addr = start
        while addr < end {
            let next = level.addressEnd(addr, end)
            let e = entry(inTable: tablePfn, index: level.index(addr))
            var step: WalkStep
            repeat { step = body(e, addr, next) } while step == .again
            if case .stop = step { return step }
            addr = next
        }
        return .next
    }

    /// `walk_pgd_range`: holes at PGD level; every present entry is a PUD table.
    @inlinable
    func walkPGDRange<W: PageWalker>(_ start: UInt64, _ end: UInt64, _ walker: inout W) -> WalkStep {
        forEachEntry(pgd.pfn, .pgd, start, end) { e, addr, next in
            let v = e.load()
            if v.isNone { return Self.holeStep(walker.hole(addr, next, level: .pgd)) }
            guard v.isPresent, !v.isHuge else { return .skip }
            return walkPUDRange(v.pfn, addr, next, &walker)
        }
    }

    /// `walk_pud_range`: holes, 1 GiB leaves and non-present entries (`pudLeaf`), else the
    /// PMD table below.
    @inlinable
    func walkPUDRange<W: PageWalker>(_ tablePfn: UInt64, _ start: UInt64, _ end: UInt64,
                                             _ walker: inout W) -> WalkStep {
        let table = memory.page(tablePfn)
        return forEachEntry(tablePfn, .pud, start, end) { e, addr, next in
            let v = e.load()
            if v.isNone { return Self.holeStep(walker.hole(addr, next, level: .pud)) }
            if !v.isPresent || v.isHuge { return walker.pudLeaf(e, table: table, addr, next) }
            return walkPMDRange(v.pfn, addr, next, &walker)
        }
    }

    /// `walk_pmd_range`: holes, then `pmdEntry` for every other entry; descends into the PTE
    /// table only if the entry (re-read after the callback) still is one.
    @inlinable
    func walkPMDRange<W: PageWalker>(_ tablePfn: UInt64, _ start: UInt64, _ end: UInt64,
                                             _ walker: inout W) -> WalkStep {
        let table = memory.page(tablePfn)
        return forEachEntry(tablePfn, .pmd, start, end) { e, addr, next in
            if e.load().isNone { return Self.holeStep(walker.hole(addr, next, level: .pmd)) }
            let step = walker.pmdEntry(e, table: table, addr, next)
            guard step == .next else { return step }
            let now = e.load()
            return now.isPresent && !now.isHuge ? walkPTERange(now.pfn, addr, next, &walker) : .skip
        }
    }

    /// A hole callback's `.next` means "nothing below to descend into".
    @inlinable @inline(__always) static func holeStep(_ s: WalkStep) -> WalkStep { s == .next ? .skip : s }

    /// `walk_pte_range`: every PTE (empty runs coalesced into one hole unless the walker visits
    /// them), under the table's lock when the walker asks for it.
    @inlinable
    func walkPTERange<W: PageWalker>(_ tablePfn: UInt64, _ start: UInt64, _ end: UInt64, _ walker: inout W) -> WalkStep {
        let table = memory.page(tablePfn)
        let locks = walker.locksPTE
        if locks { table.ptl.lock() }
        defer { if locks { table.ptl.unlock() } }
        var addr = start
        var holeStart: UInt64? = nil
        while addr < end {
            let e = entry(inTable: tablePfn, index: PageTableLevel.pte.index(addr))
            if !walker.visitsEmptyPTEs && e.load().isNone {
                if holeStart == nil { holeStart = addr }
                addr += pageSize
                continue
            }
            if let hs = holeStart {
                holeStart = nil
                if case .stop(let err) = walker.hole(hs, addr, level: .pte) { return .stop(err) }
            }
            var step: WalkStep
            repeat { step = walker.pteEntry(e, addr, addr + pageSize) } while step == .again
            if case .stop = step { return step }
            addr += pageSize
        }
        if let hs = holeStart, case .stop(let err) = walker.hole(hs, end, level: .pte) { return .stop(err) }
        return .next
    }
}
