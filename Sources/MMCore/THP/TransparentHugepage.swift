import MMSync

/// `/sys/kernel/mm/transparent_hugepage/enabled`: when anonymous faults may map a PMD-sized
/// folio.
public enum THPMode: Int, Sendable, CaseIterable, CustomStringConvertible {
    /// Every eligible anonymous VMA (unless `MADV_NOHUGEPAGE`).
    case always = 0
    /// Only VMAs marked `MADV_HUGEPAGE` (the default here, as in kernels built with
    /// `CONFIG_TRANSPARENT_HUGEPAGE_MADVISE`).
    case madvise = 1
    case never = 2
    public var description: String { ["always", "madvise", "never"][rawValue] }
    public init?(name: String) {
        guard let m = THPMode.allCases.first(where: { $0.description == name }) else { return nil }
        self = m
    }
}

/// `/sys/kernel/mm/transparent_hugepage/defrag`. Kept as the kernel keeps it; the model has no
/// compaction, so every mode allocates the same way (a free order-9 block or fallback).
public enum THPDefrag: Int, Sendable, CaseIterable, CustomStringConvertible {
    case always = 0, `defer` = 1, deferMadvise = 2, madvise = 3, never = 4
    public var description: String { ["always", "defer", "defer+madvise", "madvise", "never"][rawValue] }
    public init?(name: String) {
        guard let m = THPDefrag.allCases.first(where: { $0.description == name }) else { return nil }
        self = m
    }
}

/// The machine's transparent-huge-page settings and its huge zero folio (`mm/huge_memory.c`).
public final class TransparentHugepage: @unchecked Sendable {
    unowned let memory: PhysicalMemory
    @usableFromInline let modeWord = AtomicWord(UInt64(THPMode.madvise.rawValue))
    private let defragWord = AtomicWord(UInt64(THPDefrag.madvise.rawValue))
    private let zeroPageWord = AtomicWord(1)

    init(memory: PhysicalMemory) { self.memory = memory }

    /// `enabled`.
    public var mode: THPMode {
        get { THPMode(rawValue: Int(modeWord.loadRelaxed())) ?? .never }
        set { modeWord.storeRelease(UInt64(newValue.rawValue)) }
    }
    /// `defrag`.
    public var defrag: THPDefrag {
        get { THPDefrag(rawValue: Int(defragWord.loadRelaxed())) ?? .madvise }
        set { defragWord.storeRelease(UInt64(newValue.rawValue)) }
    }
    /// `use_zero_page`: a read fault maps the huge zero folio (default on).
    public var useZeroPage: Bool {
        get { zeroPageWord.loadRelaxed() != 0 }
        set { zeroPageWord.storeRelease(newValue ? 1 : 0) }
    }

    /// `thp_vma_allowable_order(vma, vm_flags, TVA_PAGEFAULT, PMD_ORDER)` for an anonymous
    /// fault at `address`: the mode allows it for this VMA, and the VMA covers the whole
    /// PMD-aligned range around `address` (`thp_vma_suitable_order`).
    @inlinable
    public func allowsFault(_ vma: VMA, _ address: UInt64) -> Bool {
        let m = modeWord.loadRelaxed()
        if m == UInt64(THPMode.never.rawValue) { return false }
        let f = vma.flags
        if f.contains(.noHugePage) { return false }
        if m == UInt64(THPMode.madvise.rawValue) && !f.contains(.hugePage) { return false }
        guard vma.isAnonymous, !f.contains(.io), !f.contains(.pfnMap), !f.contains(.mixedMap) else { return false }
        let haddr = address & pmdMask
        return haddr >= vma.start && haddr &+ pmdSize <= vma.end
    }

    private let madeWord = AtomicWord(0)
    /// Whether any THP (or the huge zero folio) was ever made on this machine: the invariant
    /// checkers scan for large folios only then.
    public var foliosMade: Bool { madeWord.loadRelaxed() != 0 }
    /// Notes that a THP is being made (before it can be seen).
    @inline(__always) package func noteFolioMade() { if madeWord.loadRelaxed() == 0 { madeWord.storeRelease(1) } }

    // MARK: the huge zero folio

    private let zeroLock = Lock("huge-zero-folio")
    /// The huge zero folio, while some address space holds it. Locking: zeroLock.
    private var zeroFolio: Page? = nil
    /// Address spaces holding the huge zero folio (each once, `MMF_HUGE_ZERO_FOLIO`).
    /// Locking: zeroLock.
    private var zeroUsers = 0

    /// `mm_get_huge_zero_folio`: the huge zero folio, allocated (zeroed) on first use; `mm`
    /// holds it from its first huge zero mapping until it exits. Nil when no order-9 block is
    /// free. Locking: takes zeroLock; no page-table lock held (it allocates).
    func getHugeZeroFolio(for mm: AddressSpace) -> Page? {
        Lockdep.assertNoSpinLockHeld()
        if mm.holdsHugeZeroFolio.load() != 0, let z = zeroFolioUnlocked { return z }
        zeroLock.lock(); defer { zeroLock.unlock() }
        if zeroFolio == nil {
            noteFolioMade()
            guard let z = memory.allocate(order: pmdOrder, zeroed: true) else { return nil }
            z.set([.uptodate, .reserved])
            zeroFolio = z
            zeroPfnWord.storeRelease(z.pfn)
            mm.machine.stats.count(.thpZeroPageAlloc)
        }
        if mm.holdsHugeZeroFolio.load() == 0 { mm.holdsHugeZeroFolio.storeRelease(1); zeroUsers += 1 }
        return zeroFolio
    }

    /// `mm_put_huge_zero_folio` at exit: the last user's exit frees it (the kernel's shrinker
    /// frees it once unused; here that is at once). Locking: takes zeroLock.
    func putHugeZeroFolio(for mm: AddressSpace) {
        Lockdep.assertNoSpinLockHeld()
        guard mm.holdsHugeZeroFolio.load() != 0 else { return }
        zeroLock.lock(); defer { zeroLock.unlock() }
        mm.holdsHugeZeroFolio.storeRelease(0)
        zeroUsers -= 1
        guard zeroUsers == 0, let z = zeroFolio else { return }
        zeroFolio = nil
        zeroPfnWord.storeRelease(0)
        z.clear([.reserved, .uptodate])
        memory.put(z)
    }

    @usableFromInline let zeroPfnWord = AtomicWord(0)
    /// The huge zero folio's first pfn, or 0 when there is none (`is_huge_zero_pfn`).
    @inlinable public var hugeZeroPfn: UInt64 { zeroPfnWord.loadRelaxed() }
    private var zeroFolioUnlocked: Page? { let pfn = hugeZeroPfn; return pfn == 0 ? nil : memory.page(pfn) }
    /// Whether `pte` is a PMD mapping the huge zero folio (`is_huge_zero_pmd`).
    @inlinable public func isHugeZero(_ pmd: PTE) -> Bool {
        pmd.isPresent && pmd.isHuge && pmd.isSpecial && pmd.pfn != 0 && pmd.pfn == hugeZeroPfn
    }
}

/// Order of a PMD-sized folio (`HPAGE_PMD_ORDER`).
public let pmdOrder = Int(pmdShift - pageShift)
/// Pages in a PMD-sized folio (`HPAGE_PMD_NR`).
public let pmdPages = UInt64(1) << UInt64(pmdShift - pageShift)
