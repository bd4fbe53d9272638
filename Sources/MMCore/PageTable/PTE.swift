/// A page-table entry at any level, in the x86-64 format.
///
/// Present entries: bit 0 present, 1 write, 2 user, 5 accessed, 6 dirty, 7 huge (PSE, a leaf
/// at PMD/PUD level), 9 special (no struct page behind it, e.g. the zero page), 11 soft-dirty,
/// pfn in bits 12…51. A present entry with `user` clear is a PROT_NONE mapping.
///
/// Non-present, non-zero entries are swap entries (see `SwapEntry`): type in bits 58…62,
/// offset in bits 9…57, bit 1 swap-soft-dirty, bit 7 marks a PMD-level swap entry.
@frozen
public struct PTE: Equatable, Hashable, CustomStringConvertible {
    public var raw: UInt64
    @inlinable @inline(__always) public init(raw: UInt64) { self.raw = raw }

    public static let present: UInt64 = 1 << 0
    public static let write: UInt64 = 1 << 1
    public static let user: UInt64 = 1 << 2
    public static let accessed: UInt64 = 1 << 5
    public static let dirty: UInt64 = 1 << 6
    public static let huge: UInt64 = 1 << 7
    public static let special: UInt64 = 1 << 9
    public static let softDirty: UInt64 = 1 << 11
    public static let pfnMask: UInt64 = 0x000F_FFFF_FFFF_F000
    /// In a non-present entry: the swap entry's soft-dirty bit.
    public static let swapSoftDirty: UInt64 = 1 << 1
    /// In a swap-slot entry: the page was exclusive to this mapping when it was swapped out
    /// (`_PAGE_SWP_EXCLUSIVE`, bit 3 on x86-64), so the swap-in may map it writable at once.
    public static let swapExclusive: UInt64 = 1 << 3

    public static let none = PTE(raw: 0)

    @inlinable public var isNone: Bool { raw == 0 }
    @inlinable public var isPresent: Bool { raw & PTE.present != 0 }
    @inlinable public var isWrite: Bool { raw & PTE.write != 0 }
    @inlinable public var isUser: Bool { raw & PTE.user != 0 }
    @inlinable public var isDirty: Bool { raw & PTE.dirty != 0 }
    @inlinable public var isAccessed: Bool { raw & PTE.accessed != 0 }
    @inlinable public var isHuge: Bool { raw & PTE.huge != 0 }
    @inlinable public var isSpecial: Bool { raw & PTE.special != 0 }
    @inlinable public var isSoftDirty: Bool { raw & (isPresent ? PTE.softDirty : PTE.swapSoftDirty) != 0 }
    /// A non-present entry that is not empty: a swap entry of some type.
    @inlinable public var isSwap: Bool { raw != 0 && raw & PTE.present == 0 }
    @inlinable public var pfn: UInt64 { (raw & PTE.pfnMask) >> pageShift }
    @inlinable public var swapEntry: SwapEntry { SwapEntry(pte: self) }
    /// `pte_swp_exclusive`.
    @inlinable public var isSwapExclusive: Bool { !isPresent && raw & PTE.swapExclusive != 0 }

    /// A present leaf entry mapping `pfn`.
    @inlinable public static func page(_ pfn: UInt64, write: Bool, user: Bool = true, dirty: Bool = false,
                                       special: Bool = false, huge: Bool = false) -> PTE {
        var r = (pfn << pageShift) & pfnMask | present | accessed
        if write { r |= PTE.write }
        if user { r |= PTE.user }
        if dirty { r |= PTE.dirty | PTE.softDirty }
        if special { r |= PTE.special }
        if huge { r |= PTE.huge }
        return PTE(raw: r)
    }
    /// A non-leaf entry pointing at the next-level table in frame `pfn`.
    @inlinable public static func table(_ pfn: UInt64) -> PTE {
        PTE(raw: (pfn << pageShift) | present | write | user | accessed)
    }

    @inlinable public func wrprotect() -> PTE { PTE(raw: raw & ~PTE.write) }
    @inlinable public func mkwrite() -> PTE { PTE(raw: raw | PTE.write) }
    @inlinable public func mkdirty() -> PTE { PTE(raw: raw | PTE.dirty | PTE.softDirty) }
    @inlinable public func mkclean() -> PTE { PTE(raw: raw & ~PTE.dirty) }
    @inlinable public func mkold() -> PTE { PTE(raw: raw & ~PTE.accessed) }
    @inlinable public func mkyoung() -> PTE { PTE(raw: raw | PTE.accessed) }

    public var description: String {
        if isNone { return "none" }
        if !isPresent { return swapEntry.description + (isHuge ? "(pmd)" : "") + (isSwapExclusive ? " exclusive" : "") }
        var s = "pfn \(pfn)"
        s += isUser ? (isWrite ? " rw" : " ro") : " prot_none"
        if isDirty { s += " D" }
        if isAccessed { s += " A" }
        if isHuge { s += " huge" }
        if isSpecial { s += " special" }
        return s
    }
}

/// Page-table levels, top down. On x86-64 with 4-level paging the p4d level is folded into the
/// pgd (as in the kernel), so walkers have four real levels.
public enum PageTableLevel: Int, Sendable, CustomStringConvertible {
    case pte = 0, pmd = 1, pud = 2, pgd = 3
    @inlinable public var shift: UInt64 { pageShift + UInt64(rawValue) * 9 }
    @inlinable public var size: UInt64 { 1 << shift }
    @inlinable public func index(_ address: UInt64) -> Int { Int((address >> shift) & 511) }
    /// End of the entry covering `address`, clipped to `end` (`pXd_addr_end`).
    @inlinable public func addressEnd(_ address: UInt64, _ end: UInt64) -> UInt64 {
        let boundary = (address & ~(size - 1)) &+ size
        return (boundary &- 1 < end &- 1) ? boundary : end
    }
    public var description: String { ["pte", "pmd", "pud", "pgd"][rawValue] }
}
