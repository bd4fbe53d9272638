import XCTest
@testable import MMCore
import MMSync

/// The OOM killer (`mm/oom_kill.c`): when reclaim cannot free a frame, the address space with
/// the highest `oom_badness` is killed and reaped, and the allocation goes on.
final class OOMKillTests: XCTestCase {
    /// Fills `pages` pages from `base`, one word each (value: page index + `plus`).
    private func touch(_ cpu: CPU, _ base: UInt64, pages: Int, plus: UInt64 = 0) throws(AccessFault) {
        for i in 0..<pages { try cpu.store(base + UInt64(i) * pageSize, UInt64(i) + plus) }
    }

    func testTheLargestProcessIsKilledAndTheAllocationGoesOn() throws {
        let env = try Env(mib: 16, checkEveryOperation: false)
        env.machine.oomKillerEnabled = true
        let free = env.memory.freeFrames
        let big = try env.anon(2560)
        try touch(env.cpu, big, pages: 2560)
        let other = try Process(machine: env.machine)
        let cpu2 = other.makeCPU()
        let want = free - 2560
        let a = try other.mmap(length: UInt64(want) * pageSize, prot: .readWrite, flags: [.private, .anonymous])
        let badness = env.machine.oomBadness(env.mm)
        XCTAssertGreaterThanOrEqual(badness, 2560 + 5, "2560 pages and their tables")
        try touch(cpu2, a, pages: want, plus: 7)   // more than is left: the big process goes
        XCTAssertEqual(env.machine.stats[.oomKill], 1)
        XCTAssertTrue(env.mm.isOOMKilled)
        XCTAssertGreaterThanOrEqual(env.mm.oomBadnessWhenKilled, 2560)
        XCTAssertFalse(other.mm.isOOMKilled)
        for i in 0..<want { XCTAssertEqual(try cpu2.load(a + UInt64(i) * pageSize, as: UInt64.self), UInt64(i) + 7) }
        // The victim's memory was reaped: its next access faults, and the fault kills it.
        XCTAssertThrowsError(try env.cpu.load(big, as: UInt64.self)) { XCTAssertEqual($0 as? AccessFault, .oom(address: big)) }
        XCTAssertEqual(env.machine.checkInvariants(), [])
        cpu2.detach()
        other.exit()
        env.teardown()
    }

    func testTheAllocatingProcessItselfMayBeTheVictim() throws {
        let env = try Env(mib: 16, checkEveryOperation: false)
        env.machine.oomKillerEnabled = true
        let a = try env.anon(8192)
        XCTAssertThrowsError(try touch(env.cpu, a, pages: 8192)) {
            guard case .oom = $0 as? AccessFault else { return XCTFail("\($0)") }
        }
        XCTAssertEqual(env.machine.stats[.oomKill], 1)
        XCTAssertTrue(env.mm.isOOMKilled)
        XCTAssertEqual(env.machine.checkInvariants(), [])
        env.teardown()
    }

    func testOffByDefaultTheFaultFailsWithOOM() throws {
        let env = try Env(mib: 16, checkEveryOperation: false)
        let a = try env.anon(8192)
        XCTAssertThrowsError(try touch(env.cpu, a, pages: 8192)) {
            guard case .oom = $0 as? AccessFault else { return XCTFail("\($0)") }
        }
        XCTAssertEqual(env.machine.stats[.oomKill], 0)
        XCTAssertFalse(env.mm.isOOMKilled)
        XCTAssertEqual(try env.cpu.load(a, as: UInt64.self), 0, "the process lives on")
        env.teardown()
    }
}
