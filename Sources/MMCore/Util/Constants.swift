/// Architecture constants (x86-64, 4-level paging, 4 KiB base pages).
public let pageShift: UInt64 = 12
public let pageSize: UInt64 = 1 << pageShift
public let pageMask: UInt64 = ~(pageSize - 1)
public let pmdShift: UInt64 = 21
public let pmdSize: UInt64 = 1 << pmdShift
public let pmdMask: UInt64 = ~(pmdSize - 1)
public let pudShift: UInt64 = 30
public let pudSize: UInt64 = 1 << pudShift
public let pgdirShift: UInt64 = 39
public let pgdirSize: UInt64 = 1 << pgdirShift
public let ptrsPerTable: Int = 512
/// Order of a PMD-sized folio (2 MiB / 4 KiB = 512 pages).
public let hpageOrder: Int = 9
/// Top of the user address space (47 bits, as x86-64 without LA57).
public let taskSize: UInt64 = 0x0000_7FFF_FFFF_F000
/// Lowest address `mmap` hands out without a hint (vm.mmap_min_addr).
public let mmapMinAddress: UInt64 = 0x10000
/// Where top-down placement of new mappings starts.
public let mmapBase: UInt64 = 0x0000_7F00_0000_0000

@inlinable @inline(__always) public func pageAlignDown(_ a: UInt64) -> UInt64 { a & pageMask }
@inlinable @inline(__always) public func isPageAligned(_ a: UInt64) -> Bool { a & (pageSize - 1) == 0 }
/// Rounds up to a page; nil on overflow.
@inlinable public func pageAlignUp(_ a: UInt64) -> UInt64? {
    let (s, o) = a.addingReportingOverflow(pageSize - 1)
    return o ? nil : s & pageMask
}
