import XCTest
@testable import MMCore

final class ForkTests: XCTestCase {
    func testCOWAfterForkCopiesOnlyTheWriter() throws {
        let env = try Env()
        let a = try env.anon(4)
        try fillIDX(env.cpu, a, bytes: 4 * pageSize)
        let pfn0 = try XCTUnwrap(try env.pfn(a))
        let child = try env.process.fork()
        env.check()
        XCTAssertEqual(env.memory.page(pfn0).mapcount, 2)
        XCTAssertEqual(env.memory.page(pfn0).refcount, 2)
        XCTAssertFalse(env.memory.page(pfn0).test(.anonExclusive))
        let ccpu = child.makeCPU()
        try checkIDX(ccpu, a, bytes: 4 * pageSize)
        try ccpu.store(a, Int32(-1))
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], 1)
        XCTAssertNotEqual(try child.mm.pagemap(a, count: 1)[0].pfn, pfn0)
        XCTAssertEqual(env.memory.page(pfn0).mapcount, 1)
        XCTAssertEqual(try env.cpu.load(a, as: Int32.self), 0)
        XCTAssertEqual(try ccpu.load(a, as: Int32.self), -1)
        // The parent is now the only mapper of page 0: its write reuses the page in place.
        try env.cpu.store(a, Int32(7))
        XCTAssertEqual(env.machine.stats[.faultCOWReuse], 1)
        XCTAssertEqual(try env.pfn(a), pfn0)
        env.check()
        ccpu.detach(); child.exit()
        // After the child exits, page 1 is mapped once again and reused without copying.
        try env.cpu.store(a + 4096, Int32(9))
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], 1)
        XCTAssertEqual(env.machine.stats[.faultCOWReuse], 2)
        env.check()
        env.teardown()
        XCTAssertEqual(env.machine.usedFrames - env.usedAtStart, 0)
    }

    func testSharedAnonymousMemoryIsSharedAcrossFork() throws {
        let env = try Env()
        let a = try env.anon(2, shared: true)
        try env.cpu.store(a, UInt64(1))
        let child = try env.process.fork()
        let ccpu = child.makeCPU()
        XCTAssertEqual(try ccpu.load(a, as: UInt64.self), 1)
        try ccpu.store(a + 4096, UInt64(22))
        try ccpu.store(a, UInt64(2))
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 2)
        XCTAssertEqual(try env.cpu.load(a + 4096, as: UInt64.self), 22)
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], 0)
        XCTAssertEqual(try env.pfn(a), try child.mm.pagemap(a, count: 1)[0].pfn)
        XCTAssertTrue(try env.mm.pagemap(a, count: 1)[0].isFileOrSharedAnon)
        env.check()
        ccpu.detach(); child.exit()
        env.teardown()
        XCTAssertEqual(env.machine.usedFrames - env.usedAtStart, 0)
    }

    func testForkOfThreeGenerationsAndExitInAnyOrder() throws {
        let env = try Env()
        let a = try env.anon(8)
        try fillIDX(env.cpu, a, bytes: 8 * pageSize)
        let c1 = try env.process.fork()
        let c1cpu = c1.makeCPU()
        try c1cpu.store(a + 8, Int32(100))
        let c2 = try c1.fork()
        let c2cpu = c2.makeCPU()
        XCTAssertEqual(try c2cpu.load(a + 8, as: Int32.self), 100)
        try c2cpu.store(a + 4096 * 5, Int32(500))
        env.check()
        c1cpu.detach(); c1.exit()
        env.check()
        XCTAssertEqual(try c2cpu.load(a + 8, as: Int32.self), 100)
        XCTAssertEqual(try c2cpu.load(a + 4096 * 5, as: Int32.self), 500)
        try checkIDX(env.cpu, a, bytes: 8 * pageSize)
        c2cpu.detach(); c2.exit()
        env.teardown()
        XCTAssertEqual(env.machine.usedFrames - env.usedAtStart, 0)
    }

    func testPinnedPageIsCopiedAtForkTime() throws {
        let env = try Env()
        let a = try env.anon(1)
        try env.cpu.store(a, UInt64(5))
        let pinned = try env.mm.getUserPages(a, count: 1, flags: [.write, .pin])
        XCTAssertEqual(pinned[0].pincount, 1)
        let child = try env.process.fork()
        let cpfn = try child.mm.pagemap(a, count: 1)[0].pfn
        XCTAssertNotEqual(cpfn, pinned[0].pfn)       // the child got its own copy
        XCTAssertEqual(try env.pfn(a), pinned[0].pfn) // the parent kept the pinned page, writable
        try env.cpu.store(a, UInt64(6))
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], 0)
        XCTAssertEqual(env.memory.frame(pinned[0].pfn).load(as: UInt64.self), 6) // the DMA view sees it
        let ccpu = child.makeCPU()
        XCTAssertEqual(try ccpu.load(a, as: UInt64.self), 5)
        env.check()
        env.mm.unpinUserPages(pinned)
        ccpu.detach(); child.exit()
        env.teardown()
        XCTAssertEqual(env.machine.usedFrames - env.usedAtStart, 0)
    }
}
