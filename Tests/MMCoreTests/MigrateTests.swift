import XCTest
@testable import MMCore
import MMSync

final class MigrateTests: XCTestCase {
    func testMigrationMovesEveryMappingAcrossFork() throws {
        let env = try Env()
        let a = try env.anon(4)
        try fillIDX(env.cpu, a, bytes: 4 * 4096)
        let child = try env.process.fork()
        let old = try env.mm.pagemap(a, count: 4).map(\.pfn)
        let used = env.machine.usedFrames
        let r = env.machine.migratePages(old)
        XCTAssertEqual(env.machine.usedFrames, used) // every old frame was freed
        XCTAssertEqual(r.failed, [:])
        XCTAssertEqual(r.migrated.count, 4)
        let new = try env.mm.pagemap(a, count: 4).map(\.pfn)
        XCTAssertEqual(new, old.map { r.migrated[$0]! })
        XCTAssertEqual(try child.mm.pagemap(a, count: 4).map(\.pfn), new)
        for pfn in new { XCTAssertEqual(env.memory.page(pfn).mapcount, 2) }
        XCTAssertEqual(env.machine.stats[.pagesMigrated], 4)
        let ccpu = child.makeCPU()
        try checkIDX(ccpu, a, bytes: 4 * 4096)
        try checkIDX(env.cpu, a, bytes: 4 * 4096)
        env.check()
        ccpu.detach(); child.exit()
        env.teardown()
    }

    func testPinnedPagesDoNotMoveAndStayMapped() throws {
        let env = try Env()
        let a = try env.anon(2)
        try fillIDX(env.cpu, a, bytes: 2 * 4096)
        let pins = try env.mm.getUserPages(a, count: 1, flags: [.write, .pin])
        let old = try env.mm.pagemap(a, count: 2).map(\.pfn)
        let r = env.machine.migratePages(old)
        XCTAssertEqual(r.failed, [old[0]: .EAGAIN])
        XCTAssertEqual(r.migrated.count, 1)
        XCTAssertEqual(try env.pfn(a), old[0])
        try checkIDX(env.cpu, a, bytes: 2 * 4096)
        env.check()
        env.mm.unpinUserPages(pins)
        XCTAssertEqual(env.machine.migratePages([old[0]]).migrated.count, 1)
        env.teardown()
    }

    func testMigrationRejectsWhatItCannotMove() throws {
        let env = try Env()
        let s = try env.anon(1, shared: true)
        try env.cpu.store(s, UInt8(1))
        let r = env.machine.migratePages([0, try XCTUnwrap(try env.pfn(s)), env.memory.systemFrames + 5, 12345])
        XCTAssertEqual(r.failed[0], .EINVAL)
        XCTAssertEqual(r.failed[env.memory.systemFrames + 5], .EINVAL)
        XCTAssertEqual(r.failed[12345], .ENOENT) // a free frame
        XCTAssertEqual(r.migrated.count, 0)
        env.teardown()
    }

    func testCPUWaitsOnMigrationEntry() throws {
        let env = try Env()
        let a = try env.anon(1)
        try env.cpu.store(a, UInt64(41))
        let pfn = try XCTUnwrap(try env.pfn(a))
        let page = env.memory.page(pfn)
        // Put a migration entry in place by hand, with the page locked, as try_to_migrate does.
        page.lock()
        guard let av = page.anonVMA else { return XCTFail("no anon_vma") }
        memoryBarrierTryToMigrate(env, page, av)
        let reader = env.process.spawnThread { cpu in
            let v: UInt64 = (try? cpu.load(a)) ?? 0
            XCTAssertEqual(v, 41)
        }
        syncSleep(nanoseconds: 10_000_000)
        env.machine.removeMigrationPTEs(from: page, to: page, av: av, index: page.index, entries: 1)
        page.unlock()
        env.memory.put(page) // the migrating thread's reference
        reader.join()
        XCTAssertGreaterThanOrEqual(env.machine.stats[.faultMigrationWait], 1)
        env.check()
        env.teardown()
    }

    private func memoryBarrierTryToMigrate(_ env: Env, _ page: Page, _ av: AnonVMA) {
        env.memory.get(page) // held by the "migrating thread" until the entries are restored
        XCTAssertEqual(env.machine.tryToMigrate(page, av: av, index: page.index), 1)
        XCTAssertEqual(page.refcount, 1)
        XCTAssertEqual(page.mapcount, 0)
    }
}

final class GUPTests: XCTestCase {
    func testGUPFaultsInAndCountsReferences() throws {
        let env = try Env()
        let a = try env.anon(3)
        let pages = try env.mm.getUserPages(a, count: 3, flags: .write)
        XCTAssertEqual(pages.count, 3)
        for p in pages { XCTAssertEqual(p.refcount, 2); XCTAssertEqual(p.mapcount, 1); XCTAssertEqual(p.pincount, 0) }
        env.memory.frame(pages[1].pfn).storeBytes(of: UInt64(0xD1A), as: UInt64.self) // "DMA"
        XCTAssertEqual(try env.cpu.load(a + 4096, as: UInt64.self), 0xD1A)
        env.mm.putUserPages(pages)
        for p in pages { XCTAssertEqual(p.refcount, 1) }
        env.check()
        env.teardown()
    }

    func testGUPErrnos() throws {
        let env = try Env()
        let ro = try env.anon(1, prot: .read)
        XCTAssertErrno(.EFAULT) { () throws(Errno) in try env.mm.getUserPages(ro, count: 1, flags: .write) }
        XCTAssertErrno(.EFAULT) { () throws(Errno) in try env.mm.getUserPages(0x1000, count: 1, flags: []) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try env.mm.getUserPages(ro + 1, count: 1, flags: []) }
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try env.mm.getUserPages(ro, count: 0, flags: []) }
        // A range that runs off the mapping releases what it took.
        let a = try env.anon(2)
        XCTAssertErrno(.EFAULT) { () throws(Errno) in try env.mm.getUserPages(a, count: 3, flags: .write) }
        for pfn in try env.mm.pagemap(a, count: 2).map(\.pfn) { XCTAssertEqual(env.memory.page(pfn).refcount, 1) }
        env.check()
        env.teardown()
    }

    func testReadPinOfCOWSharedPageUnsharesIt() throws {
        let env = try Env()
        let a = try env.anon(1)
        try env.cpu.store(a, UInt64(8))
        let child = try env.process.fork()
        let shared = try XCTUnwrap(try env.pfn(a))
        let pins = try env.mm.getUserPages(a, count: 1, flags: .pin)
        XCTAssertNotEqual(pins[0].pfn, shared) // FAULT_FLAG_UNSHARE gave the parent its own page
        XCTAssertEqual(try child.mm.pagemap(a, count: 1)[0].pfn, shared)
        XCTAssertTrue(pins[0].test(.anonExclusive))
        XCTAssertEqual(env.memory.frame(pins[0].pfn).load(as: UInt64.self), 8)
        env.check()
        env.mm.unpinUserPages(pins)
        child.exit()
        env.teardown()
    }

    func testPagemapReportsPresentSwapAndZero() throws {
        let env = try Env()
        let a = try env.anon(3)
        try env.cpu.store(a, UInt8(1))
        _ = try env.cpu.load(a + 4096, as: UInt8.self)
        let pm = try env.mm.pagemap(a, count: 4)
        XCTAssertTrue(pm[0].isPresent && pm[0].isExclusive && !pm[0].isFileOrSharedAnon)
        XCTAssertTrue(pm[0].isSoftDirty)
        // Every VMA has VM_SOFTDIRTY, so its pages read soft-dirty (pte_to_pagemap_entry).
        XCTAssertEqual(pm[1].raw, PagemapEntry.presentBit | PagemapEntry.softDirtyBit) // zero page: present, pfn 0
        XCTAssertEqual(pm[2].raw, PagemapEntry.softDirtyBit)                            // empty
        XCTAssertFalse(pm[3].isPresent || pm[3].isSwap)                                 // beyond the mapping
        XCTAssertErrno(.EINVAL) { () throws(Errno) in try env.mm.pagemap(a + 1, count: 1) }
        env.teardown()
    }
}

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
