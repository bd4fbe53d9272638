import XCTest
@testable import Devices

final class DmirrorPageTableTests: XCTestCase {
    func testEntriesAcrossLeavesIncludingTheZeroPage() {
        let pt = DmirrorPageTable()
        XCTAssertNil(pt[5])
        pt[5] = 0 // the zero page, read-only: entry 0 is an entry, not a hole
        pt[511] = 7 << 2 | 3
        pt[512] = 8 << 2 | 1
        pt[1 << 40] = 9 << 2
        XCTAssertEqual(pt.count, 4)
        XCTAssertEqual(pt[5], 0)
        XCTAssertEqual(pt[511], 7 << 2 | 3)
        XCTAssertEqual(pt[512], 8 << 2 | 1)
        XCTAssertEqual(pt.entries().map(\.vpn), [5, 511, 512, 1 << 40])
        XCTAssertTrue(pt.allPresent(511, 513))
        XCTAssertFalse(pt.allPresent(510, 513))
        XCTAssertTrue(pt.contains(tag: 1, in: 0, 1000))
        XCTAssertFalse(pt.contains(tag: 1, in: 0, 512))
        pt[511] = 7 << 2 // overwrite keeps the count
        XCTAssertEqual(pt.count, 4)
        pt[6] = nil // erasing a hole changes nothing
        XCTAssertEqual(pt.count, 4)
    }

    func testRemoveRangeIsInclusiveAndSpansLeaves() {
        let pt = DmirrorPageTable()
        for v in UInt64(500)..<UInt64(1100) { pt[v] = v << 2 }
        pt.removeRange(510, 1030) // both ends inclusive
        XCTAssertEqual(pt.count, 600 - 521)
        XCTAssertNotNil(pt[509]); XCTAssertNil(pt[510]); XCTAssertNil(pt[1030]); XCTAssertNotNil(pt[1031])
        pt.removeRange(0, UInt64.max >> 12) // the whole space: visits only the leaves that exist
        XCTAssertTrue(pt.isEmpty)
        XCTAssertEqual(pt.entries().count, 0)
        pt[3] = 1
        pt.removeAll()
        XCTAssertNil(pt[3])
        XCTAssertEqual(pt.count, 0)
    }
}
