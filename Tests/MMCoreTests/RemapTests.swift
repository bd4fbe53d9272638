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

final class MadviseTests: XCTestCase {
    func testMadviseErrnos() throws {
        let env = try Env()
        let a = try env.anon(4)
        let p = env.process
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.madvise(a + 1, length: 4096, advice: .dontNeed) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.madvise(a, length: 4096, advice: MadviseAdvice(rawValue: 999)) }
        XCTAssertNoThrow(try p.madvise(a, length: 0, advice: .dontNeed))
        XCTAssertErrno(.ENOMEM) { () throws(Errno) in try p.madvise(a, length: 8 * 4096, advice: .dontNeed) }
        let s = try env.anon(1, shared: true)
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try p.madvise(s, length: 4096, advice: .free) }
        env.teardown()
    }

    func testDontNeedDropsPrivateButNotSharedContents() throws {
        let env = try Env()
        let a = try env.anon(2)
        let s = try env.anon(2, shared: true)
        try env.cpu.store(a, UInt64(1)); try env.cpu.store(s, UInt64(2))
        let before = env.machine.usedFrames
        try env.process.madvise(a, length: 8192, advice: .dontNeed)
        try env.process.madvise(s, length: 8192, advice: .dontNeed)
        XCTAssertEqual(env.machine.usedFrames, before - 1) // the private page is freed
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 0)
        XCTAssertEqual(try env.cpu.load(s, as: UInt64.self), 2) // the page cache keeps shared data
        env.check()
        env.teardown()
    }

    func testFreeCleansPagesAndAWriteRedirtiesThem() throws {
        let env = try Env()
        let a = try env.anon(2)
        try env.cpu.store(a, UInt64(1)); try env.cpu.store(a + 4096, UInt64(2))
        let pfn = try XCTUnwrap(try env.pfn(a))
        try env.process.madvise(a, length: 8192, advice: .free)
        XCTAssertTrue(env.memory.page(pfn).test(.lazyFree))
        XCTAssertFalse(env.memory.page(pfn).test(.dirty))
        try env.cpu.store(a, UInt64(3))
        let pte = try XCTUnwrap(env.mm.mmapLock.withRead { env.mm.pageTable.lookup(a, level: .pte) }).entry.load()
        XCTAssertTrue(pte.isDirty)
        XCTAssertEqual(try env.cpu.load(a + 4096, as: UInt64.self), 2) // no reclaim ran: data stays
        env.check()
        env.teardown()
    }

    func testHugePageAdviceSplitsAndFlagsVMAs() throws {
        let env = try Env()
        let a = try env.anon(4)
        try env.process.madvise(a + 4096, length: 8192, advice: .hugePage)
        let vmas = env.mm.snapshotVMAs()
        XCTAssertEqual(vmas.count, 3)
        XCTAssertTrue(vmas[1].flags.contains(.hugePage))
        XCTAssertFalse(vmas[0].flags.contains(.hugePage))
        env.teardown()
    }
}

final class ShmemFileTests: XCTestCase {
    func testFileReadWriteThroughMappings() throws {
        let env = try Env()
        let f = ShmemFile(machine: env.machine, size: 4 * 4096)
        let idx = (0..<(4 * 1024)).flatMap { withUnsafeBytes(of: Int32($0).littleEndian, Array.init) }
        XCTAssertEqual(try f.pwrite(offset: 0, bytes: idx), 4 * 4096)
        let ro = try env.process.mmap(length: 4 * 4096, prot: .read, flags: .shared, file: f)
        try checkIDX(env.cpu, ro, bytes: 4 * 4096)
        let rw = try env.process.mmap(length: 4 * 4096, prot: .readWrite, flags: .shared, file: f)
        try env.cpu.store(rw + 4, Int32(-5))
        XCTAssertEqual(try env.cpu.load(ro + 4, as: Int32.self), -5)
        XCTAssertEqual(try f.pread(offset: 4, count: 4), withUnsafeBytes(of: Int32(-5).littleEndian, Array.init))
        let priv = try env.process.mmap(length: 4 * 4096, prot: .readWrite, flags: .private, file: f)
        try env.cpu.store(priv + 8, Int32(99))
        XCTAssertEqual(try env.cpu.load(ro + 8, as: Int32.self), 2) // private COW does not reach the file
        XCTAssertEqual(try env.cpu.load(priv + 4, as: Int32.self), -5)
        XCTAssertEqual(try f.pread(offset: 4 * 4096 - 2, count: 10).count, 2) // short read at EOF
        env.check()
        try f.ftruncate(4096)
        XCTAssertFault(.bus(address: rw + 4096)) { () throws(AccessFault) in try env.cpu.load(rw + 4096, as: UInt8.self) }
        XCTAssertEqual(try env.cpu.load(rw + 4, as: Int32.self), -5)
        XCTAssertEqual(f.cachedPages, 1)
        env.check()
        env.teardown(stillHeld: 1) // the file's one cached page lives as long as the file
        XCTAssertEqual(f.size, 4096)
    }
}

final class RemapOverflowTests: XCTestCase {
    func testGrowingToAnImpossibleLengthIsENOMEM() throws {
        let env = try Env()
        let a = try env.anon(1)
        XCTAssertErrno(.ENOMEM) { () throws(Errno) in try env.process.mremap(a, oldLength: 4096, newLength: 0xFFFF_FFFF_FFFF_F000, flags: []) }
        XCTAssertErrno(.ENOMEM) { () throws(Errno) in try env.process.mremap(a, oldLength: 4096, newLength: taskSize + 4096, flags: .mayMove) }
        XCTAssertEqual(env.mm.vmaCount, 1)
        env.teardown()
    }
}
