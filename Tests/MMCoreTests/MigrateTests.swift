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

    /// The PTE at `a` as the page table holds it.
    private func pte(_ env: Env, _ a: UInt64) throws -> PTE {
        let found = try XCTUnwrap(env.mm.pageTable.lookup(a, level: .pte))
        return found.entry.load()
    }

    /// Migration entries keep the replaced mapping's accessed and dirty bits (x86-64 has room
    /// for them: `make_migration_entry_young` / `_dirty`), and `remove_migration_pte` gives
    /// them back: an old, clean PTE of a dirty page comes back old and clean (dirty only if
    /// the entry and the page both are), a young, dirty one young and dirty.
    func testMigrationEntriesKeepAccessedAndDirtyBits() throws {
        let env = try Env(swapPages: 64)
        let a = try env.anon(2)
        try env.cpu.store(a, UInt64(7))
        try env.cpu.store(a + pageSize, UInt64(8))
        // Page 0: out to swap and read back: a clean PTE; the swap-in left the page dirty
        // (its only copy is in memory now). MADV_COLD then makes the PTE old.
        try env.process.madvise(a, length: pageSize, advice: .pageout)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 7)
        try env.process.madvise(a, length: pageSize, advice: .cold)
        var p0 = try pte(env, a), p1 = try pte(env, a + pageSize)
        XCTAssertTrue(p0.isPresent && !p0.isDirty && !p0.isAccessed, "\(p0)")
        XCTAssertTrue(p1.isPresent && p1.isDirty && p1.isAccessed, "\(p1)")
        let old0 = env.memory.page(p0.pfn), old1 = env.memory.page(p1.pfn)
        XCTAssertTrue(old0.test(.dirty))

        // While the pages are being migrated, their entries say what the PTEs were.
        for (page, young, dirty) in [(old0, false, false), (old1, true, true)] {
            page.lock()
            let av = try XCTUnwrap(page.anonVMA)
            env.memory.get(page)
            XCTAssertEqual(env.machine.tryToMigrate(page, av: av, index: page.index), 1)
            let s = try pte(env, page == old0 ? a : a + pageSize).swapEntry
            XCTAssertTrue(s.isMigration)
            XCTAssertEqual(s.pfn, page.pfn)
            XCTAssertEqual(s.isMigrationYoung, young)
            XCTAssertEqual(s.isMigrationDirty, dirty)
            env.machine.removeMigrationPTEs(from: page, to: page, av: av, index: page.index, entries: 1)
            page.unlock()
            env.memory.put(page)
        }
        p0 = try pte(env, a); p1 = try pte(env, a + pageSize)
        XCTAssertTrue(!p0.isDirty && !p0.isAccessed, "restored in place: \(p0)")
        XCTAssertTrue(p1.isDirty && p1.isAccessed, "restored in place: \(p1)")

        // Moved to new frames: the same bits, the page's dirty flag moved with its data.
        let r = env.machine.migratePages([old0.pfn, old1.pfn])
        XCTAssertEqual(r.failed, [:])
        p0 = try pte(env, a); p1 = try pte(env, a + pageSize)
        XCTAssertEqual(p0.pfn, r.migrated[old0.pfn])
        XCTAssertEqual(p1.pfn, r.migrated[old1.pfn])
        XCTAssertTrue(!p0.isDirty && !p0.isAccessed, "migrated: \(p0)")
        XCTAssertTrue(p1.isDirty && p1.isAccessed, "migrated: \(p1)")
        XCTAssertTrue(env.memory.page(p0.pfn).test(.dirty))
        // A write through the clean PTE dirties it again (the MMU sets the bits).
        try env.cpu.store(a, UInt64(9))
        XCTAssertTrue(try pte(env, a).isDirty)
        XCTAssertEqual(try env.cpu.load(a + pageSize, as: UInt64.self), 8)
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
