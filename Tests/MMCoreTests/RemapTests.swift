import XCTest
@testable import MMCore

final class RemapTests: XCTestCase {
    func testMremapErrnosMatchLinux() throws {
        let env = try Env()
        let a = try env.anon(4)
        let p = env.process
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.mremap(a, oldLength: 4096, newLength: 4096, flags: MremapFlags(rawValue: 8)) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.mremap(a, oldLength: 4096, newLength: 4096, flags: .fixed, newAddress: 0x5000_0000) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.mremap(a, oldLength: 4096, newLength: 8192, flags: [.mayMove, .dontUnmap]) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.mremap(a + 1, oldLength: 4096, newLength: 4096, flags: []) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.mremap(a, oldLength: 4096, newLength: 0, flags: []) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.mremap(a, oldLength: 8192, newLength: 8192, flags: [.mayMove, .fixed], newAddress: a + 4096) }
        XCTAssertErrno(.EFAULT) { () throws(Errno) in try p.mremap(0x1000, oldLength: 4096, newLength: 4096, flags: []) }
        XCTAssertErrno(.EFAULT) { () throws(Errno) in try p.mremap(a, oldLength: 5 * 4096, newLength: 5 * 4096, flags: []) }
        _ = try p.mmap(address: a + 4 * 4096, length: 4096, prot: .read, flags: [.private, .anonymous, .fixed])
        XCTAssertErrno(.ENOMEM) { () throws(Errno) in try p.mremap(a, oldLength: 4 * 4096, newLength: 8 * 4096, flags: []) }
        env.check()
        env.teardown()
    }

    func testMoveKeepsDataAndRmap() throws {
        let env = try Env()
        let a = try env.anon(4)
        try fillIDX(env.cpu, a, bytes: 4 * 4096)
        let pfns = try env.mm.pagemap(a, count: 4).map(\.pfn)
        let target = try env.process.mmap(length: 16 * 4096, prot: .none, flags: [.private, .anonymous])
        let b = try env.process.mremap(a, oldLength: 4 * 4096, newLength: 8 * 4096, flags: [.mayMove, .fixed], newAddress: target + 4096)
        XCTAssertEqual(b, target + 4096)
        XCTAssertEqual(try env.mm.pagemap(b, count: 4).map(\.pfn), pfns) // frames moved, not copied
        try checkIDX(env.cpu, b, bytes: 4 * 4096)
        XCTAssertEqual(try env.cpu.load(b + 5 * 4096, as: UInt32.self), 0) // grown part is fresh
        XCTAssertFault(.segv(address: a)) { () throws(AccessFault) in try env.cpu.load(a, as: UInt8.self) }
        env.check()
        // The moved pages are still found by rmap: migrate one and read it back.
        let r = env.machine.migratePages([pfns[2]])
        XCTAssertEqual(r.failed, [:])
        XCTAssertEqual(try env.pfn(b + 2 * 4096), r.migrated[pfns[2]])
        try checkIDX(env.cpu, b, bytes: 4 * 4096)
        env.check()
        env.teardown()
    }

    func testDontUnmapLeavesAnEmptyOldMapping() throws {
        let env = try Env()
        let a = try env.anon(2)
        try env.cpu.store(a, UInt64(11))
        let b = try env.process.mremap(a, oldLength: 8192, newLength: 8192, flags: [.mayMove, .dontUnmap])
        XCTAssertNotEqual(a, b)
        XCTAssertEqual(try env.cpu.load(b, as: UInt64.self), 11)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 0) // still mapped, now empty
        XCTAssertEqual(env.mm.vmaCount, 2)
        env.check()
        env.teardown()
    }

    func testShrinkAndGrowInPlace() throws {
        let env = try Env()
        let a = try env.anon(4)
        try fillIDX(env.cpu, a, bytes: 4 * 4096)
        XCTAssertEqual(try env.process.mremap(a, oldLength: 4 * 4096, newLength: 2 * 4096, flags: []), a)
        XCTAssertFault(.segv(address: a + 3 * 4096)) { () throws(AccessFault) in try env.cpu.load(a + 3 * 4096, as: UInt8.self) }
        XCTAssertEqual(try env.process.mremap(a, oldLength: 2 * 4096, newLength: 4 * 4096, flags: []), a)
        XCTAssertEqual(try env.cpu.load(a + 3 * 4096, as: UInt32.self), 0)
        try checkIDX(env.cpu, a, bytes: 2 * 4096)
        env.check()
        env.teardown()
    }
}
