import XCTest
@testable import MMCore
import MMSync

final class GUPTests: XCTestCase {
    func testGUPFaultsInAndCountsReferences() throws {
        let env = try Env()
        let a = try env.anon(3)
        let pages = try env.mm.getUserPages(a, count: 3, flags: .write)
        XCTAssertEqual(pages.count, 3)
        for p in pages { XCTAssertEqual(p.refcount, 2); XCTAssertEqual(p.mapcount, 1); XCTAssertEqual(p.pincount, 0) }
        env.memory.frame(pages[1].pfn).storeBytes(of: UInt64(0xD1A), as: UInt64.self) // "DMA"
        XCTAssertEqual(try env.cpu.load(a + 4096, as: UInt64.self), 0xD1A)
        env.mm.putUserPages(pages)
        for p in pages { XCTAssertEqual(p.refcount, 1) }
        env.check()
        env.teardown()
    }

    func testGUPErrnos() throws {
        let env = try Env()
        let ro = try env.anon(1, prot: .read)
        XCTAssertErrno(.EFAULT) { () throws(Errno) in try env.mm.getUserPages(ro, count: 1, flags: .write) }
        XCTAssertErrno(.EFAULT) { () throws(Errno) in try env.mm.getUserPages(0x1000, count: 1, flags: []) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try env.mm.getUserPages(ro + 1, count: 1, flags: []) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try env.mm.getUserPages(ro, count: 0, flags: []) }
        // A range that runs off the mapping releases what it took.
        let a = try env.anon(2)
        XCTAssertErrno(.EFAULT) { () throws(Errno) in try env.mm.getUserPages(a, count: 3, flags: .write) }
        for pfn in try env.mm.pagemap(a, count: 2).map(\.pfn) { XCTAssertEqual(env.memory.page(pfn).refcount, 1) }
        env.check()
        env.teardown()
    }

    func testReadPinOfCOWSharedPageUnsharesIt() throws {
        let env = try Env()
        let a = try env.anon(1)
        try env.cpu.store(a, UInt64(8))
        let child = try env.process.fork()
        let shared = try XCTUnwrap(try env.pfn(a))
        let pins = try env.mm.getUserPages(a, count: 1, flags: .pin)
        XCTAssertNotEqual(pins[0].pfn, shared) // FAULT_FLAG_UNSHARE gave the parent its own page
        XCTAssertEqual(try child.mm.pagemap(a, count: 1)[0].pfn, shared)
        XCTAssertTrue(pins[0].test(.anonExclusive))
        XCTAssertEqual(env.memory.frame(pins[0].pfn).load(as: UInt64.self), 8)
        env.check()
        env.mm.unpinUserPages(pins)
        child.exit()
        env.teardown()
    }

    func testPagemapReportsPresentSwapAndZero() throws {
        let env = try Env()
        let a = try env.anon(3)
        try env.cpu.store(a, UInt8(1))
        _ = try env.cpu.load(a + 4096, as: UInt8.self)
        let pm = try env.mm.pagemap(a, count: 4)
        XCTAssertTrue(pm[0].isPresent && pm[0].isExclusive && !pm[0].isFileOrSharedAnon)
        XCTAssertTrue(pm[0].isSoftDirty)
        // Every VMA has VM_SOFTDIRTY, so its pages read soft-dirty (pte_to_pagemap_entry).
        XCTAssertEqual(pm[1].raw, PagemapEntry.presentBit | PagemapEntry.softDirtyBit) // zero page: present, pfn 0
        XCTAssertEqual(pm[2].raw, PagemapEntry.softDirtyBit)                            // empty
        XCTAssertFalse(pm[3].isPresent || pm[3].isSwap)                                 // beyond the mapping
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try env.mm.pagemap(a + 1, count: 1) }
        env.teardown()
    }
}
