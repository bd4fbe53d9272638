import XCTest
@testable import Conformance
@testable import Devices
@testable import HMM
@testable import MMCore
import MMSync

final class DeviceExclusiveTests: XCTestCase {
    func exclusive(_ d: Dmirror, _ a: UInt64, _ n: Int) throws {
        var cmd = DmirrorCmd(addr: a, npages: UInt64(n))
        try d.ioctl(.exclusive, &cmd, buffer: DmirrorBuffer(size: n * Int(pageSize)))
    }
    func check(_ d: Dmirror, _ a: UInt64, _ n: Int) -> Errno? {
        var cmd = DmirrorCmd(addr: a, npages: UInt64(n))
        do { try d.ioctl(.checkExclusive, &cmd); return nil } catch { return error }
    }

    func testExclusiveBreaksCOWAndZeroPageFirst() throws {
        let env = try HMMEnv()
        let a = try env.anon(2)
        _ = try env.cpu.load(a, as: UInt8.self) // zero page at page 0, nothing at page 1
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        try exclusive(d0, a, 2)
        XCTAssertEqual(check(d0, a, 2), .EPERM)
        let e = try env.mm.pagemap(a, count: 2)
        XCTAssertTrue(e.allSatisfy { $0.isSwap })
        XCTAssertEqual(d0.entry(at: a)?.tag, Dmirror.tagAtomic)
        XCTAssertNotEqual(d0.entry(at: a)?.pfn, 0) // a real page, not the zero page
        XCTAssertEqual(env.problems(), [])
        XCTAssertEqual(try env.cpu.load(a + pageSize, as: UInt8.self), 0) // read revokes too
        XCTAssertEqual(check(d0, a + pageSize, 1), nil)
        XCTAssertEqual(check(d0, a, 1), .EPERM)
        env.finish([d0])
    }

    func testExclusiveAcrossForkIsCopyOnWriteInBoth() throws {
        let env = try HMMEnv()
        let a = try env.anon(1)
        try env.cpu.store(a, UInt64(10))
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        try exclusive(d0, a, 1)
        let child = try env.process.fork()
        XCTAssertEqual(env.problems(), [])
        XCTAssertNil(d0.entry(at: a), "fork's PROTECTION_PAGE invalidation dropped the atomic entry")
        let ccpu = child.makeCPU()
        try ccpu.store(a, UInt64(20))
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 10)
        try env.cpu.store(a, UInt64(30))
        XCTAssertEqual(try ccpu.load(a, as: UInt64.self), 20)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 30)
        ccpu.detach(); child.exit()
        env.finish([d0])
    }

    func testExclusiveThenMprotectAndMunmapAndMigration() throws {
        let env = try HMMEnv()
        let a = try env.anon(3)
        for i in 0..<3 { try env.cpu.store(a + UInt64(i) * pageSize, UInt64(i + 1)) }
        let d0 = try env.module.open(minor: 0, mm: env.mm)
        try exclusive(d0, a, 3)
        try env.process.mprotect(a, length: pageSize, prot: .read)
        let pte = try XCTUnwrap(env.mm.mmapLock.withRead { env.mm.pageTable.lookup(a, level: .pte) }).entry.load()
        XCTAssertEqual(pte.swapEntry.type, SwapEntry.deviceExclusive) // mprotect leaves it alone (7.2)
        try env.process.munmap(a + pageSize, length: pageSize)
        let pfn = try XCTUnwrap(env.mm.mmapLock.withRead { env.mm.pageTable.lookup(a + 2 * pageSize, level: .pte) }).entry.load().swapEntry.pfn
        let r = env.machine.migratePages([pfn])
        XCTAssertEqual(r.migrated.count, 1)
        XCTAssertEqual(try env.mm.pagemap(a + 2 * pageSize, count: 1)[0].isPresent, true)
        XCTAssertEqual(try env.cpu.load(a + 2 * pageSize, as: UInt64.self), 3)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 1)
        XCTAssertEqual(check(d0, a, 3), nil)
        env.finish([d0])
    }
}
