import XCTest
@testable import MMCore

final class FaultTests: XCTestCase {
    func testReadFaultMapsZeroPageAndWriteFaultAllocates() throws {
        let env = try Env()
        let a = try env.anon(2)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 0)
        XCTAssertEqual(try env.pfn(a), 0) // the shared zero page
        XCTAssertEqual(env.machine.stats[.faultAnonZeroPage], 1)
        XCTAssertEqual(env.machine.stats[.faultAnonNewPage], 0)
        try env.cpu.store(a, UInt64(0xAB))
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], 1) // zero page → private copy
        let pfn = try XCTUnwrap(try env.pfn(a))
        XCTAssertNotEqual(pfn, 0)
        XCTAssertEqual(env.memory.page(pfn).mapcount, 1)
        XCTAssertEqual(env.memory.page(pfn).refcount, 1)
        XCTAssertTrue(env.memory.page(pfn).test(.anonExclusive))
        try env.cpu.store(a + 4096, UInt32(5))
        XCTAssertEqual(env.machine.stats[.faultAnonNewPage], 1)
        XCTAssertEqual(try env.cpu.load(a + 4096, as: UInt32.self), 5)
        XCTAssertEqual(try env.cpu.load(a, as: UInt8.self), 0xAB)
        env.check()
        env.teardown()
    }

    func testProtNoneAndReadOnlyMappingsFault() throws {
        let env = try Env()
        let a = try env.anon(1, prot: .none)
        XCTAssertFault(.segv(address: a)) { () throws(AccessFault) in try env.cpu.load(a, as: UInt8.self) }
        let b = try env.anon(1, prot: .read)
        XCTAssertEqual(try env.cpu.load(b, as: UInt8.self), 0)
        XCTAssertFault(.segv(address: b + 8)) { () throws(AccessFault) in try env.cpu.store(b + 8, UInt8(1)) }
        XCTAssertFault(.segv(address: 0x1000)) { () throws(AccessFault) in try env.cpu.load(0x1000, as: UInt8.self) }
        XCTAssertEqual(env.machine.stats[.faultSIGSEGV], 3)
        env.check()
        env.teardown()
    }

    func testByteRangesCrossPages() throws {
        let env = try Env()
        let a = try env.anon(3)
        let bytes = (0..<6000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        try env.cpu.write(a + 3000, bytes)
        XCTAssertEqual(try env.cpu.read(a + 3000, count: 6000), bytes)
        XCTAssertEqual(try env.cpu.read(a, count: 3000), [UInt8](repeating: 0, count: 3000))
        XCTAssertEqual(try env.cpu.compareExchange(a + 16, expected: 0, desired: 9), 0)
        XCTAssertEqual(try env.cpu.compareExchange(a + 16, expected: 0, desired: 10), 9)
        XCTAssertEqual(try env.cpu.fetchAdd(a + 16, 5), 9)
        XCTAssertEqual(try env.cpu.load(a + 16, as: UInt64.self), 14)
        XCTAssertEqual(try env.cpu.fetchAdd32(a + 4, 3), 0)
        XCTAssertEqual(try env.cpu.load(a + 4, as: UInt32.self), 3)
        XCTAssertEqual(try env.cpu.load(a, as: UInt32.self), 0)
        env.teardown()
    }

    func testOutOfMemoryIsReportedNotTrapped() throws {
        let env = try Env(mib: 8)
        let a = try env.anon(4096) // 16 MiB of virtual space on an 8 MiB machine
        var oom: AccessFault? = nil
        var i: UInt64 = 0
        while i < 4096 {
            do { try env.cpu.store(a + i * 4096, UInt8(1)) } catch { oom = error; break }
            i += 1
        }
        XCTAssertEqual(oom, .oom(address: a + i * 4096))
        XCTAssertEqual(env.memory.freeFrames, 0)
        env.check()
        try env.process.munmap(a, length: 4096 * 4096)
        XCTAssertEqual(env.machine.usedFrames - env.usedAtStart, 1) // only the pgd remains
        env.teardown()
    }
}
