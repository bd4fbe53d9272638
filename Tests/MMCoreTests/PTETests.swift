import XCTest
@testable import MMCore

final class PTETests: XCTestCase {
    func testPresentEncodingMatchesX86() {
        let e = PTE.page(0x12345, write: true, dirty: true)
        XCTAssertEqual(e.raw, 0x12345 << 12 | 0x1 | 0x2 | 0x4 | 0x20 | 0x40 | 0x800)
        XCTAssertEqual(e.pfn, 0x12345)
        XCTAssertTrue(e.isPresent && e.isWrite && e.isUser && e.isDirty && e.isSoftDirty)
        XCTAssertEqual(e.wrprotect().raw, e.raw & ~2)
        let z = PTE.page(0, write: false, special: true)
        XCTAssertEqual(z.raw, 0x1 | 0x4 | 0x20 | 0x200)
        XCTAssertEqual(PTE.page(7, write: false, huge: true).raw & 0x80, 0x80)
    }

    func testSwapEntriesRoundTripEveryType() {
        let types: [UInt8] = [0, 15, 23, SwapEntry.deviceExclusive,
                              SwapEntry.devicePrivateRead, SwapEntry.devicePrivateWrite, SwapEntry.migrationRead,
                              SwapEntry.migrationReadExclusive, SwapEntry.migrationWrite, SwapEntry.hwPoison, SwapEntry.marker]
        for t in types {
            for off: UInt64 in [0, 1, 0x1_2345_6789, SwapEntry.offsetMask] {
                let pte = SwapEntry(type: t, offset: off).pte(softDirty: off & 1 == 1)
                XCTAssertFalse(pte.isPresent)
                XCTAssertTrue(pte.isSwap || (t == 0 && off == 0 && off & 1 == 0))
                XCTAssertEqual(pte.swapEntry, SwapEntry(type: t, offset: off))
                XCTAssertEqual(pte.isSoftDirty, off & 1 == 1)
            }
        }
        let pmd = SwapEntry.devicePrivate(pfn: 99, write: true).pte(pmd: true)
        XCTAssertTrue(pmd.isHuge)
        XCTAssertEqual(pmd.swapEntry.pfn, 99)
    }

    func testReadOnlyFormsOfWritableEntries() {
        XCTAssertEqual(SwapEntry.migration(pfn: 5, write: true).readOnly(), .migration(pfn: 5, write: false))
        XCTAssertEqual(SwapEntry.devicePrivate(pfn: 5, write: true).readOnly(), .devicePrivate(pfn: 5, write: false))
        // One device-exclusive type since the 2025 rework: it has no read-only form.
        XCTAssertEqual(SwapEntry.deviceExclusive(pfn: 5).readOnly(), .deviceExclusive(pfn: 5))
        XCTAssertTrue(SwapEntry.deviceExclusive(pfn: 5).isWrite)
        XCTAssertFalse(SwapEntry.migration(pfn: 5, write: false).isWrite)
        XCTAssertTrue(SwapEntry.devicePrivate(pfn: 5, write: true).isWrite)
        XCTAssertEqual(SwapEntry(type: 3, offset: 9).readOnly(), SwapEntry(type: 3, offset: 9))
    }

    /// Linux 7.2's swap.h with a 5-bit type: MAX_SWAPFILES = 32 - 3 - 3 - 1 - 1 = 24, then
    /// HWPOISON, MIGRATION_READ, _READ_EXCLUSIVE, _WRITE, DEVICE_WRITE, DEVICE_READ,
    /// DEVICE_EXCLUSIVE, PTE_MARKER.
    func testSwapTypesAreLinux72s() {
        XCTAssertEqual([SwapEntry.maxSwapFiles, SwapEntry.hwPoison, SwapEntry.migrationRead, SwapEntry.migrationReadExclusive,
                        SwapEntry.migrationWrite, SwapEntry.devicePrivateWrite, SwapEntry.devicePrivateRead,
                        SwapEntry.deviceExclusive, SwapEntry.marker], [24, 24, 25, 26, 27, 28, 29, 30, 31])
        XCTAssertTrue(SwapEntry(type: 23, offset: 1).isSwapSlot)
        XCTAssertFalse(SwapEntry.migration(pfn: 1, write: false).isSwapSlot)
    }

    func testLevelArithmetic() {
        XCTAssertEqual(PageTableLevel.pte.shift, 12)
        XCTAssertEqual(PageTableLevel.pmd.shift, 21)
        XCTAssertEqual(PageTableLevel.pud.shift, 30)
        XCTAssertEqual(PageTableLevel.pgd.shift, 39)
        XCTAssertEqual(PageTableLevel.pmd.index(0x7FFF_FFE0_0000), 511)
        XCTAssertEqual(PageTableLevel.pmd.addressEnd(0x1000, 0x100_0000), 0x20_0000)
        XCTAssertEqual(PageTableLevel.pmd.addressEnd(0x1000, 0x3000), 0x3000)
    }
}
