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

final class UserAccessTests: XCTestCase {
    func testTightLoopAPIFaultsAndFollowsShootdowns() throws {
        let env = try Env()
        let a = try env.anon(4)
        let sum = try env.cpu.withUserAccess { u -> UInt64 in
            for i in 0..<UInt64(512) { try u.store(a + i * 8, i) }
            var s: UInt64 = 0
            for i in 0..<UInt64(512) { s += try u.load(a + i * 8, as: UInt64.self) }
            return s
        }
        XCTAssertEqual(sum, 511 * 512 / 2)
        try env.process.mprotect(a, length: 4096, prot: .read)
        XCTAssertThrowsError(try env.cpu.withUserAccess { u in try u.store(a, UInt64(1)) }) {
            XCTAssertEqual($0 as? AccessFault, .segv(address: a))
        }
        XCTAssertEqual(try env.cpu.withUserAccess { u in try u.load(a + 8, as: UInt64.self) }, 1)
        env.teardown()
    }
}
