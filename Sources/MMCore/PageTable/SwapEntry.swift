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
    @inlinable public var pfn: UInt64 { offset }

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

    public var description: String {
        switch type {
        case 0..<SwapEntry.maxSwapFiles: return "swap(\(type):\(offset))"
        case SwapEntry.migrationRead: return "migration-r(pfn \(offset))"
        case SwapEntry.migrationReadExclusive: return "migration-rx(pfn \(offset))"
        case SwapEntry.migrationWrite: return "migration-w(pfn \(offset))"
        case SwapEntry.devicePrivateRead: return "device-private-r(pfn \(offset))"
        case SwapEntry.devicePrivateWrite: return "device-private-w(pfn \(offset))"
        case SwapEntry.deviceExclusive: return "device-exclusive(pfn \(offset))"
        case SwapEntry.hwPoison: return "hwpoison(pfn \(offset))"
        default: return "marker(\(type):\(offset))"
        }
    }
}
