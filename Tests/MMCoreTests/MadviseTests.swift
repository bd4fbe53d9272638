import Foundation
import XCTest
@testable import MMCore

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

    /// 7.2's `get_lock_mode`: MADV_DONTNEED and MADV_FREE run beside faults (the VMA's read
    /// lock; here the mmap lock for read), advice that changes VMA flags waits for them (the
    /// mmap lock for write). A thread holds the mmap lock for read, as a fault does: the zap
    /// finishes while it holds it, MADV_DONTFORK only once it lets go.
    func testZappingAdviceRunsBesideFaultsAndFlagAdviceWaits() throws {
        let env = try Env(checkEveryOperation: false)
        let a = try env.anon(2)
        try env.cpu.store(a, UInt64(7))
        let mm = env.mm, process = env.process
        let held = DispatchSemaphore(value: 0), release = DispatchSemaphore(value: 0)
        let holder = Thread { mm.mmapLock.lockRead(); held.signal(); release.wait(); mm.mmapLock.unlockRead() }
        holder.start()
        held.wait()
        let zapped = DispatchSemaphore(value: 0), flagged = DispatchSemaphore(value: 0)
        Thread { try? process.madvise(a, length: 8192, advice: .dontNeed); zapped.signal() }.start()
        XCTAssertEqual(zapped.wait(timeout: .now() + 10), .success, "MADV_DONTNEED waited for a reader of the mmap lock")
        Thread { try? process.madvise(a, length: 8192, advice: .dontFork); flagged.signal() }.start()
        XCTAssertEqual(flagged.wait(timeout: .now() + 0.2), .timedOut, "MADV_DONTFORK ran beside a reader of the mmap lock")
        release.signal()
        XCTAssertEqual(flagged.wait(timeout: .now() + 10), .success)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 0, "the zap dropped the page")
        env.mm.mmapLock.lockRead()
        XCTAssertTrue(env.mm.vmaLookup(a)?.flags.contains(.dontCopy) ?? false)
        env.mm.mmapLock.unlockRead()
        env.check()
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
