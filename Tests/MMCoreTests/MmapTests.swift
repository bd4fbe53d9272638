import XCTest
@testable import MMCore

final class MmapTests: XCTestCase {
    func testMmapErrnosMatchLinux() throws {
        let env = try Env()
        let p = env.process
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.mmap(length: 0, prot: .readWrite, flags: [.private, .anonymous]) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.mmap(length: 4096, prot: .readWrite, flags: [.anonymous]) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.mmap(length: 4096, prot: .readWrite, flags: [.shared, .private, .anonymous]) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.mmap(address: 0x10001000 + 1, length: 4096, prot: .readWrite, flags: [.private, .anonymous, .fixed]) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.mmap(length: 4096, prot: .readWrite, flags: [.private]) } // no file
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.mmap(length: 4096, prot: .readWrite, flags: [.shared], file: ShmemFile(machine: env.machine, size: 4096), offset: 100) }
        XCTAssertErrno(.ENOMEM) { () throws(Errno) in try p.mmap(length: UInt64.max - 10, prot: .readWrite, flags: [.private, .anonymous]) }
        XCTAssertErrno(.ENOMEM) { () throws(Errno) in try p.mmap(address: taskSize - 4096, length: 8192, prot: .readWrite, flags: [.private, .anonymous, .fixed]) }
        let a = try env.anon(4)
        XCTAssertErrno(.EEXIST) { () throws(Errno) in try p.mmap(address: a + 4096, length: 4096, prot: .readWrite, flags: [.private, .anonymous, .fixedNoReplace]) }
        XCTAssertEqual(env.mm.vmaCount, 1)
        env.check()
        env.teardown()
    }

    func testFixedMappingReplacesOldOne() throws {
        let env = try Env()
        let a = try env.anon(4)
        try env.cpu.store(a + 4096, UInt64(77))
        let b = try env.process.mmap(address: a + 4096, length: 4096, prot: .readWrite, flags: [.private, .anonymous, .fixed])
        XCTAssertEqual(b, a + 4096)
        XCTAssertEqual(try env.cpu.load(a + 4096, as: UInt64.self), 0)
        // The new mapping merges with both neighbours again (same flags, contiguous offsets,
        // one anon_vma): one VMA, as the host kernel shows in /proc/self/maps.
        XCTAssertEqual(env.mm.vmaCount, 1)
        env.check()
        env.teardown()
    }

    func testHintIsHonouredWhenFree() throws {
        let env = try Env()
        let a = try env.process.mmap(address: 0x4000_0000, length: 8192, prot: .readWrite, flags: [.private, .anonymous])
        XCTAssertEqual(a, 0x4000_0000)
        let b = try env.process.mmap(address: 0x4000_0000, length: 8192, prot: .readWrite, flags: [.private, .anonymous])
        XCTAssertNotEqual(b, 0x4000_0000)
        env.teardown()
    }

    func testMunmapErrnosAndSplitting() throws {
        let env = try Env()
        let p = env.process
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.munmap(0x1001, length: 4096) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.munmap(0x1000, length: 0) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.munmap(taskSize, length: 8192) }
        XCTAssertNoThrow(try p.munmap(0x10_0000, length: 4096)) // nothing mapped there: fine
        let a = try env.anon(3)
        for i in 0..<3 { try env.cpu.store(a + UInt64(i) * 4096, UInt64(i + 1)) }
        try p.munmap(a + 4096, length: 1) // rounds up to one page
        XCTAssertEqual(env.mm.vmaCount, 2)
        XCTAssertFault(.segv(address: a + 4096)) { () throws(AccessFault) in try env.cpu.load(a + 4096, as: UInt64.self) }
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 1)
        XCTAssertEqual(try env.cpu.load(a + 8192, as: UInt64.self), 3)
        XCTAssertEqual(env.machine.usedFrames - env.usedAtStart, 2 + 4) // 2 data pages + pgd, pud, pmd, pte tables
        env.check()
        env.teardown()
    }
}
