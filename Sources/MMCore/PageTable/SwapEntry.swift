/// A non-present page-table entry's payload: a type and an offset (`swp_entry_t`).
///
/// Types 0…23 are swap devices (offset = slot). The special types carry a pfn as offset:
/// hwpoison, migration entries (read, read-exclusive, write), device-private entries (write,
/// read), the device-exclusive entry, and markers — numbered as Linux 7.2's `swap.h` numbers
/// them with a 5-bit type (`MAX_SWAPFILES` = 32 − 3 − 3 − 1 − 1 = 24). Since the 2025 rework
/// there is one device-exclusive type: the entry stands for a writable mapping, and mprotect
/// and fork never make a read-only form of it.
@frozen
public struct SwapEntry: Equatable, Hashable, CustomStringConvertible {
    public let type: UInt8
    public let offset: UInt64

    public static let typeShift: UInt64 = 58
    public static let typeMask: UInt64 = 0x1F
    public static let offsetShift: UInt64 = 9
    public static let offsetMask: UInt64 = (1 << 49) - 1

    public static let maxSwapFiles: UInt8 = 24
    public static let hwPoison: UInt8 = 24
    public static let migrationRead: UInt8 = 25
    public static let migrationReadExclusive: UInt8 = 26
    public static let migrationWrite: UInt8 = 27
    public static let devicePrivateWrite: UInt8 = 28
    public static let devicePrivateRead: UInt8 = 29
    public static let deviceExclusive: UInt8 = 30
    public static let marker: UInt8 = 31

    @inlinable public init(type: UInt8, offset: UInt64) {
        precondition(type <= 31 && offset <= SwapEntry.offsetMask)
        self.type = type; self.offset = offset
    }
    @inlinable init(pte: PTE) {
        type = UInt8((pte.raw >> SwapEntry.typeShift) & SwapEntry.typeMask)
        offset = (pte.raw >> SwapEntry.offsetShift) & SwapEntry.offsetMask
    }

    /// The entry as a PTE (PMD-level when `pmd`), carrying the soft-dirty bit and (for a swap
    /// slot) the exclusive bit if asked.
    @inlinable public func pte(softDirty: Bool = false, pmd: Bool = false, exclusive: Bool = false) -> PTE {
        var r = (UInt64(type) << SwapEntry.typeShift) | (offset << SwapEntry.offsetShift)
        if softDirty { r |= PTE.swapSoftDirty }
        if exclusive { r |= PTE.swapExclusive }
        if pmd { r |= PTE.huge }
        return PTE(raw: r)
    }

    @inlinable public var isSwapSlot: Bool { type < SwapEntry.maxSwapFiles }
    @inlinable public var isMigration: Bool { type >= SwapEntry.migrationRead && type <= SwapEntry.migrationWrite }
    @inlinable public var isWritableMigration: Bool { type == SwapEntry.migrationWrite }
    @inlinable public var isDevicePrivate: Bool { type == SwapEntry.devicePrivateRead || type == SwapEntry.devicePrivateWrite }
    @inlinable public var isDeviceExclusive: Bool { type == SwapEntry.deviceExclusive }
    @inlinable public var isHwPoison: Bool { type == SwapEntry.hwPoison }
    /// Whether the entry stands for a writable mapping (a device-exclusive entry always does).
    @inlinable public var isWrite: Bool {
        type == SwapEntry.migrationWrite || type == SwapEntry.devicePrivateWrite || type == SwapEntry.deviceExclusive
    }
    /// Entries whose offset is a pfn with a struct page behind it.
    @inlinable public var hasPfn: Bool { isMigration || isDevicePrivate || isDeviceExclusive || isHwPoison }
    /// The pfn of such an entry: the offset's low bits (a migration entry keeps the accessed
    /// and dirty bits of the mapping it replaced above them, as x86's, `SWP_MIG_YOUNG_BIT`).
    @inlinable public var pfn: UInt64 { offset & SwapEntry.pfnMask }

    /// Bits of the offset that hold a pfn (`SWP_PFN_BITS`); a migration entry's young and
    /// dirty bits come right above (`migration_entry_supports_ad()` is true, as on x86-64).
    public static let pfnBits: UInt64 = 40
    public static let pfnMask: UInt64 = (1 << pfnBits) - 1
    @usableFromInline static let migrationYoungBit: UInt64 = 1 << pfnBits
    @usableFromInline static let migrationDirtyBit: UInt64 = 1 << (pfnBits + 1)

    /// A migration entry that remembers the replaced mapping's accessed (`young`) and dirty
    /// bits (`make_migration_entry_young` / `_dirty`); any other entry is returned unchanged.
    @inlinable public func carrying(young: Bool, dirty: Bool) -> SwapEntry {
        guard isMigration else { return self }
        return SwapEntry(type: type, offset: offset | (young ? SwapEntry.migrationYoungBit : 0)
                                                  | (dirty ? SwapEntry.migrationDirtyBit : 0))
    }
    /// A migration entry made from a present mapping `v`: its accessed and dirty bits carried.
    @inlinable public func carrying(_ v: PTE) -> SwapEntry { carrying(young: v.isAccessed, dirty: v.isDirty) }
    /// Whether the mapping a migration entry replaced was young (`softleaf_is_migration_young`).
    @inlinable public var isMigrationYoung: Bool { isMigration && offset & SwapEntry.migrationYoungBit != 0 }
    /// Whether it was dirty (`softleaf_is_migration_dirty`).
    @inlinable public var isMigrationDirty: Bool { isMigration && offset & SwapEntry.migrationDirtyBit != 0 }
    /// The read-only form of a migration entry, exclusive or not, its young and dirty bits kept
    /// (mprotect and fork make it from `swp_offset`, which holds them).
    @inlinable public func readableMigration(exclusive: Bool) -> SwapEntry {
        precondition(isMigration, "readableMigration of \(self)")
        return SwapEntry(type: exclusive ? SwapEntry.migrationReadExclusive : SwapEntry.migrationRead, offset: offset)
    }

    @inlinable public static func migration(pfn: UInt64, write: Bool, exclusive: Bool = false) -> SwapEntry {
        SwapEntry(type: write ? migrationWrite : (exclusive ? migrationReadExclusive : migrationRead), offset: pfn)
    }
    @inlinable public static func devicePrivate(pfn: UInt64, write: Bool) -> SwapEntry {
        SwapEntry(type: write ? devicePrivateWrite : devicePrivateRead, offset: pfn)
    }
    /// `make_device_exclusive_entry`.
    @inlinable public static func deviceExclusive(pfn: UInt64) -> SwapEntry {
        SwapEntry(type: deviceExclusive, offset: pfn)
    }
    /// The read-only form of a writable migration or device-private entry (mprotect, fork of a
    /// COW mapping). A device-exclusive entry has none: it is returned unchanged.
    @inlinable public func readOnly() -> SwapEntry {
        switch type {
        case SwapEntry.migrationWrite: return SwapEntry(type: SwapEntry.migrationRead, offset: offset)
        case SwapEntry.devicePrivateWrite: return SwapEntry(type: SwapEntry.devicePrivateRead, offset: offset)
        default: return self
        }
    }

    private var adText: String { (isMigrationYoung ? " A" : "") + (isMigrationDirty ? " D" : "") }

    public var description: String {
        switch type {
        case 0..<SwapEntry.maxSwapFiles: return "swap(\(type):\(offset))"
        case SwapEntry.migrationRead: return "migration-r(pfn \(pfn)\(adText))"
        case SwapEntry.migrationReadExclusive: return "migration-rx(pfn \(pfn)\(adText))"
        case SwapEntry.migrationWrite: return "migration-w(pfn \(pfn)\(adText))"
        case SwapEntry.devicePrivateRead: return "device-private-r(pfn \(offset))"
        case SwapEntry.devicePrivateWrite: return "device-private-w(pfn \(offset))"
        case SwapEntry.deviceExclusive: return "device-exclusive(pfn \(offset))"
        case SwapEntry.hwPoison: return "hwpoison(pfn \(offset))"
        default: return "marker(\(type):\(offset))"
        }
    }
}
