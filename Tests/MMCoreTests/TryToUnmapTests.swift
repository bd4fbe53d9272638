import XCTest
@testable import MMCore
import MMSync

final class TryToUnmapTests: XCTestCase {
    func testFilePagesAreUnmappedEverywhereAndRefault() throws {
        let env = try Env()
        let f = ShmemFile(machine: env.machine, size: 4096)
        try f.pwrite(offset: 0, bytes: [7, 7, 7, 7])
        let a = try env.process.mmap(length: 4096, prot: .read, flags: .shared, file: f)
        let b = try env.process.mmap(length: 4096, prot: .readWrite, flags: .shared, file: f)
        XCTAssertEqual(try env.cpu.load(a, as: UInt8.self), 7)
        XCTAssertEqual(try env.cpu.load(b, as: UInt8.self), 7)
        let page = env.memory.page(try XCTUnwrap(try env.pfn(a)))
        XCTAssertEqual(page.mapcount, 2)
        page.lock()
        XCTAssertTrue(env.machine.tryToUnmap(page))
        page.unlock()
        XCTAssertEqual(page.mapcount, 0)
        XCTAssertEqual(page.refcount, 1) // the page cache's reference
        XCTAssertEqual(try env.mm.pagemap(a, count: 1)[0].raw, PagemapEntry.softDirtyBit) // empty, in a VM_SOFTDIRTY VMA
        try env.cpu.store(b, UInt8(9)) // refaults the same cached page
        XCTAssertEqual(try env.cpu.load(a, as: UInt8.self), 9)
        XCTAssertEqual(try env.pfn(a), page.pfn)
        env.check()
        env.teardown(stillHeld: 1)
    }

    func testAnonymousPagesStayWithoutSwap() throws {
        let env = try Env()
        let a = try env.anon(1)
        try env.cpu.store(a, UInt8(1))
        let page = env.memory.page(try XCTUnwrap(try env.pfn(a)))
        page.lock()
        XCTAssertFalse(env.machine.tryToUnmap(page))
        page.unlock()
        XCTAssertEqual(page.mapcount, 1)
        env.teardown()
    }
}
