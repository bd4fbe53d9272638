import XCTest
@testable import MMCore

final class ProtectionTests: XCTestCase {
    func testMprotectErrnosMatchLinux() throws {
        let env = try Env()
        let a = try env.anon(4)
        let p = env.process
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.mprotect(a + 1, length: 4096, prot: .read) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.mprotect(a, length: 4096, prot: Protection(rawValue: 0x100)) }
        XCTAssertNoThrow(try p.mprotect(a, length: 0, prot: .read))
        XCTAssertErrno(.ENOMEM) { () throws(Errno) in try p.mprotect(a, length: UInt64.max - 100, prot: .read) }
        XCTAssertErrno(.ENOMEM) { () throws(Errno) in try p.mprotect(0x1000, length: 4096, prot: .read) }
        // A hole in the middle: the part before it is changed, then ENOMEM.
        try p.munmap(a + 2 * 4096, length: 4096)
        XCTAssertErrno(.ENOMEM) { () throws(Errno) in try p.mprotect(a, length: 4 * 4096, prot: .read) }
        XCTAssertFault(.segv(address: a + 4096)) { () throws(AccessFault) in try env.cpu.store(a + 4096, UInt8(1)) }
        XCTAssertNoThrow(try env.cpu.store(a + 3 * 4096, UInt8(1)))
        env.check()
        env.teardown()
    }

    func testMprotectDowngradesPresentEntriesAndFlushesTLB() throws {
        let env = try Env()
        let a = try env.anon(2)
        try env.cpu.store(a, UInt64(3)) // writable entry cached in the TLB
        try env.process.mprotect(a, length: 8192, prot: .read)
        XCTAssertFault(.segv(address: a)) { () throws(AccessFault) in try env.cpu.store(a, UInt64(4)) }
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 3)
        try env.process.mprotect(a, length: 8192, prot: .none)
        XCTAssertFault(.segv(address: a)) { () throws(AccessFault) in try env.cpu.load(a, as: UInt64.self) }
        try env.process.mprotect(a, length: 8192, prot: .readWrite)
        try env.cpu.store(a, UInt64(5))
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 5)
        // Linux 7.2: mprotect back to read-write makes the exclusive anonymous page writable
        // itself (MM_CP_TRY_CHANGE_WRITABLE), so the store takes no write fault at all.
        XCTAssertEqual(env.machine.stats[.faultCOWReuse], 0)
        XCTAssertEqual(env.machine.stats[.faultCOWCopy], 0)
        XCTAssertEqual(env.mm.vmaCount, 1 + 0) // same range each time: no split
        env.check()
        env.teardown()
    }
}
