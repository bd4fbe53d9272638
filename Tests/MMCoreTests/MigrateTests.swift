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
